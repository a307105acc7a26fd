//! A real systemd booted as PID 1 in `systemd-nspawn`, and everything that
//! takes to undo.
//!
//! Two kinds of root: the host's own `/usr` read-only on an empty tmpfs
//! root (`--volatile=yes`, systemd 252 on the Debian 12 host), or a
//! debootstrap'd tree of a newer Debian under a tmpfs overlay
//! (`--volatile=overlay`, which leaves the cached tree as it was). Either
//! way the container has its own network namespace, so ports 80 and 443
//! inside clash with nothing, and it is driven with `nsenter` because there
//! is no host bus for `systemctl -M`. [`Container`] is a guard: dropping it
//! powers the container off and removes what the boot created (the cgroup
//! directories; the tmpfs that nspawn needs on `/run/systemd` lives in a
//! private mount namespace and disappears with it), also after a failure.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The machine name, also the name of the cgroup directories; the
/// cluster's machines are named after it with a suffix (`lunchd-e2e-n1`).
pub(crate) const MACHINE: &str = "lunchd-e2e";

/// How long any one command inside the container may take.
const COMMAND_TIMEOUT_SECS: u32 = 30;

/// The root file system a container boots.
pub(crate) enum Root<'a> {
    /// The host's `/usr` on an empty tmpfs root, with this host directory
    /// bound (writable) over `/usr/local`, where install-units puts the
    /// binary.
    Host { usr_local: &'a Path },
    /// A root tree, under a tmpfs overlay that disappears with the
    /// container.
    Tree(&'a Path),
}

/// What to boot.
pub(crate) struct Boot<'a> {
    pub(crate) root: Root<'a>,
    /// Host directories bound read-only at the same path inside (the
    /// workspace, so install-units can run inside).
    pub(crate) binds: &'a [PathBuf],
    /// Where nspawn's console output goes.
    pub(crate) log: &'a Path,
    /// The machine name ([`MACHINE`] or one beginning with it).
    pub(crate) machine: &'a str,
    /// A network namespace to join (`/run/netns/NAME`); `None`: a private
    /// one with only loopback.
    pub(crate) netns: Option<&'a Path>,
}

/// A booted container. Dropping it tears it down.
pub(crate) struct Container {
    nspawn: Option<Child>,
    pid1: u32,
    cgroups: Vec<PathBuf>,
}

/// The cgroup directories the nspawn process of `machine` is put in: one
/// per mounted hierarchy that systemd uses (the unified one, and the named
/// `systemd` one on a hybrid host).
fn cgroup_dirs(machine: &str) -> Vec<PathBuf> {
    hierarchies().into_iter().map(|h| h.join(machine)).collect()
}

fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    ["unified", "systemd"]
        .iter()
        .map(|h| root.join(h))
        .filter(|h| h.join("cgroup.procs").exists())
        .collect()
}

/// The directory whose `cgroup.kill` ends every process of the container.
fn unified_dir(dirs: &[PathBuf]) -> Option<&PathBuf> {
    dirs.iter().find(|d| d.join("cgroup.kill").exists())
}

/// Removes what an interrupted earlier run left: processes in our cgroup
/// and the cgroup directories. Returns whether there was anything.
pub(crate) fn remove_leftovers() -> anyhow::Result<bool> {
    let dirs: Vec<PathBuf> = hierarchies()
        .iter()
        .filter_map(|h| std::fs::read_dir(h).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name == MACHINE || name.starts_with(&format!("{MACHINE}-"))
        })
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if dirs.is_empty() {
        return Ok(false);
    }
    kill_all(&dirs);
    for dir in &dirs {
        remove_cgroup_tree(dir)?;
    }
    Ok(true)
}

/// Ends every process in the cgroup trees, and waits (bounded) until they
/// are gone.
fn kill_all(dirs: &[PathBuf]) {
    if let Some(dir) = unified_dir(dirs) {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pids: Vec<String> = dirs.iter().flat_map(|d| procs_in_tree(d)).collect();
        if pids.is_empty() {
            return;
        }
        // A v1-only host has no cgroup.kill: signal one by one.
        for pid in &pids {
            let _ = Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn procs_in_tree(dir: &Path) -> Vec<String> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(procs.lines().map(str::to_owned));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    pids
}

/// Removes a cgroup directory and its children, deepest first. Empty
/// cgroups can take a moment to become removable after their last process.
fn remove_cgroup_tree(dir: &Path) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        all.push(d);
    }
    // Parents come before their children in `all`.
    for d in all.iter().rev() {
        let mut attempt = 0;
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) if attempt < 50 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", d.display())),
            }
        }
    }
    Ok(())
}

impl Container {
    /// Boots the container and waits until its systemd reports `running`.
    pub(crate) fn boot(boot: &Boot<'_>) -> anyhow::Result<Container> {
        let cgroups = cgroup_dirs(boot.machine);
        if cgroups.is_empty() {
            bail!("no cgroup hierarchy under /sys/fs/cgroup; systemd-nspawn needs cgroups mounted");
        }
        let mut container = Container {
            nspawn: None,
            pid1: 0,
            cgroups: Vec::new(),
        };
        for dir in &cgroups {
            std::fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
            container.cgroups.push(dir.clone());
        }
        let log = File::create(boot.log).with_context(|| format!("creating {}", boot.log.display()))?;
        // In a private mount namespace: put the nspawn process in our
        // cgroups, give it a tmpfs /run/systemd (it refuses to clean its
        // propagation directory on a disk file system, and this way nothing
        // it creates there outlives it), then become nspawn.
        let script = r#"set -e
for d in $E2E_CGROUPS; do echo $$ > "$d/cgroup.procs"; done
mount -t tmpfs -o mode=0755,size=16m lunchd-e2e /run/systemd
exec systemd-nspawn "$@""#;
        let cgroup_list = cgroups
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let mut nspawn = Command::new("unshare");
        nspawn.args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]);
        match boot.root {
            Root::Host { usr_local } => {
                nspawn
                    .arg("--directory=/")
                    .arg("--volatile=yes")
                    // The tmpfs /etc is empty; nss-systemd must be listed
                    // for DynamicUser= names to resolve.
                    .arg("--bind-ro=/etc/nsswitch.conf")
                    .arg(format!("--bind={}:/usr/local", usr_local.display()));
            }
            Root::Tree(dir) => {
                nspawn
                    .arg(format!("--directory={}", dir.display()))
                    .arg("--volatile=overlay");
            }
        }
        for dir in boot.binds {
            nspawn.arg(format!("--bind-ro={}", dir.display()));
        }
        let child = nspawn
            .arg("--boot")
            .arg(format!("--machine={}", boot.machine))
            // There is no host bus or machined to register with.
            .args(["--register=no", "--keep-unit"])
            .arg("--console=passive")
            .arg(match boot.netns {
                None => "--private-network".to_owned(),
                Some(path) => format!("--network-namespace-path={}", path.display()),
            })
            // Lets the container's systemd attach the cgroup BPF programs
            // that enforce IPAddressDeny=.
            .arg("--system-call-filter=bpf")
            // To PID 1: an empty /etc is not a first boot (no presets, no
            // firstboot wizard).
            .arg("systemd.condition-first-boot=no")
            .env("E2E_CGROUPS", cgroup_list)
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting unshare + systemd-nspawn")?;
        let nspawn_pid = child.id();
        container.nspawn = Some(child);

        let deadline = Instant::now() + Duration::from_secs(15);
        container.pid1 = loop {
            if let Some(pid) = container_init(nspawn_pid) {
                break pid;
            }
            if let Some(status) = container.nspawn.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "systemd-nspawn exited ({status}) before the container started:\n{}",
                    std::fs::read_to_string(boot.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the container's PID 1 did not appear within 15 s:\n{}",
                    std::fs::read_to_string(boot.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // PID 1 answers on its private bus once it has set itself up.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = container.output(&["systemctl", "show", "-P", "Version"])?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the container's systemd does not answer:\n{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(boot.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = container.output(&["systemctl", "is-system-running", "--wait"])?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state != "running" {
            let failed = container
                .sh("systemctl --failed --no-legend --no-pager; journalctl -b -p warning --no-pager | tail -n 30")?;
            bail!("the container's system is `{state}`, not `running`:\n{failed}");
        }
        Ok(container)
    }

    /// The container's PID 1 as the host sees it.
    pub(crate) fn pid1(&self) -> u32 {
        self.pid1
    }

    /// The container's root directory, seen from the host.
    pub(crate) fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid1))
    }

    /// `argv` inside the container (all its namespaces), bounded in time.
    pub(crate) fn command(&self, argv: &[&str]) -> Command {
        self.command_within(COMMAND_TIMEOUT_SECS, argv)
    }

    /// `argv` inside the container, killed after `secs` seconds.
    pub(crate) fn command_within(&self, secs: u32, argv: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=2", &secs.to_string(), "nsenter"])
            .arg(format!("--target={}", self.pid1))
            .args(["--all", "--"])
            .args(argv)
            .stdin(Stdio::null())
            // What a root shell inside would have, not this process's
            // environment (cargo's variables, CA bundles of the host).
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8");
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            // install-units inside finds the release build there.
            cmd.env("CARGO_TARGET_DIR", target);
        }
        cmd
    }

    /// Runs `argv` inside and returns its output, whatever its status.
    pub(crate) fn output(&self, argv: &[&str]) -> anyhow::Result<Output> {
        self.command(argv)
            .output()
            .with_context(|| format!("running `{}` in the container", argv.join(" ")))
    }

    /// Runs `argv` inside; fails unless it succeeds. Returns stdout.
    pub(crate) fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        self.run_within(COMMAND_TIMEOUT_SECS, argv)
    }

    /// [`Container::run`] with a time limit of `secs` seconds.
    pub(crate) fn run_within(&self, secs: u32, argv: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command_within(secs, argv)
            .output()
            .with_context(|| format!("running `{}` in the container", argv.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}{}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell script inside; fails unless it succeeds. Returns stdout.
    pub(crate) fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.run(&["sh", "-c", script])
    }

    /// Runs `f` on a thread that has joined the container's network
    /// namespace: sockets it creates live there (and stay there when handed
    /// back).
    pub(crate) fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(Path::new(&format!("/proc/{}/ns/net", self.pid1)), f)
    }

    /// Powers the container off and removes what the boot created; fails
    /// naming what could not be cleaned up.
    pub(crate) fn shut_down(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if let Some(mut child) = self.nspawn.take() {
            if matches!(child.try_wait(), Ok(None)) && self.pid1 != 0 {
                let _ = self
                    .command(&["systemctl", "poweroff", "--no-block"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                problems.push("the container did not power off within 15 s; killed it".to_owned());
                kill_all(&self.cgroups);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !procs_in_tree_all(&self.cgroups).is_empty() {
            kill_all(&self.cgroups);
        }
        for dir in std::mem::take(&mut self.cgroups) {
            if let Err(e) = remove_cgroup_tree(&dir) {
                problems.push(format!("{e:#}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("cleanup: {}", problems.join("; "))
        }
    }
}

fn procs_in_tree_all(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter().flat_map(|d| procs_in_tree(d)).collect()
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("xtask: {e:#}");
        }
    }
}

/// Runs `f` on a thread that has joined the network namespace at `ns`
/// (`/proc/PID/ns/net`, `/run/netns/NAME`).
pub(crate) fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let ns = File::open(ns).with_context(|| format!("opening the network namespace {}", ns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .context("joining a network namespace")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
    })
}

/// The host PID of the container's init: a descendant of `nspawn_pid` that
/// is PID 1 in its own PID namespace.
fn container_init(nspawn_pid: u32) -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
        };
        let ppid = field("PPid:").and_then(|v| v.first().and_then(|p| p.parse::<u32>().ok()));
        let nspid = field("NSpid:").unwrap_or_default();
        if ppid == Some(nspawn_pid) && nspid.len() >= 2 && nspid.last() == Some(&"1") {
            return Some(pid);
        }
    }
    None
}
