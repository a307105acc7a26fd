//! The deployment story, one asserted step at a time.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::acme::{self, Live, Pebble};
use super::client::{self, Load, Tls, TlsConnection};
use super::container::Container;
use super::h3client::H3Client;

pub(super) const SERVICE: &str = "lunchd.service";
pub(super) const SOCKETS: [&str; 2] = ["lunchd-http.socket", "lunchd-https.socket"];
/// Where the clients inside the container find pebble's root.
const CA_PATH: &str = "/root/pebble-root.pem";
/// docs/deploy.md, step 3: the commands that configure the ACME webroot.
pub(super) const CONFIGURE_WEBROOT: &str =
    "sed -i 's|^#acme_webroot = |acme_webroot = |' /etc/lunchd/lunchd.toml && mkdir -p /var/lib/lunchd-acme";
/// The certbot deploy hook install-units installs.
pub(super) const DEPLOY_HOOK: &str = "/etc/letsencrypt/renewal-hooks/deploy/lunchd";
/// A deploy hook that runs before lunchd's (certbot runs them in name
/// order) and cuts the renewed chain short.
const CUT_CHAIN_HOOK: &str = "/etc/letsencrypt/renewal-hooks/deploy/00-e2e-cut-chain";
/// `certbot renew` as certbot.timer runs it, but renewing now.
pub(super) const RENEW: &str = "certbot renew --force-renewal --non-interactive";
/// systemd's range of dynamic users (`DynamicUser=`).
const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;
/// The spacing of connection attempts under load.
pub(super) const LOAD_INTERVAL: Duration = Duration::from_millis(10);
/// The spacing of connection attempts while lunchd hangs.
const HUNG_INTERVAL: Duration = Duration::from_millis(100);
/// lunchd logs with journald priorities (docs/operations.md), so
/// `journalctl -p err` shows the reason of a failed reload. (Before they
/// landed the assertion ran as an expected failure.)
const JOURNAL_PRIORITIES: bool = true;
/// The optional third socket, installed with `install-units --metrics`.
const METRICS_SOCKET: &str = "lunchd-metrics.socket";
/// Where it listens in the e2e.
const METRICS_ADDR: &str = "127.0.0.1:9465";
/// The optional UDP socket for HTTP/3, installed with `install-units --quic`.
const QUIC_SOCKET: &str = "lunchd-quic.socket";
/// What the HTTPS responses over TCP advertise while the quic socket is
/// passed.
const ALT_SVC: &str = "h3=\":443\"; ma=86400";
/// The first generation whose curl the steps use over HTTP/3
/// (`--http3-only`): trixie's 8.14 (nghttp3 on OpenSSL 3.5's QUIC) and
/// forky's 8.22 (ngtcp2). The host's 7.88 has no HTTP/3: 252 checks the
/// socket, `STATUS=` and `Alt-Svc` only.
const H3_CLIENT_FROM: u32 = 257;
/// docs/operations.md: the access log on, in the installed configuration.
const CONFIGURE_ACCESS_LOG: &str = "sed -i 's|^#access = false|access = true|' /etc/lunchd/lunchd.toml";
/// `$LOGS_DIRECTORY/access.log` of `LogsDirectory=lunchd`.
const ACCESS_LOG: &str = "/var/log/lunchd/access.log";

/// What a generation's run found, for the summary.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// `systemctl show -P Version` inside.
    pub(crate) systemd: String,
    /// How the tree came to be ("cached", "built in 50 s"); empty for the host.
    pub(crate) tree: String,
    /// What install-units wrote for this systemd.
    pub(crate) variant: String,
    /// certbot's and pebble's versions.
    pub(crate) acme: String,
    /// The serial served after each issuance, with what issued it.
    pub(crate) serials: Vec<String>,
    /// Seconds from SIGSTOP until systemd had a new lunchd active.
    pub(crate) watchdog: Option<f64>,
    /// `systemd-analyze security` of the running unit.
    pub(crate) exposure: Option<String>,
    /// What was proven of HTTP/3.
    pub(crate) h3: Option<String>,
    /// After how many reloads a QUIC handshake presented TCP's serial.
    pub(crate) h3_serials: usize,
    /// What the HTTP/3 request in flight at SIGTERM got.
    pub(crate) h3_drain: Option<String>,
    /// How many steps passed, of how many.
    pub(crate) steps: (usize, usize),
    /// Assertions that fail for a known reason (see [`JOURNAL_PRIORITIES`]).
    pub(crate) expected_failures: Vec<String>,
}

impl Report {
    /// The summary lines.
    pub(crate) fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "systemd {}{}",
            self.systemd,
            if self.tree.is_empty() {
                String::new()
            } else {
                format!(", tree {}", self.tree)
            }
        )];
        if !self.variant.is_empty() {
            lines.push(format!("units: {}", self.variant));
        }
        if !self.acme.is_empty() {
            lines.push(self.acme.clone());
        }
        if !self.serials.is_empty() {
            lines.push(format!("serials served: {}", self.serials.join(" -> ")));
        }
        lines.push(format!(
            "watchdog restart: {}",
            self.watchdog
                .map_or("not measured".to_owned(), |s| format!("{s:.1} s after SIGSTOP"))
        ));
        lines.push(format!(
            "exposure: {}",
            self.exposure.as_deref().unwrap_or("not measured")
        ));
        lines.push(format!(
            "http/3: {}{}",
            self.h3.as_deref().unwrap_or("not checked"),
            match self.h3_serials {
                0 => String::new(),
                n => format!("; after {n} reloads QUIC handshakes presented TCP's serial"),
            }
        ));
        lines.push(format!(
            "http/3 drain: {}",
            self.h3_drain.as_deref().unwrap_or("not checked")
        ));
        lines.push(format!("steps: {} of {} passed", self.steps.0, self.steps.1));
        for e in &self.expected_failures {
            lines.push(format!("expected failure: {e}"));
        }
        lines
    }
}

/// Everything the steps share.
struct World<'a> {
    c: &'a Container,
    domain: &'a str,
    /// The systemd version running inside.
    version: u32,
    tls: Tls,
    webroot: PathBuf,
    /// Every certificate certbot issued, in order.
    issued: Mutex<Vec<Live>>,
    /// The index in `issued` of the one lunchd should serve.
    serving: Mutex<usize>,
    report: Mutex<&'a mut Report>,
}

/// Installs lunchd, starts pebble and gets the first certificate with
/// certbot, then runs every step. Fails if any step failed.
pub(crate) fn walk(c: &Container, domain: &str, version: u32, report: &mut Report) -> anyhow::Result<()> {
    let (tls, webroot, first) = prepare(c, domain, report).context("preparing the container")?;
    report.serials.push(format!("{} (certonly --standalone)", first.serial));
    let world = World {
        c,
        domain,
        version,
        tls,
        webroot,
        issued: Mutex::new(vec![first]),
        serving: Mutex::new(0),
        report: Mutex::new(report),
    };

    let mut runner = Runner::default();
    runner.step(&world, "sockets start; the service does not", step_sockets);
    runner.step(
        &world,
        "first HTTPS request activates lunchd (h2 and http/1.1, pebble's root)",
        step_activation,
    );
    runner.step(
        &world,
        "port 80 redirects to https and serves ACME challenges",
        step_port_80,
    );
    runner.step(
        &world,
        "dynamic user, no access to /etc/letsencrypt, key from credentials",
        step_dynamic_user,
    );
    runner.step(
        &world,
        "activating until READY=1, then active with STATUS=",
        step_readiness,
    );
    runner.step(
        &world,
        "certbot certonly --webroot through lunchd's port 80; the deploy hook reloads: new serial, same PID",
        step_webroot,
    );
    runner.step(
        &world,
        "certbot renew --force-renewal, twice: new serial each time, same PID, old connection alive",
        step_renew_twice,
    );
    runner.step(
        &world,
        "a normal start and three good reloads put nothing in journalctl -u lunchd -p warning",
        step_quiet,
    );
    runner.step(
        &world,
        "a renewal with its chain cut short: still active, old serial, reason shown; the next one served",
        step_broken,
    );
    runner.step(
        &world,
        "metrics on the third socket: promtool accepts them; requests, reloads and the not-after are right",
        step_metrics,
    );
    runner.step(&world, "the access log: one record per request made", step_access_log);
    runner.step(&world, "restart under load: zero refused, zero lost", step_restart);
    runner.step(
        &world,
        "systemctl stop with an HTTP/3 request in flight: it finishes whole, new ones refused after the GOAWAY",
        step_drain_h3,
    );
    runner.step(
        &world,
        "kill -9 under load: restarted, zero refused, waiting requests answered",
        step_kill,
    );
    runner.step(
        &world,
        "SIGSTOP: the watchdog has systemd restart lunchd; connections made meanwhile answered",
        step_watchdog,
    );
    runner.step(
        &world,
        "systemd-analyze security: exposure <= 0.2, and the sandbox in effect",
        step_security,
    );
    runner.step(&world, "journal lines without double timestamps", step_journal);
    runner.step(
        &world,
        "a start with a certificate at a fifth of its lifetime: a warning in journalctl -p warning",
        step_fifth,
    );
    let steps = (runner.passed, runner.passed + runner.failed.len());
    world.report.lock().unwrap_or_else(|e| e.into_inner()).steps = steps;
    runner.finish()
}

#[derive(Default)]
struct Runner {
    passed: usize,
    failed: Vec<String>,
}

impl Runner {
    fn step(&mut self, w: &World<'_>, title: &str, f: fn(&World<'_>) -> anyhow::Result<String>) {
        let n = self.passed + self.failed.len() + 1;
        if crate::e2e::interrupted() {
            self.failed.push(format!("{n}: not run (interrupted)"));
            return;
        }
        print!("e2e: [{n:2}] {title} ... ");
        let _ = std::io::stdout().flush();
        let t = Instant::now();
        match f(w) {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS ({:.1} s)", t.elapsed().as_secs_f64());
                for line in detail.lines() {
                    println!("e2e:        {line}");
                }
            }
            Err(e) => {
                self.failed.push(format!("{n}: {title}"));
                println!("FAIL ({:.1} s)", t.elapsed().as_secs_f64());
                for line in format!("{e:#}").lines() {
                    println!("e2e:        {line}");
                }
                diagnostics(w.c);
            }
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        let total = self.passed + self.failed.len();
        if self.failed.is_empty() {
            println!("e2e: all {total} steps passed");
            Ok(())
        } else {
            bail!(
                "{} of {total} steps failed: {}",
                self.failed.len(),
                self.failed.join("; ")
            )
        }
    }
}

/// What a failing step prints: the units' status and journal.
fn diagnostics(c: &Container) {
    let mut units = vec![SERVICE];
    units.extend(SOCKETS);
    units.push(QUIC_SOCKET);
    let mut status = vec!["systemctl", "status", "--no-pager", "--full", "-n", "0"];
    status.extend(&units);
    let mut journal = vec!["journalctl", "--no-pager", "-n", "40"];
    for u in &units {
        journal.extend(["-u", u]);
    }
    for argv in [status, journal] {
        println!("---- {}", argv.join(" "));
        match c.output(&argv) {
            Ok(out) => {
                print!("{}", String::from_utf8_lossy(&out.stdout));
                print!("{}", String::from_utf8_lossy(&out.stderr));
            }
            Err(e) => println!("{e:#}"),
        }
    }
    println!("----");
}

/// docs/deploy.md steps 2 to 4 inside: `cargo xtask install-units` (the
/// host built the release binary: the container has no toolchain), the
/// webroot configuration, and the first certificate from pebble with
/// `certbot certonly --standalone`. Returns the clients' TLS settings
/// (trusting pebble's root only), the webroot and the first certificate.
fn prepare(c: &Container, domain: &str, report: &mut Report) -> anyhow::Result<(Tls, PathBuf, Live)> {
    let root = c.root();
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let t = Instant::now();
    let out = c.run_within(
        180,
        &[
            &xtask.to_string_lossy(),
            "install-units",
            "--domain",
            domain,
            "--no-build",
            "--metrics",
            METRICS_ADDR,
            "--quic",
        ],
    )?;
    let detected = out
        .lines()
        .find(|l| l.starts_with("installing lunchd for systemd "))
        .context("install-units did not say which systemd it installed for")?;
    ensure!(
        out.contains("systemd-analyze verify: ok"),
        "install-units did not verify the units:\n{out}"
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system").join(SERVICE))
        .context("install-units installed no lunchd.service")?;
    report.variant = variant(&unit);
    println!(
        "e2e: cargo xtask install-units --domain {domain} --no-build --metrics {METRICS_ADDR} --quic: {} ({:.1} s)",
        detected.trim(),
        t.elapsed().as_secs_f64()
    );
    ensure!(
        root.join(DEPLOY_HOOK.trim_start_matches('/')).is_file(),
        "install-units installed no certbot deploy hook {DEPLOY_HOOK}"
    );

    // docs/deploy.md, step 3, verbatim: uncomment acme_webroot in the
    // installed example configuration, make the directory.
    c.sh(CONFIGURE_WEBROOT)?;
    c.sh(CONFIGURE_ACCESS_LOG)?;
    let config = std::fs::read_to_string(root.join("etc/lunchd/lunchd.toml"))
        .context("install-units installed no /etc/lunchd/lunchd.toml")?;
    let table: toml::Table = config.parse().context("parsing /etc/lunchd/lunchd.toml")?;
    ensure!(
        table
            .get("log")
            .and_then(|l| l.get("access"))
            .and_then(toml::Value::as_bool)
            == Some(true),
        "`{CONFIGURE_ACCESS_LOG}` did not turn the access log on in /etc/lunchd/lunchd.toml"
    );
    let webroot = table
        .get("http")
        .and_then(|h| h.get("acme_webroot"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .context("after docs/deploy.md's step 3, /etc/lunchd/lunchd.toml sets no [http] acme_webroot")?;
    ensure!(
        root.join(webroot.strip_prefix("/").unwrap_or(&webroot)).is_dir(),
        "docs/deploy.md's step 3 does not create the configured webroot {}",
        webroot.display()
    );

    // docs/deploy.md, step 4: the first certificate from certbot's own
    // server on port 80, before lunchd's sockets exist.
    let t = Instant::now();
    let pebble = Pebble::start(c, domain)?;
    write(
        &root.join(CA_PATH.trim_start_matches('/')),
        pebble.root_pem.as_bytes(),
        0o644,
    )?;
    report.acme = format!("{}, {}", acme::certbot_version(c), pebble.version);
    let standalone = docs_command("certbot certonly --standalone", domain)?;
    acme::certbot(c, &standalone)?;
    let first = acme::live(c, domain)?;
    println!(
        "e2e: {standalone}: serial {} from pebble ({:.1} s)",
        first.serial,
        t.elapsed().as_secs_f64()
    );
    let modes = c.run(&[
        "stat",
        "--format",
        "%a",
        "/etc/letsencrypt/live",
        "/etc/letsencrypt/archive",
    ])?;
    ensure!(
        modes.lines().all(|m| m.trim() == "700"),
        "certbot left /etc/letsencrypt/{{live,archive}} with modes {modes:?}, not root-only"
    );
    Ok((Tls::new(&pebble.root_der, domain)?, webroot, first))
}

/// The docs/deploy.md command that begins with `prefix`, for `domain`.
pub(super) fn docs_command(prefix: &str, domain: &str) -> anyhow::Result<String> {
    let path = crate::project_root().join("docs/deploy.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    acme::docs_command(&text, prefix, domain)
}

/// What install-units wrote, in a few words: the service type, how renewed
/// credentials arrive, and the settings only some versions get.
fn variant(unit: &str) -> String {
    let values = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .collect()
    };
    let mut parts = vec![format!("Type={}", values("Type").join(","))];
    if values("RefreshOnReload").contains(&"credentials") {
        parts.push("RefreshOnReload=credentials".to_owned());
    } else if unit.contains("lunchd-copy-credentials") {
        parts.push("reload copy (lunchd-copy-credentials)".to_owned());
    }
    for key in ["ProtectControlGroups", "PrivateTmp", "PrivatePIDs", "WatchdogSec"] {
        for v in values(key) {
            parts.push(format!("{key}={v}"));
        }
    }
    parts.join(", ")
}

fn write(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("e2e-tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

// ---- helpers ----

fn show(c: &Container, property: &str) -> anyhow::Result<String> {
    Ok(c.run(&["systemctl", "show", "-P", property, SERVICE])?
        .trim()
        .to_owned())
}

fn is_active(c: &Container, unit: &str) -> anyhow::Result<String> {
    // `is-active` exits non-zero for anything but active; the word is what counts.
    let out = c.output(&["systemctl", "is-active", unit])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main_pid(c: &Container) -> anyhow::Result<u32> {
    show(c, "MainPID")?.parse().context("MainPID is not a number")
}

/// The main PID of a running lunchd; fails when there is none (a `kill`
/// of PID 0 would signal the caller's own process group).
fn running_pid(c: &Container) -> anyhow::Result<u32> {
    match main_pid(c)? {
        0 => bail!("{SERVICE} is not running ({})", is_active(c, SERVICE)?),
        pid => Ok(pid),
    }
}

/// Runs `argv` as root in the mount namespace of the service's `pid`.
fn in_service(c: &Container, pid: u32, argv: &[&str]) -> anyhow::Result<String> {
    let target = format!("--target={pid}");
    let mut full = vec!["nsenter", &target, "--mount", "--"];
    full.extend(argv);
    c.run(&full)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub(super) fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if crate::e2e::interrupted() {
            bail!("interrupted while waiting for {what}");
        }
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the service is active with a main PID other than `old`.
fn wait_active(c: &Container, old: Option<u32>) -> anyhow::Result<u32> {
    wait_active_within(c, old, Duration::from_secs(20))
}

fn wait_active_within(c: &Container, old: Option<u32>, limit: Duration) -> anyhow::Result<u32> {
    wait_for("lunchd to be active", limit, || {
        let pid = main_pid(c)?;
        Ok((is_active(c, SERVICE)? == "active" && pid != 0 && Some(pid) != old).then_some(pid))
    })
}

/// A new TLS connection to port 443 inside the container.
fn open_tls(w: &World<'_>) -> anyhow::Result<TlsConnection> {
    TlsConnection::open(&w.tls, client::connect(w.c, 443)?)
}

/// The serial of the certificate a fresh handshake presents (verified
/// against pebble's root), as far as certbot issued it.
fn served_serial(w: &World<'_>) -> anyhow::Result<String> {
    let der = open_tls(w)?.peer_certificate().context("no peer certificate")?;
    Ok(serial_of(w, &der))
}

fn serial_of(w: &World<'_>, der: &[u8]) -> String {
    lock(&w.issued).iter().find(|l| l.der == der).map_or_else(
        || "a certificate certbot did not issue".to_owned(),
        |l| l.serial.clone(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The certificate lunchd should serve: serial, DER, key.
fn latest(w: &World<'_>) -> (String, Vec<u8>, String) {
    let issued = lock(&w.issued);
    let serving = &issued[*lock(&w.serving)];
    (serving.serial.clone(), serving.der.clone(), serving.key_pem.clone())
}

/// Records a certificate certbot issued; returns its index.
fn record(w: &World<'_>, live: Live) -> usize {
    let mut issued = lock(&w.issued);
    issued.push(live);
    issued.len() - 1
}

/// curl inside the container; returns stdout.
fn curl(w: &World<'_>, args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec![
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        "10",
        "--cacert",
        CA_PATH,
    ];
    let resolve_https = format!("{}:443:127.0.0.1", w.domain);
    let resolve_http = format!("{}:80:127.0.0.1", w.domain);
    argv.extend(["--resolve", &resolve_https, "--resolve", &resolve_http]);
    argv.extend(args);
    w.c.run(&argv)
}

/// Whether this generation's steps make requests over HTTP/3.
fn h3_client(w: &World<'_>) -> bool {
    w.version >= H3_CLIENT_FROM
}

/// `curl --http3-only` inside, verifying against pebble's root: QUIC to
/// UDP 443, nothing over TCP. Returns stdout; fails when this curl has no
/// HTTP/3.
fn curl_h3(w: &World<'_>, args: &[&str]) -> anyhow::Result<String> {
    let version = w.c.run(&["curl", "--version"])?;
    let features = version.lines().find(|l| l.starts_with("Features:")).unwrap_or_default();
    ensure!(
        features.split_whitespace().any(|f| f == "HTTP3"),
        "this container's curl has no HTTP/3: {}",
        version.lines().next().unwrap_or_default()
    );
    let mut argv = vec!["--http3-only"];
    argv.extend(args);
    curl(w, &argv)
}

/// A serial as hex digits without colons or leading zeros, lowercase.
fn normal_serial(serial: &str) -> String {
    serial
        .trim()
        .replace(':', "")
        .trim_start_matches('0')
        .to_ascii_lowercase()
}

/// The serial of the certificate a fresh QUIC handshake presents (curl
/// verifies it against pebble's root; `%{certs}` shows the chain, the
/// leaf first), as far as certbot issued it.
fn served_serial_h3(w: &World<'_>) -> anyhow::Result<String> {
    let url = format!("https://{}/healthz", w.domain);
    let out = curl_h3(
        w,
        &[
            "--fail",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_version}\n%{certs}",
            &url,
        ],
    )?;
    let (version, certs) = out.split_once('\n').context("no curl write-out")?;
    ensure!(version == "3", "curl --http3-only spoke HTTP/{version}");
    let serial = certs
        .lines()
        .find_map(|l| l.strip_prefix("Serial Number:"))
        .with_context(|| format!("curl's %{{certs}} shows no serial:\n{certs}"))?;
    let serial = normal_serial(serial);
    Ok(lock(&w.issued)
        .iter()
        .find(|l| normal_serial(&l.serial) == serial)
        .map_or_else(
            || format!("{serial} (a certificate certbot did not issue)"),
            |l| l.serial.clone(),
        ))
}

pub(super) fn dish_of(json: &str) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_str(json).with_context(|| format!("not JSON: {json:?}"))?;
    let dish = value["lunch"].as_str().unwrap_or_default().to_owned();
    ensure!(!dish.is_empty(), "no dish in {json}");
    Ok(dish)
}

/// Runs `action` while a client opens a connection every 10 ms; returns
/// what the client saw and what `action` returned.
fn under_load<T>(w: &World<'_>, action: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Load, T)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| client::load(w.c, &w.tls, 443, LOAD_INTERVAL, &stop));
        // Some traffic before and after the action.
        std::thread::sleep(Duration::from_millis(300));
        let result = action();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let load = load.join().map_err(|_| anyhow::anyhow!("the load client panicked"))??;
        Ok((load, result?))
    })
}

// ---- the steps ----

fn step_sockets(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    for (socket, option) in [(METRICS_SOCKET, "--metrics"), (QUIC_SOCKET, "--quic")] {
        let enabled = c.output(&["systemctl", "is-enabled", socket])?;
        let enabled = String::from_utf8_lossy(&enabled.stdout).trim().to_owned();
        ensure!(
            enabled == "enabled",
            "install-units {option} left {socket} {enabled}, not enabled"
        );
    }
    let mut argv = vec!["systemctl", "enable", "--now"];
    argv.extend(SOCKETS);
    argv.extend([METRICS_SOCKET, QUIC_SOCKET]);
    c.run(&argv)?;
    for socket in SOCKETS.iter().chain([&METRICS_SOCKET, &QUIC_SOCKET]) {
        ensure!(is_active(c, socket)? == "active", "{socket} is not active");
        let enabled = c.output(&["systemctl", "is-enabled", socket])?;
        let enabled = String::from_utf8_lossy(&enabled.stdout).trim().to_owned();
        ensure!(enabled == "enabled", "{socket} is {enabled}, not enabled");
    }
    let state = is_active(c, SERVICE)?;
    ensure!(
        state == "inactive",
        "{SERVICE} is {state} before any request; it must wait for a connection"
    );
    let listening = c.run(&["ss", "--listening", "--tcp", "--numeric", "--processes", "--no-header"])?;
    for port in [":80 ", ":443 "] {
        let line = listening
            .lines()
            .find(|l| l.contains(port))
            .with_context(|| format!("nothing listens on port {}:\n{listening}", port.trim()))?;
        ensure!(
            line.contains("pid=1,"),
            "port {} is not held by PID 1:\n{line}",
            port.trim()
        );
    }
    let listen = c.run(&["systemctl", "show", "-P", "Listen", QUIC_SOCKET])?;
    ensure!(
        listen.trim().ends_with(":443 (Datagram)"),
        "{QUIC_SOCKET} listens on {:?}, not UDP port 443",
        listen.trim()
    );
    let udp = c.run(&["ss", "--listening", "--udp", "--numeric", "--processes", "--no-header"])?;
    let line = udp
        .lines()
        .find(|l| l.contains(":443 "))
        .with_context(|| format!("nothing listens on UDP port 443:\n{udp}"))?;
    ensure!(line.contains("pid=1,"), "UDP port 443 is not held by PID 1:\n{line}");
    // ReceiveBuffer=4M: the kernel reports twice what was set.
    let memory = c.run(&[
        "ss",
        "--listening",
        "--udp",
        "--numeric",
        "--memory",
        "--no-header",
        "sport",
        "=",
        ":443",
    ])?;
    let receive_buffer: u64 = memory
        .split(|ch: char| !ch.is_ascii_alphanumeric())
        .find_map(|field| field.strip_prefix("rb")?.parse().ok())
        .with_context(|| format!("ss shows no receive buffer for UDP port 443:\n{memory}"))?;
    ensure!(
        receive_buffer >= 8 << 20,
        "UDP port 443 has a receive buffer of {receive_buffer} bytes; {QUIC_SOCKET} asks for ReceiveBuffer=4M"
    );
    Ok(format!(
        "ports 80 and 443 held by systemd (PID 1), and UDP 443 for HTTP/3 ({QUIC_SOCKET}: Listen={}, ReceiveBuffer= {} MiB in effect); {SERVICE} inactive",
        listen.trim(),
        (receive_buffer / 2) >> 20
    ))
}

fn step_activation(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let url = format!("https://{}/api/lunch", w.domain);
    let h2 = curl(w, &["--http2", "--write-out", "\n%{http_version} %{http_code}", &url])?;
    let (body, meta) = h2.rsplit_once('\n').context("no curl write-out")?;
    ensure!(
        meta == "2 200",
        "HTTP/2 request: expected `2 200` (version, status), got `{meta}`"
    );
    let dish2 = dish_of(body)?;
    // lunchd answers the request that started it as soon as it accepts;
    // systemd marks it active when it has read READY=1, a moment later.
    wait_active_within(c, None, Duration::from_secs(5))
        .with_context(|| format!("{SERVICE} answered the first request but did not become active"))?;
    let h1 = curl(w, &["--http1.1", "--write-out", "\n%{http_version} %{http_code}", &url])?;
    let (body, meta) = h1.rsplit_once('\n').context("no curl write-out")?;
    ensure!(meta == "1.1 200", "HTTP/1.1 request: expected `1.1 200`, got `{meta}`");
    let dish1 = dish_of(body)?;
    let mut conn = open_tls(w)?;
    let alpn = conn.alpn().unwrap_or_default();
    ensure!(alpn == "http/1.1", "ALPN: offered http/1.1, got {alpn:?}");
    let health = conn.get("/healthz")?;
    ensure!(health.status == 200, "/healthz answered {}", health.status);
    let hsts = health.header("strict-transport-security").unwrap_or("none").to_owned();
    let alt_svc = health.header("alt-svc").unwrap_or("none").to_owned();
    ensure!(
        alt_svc == ALT_SVC,
        "Alt-Svc over TCP with {QUIC_SOCKET} passed: {alt_svc:?}, expected {ALT_SVC:?}"
    );
    let served = served_serial(w)?;
    let (first, _, _) = latest(w);
    ensure!(
        served == first,
        "serving {served}, expected certbot's first certificate {first}"
    );
    let pid = main_pid(c)?;
    let h3 = if h3_client(w) {
        let out = curl_h3(w, &["--write-out", "\n%{http_version} %{http_code}", &url])?;
        let (body, meta) = out.rsplit_once('\n').context("no curl write-out")?;
        ensure!(
            meta == "3 200",
            "HTTP/3 request: expected `3 200` (version, status), got `{meta}`"
        );
        let dish3 = dish_of(body)?;
        let serial = served_serial_h3(w)?;
        ensure!(serial == first, "the QUIC handshake presents {serial}, TCP's {first}");
        ensure!(main_pid(c)? == pid, "lunchd restarted during the HTTP/3 requests");
        let curl = w.c.run(&["curl", "--version"])?;
        let curl = curl.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        lock(&w.report).h3 = Some(format!(
            "{curl} --http3-only through {QUIC_SOCKET}: the lunch, verified"
        ));
        format!("h3 (curl --http3-only): {dish3}, serial {serial} verified against pebble's root; ")
    } else {
        lock(&w.report).h3 = Some(format!(
            "{QUIC_SOCKET} passed, STATUS= and Alt-Svc checked; this curl has no HTTP/3 (requests over it from systemd {H3_CLIENT_FROM})"
        ));
        String::new()
    };
    Ok(format!(
        "h2: {dish2}; http/1.1: {dish1}; {h3}certificate serial {served} verified against pebble's root; HSTS: {hsts}; Alt-Svc: {alt_svc}; PID {pid}"
    ))
}

fn step_port_80(w: &World<'_>) -> anyhow::Result<String> {
    let path = "/menu/today?team=e2e";
    let out = curl(
        w,
        &[
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{redirect_url}",
            &format!("http://{}{path}", w.domain),
        ],
    )?;
    let expected = format!("https://{}{path}", w.domain);
    let (code, location) = out.split_once(' ').context("no curl write-out")?;
    ensure!(
        matches!(code, "301" | "308") && location == expected,
        "expected a permanent redirect to {expected}, got `{out}`"
    );
    let token = "e2e-Tq3vXkM9pR2sLw7nYb4cHd8fJg1Zt6Ua0oEi5xQ";
    let content = format!("{token}.e2e-account-thumbprint");
    let challenge = w.webroot.join(".well-known/acme-challenge").join(token);
    let on_host = w.c.root().join(challenge.strip_prefix("/").unwrap_or(&challenge));
    write(&on_host, content.as_bytes(), 0o644)?;
    let body = curl(
        w,
        &[
            "--fail",
            &format!("http://{}/.well-known/acme-challenge/{token}", w.domain),
        ],
    );
    let _ = std::fs::remove_file(&on_host);
    let body = body?;
    ensure!(body == content, "the challenge answered {body:?}, expected {content:?}");
    Ok(format!(
        "{code} to {location}; challenge served from {}",
        w.webroot.display()
    ))
}

fn step_dynamic_user(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let pid = main_pid(c)?;
    ensure!(pid != 0, "{SERVICE} is not running");
    let status = c.run(&["cat", &format!("/proc/{pid}/status")])?;
    let ids = |field: &str| -> anyhow::Result<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {field} in /proc/{pid}/status"))
    };
    let (uid, gid) = (ids("Uid:")?, ids("Gid:")?);
    ensure!(
        DYNAMIC_UIDS.contains(&uid),
        "lunchd runs as uid {uid}, outside the dynamic range {DYNAMIC_UIDS:?}"
    );
    let passwd = c.run(&["getent", "passwd", &uid.to_string()])?;
    let name = passwd.split(':').next().unwrap_or_default().to_owned();
    ensure!(!name.is_empty(), "uid {uid} has no name");
    let etc_passwd = std::fs::read_to_string(c.root().join("etc/passwd")).unwrap_or_default();
    ensure!(
        !etc_passwd.lines().any(|l| l.starts_with(&format!("{name}:"))),
        "{name} is in /etc/passwd; a dynamic user is not"
    );

    // The key as the service's own user, in the service's own mount namespace.
    let key = format!("/etc/letsencrypt/live/{}/privkey.pem", w.domain);
    let read = c.output(&[
        "nsenter",
        &format!("--target={pid}"),
        "--mount",
        "--",
        "setpriv",
        &format!("--reuid={uid}"),
        &format!("--regid={gid}"),
        "--clear-groups",
        "--",
        "cat",
        &key,
    ])?;
    let err = String::from_utf8_lossy(&read.stderr);
    ensure!(
        !read.status.success() && (err.contains("Permission denied") || err.contains("No such file")),
        "reading {key} as uid {uid} in lunchd's namespace: expected a refusal, got {} {err}",
        read.status
    );

    // Where lunchd took its key from: the `--key` systemd passed, inside
    // $CREDENTIALS_DIRECTORY (LoadCredential=, systemd 260 and later) or
    // $RUNTIME_DIRECTORY (filled by root before start and reload, earlier).
    let environ = c.run(&["cat", &format!("/proc/{pid}/environ")])?;
    let var = |name: &str| {
        environ
            .split('\0')
            .find_map(|v| v.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let cmdline = c.run(&["cat", &format!("/proc/{pid}/cmdline")])?;
    let key_arg = cmdline
        .split('\0')
        .find_map(|a| a.strip_prefix("--key="))
        .map(str::to_owned)
        .with_context(|| format!("lunchd was started without --key: {:?}", cmdline.replace('\0', " ")))?;
    let (kind, dir) = [
        ("$CREDENTIALS_DIRECTORY", var("CREDENTIALS_DIRECTORY")),
        ("$RUNTIME_DIRECTORY", var("RUNTIME_DIRECTORY")),
    ]
    .into_iter()
    .find_map(|(kind, dir)| dir.filter(|d| key_arg.starts_with(&format!("{d}/"))).map(|d| (kind, d)))
    .with_context(|| format!("--key={key_arg} is neither in $CREDENTIALS_DIRECTORY nor in $RUNTIME_DIRECTORY"))?;
    // As lunchd sees them: from 257 on, systemd mounts the credentials in
    // the service's own mount namespace only.
    let (content, access) = readable_only_by(c, pid, uid, &key_arg)?;
    ensure!(content == latest(w).2, "{key_arg} does not hold the installed key");
    let dir_mode = in_service(c, pid, &["stat", "--format", "%a", &dir])?;
    let dir_mode = u32::from_str_radix(dir_mode.trim(), 8).context("stat printed no octal mode")?;
    ensure!(dir_mode & 0o007 == 0, "{dir} has mode {dir_mode:o}: others may enter");
    Ok(format!(
        "uid {uid} ({name}, not in /etc/passwd)\n{key} as uid {uid} in lunchd's mount namespace: {}\nkey read from {key_arg} ({kind}: {access})",
        err.trim()
    ))
}

fn step_readiness(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    c.run(&["systemctl", "stop", SERVICE])?;
    ensure!(is_active(c, SERVICE)? == "inactive", "{SERVICE} did not stop");
    // lunchd reads its configuration before it can be ready: a FIFO in its
    // place holds it there, between exec and READY=1, for as long as needed.
    c.sh("cp /etc/lunchd/lunchd.toml /etc/lunchd/lunchd.toml.e2e && rm /etc/lunchd/lunchd.toml && mkfifo -m 0644 /etc/lunchd/lunchd.toml")?;
    let restore = || c.sh("mv -f /etc/lunchd/lunchd.toml.e2e /etc/lunchd/lunchd.toml");
    let result = {
        let answered = AtomicBool::new(false);
        std::thread::scope(|scope| -> anyhow::Result<String> {
            let request = scope.spawn(|| {
                let r = open_tls(w).and_then(|mut conn| conn.get("/api/lunch"));
                answered.store(true, Ordering::SeqCst);
                r
            });
            let seen = wait_for(
                "activating with a running main process",
                Duration::from_secs(10),
                || {
                    let state = show(c, "ActiveState")?;
                    let sub = show(c, "SubState")?;
                    let pid = main_pid(c)?;
                    Ok((state == "activating" && sub == "start" && pid != 0).then_some(pid))
                },
            );
            // Hold it a little: it must stay activating, the request waiting.
            std::thread::sleep(Duration::from_millis(300));
            let still = is_active(c, SERVICE)?;
            let waiting = !answered.load(Ordering::SeqCst);
            c.sh("timeout 5 sh -c 'cat /etc/lunchd/lunchd.toml.e2e > /etc/lunchd/lunchd.toml'")?;
            let pid = seen?;
            ensure!(
                still == "activating",
                "{SERVICE} became {still} before lunchd could have sent READY=1"
            );
            ensure!(waiting, "the request was answered before lunchd was ready");
            let active = wait_active(c, None)?;
            ensure!(active == pid, "the main PID changed from {pid} to {active}");
            let response = request.join().map_err(|_| anyhow::anyhow!("the client panicked"))??;
            ensure!(response.status == 200, "the waiting request got {}", response.status);
            let dish = dish_of(&response.body)?;
            let text = show(c, "StatusText")?;
            ensure!(
                text.contains("https"),
                "no STATUS= text from lunchd (StatusText={text:?})"
            );
            ensure!(
                text.contains("http/3"),
                "STATUS= does not name HTTP/3 with {QUIC_SOCKET} passed (StatusText={text:?})"
            );
            let status = c.output(&["systemctl", "status", "--no-pager", SERVICE])?;
            let status = String::from_utf8_lossy(&status.stdout);
            let line = status
                .lines()
                .find(|l| l.trim_start().starts_with("Status:"))
                .context("`systemctl status` shows no Status: line")?;
            Ok(format!(
                "activating (start) with PID {pid} until READY=1, then active; the queued request got {dish}\n{}",
                line.trim()
            ))
        })
    };
    let restored = restore();
    let detail = result?;
    restored?;
    Ok(detail)
}

/// Runs `command` (a certbot renewal), which certbot follows with the
/// deploy hook, and checks the outcome: a new serial on new handshakes,
/// the same PID, a keep-alive connection opened before still answering,
/// and the new key where this systemd delivers it.
fn renewal(w: &World<'_>, command: &str, label: &str) -> anyhow::Result<String> {
    let c = w.c;
    let pid = main_pid(c)?;
    ensure!(pid != 0, "{SERVICE} is not running");
    let (old_serial, old_der, _) = latest(w);
    let mut before = open_tls(w)?;
    ensure!(
        before.get("/healthz")?.status == 200,
        "no answer on the first connection"
    );
    ensure!(
        before.peer_certificate().as_deref() == Some(&old_der[..]),
        "not serving {old_serial} before the renewal"
    );
    let t = Instant::now();
    let output = acme::certbot(c, command)?;
    let certbot_secs = t.elapsed().as_secs_f64();
    let new = acme::live(c, w.domain)?;
    ensure!(
        new.serial != old_serial,
        "`{command}` left the same certificate ({old_serial}):\n{output}"
    );
    let (serial, der, key) = (new.serial.clone(), new.der.clone(), new.key_pem.clone());
    let index = record(w, new);
    // No reload by hand: certbot's deploy hook did it.
    wait_for(
        "the renewed certificate on new handshakes",
        Duration::from_secs(10),
        || Ok((open_tls(w)?.peer_certificate().as_deref() == Some(&der[..])).then_some(())),
    )?;
    let after = main_pid(c)?;
    ensure!(
        after == pid,
        "the main PID changed from {pid} to {after}: reload must not restart"
    );
    ensure!(
        is_active(c, SERVICE)? == "active",
        "{SERVICE} is not active after reload"
    );
    let again = before.get("/api/lunch")?;
    ensure!(
        again.status == 200,
        "the connection opened before reload got {}",
        again.status
    );
    *lock(&w.serving) = index;
    let how = delivered_key(w, pid, &key)?;
    let h3 = if h3_client(w) {
        let over_h3 = served_serial_h3(w)?;
        ensure!(
            over_h3 == serial,
            "after the reload the QUIC handshake presents {over_h3}, TCP's {serial}"
        );
        lock(&w.report).h3_serials += 1;
        format!("\nthe QUIC handshake (curl --http3-only) presents {over_h3} too")
    } else {
        String::new()
    };
    lock(&w.report).serials.push(format!("{serial} ({label})"));
    Ok(format!(
        "`{command}` ({certbot_secs:.1} s): serial {old_serial} -> {serial}, PID {pid} unchanged, \
         the earlier keep-alive connection answered {}\n{how}{h3}",
        dish_of(&again.body)?,
    ))
}

/// Where the renewed key reached lunchd, checked against `key`: systemd
/// 260 and later copy it into $CREDENTIALS_DIRECTORY again on reload
/// (RefreshOnReload=credentials); before, root copies it into the runtime
/// directory (--reload-credentials).
fn delivered_key(w: &World<'_>, pid: u32, key: &str) -> anyhow::Result<String> {
    let c = w.c;
    let cmdline = c.run(&["cat", &format!("/proc/{pid}/cmdline")])?;
    let arg = |name: &str| {
        cmdline
            .split('\0')
            .find_map(|a| a.strip_prefix(name))
            .map(str::to_owned)
    };
    let uid = c.run(&["stat", "--format", "%u", &format!("/proc/{pid}")])?;
    let (path, how) = match arg("--reload-credentials=") {
        Some(dir) => {
            ensure!(
                w.version < 260,
                "systemd {} has RefreshOnReload=credentials, yet lunchd runs with the reload copy",
                w.version
            );
            (
                format!("{dir}/privkey.pem"),
                "the reload copy (ExecReload=+lunchd-copy-credentials)",
            )
        }
        None => {
            ensure!(
                w.version >= 260,
                "systemd {} cannot refresh credentials on reload, yet lunchd runs without --reload-credentials",
                w.version
            );
            let key = arg("--key=").context("lunchd runs without --key")?;
            (key, "RefreshOnReload=credentials")
        }
    };
    let uid: u32 = uid.trim().parse().context("no uid of lunchd's process")?;
    let (content, access) = readable_only_by(c, pid, uid, &path)?;
    ensure!(content == key, "{path} does not hold the renewed key");
    Ok(format!(
        "the renewed key reached lunchd through {how}: {path} ({access})"
    ))
}

/// Reads `path` in the mount namespace of lunchd's `pid` as lunchd's
/// `uid` (its group is the same number), and checks that another user
/// (nobody) cannot. Returns the content and the mode and owner, which
/// differ between versions: 252 makes credentials 0400 and owned by the
/// service's user, 257 and later 0440 root with an ACL for it.
fn readable_only_by(c: &Container, pid: u32, uid: u32, path: &str) -> anyhow::Result<(String, String)> {
    let target = format!("--target={pid}");
    let read_as = |id: u32| {
        c.output(&[
            "nsenter",
            &target,
            "--mount",
            "--",
            "setpriv",
            &format!("--reuid={id}"),
            &format!("--regid={id}"),
            "--clear-groups",
            "--",
            "cat",
            path,
        ])
    };
    let own = read_as(uid)?;
    ensure!(
        own.status.success(),
        "lunchd's uid {uid} cannot read {path}: {}",
        String::from_utf8_lossy(&own.stderr).trim()
    );
    let other = read_as(65534)?;
    let err = String::from_utf8_lossy(&other.stderr);
    ensure!(
        !other.status.success() && err.contains("Permission denied"),
        "nobody (65534) reading {path}: expected a refusal, got {} {err}",
        other.status
    );
    let stat = in_service(c, pid, &["stat", "--format", "mode %a, owner %u:%g", path])?;
    Ok((
        String::from_utf8_lossy(&own.stdout).into_owned(),
        format!("{}, readable by uid {uid}, not by nobody", stat.trim()),
    ))
}

fn step_webroot(w: &World<'_>) -> anyhow::Result<String> {
    let command = docs_command("certbot certonly --webroot", w.domain)?;
    let detail = renewal(w, &command, "certonly --webroot")?;
    let conf =
        w.c.run(&["cat", &format!("/etc/letsencrypt/renewal/{}.conf", w.domain)])?;
    ensure!(
        conf.lines().any(|l| l.replace(' ', "") == "authenticator=webroot"),
        "certbot does not remember the webroot method for renewals:\n{conf}"
    );
    Ok(format!("{detail}\nrenewal/{}.conf: authenticator = webroot", w.domain))
}

fn step_renew_twice(w: &World<'_>) -> anyhow::Result<String> {
    let first = renewal(w, RENEW, "renew")?;
    let second = renewal(w, RENEW, "renew")?;
    Ok(format!("{first}\n{second}"))
}

fn step_broken(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let pid = main_pid(c)?;
    let (good, _, _) = latest(w);
    // certbot renews; a hook that runs before lunchd's cuts the new chain
    // short (as a full disk or an interrupted copy would), then lunchd's
    // hook reloads.
    let hook = c.root().join(CUT_CHAIN_HOOK.trim_start_matches('/'));
    write(
        &hook,
        b"#!/bin/sh\n# e2e: the renewed chain arrives cut short\nset -eu\n\
          f=$(readlink -f \"$RENEWED_LINEAGE/fullchain.pem\")\n\
          head -c $(( $(wc -c < \"$f\") - 300 )) \"$f\" > \"$f.cut\"\nmv -f \"$f.cut\" \"$f\"\n",
        0o755,
    )?;
    let t = Instant::now();
    let renewed = acme::certbot(c, RENEW);
    let _ = std::fs::remove_file(&hook);
    renewed?;
    let certbot_secs = t.elapsed().as_secs_f64();
    let cut = acme::live(c, w.domain)?;
    let cut_serial = cut.serial.clone();
    record(w, cut);
    let text = wait_for("STATUS= to report the failed reload", Duration::from_secs(10), || {
        let t = show(c, "StatusText")?;
        Ok(t.contains("reload failed").then_some(t))
    })?;
    let state = is_active(c, SERVICE)?;
    ensure!(state == "active", "{SERVICE} is {state} after a failed reload");
    let now = main_pid(c)?;
    ensure!(now == pid, "the main PID changed from {pid} to {now}");
    let serial = served_serial(w)?;
    ensure!(
        serial == good,
        "serving {serial}, expected the previous {good} (certbot's cut one is {cut_serial})"
    );
    ensure!(
        text.contains("fullchain.pem"),
        "the reason does not name the broken file: {text}"
    );
    if h3_client(w) {
        let over_h3 = served_serial_h3(w)?;
        ensure!(
            over_h3 == good,
            "after the failed reload the QUIC handshake presents {over_h3}, not the previous {good}"
        );
        lock(&w.report).h3_serials += 1;
    }
    lock(&w.report)
        .serials
        .push(format!("{serial} (renew, chain cut short: kept)"));
    let status = c.output(&["systemctl", "status", "--no-pager", "--full", SERVICE])?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let line = status
        .lines()
        .find(|l| l.contains("Status:") && l.contains("reload failed"))
        .context("`systemctl status` does not show the failed reload")?
        .trim()
        .to_owned();
    let journal = journal_err(w)?;

    // The next renewal is whole, and served.
    let fixed = renewal(w, RENEW, "renew")?;
    let text = show(c, "StatusText")?;
    ensure!(
        !text.contains("reload failed"),
        "STATUS= still reports the failed reload: {text}"
    );
    Ok(format!(
        "`{RENEW}` ({certbot_secs:.1} s) with the chain cut: still active, PID {pid}, serial {serial}\n{line}\n{journal}\nthen {fixed}"
    ))
}

/// The reason of the failed reload in `journalctl -u lunchd -p err`. Until
/// lunchd logs with journald priorities ([`JOURNAL_PRIORITIES`]) this is
/// an expected failure, reported and not fatal.
fn journal_err(w: &World<'_>) -> anyhow::Result<String> {
    let check = || -> anyhow::Result<String> {
        let out =
            w.c.run(&["journalctl", "--no-pager", "-u", SERVICE, "-p", "err", "-o", "cat"])?;
        let line = out
            .lines()
            .find(|l| l.contains("fullchain.pem"))
            .with_context(|| format!("`journalctl -u {SERVICE} -p err` does not show the reason:\n{out}"))?;
        Ok(line.to_owned())
    };
    Ok(match (check(), JOURNAL_PRIORITIES) {
        (Ok(line), true) => format!("journal, priority err: {line}"),
        (Ok(line), false) => {
            let note = format!(
                "journalctl -p err now shows the reason ({line}): set JOURNAL_PRIORITIES in xtask/src/e2e/steps.rs"
            );
            lock(&w.report)
                .expected_failures
                .push(format!("UNEXPECTED PASS: {note}"));
            note
        }
        (Err(e), false) => {
            let note = format!("expected to fail until journald priorities land in lunchd: {e:#}");
            lock(&w.report).expected_failures.push(
                "journalctl -u lunchd -p err does not show the failed reload (until journald priorities land)"
                    .to_owned(),
            );
            note.lines().next().unwrap_or_default().to_owned()
        }
        (Err(e), true) => return Err(e),
    })
}

fn step_restart(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let old = main_pid(c)?;
    let (load, new) = under_load(w, || {
        c.run(&["systemctl", "restart", SERVICE])?;
        wait_active(c, Some(old))
    })?;
    ensure!(
        load.refused == 0,
        "{} of {} connections refused",
        load.refused,
        load.attempts
    );
    ensure!(load.answered > 0, "no request answered");
    ensure!(
        load.failed.is_empty(),
        "{} requests failed (in flight at SIGTERM, not drained): {:?}",
        load.failed.len(),
        load.failed
    );
    Ok(format!(
        "PID {old} -> {new}; {} connections, {} answered, 0 refused, 0 failed",
        load.attempts, load.answered
    ))
}

/// The HTTP/3 drain, as notify.rs proves it over HTTP/2: the client's
/// QUIC flow control holds the page's response after its headers
/// ([`H3Client::hold`]), so lunchd has a request in flight when systemd
/// sends SIGTERM, and can finish it only when the client reads on.
fn step_drain_h3(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let pid = running_pid(c)?;
    let client = H3Client::new(c, &w.tls, 443)?;
    let mut held = client.hold("/")?;
    ensure!(held.status == 200, "GET / over HTTP/3 answered {}", held.status);
    ensure!(
        held.length > 4 * 1024,
        "the page ({} bytes) fits in the client's flow control window: nothing would be held in flight",
        held.length
    );
    c.run(&["systemctl", "stop", "--no-block", SERVICE])?;
    let stopped_at = Instant::now();
    let pid_filter = format!("_PID={pid}");
    wait_for("lunchd to drain its QUIC connection", Duration::from_secs(10), || {
        let journal = c.run(&["journalctl", "--no-pager", "-o", "cat", &pid_filter])?;
        Ok(journal
            .lines()
            .any(|l| l.contains("draining connections") && l.contains("quic"))
            .then_some(()))
    })?;
    let state = is_active(c, SERVICE)?;
    ensure!(
        state == "deactivating" && main_pid(c)? == pid,
        "{SERVICE} is {state} while a request is in flight; expected deactivating, PID {pid}"
    );
    let same = client
        .refused_on(&mut held, "/healthz")
        .context("a new request on the draining connection")?;
    let fresh = match client.connect() {
        Ok(_) => bail!("a new QUIC connection was accepted while lunchd drained"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        fresh.contains("refused"),
        "a new QUIC connection while lunchd drained: {fresh}; expected CONNECTION_REFUSED"
    );
    let state = is_active(c, SERVICE)?;
    ensure!(
        state == "deactivating" && main_pid(c)? == pid,
        "{SERVICE} is {state} before the request in flight was read: it did not wait for it"
    );
    let held_for = stopped_at.elapsed();
    let length = held.length;
    let body = client.finish(held)?;
    drop(client);
    ensure!(
        body.len() == length,
        "the response in flight arrived with {} of its {length} bytes",
        body.len()
    );
    ensure!(
        String::from_utf8_lossy(&body).trim_end().ends_with("</html>"),
        "the page that arrived does not end with </html>"
    );
    // The UDP socket is systemd's again once lunchd exits: a late packet
    // could start a new lunchd, so the exit is checked whichever comes.
    wait_for("lunchd to exit after the drain", Duration::from_secs(15), || {
        Ok((main_pid(c)? != pid).then_some(()))
    })?;
    let exited = if is_active(c, SERVICE)? == "inactive" {
        let (result, status) = (show(c, "Result")?, show(c, "ExecMainStatus")?);
        ensure!(
            result == "success" && status == "0",
            "lunchd stopped with Result={result}, ExecMainStatus={status}"
        );
        "exit status 0, Result=success".to_owned()
    } else {
        let journal = c.run(&["journalctl", "--no-pager", "-o", "cat", "-u", SERVICE, "-n", "30"])?;
        ensure!(
            journal.contains("Deactivated successfully"),
            "lunchd restarted after the drain without a clean exit:\n{journal}"
        );
        "deactivated successfully (a late datagram started it again)".to_owned()
    };
    let journal = c.run(&["journalctl", "--no-pager", "-o", "cat", &pid_filter])?;
    ensure!(
        !journal.contains("drain deadline passed"),
        "lunchd gave up the drain:\n{journal}"
    );
    c.run(&["systemctl", "start", SERVICE])?;
    let new = wait_active(c, Some(pid))?;
    lock(&w.report).h3_drain = Some(format!(
        "the request in flight at SIGTERM got all {length} bytes; new requests and connections refused; exit 0"
    ));
    Ok(format!(
        "GET / held by a {}-byte stream window: lunchd stayed deactivating ({} ms until the client read on) \
         and then sent all {length} bytes; after the GOAWAY a request on that connection: {same}; \
         a new connection: {fresh}; PID {pid}: {exited}; started again as {new}",
        super::h3client::WINDOW,
        held_for.as_millis()
    ))
}

fn step_kill(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let old = running_pid(c)?;
    let restarts: u32 = show(c, "NRestarts")?.parse().unwrap_or(0);
    let (load, (killed_at, up_at, new)) = under_load(w, || {
        c.run(&["kill", "-9", &old.to_string()])?;
        let killed_at = Instant::now();
        let new = wait_active(c, Some(old))?;
        Ok((killed_at, Instant::now(), new))
    })?;
    let after: u32 = show(c, "NRestarts")?.parse().unwrap_or(0);
    ensure!(
        load.refused == 0,
        "{} of {} connections refused",
        load.refused,
        load.attempts
    );
    ensure!(
        after > restarts,
        "systemd did not count a restart (NRestarts {restarts} -> {after})"
    );
    let down: Vec<bool> = load
        .log
        .iter()
        .filter(|(t, _)| *t >= killed_at && *t <= up_at)
        .map(|(_, ok)| *ok)
        .collect();
    let after_kill: Vec<bool> = load
        .log
        .iter()
        .filter(|(t, _)| *t >= killed_at)
        .map(|(_, ok)| *ok)
        .collect();
    ensure!(!down.is_empty(), "no request was sent while lunchd was down");
    ensure!(
        after_kill.iter().all(|ok| *ok),
        "{} requests sent after the kill were not answered: {:?}",
        after_kill.iter().filter(|ok| !**ok).count(),
        load.failed
    );
    Ok(format!(
        "PID {old} killed, {new} started by systemd; {} connections, 0 refused, {} sent while down all answered; {} in flight at the kill lost",
        load.attempts,
        down.len(),
        load.failed.len()
    ))
}

fn step_watchdog(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let old = running_pid(c)?;
    let restarts: u32 = show(c, "NRestarts")?.parse().unwrap_or(0);
    let watchdog = show(c, "WatchdogUSec")?;
    c.run(&["kill", "-STOP", &old.to_string()])?;
    let stopped_at = Instant::now();
    wait_for("lunchd to be stopped", Duration::from_secs(5), || {
        let status = c.run(&["cat", &format!("/proc/{old}/status")])?;
        Ok(status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("T (stopped)"))
            .then_some(()))
    })?;
    let stop = AtomicBool::new(false);
    let (hung, new, restarted_at) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let clients = scope.spawn(|| client::while_hung(c, &w.tls, 443, HUNG_INTERVAL, &stop));
        let new = wait_active_within(c, Some(old), Duration::from_secs(60));
        let restarted_at = Instant::now();
        // Some connections to the new process too.
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let hung = clients.join().map_err(|_| anyhow::anyhow!("the clients panicked"))??;
        Ok((hung, new, restarted_at))
    })?;
    let new = new.context("systemd did not restart the stopped lunchd (is WatchdogSec= set?)")?;
    let seconds = restarted_at.duration_since(stopped_at).as_secs_f64();
    let after: u32 = show(c, "NRestarts")?.parse().unwrap_or(0);
    ensure!(
        after > restarts,
        "systemd did not count a restart (NRestarts {restarts} -> {after})"
    );
    let journal = c.run(&["journalctl", "--no-pager", "-o", "cat", "-u", SERVICE])?;
    let timeout = journal
        .lines()
        .rev()
        .find(|l| l.contains("Watchdog timeout"))
        .context("systemd logged no watchdog timeout for lunchd")?
        .trim()
        .to_owned();
    ensure!(
        hung.refused == 0,
        "{} of {} connections refused",
        hung.refused,
        hung.attempts
    );
    ensure!(hung.attempts > 0, "no connection was made while lunchd hung");
    ensure!(
        hung.failed.is_empty(),
        "{} of {} connections made while lunchd hung were not answered: {:?}",
        hung.failed.len(),
        hung.attempts,
        hung.failed
    );
    lock(&w.report).watchdog = Some(seconds);
    Ok(format!(
        "PID {old} stopped, {new} active {seconds:.1} s later (WatchdogUSec={watchdog}); {timeout}\n\
         {} connections made meanwhile, all answered, 0 refused",
        hung.attempts
    ))
}

fn step_security(w: &World<'_>) -> anyhow::Result<String> {
    let out = w.c.output(&["systemd-analyze", "security", "--no-pager", SERVICE])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)))?;
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("cannot read the score in {line:?}"))?;
    // What is left, e.g. `RootDirectory=/RootImage= 0.1`.
    let left: Vec<String> = text
        .lines()
        .filter(|l| l.contains('✗'))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let exposure = words.last().filter(|w| w.parse::<f64>().is_ok_and(|v| v > 0.0))?;
            Some(format!("{} {exposure}", words.get(1)?))
        })
        .collect();
    lock(&w.report).exposure = Some(format!(
        "{} (left: {})",
        line.split(':').nth(1).unwrap_or_default().trim(),
        left.join(", ")
    ));
    ensure!(
        score <= 0.2,
        "{}",
        text.lines()
            .filter(|l| l.contains('✗') || l.contains("Overall"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The score reads the unit file; the running process shows that the
    // sandbox took effect.
    let pid = main_pid(w.c)?;
    let status = w.c.run(&["cat", &format!("/proc/{pid}/status")])?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    for (name, expected) in [
        ("CapEff:", "0000000000000000"),
        ("CapBnd:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        let got = field(name);
        ensure!(got == expected, "lunchd's {name} is {got}, expected {expected}");
    }
    let links =
        w.c.run(&["nsenter", &format!("--target={pid}"), "--net", "--", "ip", "-o", "link"])?;
    let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    ensure!(
        names == ["lo"],
        "lunchd's network namespace has links {names:?}, expected only lo"
    );
    // The score is of the unit with the quic socket installed: lunchd
    // holds the UDP socket systemd bound outside its namespace.
    let udp =
        w.c.run(&["ss", "--listening", "--udp", "--numeric", "--processes", "--no-header"])?;
    let held = udp
        .lines()
        .find(|l| l.contains(":443 "))
        .is_some_and(|l| l.contains(&format!("pid={pid},")));
    ensure!(
        held,
        "lunchd (PID {pid}) does not hold {QUIC_SOCKET}'s UDP socket:\n{udp}"
    );
    Ok(format!(
        "{}, with {QUIC_SOCKET} installed and its UDP socket held by lunchd\nrunning: no capabilities, no_new_privs, a seccomp filter, a network namespace with only lo",
        line.trim()
    ))
}

fn step_journal(w: &World<'_>) -> anyhow::Result<String> {
    let out = w.c.run(&["journalctl", "--no-pager", "-o", "json", "-u", SERVICE])?;
    let mut lines = Vec::new();
    for entry in out.lines() {
        let v: serde_json::Value = serde_json::from_str(entry).context("journalctl -o json")?;
        if v["SYSLOG_IDENTIFIER"] == "lunchd" {
            lines.push(v["MESSAGE"].as_str().unwrap_or_default().to_owned());
        }
    }
    ensure!(
        lines.len() >= 5,
        "only {} lines from lunchd in the journal",
        lines.len()
    );
    for line in &lines {
        ensure!(!starts_with_timestamp(line), "lunchd stamps its own time: {line:?}");
        ensure!(!line.contains('\u{1b}'), "colour codes in the journal: {line:?}");
    }
    let sample = lines.iter().find(|l| l.contains("serving")).unwrap_or(&lines[0]);
    Ok(format!(
        "{} lines, none with its own timestamp, e.g. {sample:?}",
        lines.len()
    ))
}

/// `2026-11-28T23:57:24...`, `2026-11-28 23:57:24` or `23:57:24`.
fn starts_with_timestamp(line: &str) -> bool {
    let b = line.trim_start().as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let date = digits(0..4) && b.get(4) == Some(&b'-') && digits(5..7) && b.get(7) == Some(&b'-') && digits(8..10);
    let time = digits(0..2) && b.get(2) == Some(&b':') && digits(3..5) && b.get(5) == Some(&b':');
    date || time
}

fn step_quiet(w: &World<'_>) -> anyhow::Result<String> {
    let out = w.c.run(&[
        "journalctl",
        "--no-pager",
        "-q",
        "-u",
        SERVICE,
        "-p",
        "warning",
        "-o",
        "json",
    ])?;
    // lunchd's own records, and what systemd says about the unit (262 in
    // this container warns that it cannot read pids.max of the unit's
    // cgroup: the host does not delegate that controller).
    let (mut own, mut systemd) = (Vec::new(), Vec::new());
    for entry in out.lines() {
        let v: serde_json::Value = serde_json::from_str(entry).context("journalctl -o json")?;
        let message = v["MESSAGE"].as_str().unwrap_or_default().to_owned();
        if v["SYSLOG_IDENTIFIER"] == "lunchd" {
            own.push(message);
        } else {
            systemd.push(message);
        }
    }
    ensure!(
        own.is_empty(),
        "`journalctl -u {SERVICE} -p warning` after a normal start and good reloads:\n{}",
        own.join("\n")
    );
    let all =
        w.c.run(&["journalctl", "--no-pager", "-q", "-u", SERVICE, "-o", "cat"])?;
    let mut detail = format!(
        "nothing of lunchd's at warning or above, of {} lines in the unit's journal",
        all.lines().count()
    );
    if !systemd.is_empty() {
        detail.push_str(&format!("\nsystemd's own about the unit: {}", systemd.join("; ")));
    }
    Ok(detail)
}

/// `GET /metrics` on the metrics socket, inside.
fn scrape(c: &Container) -> anyhow::Result<String> {
    c.run(&[
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--max-time",
        "10",
        &format!("http://{METRICS_ADDR}/metrics"),
    ])
}

/// `promtool check metrics` (Debian's prometheus package, on the host) on
/// an exposition.
fn promtool_check(text: &str) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics refuses the exposition: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The samples of `name` in an exposition: (labels, value).
fn samples<'t>(text: &'t str, name: &str) -> Vec<(&'t str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name).then(|| value.parse().ok().map(|v| (labels, v)))?
        })
        .collect()
}

fn sum(text: &str, name: &str, label: &str) -> f64 {
    samples(text, name)
        .iter()
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .map(|(_, v)| v)
        .sum()
}

fn step_metrics(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let pid = main_pid(c)?;
    let before = scrape(c)?;
    promtool_check(&before)?;
    const REQUESTS: usize = 12;
    for _ in 0..REQUESTS {
        let response = open_tls(w)?.get("/healthz")?;
        ensure!(response.status == 200, "GET /healthz: status {}", response.status);
    }
    let after = scrape(c)?;
    promtool_check(&after)?;
    let https = |text: &str| sum(text, "lunchd_http_requests_total", "server=\"https\"");
    let grown = https(&after) - https(&before);
    ensure!(
        grown == REQUESTS as f64,
        "lunchd_http_requests_total{{server=\"https\"}} grew by {grown} for {REQUESTS} requests"
    );

    // Since this process started (the same PID since the activation):
    // three good reloads, the one that failed, and the good one after it.
    ensure!(main_pid(c)? == pid, "lunchd restarted during the step");
    let ok = sum(&after, "lunchd_reloads_total", "outcome=\"ok\"");
    let failed = sum(&after, "lunchd_reloads_total", "outcome=\"failed\"");
    let last = samples(&after, "lunchd_last_reload_success");
    ensure!(
        failed == 1.0 && ok == 4.0,
        "lunchd_reloads_total: ok {ok}, failed {failed}; expected 4 and 1 after the renewals"
    );
    ensure!(
        last.first().map(|(_, v)| *v) == Some(1.0),
        "lunchd_last_reload_success is {last:?} after the good reload"
    );

    // The not-after of the certificate lunchd serves, as openssl reads it.
    let (serial, _, _) = latest(w);
    let cert = format!("/etc/letsencrypt/live/{}/cert.pem", w.domain);
    let not_after: f64 = c
        .sh(&format!(
            "date -d \"$(openssl x509 -noout -enddate -in {cert} | cut -d= -f2)\" +%s"
        ))?
        .trim()
        .parse()
        .context("reading the certificate's not-after")?;
    let gauge = samples(&after, "lunchd_certificate_not_after_timestamp_seconds");
    let normal = |s: &str| s.replace(':', "").trim_start_matches('0').to_ascii_lowercase();
    let (labels, value) = gauge
        .first()
        .with_context(|| format!("no lunchd_certificate_not_after_timestamp_seconds in:\n{after}"))?;
    let label_serial = labels
        .split(',')
        .find_map(|l| l.strip_prefix("serial=\""))
        .map(|v| v.trim_end_matches('"'))
        .unwrap_or_default();
    ensure!(
        gauge.len() == 1 && normal(label_serial) == normal(&serial) && *value == not_after,
        "lunchd_certificate_not_after_timestamp_seconds {gauge:?}; served: serial {serial}, not-after {not_after}"
    );
    Ok(format!(
        "promtool check metrics: ok ({} samples); https requests +{grown} for {REQUESTS} made; \
         reloads ok {ok}, failed {failed}, last_reload_success 1; not-after {not_after} of serial {serial}",
        after.lines().filter(|l| !l.starts_with('#')).count()
    ))
}

fn access_records(c: &Container) -> anyhow::Result<Vec<String>> {
    Ok(c.run(&["cat", ACCESS_LOG])?.lines().map(str::to_owned).collect())
}

fn step_access_log(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    // What earlier steps' requests wrote reaches the file within 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let before = access_records(c)?.len();
    const REQUESTS: usize = 7;
    for _ in 0..REQUESTS {
        ensure!(open_tls(w)?.get("/api/today")?.status == 200, "GET /api/today failed");
    }
    // The writer takes the lines to the file every 100 ms.
    let records = wait_for("the access log records", Duration::from_secs(5), || {
        let now = access_records(c)?;
        Ok((now.len() >= before + REQUESTS).then_some(now))
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let records = access_records(c).unwrap_or(records);
    let new = &records[before..];
    ensure!(
        new.len() == REQUESTS,
        "{} records for {REQUESTS} requests:\n{}",
        new.len(),
        new.join("\n")
    );
    for record in new {
        let fields: Vec<&str> = record.split(' ').collect();
        ensure!(
            fields.len() == 9 && fields[2] == w.domain && fields[5] == "\"/api/today\"" && fields[6] == "200",
            "not a record of GET /api/today for {}: {record:?}",
            w.domain
        );
    }
    // And under load: one record per answered request.
    let before = access_records(c)?.len();
    let (load, ()) = under_load(w, || Ok(()))?;
    ensure!(
        load.failed.is_empty() && load.refused == 0,
        "the load failed: {:?}",
        load.failed
    );
    let after = wait_for("the records of the load", Duration::from_secs(5), || {
        let now = access_records(c)?.len();
        Ok((now >= before + load.answered).then_some(now))
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let after = access_records(c)?.len().max(after);
    ensure!(
        after - before == load.answered,
        "{} records for {} requests answered under load",
        after - before,
        load.answered
    );
    Ok(format!(
        "{REQUESTS} requests, {REQUESTS} records, e.g. {:?}; under load {} requests, {} records",
        new[0],
        load.answered,
        after - before
    ))
}

fn step_fifth(w: &World<'_>) -> anyhow::Result<String> {
    const DAY: u64 = 86_400;
    let c = w.c;
    let dir = c.root().join("etc/letsencrypt/live").join(w.domain);
    let files = ["privkey.pem", "fullchain.pem"];
    let links: Vec<PathBuf> = files
        .iter()
        .map(|f| std::fs::read_link(dir.join(f)).with_context(|| format!("certbot's {f} is not a link")))
        .collect::<anyhow::Result<_>>()?;
    // A ten-day certificate with two days left: a fifth of its lifetime,
    // under the third where certbot renews, above the error thresholds (a
    // tenth, 24 hours).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let at = |secs: u64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs);
    let ca = lunch_testkit::TestCa::try_new()?;
    let leaf = ca.try_issue_with(&[w.domain], 0x5f, |p| {
        p.not_before = at(now - 8 * DAY);
        p.not_after = at(now + 2 * DAY);
    })?;
    let restore = || -> anyhow::Result<()> {
        for (f, link) in files.iter().zip(&links) {
            let path = dir.join(f);
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(link, &path)?;
        }
        let old = main_pid(c)?;
        c.run(&["systemctl", "restart", SERVICE])?;
        wait_active(c, Some(old))?;
        Ok(())
    };
    let cursor = c.run(&["journalctl", "--no-pager", "-n", "0", "--show-cursor", "-q"])?;
    let cursor = cursor
        .lines()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .context("journalctl printed no cursor")?
        .trim()
        .to_owned();
    let outcome = (|| -> anyhow::Result<String> {
        for (f, pem) in files.iter().zip([&leaf.key_pem, &leaf.chain_pem]) {
            let path = dir.join(f);
            std::fs::remove_file(&path)?;
            write(&path, pem.as_bytes(), 0o600)?;
        }
        let old = main_pid(c)?;
        c.run(&["systemctl", "restart", SERVICE])?;
        let new = wait_active(c, Some(old))?;
        // lunchd's own records, of the new process.
        let after = format!("_PID={new}");
        let warning = wait_for("the warning", Duration::from_secs(10), || {
            let out = c.run(&["journalctl", "--no-pager", "-q", "-p", "warning", "-o", "cat", &after])?;
            Ok((!out.trim().is_empty()).then_some(out))
        })
        .with_context(|| {
            let all = c
                .run(&[
                    "journalctl",
                    "--no-pager",
                    "-q",
                    "-u",
                    SERVICE,
                    "-o",
                    "verbose",
                    "--after-cursor",
                    &cursor,
                ])
                .unwrap_or_default();
            format!(
                "PID {new}, STATUS={}; the journal since the restart:\n{all}",
                show(c, "StatusText").unwrap_or_default()
            )
        })?;
        let errors = c.run(&["journalctl", "--no-pager", "-q", "-p", "err", "-o", "cat", &after])?;
        ensure!(
            errors.trim().is_empty(),
            "two days of ten left is a warning, not an error: {errors}"
        );
        let line = warning.lines().next().unwrap_or_default().to_owned();
        ensure!(
            line.contains("fullchain.pem"),
            "the warning does not name the certificate file: {line}"
        );
        // The operator's command finds it.
        let unit = c.run(&[
            "journalctl",
            "--no-pager",
            "-q",
            "-u",
            SERVICE,
            "-p",
            "warning",
            "-o",
            "cat",
        ])?;
        ensure!(
            unit.lines().any(|l| l == line),
            "`journalctl -u {SERVICE} -p warning` does not show it:\n{unit}"
        );
        let status = show(c, "StatusText")?;
        Ok(format!("PID {new}: {line}\nSTATUS={status}"))
    })();
    let restored = restore();
    let detail = outcome?;
    restored.context("putting certbot's certificate back")?;
    let (good, _, _) = latest(w);
    let serial = served_serial(w)?;
    ensure!(serial == good, "serving {serial} after the restore, not {good}");
    Ok(format!("{detail}\nthen certbot's {good} served again"))
}
