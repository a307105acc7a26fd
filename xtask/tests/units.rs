//! The unit files in deploy/ and what `cargo xtask install-units` makes of
//! them: the socket names are the names lunchd looks up, the units pass
//! `systemd-analyze verify`, the sandbox rates at most 0.5 in
//! `systemd-analyze security`, and each systemd version gets its units.
//!
//! These need systemd's tools (Debian package systemd); they fail, never
//! skip, where those are missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use lunch_testkit::{Checked, require_tool};

const DOMAIN: &str = "lunch.example";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key` in the unit text, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn socket_names_are_the_names_lunchd_looks_up() {
    let deploy = root().join("deploy");
    for (unit, name, port) in [
        ("lunchd-http.socket", lunch_net::sockets::HTTP, "80"),
        ("lunchd-https.socket", lunch_net::sockets::HTTPS, "443"),
    ] {
        let text = read(&deploy.join(unit));
        // One name per unit: systemd names every fd of a unit after the
        // last FileDescriptorName= in it.
        assert_eq!(values(&text, "FileDescriptorName"), [name], "{unit}");
        assert_eq!(values(&text, "ListenStream"), [port], "{unit}");
        assert_eq!(values(&text, "BindIPv6Only"), ["both"], "{unit}");
        assert_eq!(values(&text, "Service"), ["lunchd.service"], "{unit}");
        assert_eq!(values(&text, "WantedBy"), ["sockets.target"], "{unit}");
    }
    let service = read(&deploy.join("lunchd.service"));
    assert_eq!(values(&service, "Sockets"), ["lunchd-http.socket lunchd-https.socket"]);
    // Connections to the service's own sockets are never blocked: IP
    // filtering belongs on the service only.
    for unit in ["lunchd-http.socket", "lunchd-https.socket"] {
        assert!(!read(&deploy.join(unit)).contains("IPAddress"), "{unit}");
    }
}

/// Runs `cargo xtask ARGS` in the workspace and returns its stdout.
fn xtask(args: &[&str]) -> String {
    Command::new(support::XTASK)
        .args(args)
        .current_dir(root())
        .read_checked()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn install(destdir: &Path, version: u32) -> String {
    let lunchd = support::lunchd();
    xtask(&[
        "install-units",
        "--destdir",
        destdir.to_str().unwrap(),
        "--domain",
        DOMAIN,
        "--systemd-version",
        &version.to_string(),
        "--no-build",
        "--binary",
        lunchd.to_str().unwrap(),
    ])
}

/// Every regular file under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_units_writes_the_units_each_systemd_version_needs() {
    for version in [252, 255, 259, 260] {
        let dir = tempfile::tempdir().unwrap();
        let out = install(dir.path(), version);
        assert!(out.contains("systemd-analyze verify: ok"), "{out}");

        let mut expected = vec![
            "etc/letsencrypt/renewal-hooks/deploy/lunchd",
            "etc/lunchd/lunchd.toml",
            "etc/systemd/system/lunchd-http.socket",
            "etc/systemd/system/lunchd-https.socket",
            "etc/systemd/system/lunchd.service",
            "usr/local/bin/lunchd",
        ];
        if version < 260 {
            expected.push("usr/local/libexec/lunchd-copy-credentials");
        }
        expected.sort();
        assert_eq!(tree(dir.path()), expected, "systemd {version}");
        assert_eq!(mode(&dir.path().join("usr/local/bin/lunchd")), 0o755);
        assert_eq!(mode(&dir.path().join("etc/systemd/system/lunchd.service")), 0o644);
        for socket in ["lunchd-http.socket", "lunchd-https.socket"] {
            assert_eq!(
                read(&dir.path().join("etc/systemd/system").join(socket)),
                read(&root().join("deploy").join(socket)),
                "{socket} is installed as it is"
            );
        }

        let service = read(&dir.path().join("etc/systemd/system/lunchd.service"));
        let live = format!("/etc/letsencrypt/live/{DOMAIN}");
        assert!(!service.contains("example.com"), "{service}");
        let exec_start = values(&service, "ExecStart");
        assert_eq!(exec_start.len(), 1, "{service}");
        let reload = values(&service, "ExecReload");
        let copy = format!("+/usr/local/libexec/lunchd-copy-credentials {live} %t/lunchd");
        match version {
            ..=258 => {
                assert_eq!(values(&service, "Type"), ["notify"], "systemd {version}");
                assert_eq!(reload, [copy.as_str(), "/bin/kill -HUP $MAINPID"], "systemd {version}");
            }
            259 => {
                assert_eq!(values(&service, "Type"), ["notify-reload"]);
                // systemd 259 runs ExecReload= first, then sends SIGHUP itself.
                assert_eq!(reload, [copy.as_str()]);
            }
            _ => {
                assert_eq!(values(&service, "Type"), ["notify-reload"]);
                assert!(reload.is_empty(), "{reload:?}");
            }
        }
        // Every version gets the key through LoadCredential= at start.
        assert_eq!(
            values(&service, "LoadCredential"),
            [
                format!("privkey.pem:{live}/privkey.pem"),
                format!("fullchain.pem:{live}/fullchain.pem")
            ]
        );
        assert!(
            exec_start[0].contains("--key=${CREDENTIALS_DIRECTORY}/privkey.pem"),
            "{service}"
        );
        assert!(exec_start[0].contains("--certificate=${CREDENTIALS_DIRECTORY}/fullchain.pem"));
        assert!(values(&service, "ExecStartPre").is_empty());
        if version >= 260 {
            assert_eq!(values(&service, "RefreshOnReload"), ["credentials"]);
            assert!(values(&service, "RuntimeDirectory").is_empty());
            assert!(!exec_start[0].contains("--reload-credentials"), "{service}");
        } else {
            // Before 260 renewed files reach lunchd through the runtime
            // directory, copied by ExecReload=+.
            assert!(values(&service, "RefreshOnReload").is_empty());
            assert_eq!(values(&service, "RuntimeDirectory"), ["lunchd"]);
            assert!(
                exec_start[0].ends_with(" --reload-credentials=${RUNTIME_DIRECTORY}"),
                "{service}"
            );
        }
        assert!(exec_start[0].starts_with("/usr/local/bin/lunchd --config=/etc/lunchd/lunchd.toml "));

        let hook = dir.path().join("etc/letsencrypt/renewal-hooks/deploy/lunchd");
        assert_eq!(mode(&hook), 0o755);
        assert!(read(&hook).contains(&format!("lineage={live}\n")));

        xtask(&["uninstall-units", "--destdir", dir.path().to_str().unwrap()]);
        assert_eq!(tree(dir.path()), Vec::<String>::new(), "uninstall-units left files");
    }
}

#[test]
fn an_edited_configuration_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/lunchd/lunchd.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "# mine\n").unwrap();
    let out = install(dir.path(), 252);
    assert!(out.contains("kept"), "{out}");
    assert_eq!(read(&config), "# mine\n");
    xtask(&["uninstall-units", "--destdir", dir.path().to_str().unwrap()]);
    assert_eq!(read(&config), "# mine\n");
}

#[test]
fn dry_run_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = xtask(&[
        "install-units",
        "--destdir",
        dir.path().to_str().unwrap(),
        "--domain",
        DOMAIN,
        "--systemd-version",
        "252",
        "--dry-run",
    ]);
    assert!(out.contains("Type=notify\n"), "{out}");
    assert!(out.contains("lunchd-copy-credentials"), "{out}");
    assert_eq!(tree(dir.path()), Vec::<String>::new());
}

/// `systemd-analyze ARGS`, as xtask runs it.
fn systemd_analyze(args: &[String]) -> std::process::Output {
    require_tool("systemd-analyze", "systemd");
    if is_root() {
        require_tool("unshare", "util-linux");
    }
    lunch_testkit::systemd_analyze(args).unwrap_or_else(|e| panic!("{e}"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The installed tree, plus this host's own units (the default
/// dependencies need sysinit.target and the like) for `--root=`.
fn analyzable_tree(version: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), version);
    let units = dir.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system/.", units.to_str().unwrap()])
        .run_checked()
        .unwrap();
    dir
}

fn host_systemd_version() -> u32 {
    let text = Command::new(require_tool("systemctl", "systemd"))
        .arg("--version")
        .read_checked()
        .unwrap();
    let word = text
        .split_whitespace()
        .nth(1)
        .expect("systemctl --version printed nothing");
    word.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn units_verify_cleanly_and_the_sandbox_rates_safe() {
    let version = host_systemd_version();
    let dir = analyzable_tree(version);
    let root = format!("--root={}", dir.path().display());

    let verify = systemd_analyze(&[
        "verify".into(),
        "--man=no".into(),
        root.clone(),
        "lunchd.service".into(),
        "lunchd-http.socket".into(),
        "lunchd-https.socket".into(),
    ]);
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{stderr}");
    assert!(!stderr.contains("lunchd"), "systemd-analyze verify warns:\n{stderr}");

    let security = systemd_analyze(&[
        "security".into(),
        "--offline=true".into(),
        "--no-pager".into(),
        root,
        "lunchd.service".into(),
    ]);
    let stdout = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&security.stderr)
    );
    let overall = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for lunchd.service: "))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}"))
        .1;
    let score: f64 = overall.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 0.5, "exposure {overall} is above 0.5:\n{stdout}");
    println!("systemd {version}: exposure {overall}");
}

/// The copy lunchd.service makes before systemd 260: from certbot's live
/// directory (symlinks into archive/) into the runtime directory, mode 0400,
/// owned by the runtime directory's owner, every time the source changes.
#[test]
fn copy_credentials_gives_the_runtime_directory_owner_a_private_copy() {
    use std::os::unix::fs::{MetadataExt, symlink};
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let live = dir.path().join("live");
    let runtime = dir.path().join("run-lunchd");
    for d in [&archive, &live, &runtime] {
        std::fs::create_dir(d).unwrap();
    }
    let owner = if is_root() {
        61234
    } else {
        std::fs::metadata(&runtime).unwrap().uid()
    };
    std::os::unix::fs::chown(&runtime, Some(owner), Some(owner)).unwrap();
    let script = root().join("deploy/lunchd-copy-credentials");
    let copy = || {
        Command::new(&script)
            .arg(&live)
            .arg(&runtime)
            .output()
            .expect("running deploy/lunchd-copy-credentials")
    };

    for generation in 1..=2 {
        for name in ["privkey", "fullchain"] {
            let target = archive.join(format!("{name}{generation}.pem"));
            std::fs::write(&target, format!("{name} {generation}\n")).unwrap();
            let link = live.join(format!("{name}.pem"));
            let _ = std::fs::remove_file(&link);
            symlink(&target, &link).unwrap();
        }
        let out = copy();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for name in ["privkey", "fullchain"] {
            let copied = runtime.join(format!("{name}.pem"));
            let meta = std::fs::symlink_metadata(&copied).unwrap();
            assert!(meta.file_type().is_file(), "{} is not a regular file", copied.display());
            assert_eq!(meta.mode() & 0o7777, 0o400);
            assert_eq!((meta.uid(), meta.gid()), (owner, owner));
            assert_eq!(read(&copied), format!("{name} {generation}\n"));
        }
    }
    let mut left: Vec<_> = std::fs::read_dir(&runtime)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["fullchain.pem", "privkey.pem"], "temporary files left behind");
    assert_eq!(
        staging_left(dir.path()),
        Vec::<String>::new(),
        "staging directories left behind"
    );

    std::fs::remove_file(live.join("fullchain.pem")).unwrap();
    let out = copy();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"), "{out:?}");
    // A failed copy leaves the last good one in place.
    assert_eq!(read(&runtime.join("fullchain.pem")), "fullchain 2\n");
}

/// The entries of `dir` named like the copy's staging directories.
fn staging_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".lunchd-credentials."))
        .collect()
}

/// The copy runs as root in a directory the service owns: what the service
/// left there is replaced, never followed. A symlink to a directory (where
/// `mv` would drop the key into, for a later user of the dynamic uid to
/// read) or to a file becomes the copy itself; a directory makes it fail.
#[test]
fn copy_credentials_replaces_symlinks_in_the_runtime_directory_and_never_follows_them() {
    use std::os::unix::fs::{MetadataExt, symlink};
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let runtime = dir.path().join("run-lunchd");
    let elsewhere = dir.path().join("var-tmp");
    for d in [&live, &runtime, &elsewhere] {
        std::fs::create_dir(d).unwrap();
    }
    for name in ["privkey", "fullchain"] {
        std::fs::write(live.join(format!("{name}.pem")), format!("{name} new\n")).unwrap();
    }
    let outside = dir.path().join("outside.pem");
    std::fs::write(&outside, "not lunchd's\n").unwrap();
    symlink(&elsewhere, runtime.join("privkey.pem")).unwrap();
    symlink(&outside, runtime.join("fullchain.pem")).unwrap();
    let script = root().join("deploy/lunchd-copy-credentials");
    let copy = || {
        Command::new(&script)
            .arg(&live)
            .arg(&runtime)
            .output()
            .expect("running deploy/lunchd-copy-credentials")
    };

    let out = copy();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "the key was moved into the directory a symlink in the runtime directory named"
    );
    assert_eq!(read(&outside), "not lunchd's\n", "the copy wrote through a symlink");
    for name in ["privkey", "fullchain"] {
        let copied = runtime.join(format!("{name}.pem"));
        let meta = std::fs::symlink_metadata(&copied).unwrap();
        assert!(meta.file_type().is_file(), "{} is not a regular file", copied.display());
        assert_eq!(meta.mode() & 0o7777, 0o400);
        assert_eq!(read(&copied), format!("{name} new\n"));
    }

    // A directory cannot be replaced by a file: the copy fails, and puts
    // nothing inside it.
    let privkey = runtime.join("privkey.pem");
    std::fs::remove_file(&privkey).unwrap();
    std::fs::create_dir(&privkey).unwrap();
    let out = copy();
    assert!(
        !out.status.success(),
        "the copy succeeded with a directory at privkey.pem"
    );
    assert_eq!(
        std::fs::read_dir(&privkey).unwrap().count(),
        0,
        "the key landed in a directory"
    );
    assert_eq!(
        staging_left(dir.path()),
        Vec::<String>::new(),
        "staging directories left behind"
    );
}

/// The certbot hook reloads lunchd for lunchd's certificate (or when run by
/// hand) and leaves it alone for other certificates on the host.
#[test]
fn certbot_hook_reloads_lunchd_for_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), 252);
    let hook = dir.path().join("etc/letsencrypt/renewal-hooks/deploy/lunchd");
    // A systemctl that records how it was called.
    let bin = dir.path().join("fake-bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("systemctl.log");
    let fake = bin.join("systemctl");
    std::fs::write(&fake, format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let run = |lineage: Option<&str>| {
        let mut command = Command::new(&hook);
        command.env("PATH", &path).env_remove("RENEWED_LINEAGE");
        if let Some(lineage) = lineage {
            command.env("RENEWED_LINEAGE", lineage);
        }
        let _ = std::fs::remove_file(&log);
        command.run_checked().unwrap();
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    let reload = "try-reload-or-restart lunchd.service\n";
    assert_eq!(run(Some(&format!("/etc/letsencrypt/live/{DOMAIN}"))), reload);
    assert_eq!(run(Some(&format!("/etc/letsencrypt/live/{DOMAIN}/"))), reload);
    assert_eq!(run(None), reload);
    assert_eq!(run(Some("/etc/letsencrypt/live/other.example")), "");
    assert_eq!(run(Some(&format!("/etc/letsencrypt/live/{DOMAIN}.evil"))), "");
}

/// The optional HTTP/3 socket carries the name lunchd looks up.
#[test]
fn the_quic_socket_is_a_udp_socket_named_as_lunchd_looks_it_up() {
    let text = read(&root().join("deploy/lunchd-quic.socket"));
    // One name per unit: systemd names every fd of a unit after the last
    // FileDescriptorName= in it.
    assert_eq!(values(&text, "FileDescriptorName"), [lunch_net::sockets::QUIC]);
    assert_eq!(values(&text, "ListenDatagram"), ["443"]);
    assert_eq!(values(&text, "ListenStream"), Vec::<&str>::new());
    assert_eq!(values(&text, "BindIPv6Only"), ["both"]);
    assert_eq!(values(&text, "Service"), ["lunchd.service"]);
    assert_eq!(values(&text, "WantedBy"), ["sockets.target"]);
    assert!(!text.contains("IPAddress"));
    // Without --quic the service does not name it.
    let service = read(&root().join("deploy/lunchd.service"));
    assert!(!service.contains("lunchd-quic.socket"), "{service}");
}

/// `install-units --quic` installs it and adds it to the service, whose
/// units still pass `systemd-analyze verify`.
#[test]
fn install_units_with_quic_adds_the_socket_to_the_service() {
    for version in [252, 260] {
        let dir = tempfile::tempdir().unwrap();
        let lunchd = support::lunchd();
        let out = Command::new(support::XTASK)
            .args([
                "install-units",
                "--quic",
                "--domain",
                "lunch.example",
                "--no-build",
                "--destdir",
            ])
            .arg(dir.path())
            .arg(format!("--systemd-version={version}"))
            .arg("--binary")
            .arg(&lunchd)
            .current_dir(root())
            .read_checked()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("systemd-analyze verify: ok"), "{out}");
        let units = dir.path().join("etc/systemd/system");
        assert_eq!(
            read(&units.join("lunchd-quic.socket")),
            read(&root().join("deploy/lunchd-quic.socket"))
        );
        let service = read(&units.join("lunchd.service"));
        assert_eq!(
            values(&service, "Sockets"),
            ["lunchd-http.socket lunchd-https.socket lunchd-quic.socket"]
        );
        assert_eq!(values(&service, "Wants"), ["lunchd-quic.socket"]);
        assert!(
            values(&service, "After")[0].ends_with(" lunchd-quic.socket"),
            "{service}"
        );
        // The sandbox is the same: the socket is systemd's.
        for key in ["PrivateNetwork", "RestrictAddressFamilies", "IPAddressDeny"] {
            assert_eq!(
                values(&service, key),
                values(&read(&root().join("deploy/lunchd.service")), key)
            );
        }

        let out = Command::new(support::XTASK)
            .args(["uninstall-units", "--destdir"])
            .arg(dir.path())
            .current_dir(root())
            .read_checked()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!units.join("lunchd-quic.socket").exists(), "{out}");
    }
}
