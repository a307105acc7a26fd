//! Debian root trees for the newer systemd generations, made with
//! `debootstrap --variant=minbase` and cached under `target/e2e-trees/`.
//!
//! A tree is keyed by its suite and its package list: a change to either
//! makes a new one. It is rebuilt when it is missing, incomplete (a build
//! is made in a temporary directory and renamed only once it is whole) or
//! older than [`MAX_AGE`], so security updates reach it. The container
//! boots it with `--volatile=overlay`: a run never changes the cached tree.
//! The cache only saves time; a run without it builds what it needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};

/// Rebuilt after a week.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Written last into a finished tree: when and from what it was built.
const COMPLETE: &str = ".lunchd-e2e-tree";

/// What debootstrap installs beside minbase: systemd as PID 1, the name
/// service for `DynamicUser=`, and what the steps run inside (openssl,
/// curl, ps, ss, ip).
const BASE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "libnss-systemd",
    "dbus",
    "openssl",
    "curl",
    "procps",
    "iproute2",
    "ca-certificates",
];

/// Installed with apt-get in the finished base: debootstrap cannot
/// configure certbot's Python packages itself. nginx and h2load (in
/// nghttp2-client) are for `cargo xtask bench --h3`, which runs them in
/// the forky tree: the host's have no HTTP/3.
const EXTRA: &[&str] = &["certbot", "pebble", "nginx", "nghttp2-client"];

/// Timers that would act on their own during a run (certbot's renews, apt
/// updates): masked in the tree.
///
/// nginx too: it would start at boot and take port 80 before
/// lunchd-http.socket could.
const MASKED: &[&str] = &[
    "nginx.service",
    "certbot.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
];

/// A tree ready to boot.
pub(crate) struct Tree {
    pub(crate) dir: PathBuf,
    /// Whether this run built it (rather than finding it in the cache).
    pub(crate) built: bool,
    pub(crate) seconds: f64,
}

/// The cache directory of `suite`'s tree.
fn tree_dir(cache: &Path, suite: &str) -> PathBuf {
    let key = std::iter::once(suite)
        .chain(BASE.iter().copied())
        .chain(["+"])
        .chain(EXTRA.iter().copied())
        .collect::<Vec<_>>()
        .join(",");
    cache.join(format!("{suite}-{:016x}", fnv1a(key.as_bytes())))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Why the cached tree at `dir` cannot be used, or `None` when it can.
fn unusable(dir: &Path) -> Option<String> {
    let marker = dir.join(COMPLETE);
    let Ok(meta) = fs::metadata(&marker) else {
        return Some(if dir.exists() { "incomplete" } else { "missing" }.to_owned());
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    if age > MAX_AGE {
        return Some(format!("{} days old", age.as_secs() / 86_400));
    }
    if !dir.join("usr/lib/systemd/systemd").exists() {
        return Some("without systemd".to_owned());
    }
    None
}

/// The tree of `suite` from the cache, built first when it must be. Build
/// output goes to `cache/SUITE.log`.
pub(crate) fn ensure(cache: &Path, suite: &str, mirror: &str) -> anyhow::Result<Tree> {
    let started = std::time::Instant::now();
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let dir = tree_dir(cache, suite);
    let Some(why) = unusable(&dir) else {
        return Ok(Tree {
            dir,
            built: false,
            seconds: started.elapsed().as_secs_f64(),
        });
    };
    let log_path = cache.join(format!("{suite}.log"));
    println!(
        "e2e: building the {suite} tree ({why}) with debootstrap; log in {}",
        log_path.display()
    );
    remove_other_builds(cache, suite)?;
    let building = cache.join(format!(".{suite}.building-{}", std::process::id()));
    let result = build(&building, suite, mirror, &log_path);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&building);
        let tail = fs::read_to_string(&log_path)
            .map(|l| {
                l.lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        return Err(e.context(format!(
            "building the {suite} tree; the end of {}:\n{tail}",
            log_path.display()
        )));
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing the old tree {}", dir.display()))?;
    }
    fs::rename(&building, &dir).with_context(|| format!("renaming {} to {}", building.display(), dir.display()))?;
    Ok(Tree {
        dir,
        built: true,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Removes interrupted builds and the trees of older package lists for
/// `suite`.
fn remove_other_builds(cache: &Path, suite: &str) -> anyhow::Result<()> {
    let keep = tree_dir(cache, suite);
    for entry in fs::read_dir(cache)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!(".{suite}.building-")) || name.starts_with(&format!("{suite}-"));
        if ours && entry.path() != keep && entry.path().is_dir() {
            fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn build(dir: &Path, suite: &str, mirror: &str, log_path: &Path) -> anyhow::Result<()> {
    let log = fs::File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let run = |command: &mut Command| -> anyhow::Result<()> {
        let status = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running {command:?}"))?;
        if !status.success() {
            bail!("{command:?} failed ({status})");
        }
        Ok(())
    };
    // The bookworm debootstrap has no script for suites after trixie; sid's
    // fits every current one.
    let script = "/usr/share/debootstrap/scripts/sid";
    run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", BASE.join(",")))
        .arg(suite)
        .arg(dir)
        .arg(mirror)
        .arg(script))?;
    fs::copy("/etc/resolv.conf", dir.join("etc/resolv.conf")).context("copying /etc/resolv.conf into the tree")?;
    // The mirror may be a snapshot whose Release files have expired
    // (debootstrap does not check that either).
    run(Command::new("chroot")
        .arg(dir)
        .args(["apt-get", "-o", "Acquire::Check-Valid-Until=false", "update", "-q"]))?;
    run(Command::new("chroot")
        .arg(dir)
        .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
        .args(EXTRA))?;
    run(Command::new("chroot")
        .arg(dir)
        .args(["systemctl", "mask", "--quiet"])
        .args(MASKED))?;
    run(Command::new("chroot").arg(dir).args(["apt-get", "clean"]))?;
    fs::write(
        dir.join(COMPLETE),
        format!(
            "suite {suite}\nmirror {mirror}\npackages {} {}\n",
            BASE.join(" "),
            EXTRA.join(" ")
        ),
    )?;
    Ok(())
}

/// The Debian mirror this host's apt uses (from `/etc/apt/sources.list`
/// and `/etc/apt/sources.list.d/*.sources`), for debootstrap.
pub(crate) fn host_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "sources" || e == "list") {
                texts.push(fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    for text in &texts {
        if let Some(uri) = mirror_in(text) {
            return Ok(uri);
        }
    }
    bail!("found no Debian mirror in /etc/apt/sources.list{{,.d/}}; pass --mirror URL")
}

/// The first URI of a main Debian archive (not -security) in an apt
/// sources file, in either format.
fn mirror_in(text: &str) -> Option<String> {
    let is_archive = |uri: &str| uri.trim_end_matches('/').ends_with("/debian");
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .map(str::trim)
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        if let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().find(|u| is_archive(u))) {
            return Some(uri.trim_end_matches('/').to_owned());
        }
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("deb "))
        .flat_map(str::split_whitespace)
        .find(|w| is_archive(w))
        .map(|u| u.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_either_sources_format() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_in(deb822).as_deref(), Some("http://mirror.example/debian"));
        let security_first =
            "Types: deb\nURIs: http://m.example/debian-security\n\nTypes: deb-src\nURIs: http://m.example/debian\n";
        assert_eq!(mirror_in(security_first), None);
        let one_line = "# comment\ndeb [arch=amd64] http://m.example/debian/ bookworm main\n";
        assert_eq!(mirror_in(one_line).as_deref(), Some("http://m.example/debian"));
        assert_eq!(mirror_in("deb https://packages.example/apt stable main\n"), None);
    }

    #[test]
    fn trees_are_keyed_by_suite_and_packages() {
        let cache = Path::new("/cache");
        assert_ne!(tree_dir(cache, "trixie"), tree_dir(cache, "forky"));
        assert!(tree_dir(cache, "forky").starts_with("/cache"));
        assert!(
            tree_dir(cache, "forky")
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("forky-")
        );
    }

    #[test]
    fn a_tree_without_its_marker_or_too_old_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        assert_eq!(unusable(&tree).as_deref(), Some("missing"));
        fs::create_dir_all(tree.join("usr/lib/systemd")).unwrap();
        assert_eq!(unusable(&tree).as_deref(), Some("incomplete"));
        fs::write(tree.join("usr/lib/systemd/systemd"), "").unwrap();
        fs::write(tree.join(COMPLETE), "").unwrap();
        assert_eq!(unusable(&tree), None);
        let old = SystemTime::now() - MAX_AGE - Duration::from_secs(86_400);
        fs::File::options()
            .write(true)
            .open(tree.join(COMPLETE))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(unusable(&tree).as_deref(), Some("8 days old"));
    }
}
