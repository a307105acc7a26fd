//! The deployment story, one asserted step at a time.

use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::client::{self, Load, Tls, TlsConnection};
use super::container::Container;
use super::pki::{Leaf, TestCa};

const SERVICE: &str = "lunchd.service";
const SOCKETS: [&str; 2] = ["lunchd-http.socket", "lunchd-https.socket"];
/// Where the clients inside the container find the test CA.
const CA_PATH: &str = "/root/lunchd-e2e-ca.pem";
/// docs/deploy.md, step 3: the commands that configure the ACME webroot.
const CONFIGURE_WEBROOT: &str =
    "sed -i 's|^#acme_webroot = |acme_webroot = |' /etc/lunchd/lunchd.toml && mkdir -p /var/lib/lunchd-acme";
/// systemd's range of dynamic users (`DynamicUser=`).
const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;
/// The spacing of connection attempts under load.
const LOAD_INTERVAL: Duration = Duration::from_millis(10);

/// Everything the steps share.
struct World<'a> {
    c: &'a Container,
    domain: &'a str,
    tls: Tls,
    first: Leaf,
    renewed: Leaf,
    broken: Leaf,
    /// The renewal after the broken one, delivered by the deploy hook.
    fixed: Leaf,
    webroot: PathBuf,
    /// The certbot deploy hook install-units installed, if any (path inside).
    deploy_hook: Option<PathBuf>,
}

/// Installs the test certificate and configuration, then runs every step.
/// Fails if any step failed.
pub(crate) fn walk(c: &Container, destdir: &Path, domain: &str) -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let world = World {
        c,
        domain,
        tls: Tls::new(&ca.der, domain)?,
        first: ca.issue(domain, 1)?,
        renewed: ca.issue(domain, 2)?,
        broken: ca.issue(domain, 3)?,
        fixed: ca.issue(domain, 4)?,
        webroot: PathBuf::new(),
        deploy_hook: None,
    };
    let world = prepare(world, destdir, &ca).context("preparing the container")?;

    let mut runner = Runner::default();
    runner.step(&world, "sockets start; the service does not", step_sockets);
    runner.step(
        &world,
        "first HTTPS request activates lunchd (h2 and http/1.1, test CA)",
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
        "renewal + reload: new serial, same PID, old connection alive",
        step_renewal,
    );
    runner.step(
        &world,
        "broken certificate + reload: still active, old serial, reason shown",
        step_broken,
    );
    runner.step(&world, "restart under load: zero refused, zero lost", step_restart);
    runner.step(
        &world,
        "kill -9 under load: restarted, zero refused, waiting requests answered",
        step_kill,
    );
    runner.step(
        &world,
        "systemd-analyze security: exposure <= 0.5, and the sandbox in effect",
        step_security,
    );
    runner.step(&world, "journal lines without double timestamps", step_journal);
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

/// Copies what install-units put under `destdir/etc` into the container,
/// adds the certificate (certbot's layout), the test CA and the ACME
/// webroot, and makes systemd read the units.
fn prepare<'a>(mut w: World<'a>, destdir: &Path, ca: &TestCa) -> anyhow::Result<World<'a>> {
    let root = w.c.root();
    copy_tree(&destdir.join("etc"), &root.join("etc"))?;
    install_certificate(w.c, w.domain, &w.first, 1)?;
    write(&root.join(CA_PATH.trim_start_matches('/')), ca.pem.as_bytes(), 0o644)?;

    // docs/deploy.md, step 3, verbatim: uncomment acme_webroot in the
    // installed example configuration, make the directory.
    w.c.sh(CONFIGURE_WEBROOT)?;
    let config = std::fs::read_to_string(root.join("etc/lunchd/lunchd.toml"))
        .context("install-units installed no /etc/lunchd/lunchd.toml")?;
    let table: toml::Table = config.parse().context("parsing /etc/lunchd/lunchd.toml")?;
    w.webroot = table
        .get("http")
        .and_then(|h| h.get("acme_webroot"))
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .context("after docs/deploy.md's step 3, /etc/lunchd/lunchd.toml sets no [http] acme_webroot")?;
    ensure!(
        root.join(w.webroot.strip_prefix("/").unwrap_or(&w.webroot)).is_dir(),
        "docs/deploy.md's step 3 does not create the configured webroot {}",
        w.webroot.display()
    );

    let hook = Path::new("etc/letsencrypt/renewal-hooks/deploy");
    if let Ok(entries) = std::fs::read_dir(destdir.join(hook)) {
        w.deploy_hook = entries
            .flatten()
            .map(|e| Path::new("/").join(hook).join(e.file_name()))
            .find(|p| p.to_string_lossy().contains("lunchd"));
    }
    w.c.run(&["systemctl", "daemon-reload"])?;
    Ok(w)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?;
    std::fs::create_dir_all(to)?;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let _ = std::fs::remove_file(&target);
            symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
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

/// Writes `leaf` as certbot does for the `n`th issuance: numbered files in
/// `archive/DOMAIN/`, root-only, and `live/DOMAIN/*.pem` symlinks to them,
/// each switched atomically.
fn install_certificate(c: &Container, domain: &str, leaf: &Leaf, n: u32) -> anyhow::Result<()> {
    let le = c.root().join("etc/letsencrypt");
    let archive = le.join("archive").join(domain);
    let live = le.join("live").join(domain);
    for dir in [&archive, &live] {
        std::fs::create_dir_all(dir)?;
    }
    for dir in [le.join("archive"), le.join("live")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let files = [
        ("cert", &leaf.cert_pem, 0o644),
        ("chain", &leaf.ca_pem, 0o644),
        ("fullchain", &leaf.chain_pem, 0o644),
        ("privkey", &leaf.key_pem, 0o600),
    ];
    for (name, pem, mode) in files {
        write(&archive.join(format!("{name}{n}.pem")), pem.as_bytes(), mode)?;
        let link = live.join(format!("{name}.pem"));
        let tmp = live.join(format!("{name}.pem.e2e-tmp"));
        let _ = std::fs::remove_file(&tmp);
        symlink(format!("../../archive/{domain}/{name}{n}.pem"), &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
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

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
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
    wait_for("lunchd to be active", Duration::from_secs(20), || {
        let pid = main_pid(c)?;
        Ok((is_active(c, SERVICE)? == "active" && pid != 0 && Some(pid) != old).then_some(pid))
    })
}

/// A new TLS connection to port 443 inside the container.
fn open_tls(w: &World<'_>) -> anyhow::Result<TlsConnection> {
    TlsConnection::open(&w.tls, client::connect(w.c, 443)?)
}

/// Which of our leaves a fresh handshake presents.
fn served_serial(w: &World<'_>) -> anyhow::Result<String> {
    let der = open_tls(w)?.peer_certificate().context("no peer certificate")?;
    Ok([&w.first, &w.renewed, &w.broken, &w.fixed]
        .iter()
        .find(|l| l.der == der)
        .map_or_else(|| "an unknown certificate".to_owned(), |l| l.serial.clone()))
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

fn dish_of(json: &str) -> anyhow::Result<String> {
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
    let mut argv = vec!["systemctl", "enable", "--now"];
    argv.extend(SOCKETS);
    c.run(&argv)?;
    for socket in SOCKETS {
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
    Ok(format!("ports 80 and 443 held by systemd (PID 1); {SERVICE} inactive"))
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
    let state = is_active(c, SERVICE)?;
    ensure!(state == "active", "{SERVICE} is {state} after the first request");
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
    let served = served_serial(w)?;
    ensure!(
        served == w.first.serial,
        "serving {served}, expected the installed certificate {}",
        w.first.serial
    );
    Ok(format!(
        "h2: {dish2}; http/1.1: {dish1}; certificate serial {served} verified against the test CA; HSTS: {hsts}; PID {}",
        main_pid(c)?
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
    let stat = c.run(&["stat", "--format", "%a %u", &key_arg])?;
    ensure!(
        stat.trim() == format!("400 {uid}"),
        "{key_arg}: mode and owner are `{}`, expected `400 {uid}`",
        stat.trim()
    );
    let dir_mode = c.run(&["stat", "--format", "%a", &dir])?;
    let dir_mode = u32::from_str_radix(dir_mode.trim(), 8).context("stat printed no octal mode")?;
    ensure!(dir_mode & 0o077 == 0, "{dir} has mode {dir_mode:o}: others may enter");
    ensure!(
        c.run(&["cat", &key_arg])? == w.first.key_pem,
        "{key_arg} does not hold the installed key"
    );
    Ok(format!(
        "uid {uid} ({name}, not in /etc/passwd)\n{key} as uid {uid} in lunchd's mount namespace: {}\nkey read from {key_arg} ({kind}, mode 0400, owned by uid {uid})",
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

fn step_renewal(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let pid = main_pid(c)?;
    let mut before = open_tls(w)?;
    ensure!(
        before.get("/healthz")?.status == 200,
        "no answer on the first connection"
    );
    ensure!(
        before.peer_certificate().as_deref() == Some(&w.first.der[..]),
        "not serving the first certificate before renewal"
    );
    install_certificate(c, w.domain, &w.renewed, 2)?;
    c.run(&["systemctl", "reload", SERVICE])?;
    let serial = wait_for(
        "the renewed certificate on new handshakes",
        Duration::from_secs(10),
        || {
            let s = served_serial(w)?;
            Ok((s == w.renewed.serial).then_some(s))
        },
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
    // Before systemd 260, the renewed key reached lunchd through the copy
    // root made into its runtime directory (--reload-credentials).
    let cmdline = c.run(&["cat", &format!("/proc/{pid}/cmdline")])?;
    let how = match cmdline
        .split('\0')
        .find_map(|a| a.strip_prefix("--reload-credentials="))
    {
        Some(dir) => {
            let key = format!("{dir}/privkey.pem");
            let uid = c.run(&["stat", "--format", "%u", &format!("/proc/{pid}")])?;
            let stat = c.run(&["stat", "--format", "%a %u", &key])?;
            ensure!(
                stat.trim() == format!("400 {}", uid.trim()),
                "{key}: mode and owner `{}`, expected `400 {}`",
                stat.trim(),
                uid.trim()
            );
            ensure!(
                c.run(&["cat", &key])? == w.renewed.key_pem,
                "{key} does not hold the renewed key"
            );
            format!("the renewed key reached lunchd through {key} (mode 0400, its uid)")
        }
        None => "the renewed key reached lunchd through $CREDENTIALS_DIRECTORY".to_owned(),
    };
    Ok(format!(
        "serial {} -> {serial}, PID {pid} unchanged, the earlier keep-alive connection answered {}\n{how}",
        w.first.serial,
        dish_of(&again.body)?,
    ))
}

fn step_broken(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let pid = main_pid(c)?;
    // A renewal cut short: the new certificate file ends mid-way.
    let mut broken = w.broken.clone();
    let half = broken.cert_pem.len() / 2;
    broken.cert_pem.truncate(half);
    broken.chain_pem = broken.cert_pem.clone();
    install_certificate(c, w.domain, &broken, 3)?;
    let reload = c.run(&["systemctl", "reload", SERVICE]);
    let text = wait_for("STATUS= to report the failed reload", Duration::from_secs(10), || {
        let t = show(c, "StatusText")?;
        Ok(t.contains("reload failed").then_some(t))
    });
    let state = is_active(c, SERVICE)?;
    let now = main_pid(c)?;
    let serial = served_serial(w)?;
    let status = c.output(&["systemctl", "status", "--no-pager", "--full", SERVICE])?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();

    // The next renewal succeeds, and certbot delivers it through the
    // deploy hook.
    install_certificate(c, w.domain, &w.fixed, 4)?;
    let restored = match &w.deploy_hook {
        Some(hook) => {
            let lineage = format!("/etc/letsencrypt/live/{}", w.domain);
            c.run(&[
                "env",
                &format!("RENEWED_LINEAGE={lineage}"),
                &format!("RENEWED_DOMAINS={}", w.domain),
                &hook.to_string_lossy(),
            ])
            .map(|_| format!("delivered by the deploy hook {}", hook.display()))
        }
        None => c.run(&["systemctl", "reload", SERVICE]).and_then(|_| {
            Err(anyhow::anyhow!(
                "install-units installed no certbot deploy hook in /etc/letsencrypt/renewal-hooks/deploy"
            ))
        }),
    };

    reload.context("`systemctl reload` itself must succeed; lunchd reports the problem")?;
    text?;
    ensure!(state == "active", "{SERVICE} is {state} after a failed reload");
    ensure!(now == pid, "the main PID changed from {pid} to {now}");
    ensure!(
        serial == w.renewed.serial,
        "serving {serial}, expected the previous {}",
        w.renewed.serial
    );
    let line = status
        .lines()
        .find(|l| l.contains("Status:") && l.contains("reload failed"))
        .context("`systemctl status` does not show the failed reload")?;
    ensure!(
        line.contains("fullchain.pem"),
        "the reason does not name the broken file: {line}"
    );
    let restored = restored?;
    let fixed = wait_for("the next renewal on new handshakes", Duration::from_secs(10), || {
        let s = served_serial(w)?;
        Ok((s == w.fixed.serial).then_some(s))
    })?;
    let text = show(c, "StatusText")?;
    ensure!(
        !text.contains("reload failed"),
        "STATUS= still reports the failed reload: {text}"
    );
    Ok(format!(
        "still active, PID {pid}, serial {serial}\n{}\nthe next renewal, serial {fixed}, {restored}",
        line.trim()
    ))
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

fn step_kill(w: &World<'_>) -> anyhow::Result<String> {
    let c = w.c;
    let old = main_pid(c)?;
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
    ensure!(
        score <= 0.5,
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
    Ok(format!(
        "{}\nrunning: no capabilities, no_new_privs, a seccomp filter, a network namespace with only lo",
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
