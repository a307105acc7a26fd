//! `cargo xtask e2e`: the whole deployment under real systemd, of three
//! generations.
//!
//! Each generation boots systemd as PID 1 in `systemd-nspawn`: 252 is the
//! Debian 12 host's own `/usr`; 257 and 262 are Debian 13 (trixie) and
//! testing (forky) trees made with debootstrap and cached under
//! `target/e2e-trees/` (see [`tree`]). Inside, `cargo xtask install-units`
//! installs lunchd as a user would on that machine (so it detects that
//! systemd's version itself), pebble serves as the ACME CA, certbot gets
//! and renews the certificate with the commands of docs/deploy.md, and the
//! deployment story is walked step by step, asserting each. Every client
//! runs in the container's network namespace. The container, its cgroups
//! and the staging directory are removed afterwards, also when a step
//! fails or the run is interrupted.

mod acme;
mod client;
mod cluster;
mod container;
mod h3client;
mod steps;
pub(crate) mod tree;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};

use self::container::{Boot, Container, Root};
use crate::system::on_path;

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The systemd generation to run under: 252 (the Debian 12 host's own),
    /// 257 (a Debian 13 tree), 262 (a Debian testing tree), or all.
    #[arg(long, value_name = "VERSION", default_value = "all", value_parser = ["252", "257", "262", "all"])]
    systemd: String,
    /// The domain the certificate is issued for.
    #[arg(long, default_value = "lunchd.test")]
    domain: String,
    /// The Debian mirror debootstrap uses [default: the one this host's apt
    /// uses].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Instead: three lunchd nodes (systemd 252 containers) behind HAProxy
    /// on a private network of network namespaces (see docs/scale-out.md).
    #[arg(long)]
    cluster: bool,
}

/// A systemd generation the e2e proves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Generation {
    /// The systemd version it boots.
    pub(crate) version: u32,
    /// The Debian suite of its tree; `None`: the host's own `/usr`.
    pub(crate) suite: Option<&'static str>,
}

/// Oldest first: the host's, Debian 13's, Debian testing's.
pub(crate) const GENERATIONS: [Generation; 3] = [
    Generation {
        version: 252,
        suite: None,
    },
    Generation {
        version: 257,
        suite: Some("trixie"),
    },
    Generation {
        version: 262,
        suite: Some("forky"),
    },
];

impl Generation {
    fn name(&self) -> String {
        match self.suite {
            None => format!("systemd {} (the host's /usr)", self.version),
            Some(suite) => format!("systemd {} ({suite} tree)", self.version),
        }
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.cluster {
        return cluster::run(&args);
    }
    let started = Instant::now();
    let generations: Vec<Generation> = GENERATIONS
        .iter()
        .copied()
        .filter(|g| args.systemd == "all" || args.systemd == g.version.to_string())
        .collect();
    preflight(&generations)?;
    catch_interrupts();
    let devices = device_modes();
    if container::remove_leftovers()? {
        println!("e2e: removed the leftovers of an interrupted earlier run");
    }
    let root = crate::project_root();
    let staging = root.join("target/e2e");
    remove_staging(&staging)?;
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let t = Instant::now();
    crate::install::build_release(&root)?;
    println!(
        "e2e: release build of lunchd ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mirror = match (&args.mirror, generations.iter().any(|g| g.suite.is_some())) {
        (Some(m), _) => m.clone(),
        (None, true) => tree::host_mirror()?,
        (None, false) => String::new(),
    };
    let cache = root.join("target/e2e-trees");
    let reports = std::thread::scope(|scope| {
        // The trees are built while the host generation runs.
        let mut builds = Vec::new();
        for g in &generations {
            if let Some(suite) = g.suite {
                let (cache, mirror) = (&cache, &mirror);
                builds.push((g.version, scope.spawn(move || tree::ensure(cache, suite, mirror))));
            }
        }
        let mut reports = Vec::new();
        for g in &generations {
            if interrupted() {
                break;
            }
            let t = Instant::now();
            let tree = match g.suite {
                None => None,
                Some(_) => {
                    let handle = builds
                        .iter()
                        .position(|(v, _)| *v == g.version)
                        .map(|i| builds.swap_remove(i).1);
                    let built = handle
                        .context("no tree build")
                        .and_then(|h| h.join().map_err(|_| anyhow::anyhow!("the tree build panicked"))?);
                    match built {
                        Ok(tree) => Some(tree),
                        Err(e) => {
                            reports.push((*g, steps::Report::default(), Err(e), t.elapsed().as_secs_f64()));
                            continue;
                        }
                    }
                }
            };
            println!("\ne2e: ==== {} ====", g.name());
            let mut report = steps::Report::default();
            if let Some(tree) = &tree {
                report.tree = if tree.built {
                    format!("built in {:.0} s", tree.seconds)
                } else {
                    "cached".to_owned()
                };
            }
            let outcome = run_generation(
                &args,
                g,
                tree.as_ref(),
                &staging.join(g.version.to_string()),
                &mut report,
            );
            reports.push((*g, report, outcome, t.elapsed().as_secs_f64()));
        }
        for (_, handle) in builds {
            let _ = handle.join();
        }
        reports
    });

    let cleanup = remove_staging(&staging);
    let after = device_modes();
    println!("\ne2e: ==== summary ====");
    let mut failed = Vec::new();
    for (g, report, outcome, seconds) in &reports {
        println!(
            "e2e: {}: {} in {seconds:.0} s",
            g.name(),
            if outcome.is_ok() { "PASS" } else { "FAIL" }
        );
        for line in report.summary() {
            println!("e2e:     {line}");
        }
        if let Err(e) = outcome {
            println!("e2e:     {e:#}");
            failed.push(g.version.to_string());
        }
    }
    println!("e2e: {:.1} s in total", started.elapsed().as_secs_f64());
    if devices != after {
        bail!("device nodes changed during the run: before {devices:?}, after {after:?}");
    }
    if let Some(leftover) = leftover_mounts(&staging) {
        bail!("a mount was left behind: {leftover}");
    }
    cleanup?;
    if reports.len() < generations.len() {
        bail!("interrupted before every generation ran");
    }
    if !failed.is_empty() {
        bail!("the e2e failed under systemd {}", failed.join(", "));
    }
    Ok(())
}

/// One generation: boot, install, walk the steps, power off.
fn run_generation(
    args: &Args,
    g: &Generation,
    tree: Option<&tree::Tree>,
    staging: &Path,
    report: &mut steps::Report,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(staging).with_context(|| format!("creating {}", staging.display()))?;
    let usr_local = staging.join("usr-local");
    std::fs::create_dir_all(&usr_local)?;
    let root = match tree {
        Some(tree) => Root::Tree(&tree.dir),
        None => Root::Host { usr_local: &usr_local },
    };
    let binds = workspace_binds()?;
    let t = Instant::now();
    let container = Container::boot(&Boot {
        root,
        binds: &binds,
        log: &staging.join("console.log"),
        machine: container::MACHINE,
        netns: None,
    })?;
    let version = container
        .run(&["systemctl", "show", "-P", "Version"])?
        .trim()
        .to_owned();
    println!(
        "e2e: booted systemd {version} as PID 1 in {:.1} s (host PID {})",
        t.elapsed().as_secs_f64(),
        container.pid1()
    );
    report.systemd = version.clone();
    let major: u32 = version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    let outcome = if major == g.version {
        steps::walk(&container, &args.domain, major, report)
    } else {
        Err(anyhow::anyhow!(
            "this is systemd {version}, not {}{}",
            g.version,
            if g.suite.is_none() {
                "; the 252 generation boots the host's own systemd, which must be Debian 12's"
            } else {
                ""
            }
        ))
    };
    let shutdown = container.shut_down();
    println!("e2e: container powered off and removed");
    match (outcome, shutdown) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
    }
}

/// The directories install-units needs inside, bound read-only at their
/// own paths: the workspace (deploy/, the xtask binary, the release
/// build) and a target directory elsewhere.
fn workspace_binds() -> anyhow::Result<Vec<PathBuf>> {
    let root = crate::project_root();
    let mut binds = vec![root.clone()];
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    for dir in [exe.parent().map(Path::to_path_buf), target].into_iter().flatten() {
        if !binds.iter().any(|b| dir.starts_with(b)) {
            binds.push(dir);
        }
    }
    Ok(binds)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (or SIGTERM) asked the run to stop: steps and waits end
/// early, and the usual teardown still runs.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Turns SIGINT and SIGTERM into [`interrupted`] instead of an exit that
/// would skip the cleanup. (systemd-nspawn, in the same process group,
/// powers the container off on the same Ctrl-C.)
fn catch_interrupts() {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("e2e: cannot watch for Ctrl-C ({e}); an interrupted run is cleaned up by the next one");
            return;
        }
    };
    std::thread::spawn(move || {
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            INTERRUPTED.store(true, Ordering::Relaxed);
            eprintln!("\ne2e: interrupted; stopping and cleaning up");
        });
    });
}

/// Why the run cannot happen here; installs the missing packages.
fn preflight(generations: &[Generation]) -> anyhow::Result<()> {
    if !crate::system::is_root() {
        bail!("the e2e run boots a container and must run as root; run it with sudo (CI runs it as root)");
    }
    if !Path::new("/usr/lib/systemd/systemd").exists() {
        bail!("no systemd in /usr/lib/systemd/systemd to boot; install the `systemd` package");
    }
    // (tool, package): nspawn, and promtool that checks the metrics, always;
    // certbot and pebble on the host for the generation that boots the
    // host's /usr; debootstrap for trees.
    let mut needed = vec![("systemd-nspawn", "systemd-container"), ("promtool", "prometheus")];
    if generations.iter().any(|g| g.suite.is_none()) {
        needed.extend([("certbot", "certbot"), ("pebble", "pebble")]);
    }
    if generations.iter().any(|g| g.suite.is_some()) {
        needed.push(("debootstrap", "debootstrap"));
    }
    let missing: Vec<&str> = needed.iter().filter(|(t, _)| !on_path(t)).map(|(_, p)| *p).collect();
    if !missing.is_empty() {
        if crate::system::apt_install("e2e", &missing).is_err() {
            // A fresh machine may have no package lists yet.
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            crate::system::apt_install("e2e", &missing)?;
        }
        if let Some((tool, _)) = needed.iter().find(|(t, _)| !on_path(t)) {
            bail!("installing {} left no `{tool}`; install it by hand", missing.join(" "));
        }
    }
    for tool in ["unshare", "nsenter", "timeout", "setpriv", "curl", "chroot"] {
        if !on_path(tool) {
            bail!("`{tool}` is missing; install util-linux, coreutils and curl");
        }
    }
    let curl = Command::new("curl").arg("--version").output()?;
    if !String::from_utf8_lossy(&curl.stdout).contains("HTTP2") {
        bail!("this curl has no HTTP/2 support; install Debian's curl (built with nghttp2)");
    }
    if !Path::new("/sys/fs/cgroup/cgroup.procs").exists() && !Path::new("/sys/fs/cgroup/unified").exists() {
        bail!("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified; systemd-nspawn needs one");
    }
    Ok(())
}

fn remove_staging(staging: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", staging.display()))
        }
        _ => Ok(()),
    }
}

/// Mode and owner of the host's device nodes a booting container could
/// touch.
fn device_modes() -> Vec<(PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    ["/dev/null", "/dev/zero", "/dev/tty", "/dev/console", "/dev/ptmx"]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| (PathBuf::from(p), m.mode(), m.uid())))
        .collect()
}

/// A host mount that mentions the container or the staging directory.
fn leftover_mounts(staging: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let staging = staging.display().to_string();
    mounts
        .lines()
        .find(|l| l.contains(container::MACHINE) || l.contains(&staging))
        .map(str::to_owned)
}
