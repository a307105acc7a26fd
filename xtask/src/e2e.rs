//! `cargo xtask e2e`: the whole deployment under a real systemd.
//!
//! Boots the host's systemd as PID 1 in `systemd-nspawn`, installs lunchd
//! into it with `cargo xtask install-units` exactly as docs/deploy.md tells
//! a user to, with a certificate from a test CA laid out as certbot lays it
//! out, and walks the deployment story step by step, asserting each. Every
//! client runs in the container's network namespace. The container, its
//! cgroups and the staging directory are removed afterwards, also when a
//! step fails or the run is interrupted.

mod client;
mod container;
mod pki;
mod steps;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};

use self::container::{Boot, Container};
use crate::system::on_path;

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The domain the test certificate is issued for.
    #[arg(long, default_value = "lunchd.test")]
    domain: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    preflight()?;
    catch_interrupts();
    let devices = device_modes();
    if container::remove_leftovers()? {
        println!("e2e: removed the leftovers of an interrupted earlier run");
    }
    let staging = crate::project_root().join("target/e2e");
    remove_staging(&staging)?;
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = run_in(&args, &staging);
    let cleanup = remove_staging(&staging);
    let after = device_modes();
    let outcome = result.and(cleanup);
    if devices != after {
        bail!("device nodes changed during the run: before {devices:?}, after {after:?}");
    }
    if let Some(leftover) = leftover_mounts(&staging) {
        bail!("a mount was left behind: {leftover}");
    }
    println!("e2e: {:.1} s in total", started.elapsed().as_secs_f64());
    outcome
}

fn run_in(args: &Args, staging: &Path) -> anyhow::Result<()> {
    let destdir = staging.join("root");
    let t = Instant::now();
    println!(
        "e2e: cargo xtask install-units --destdir {} --domain {}",
        destdir.display(),
        args.domain
    );
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let status = Command::new(exe)
        .arg("install-units")
        .arg("--destdir")
        .arg(&destdir)
        .arg("--domain")
        .arg(&args.domain)
        .status()
        .context("running install-units")?;
    if !status.success() {
        bail!("install-units failed ({status})");
    }
    println!("e2e: installed in {:.1} s", t.elapsed().as_secs_f64());

    let usr_local = destdir.join("usr/local");
    std::fs::create_dir_all(&usr_local)?;
    let t = Instant::now();
    let container = Container::boot(&Boot {
        usr_local: &usr_local,
        log: &staging.join("console.log"),
    })?;
    let version = container.run(&["systemctl", "show", "-P", "Version"])?;
    println!(
        "e2e: booted systemd {} as PID 1 in {:.1} s (host PID {})",
        version.trim(),
        t.elapsed().as_secs_f64(),
        container.pid1()
    );
    let outcome = steps::walk(&container, &destdir, &args.domain);
    let shutdown = container.shut_down();
    println!("e2e: container powered off and removed");
    match (outcome, shutdown) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
    }
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

/// Why the run cannot happen here, or the missing package installed.
fn preflight() -> anyhow::Result<()> {
    if !crate::system::is_root() {
        bail!("the e2e run boots a container and must run as root; run it with sudo (CI runs it as root)");
    }
    if !Path::new("/usr/lib/systemd/systemd").exists() {
        bail!("no systemd in /usr/lib/systemd/systemd to boot; install the `systemd` package");
    }
    if !on_path("systemd-nspawn") {
        crate::system::apt_install("e2e", &["systemd-container"])?;
        if !on_path("systemd-nspawn") {
            bail!("installing systemd-container left no systemd-nspawn; install it by hand");
        }
    }
    for tool in ["unshare", "nsenter", "timeout", "setpriv", "curl"] {
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
