//! `install-units` and `uninstall-units`: lunchd's binary, socket and
//! service units, example configuration and certbot hook, written for the
//! installed systemd.
//!
//! The units are the templates in `deploy/`, which fit systemd 252 to 258.
//! What changes per version is small, and all of it is in [`render_service`]:
//!
//! - 259 and later: `Type=notify-reload`. From 259 systemd runs
//!   `ExecReload=` (the credential copy) *before* it sends SIGHUP; 253 to 258
//!   send the signal first, which would race the copy, so they keep
//!   `Type=notify` and an `ExecReload=` that sends SIGHUP after copying.
//! - 260 and later: `RefreshOnReload=credentials` makes `LoadCredential=`
//!   copy the files again before every reload, which replaces the reload
//!   copy into the runtime directory (and `--reload-credentials`).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use lunch_testkit::{Checked, systemd_analyze};

/// The first systemd with `Type=notify-reload` that runs `ExecReload=`
/// before sending the reload signal.
const NOTIFY_RELOAD_AFTER_EXEC_RELOAD: u32 = 259;
/// The first systemd with `RefreshOnReload=credentials`.
const REFRESH_ON_RELOAD: u32 = 260;
/// The first systemd with `ProtectControlGroups=strict` (a cgroup
/// namespace, its cgroupfs read-only) and `PrivateTmp=disconnected` (a
/// tmpfs of its own, tied to no host directory).
const NAMESPACED_CGROUPS_TMP: u32 = 257;

const TEMPLATE_PREFIX: &str = "/usr/local";
const TEMPLATE_LIVE_DIR: &str = "/etc/letsencrypt/live/example.com";
const UNIT_DIR: &str = "etc/systemd/system";
const CONFIG: &str = "etc/lunchd/lunchd.toml";
const CERTBOT_HOOK: &str = "etc/letsencrypt/renewal-hooks/deploy/lunchd";
const SOCKETS: [&str; 2] = ["lunchd-http.socket", "lunchd-https.socket"];
const SERVICE: &str = "lunchd.service";
/// The optional UDP socket for HTTP/3 (`--quic`).
const QUIC_SOCKET: &str = "lunchd-quic.socket";
/// Optional: written only with `--metrics ADDR`.
const METRICS_SOCKET: &str = "lunchd-metrics.socket";
/// The address deploy/lunchd-metrics.socket listens on as checked in.
const TEMPLATE_METRICS: &str = "127.0.0.1:9465";

/// Used when the workspace has no `deploy/lunchd.toml`: lunchd's built-in
/// defaults apply.
const PLACEHOLDER_CONFIG: &str = "# lunchd configuration: every key is optional; see docs/configuration.md.\n";

/// Arguments of install-units.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// The domain whose Let's Encrypt certificate lunchd serves: key and
    /// chain are read from /etc/letsencrypt/live/DOMAIN/.
    #[arg(long, value_name = "NAME")]
    domain: String,
    /// Install under this root instead of / (for packaging and tests):
    /// nothing is started, systemd is not told.
    #[arg(long, value_name = "DIR", default_value = "/")]
    destdir: PathBuf,
    /// Where the binary and helper go: PREFIX/bin, PREFIX/libexec.
    #[arg(long, value_name = "PATH", default_value = TEMPLATE_PREFIX)]
    prefix: PathBuf,
    /// Write units for this systemd version instead of the one
    /// `systemctl --version` reports.
    #[arg(long, value_name = "N")]
    systemd_version: Option<u32>,
    /// Print what would be written; touch nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not build; install the binary that is there.
    #[arg(long)]
    no_build: bool,
    /// The lunchd binary to install [default: target/release/lunchd].
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Skip `systemd-analyze verify`, which otherwise checks the units
    /// before anything is written.
    #[arg(long)]
    no_verify: bool,
    /// Also serve HTTP/3: install lunchd-quic.socket (UDP 443) and add it
    /// to the service's Sockets=.
    #[arg(long)]
    quic: bool,
    /// Also write lunchd-metrics.socket listening on ADDR (keep it on
    /// loopback, e.g. 127.0.0.1:9465), name it in the service's Sockets=
    /// and enable it: lunchd serves Prometheus metrics there.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// Arguments of uninstall-units.
#[derive(Debug, clap::Args)]
pub(crate) struct UninstallArgs {
    /// The root install-units wrote to.
    #[arg(long, value_name = "DIR", default_value = "/")]
    destdir: PathBuf,
    /// The prefix install-units used.
    #[arg(long, value_name = "PATH", default_value = TEMPLATE_PREFIX)]
    prefix: PathBuf,
    /// Print what would be removed; touch nothing.
    #[arg(long)]
    dry_run: bool,
}

/// One file to write: where (absolute, as the installed system sees it),
/// what, and its mode.
struct File {
    path: PathBuf,
    contents: Contents,
    mode: u32,
}

enum Contents {
    Text(String),
    Copy(PathBuf),
}

pub(crate) fn install(args: InstallArgs) -> anyhow::Result<()> {
    check_domain(&args.domain)?;
    let prefix = absolute_prefix(&args.prefix)?;
    let version = match args.systemd_version {
        Some(v) => v,
        None => installed_systemd_version()?,
    };
    let root = crate::project_root();
    let binary = args
        .binary
        .clone()
        .unwrap_or_else(|| crate::system::target_dir(&root).join("release/lunchd"));
    if !args.no_build && !args.dry_run {
        build_release(&root)?;
    }
    let mut files = plan(&root, &binary, &args.domain, &prefix, version)?;
    if args.quic {
        add_quic(&root, &mut files)?;
    }
    if let Some(addr) = args.metrics {
        add_metrics(&root, &mut files, addr)?;
    }
    let to_root = args.destdir == Path::new("/");

    println!(
        "installing lunchd for systemd {version} under {}{}",
        args.destdir.display(),
        if args.dry_run { " (dry run)" } else { "" }
    );
    if args.dry_run {
        for file in &files {
            print_file(&args.destdir, file);
        }
        return Ok(());
    }
    if !binary.is_file() {
        bail!(
            "{} does not exist; build it (cargo build --release -p lunchd) or pass --binary",
            binary.display()
        );
    }
    write_verified(&args.destdir, &files, version, !args.no_verify)?;
    if to_root {
        Command::new("systemctl").arg("daemon-reload").run_checked()?;
        let optional: Vec<&str> = [QUIC_SOCKET, METRICS_SOCKET]
            .into_iter()
            .filter(|unit| files.iter().any(|f| f.path == unit_path(unit)))
            .collect();
        if !optional.is_empty() {
            Command::new("systemctl").arg("enable").args(optional).run_checked()?;
        }
    }
    print_next_steps(&args.domain, to_root);
    Ok(())
}

pub(crate) fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let prefix = absolute_prefix(&args.prefix)?;
    let to_root = args.destdir == Path::new("/");
    let optional: Vec<&str> = [QUIC_SOCKET, METRICS_SOCKET]
        .into_iter()
        .filter(|unit| under(&args.destdir, &unit_path(unit)).exists())
        .collect();
    if to_root && !args.dry_run && Path::new("/").join(UNIT_DIR).join(SERVICE).exists() {
        let mut disable = Command::new("systemctl");
        disable
            .args(["disable", "--now"])
            .args(SOCKETS)
            .args(&optional)
            .arg(SERVICE);
        disable.run_checked()?;
    }
    let mut paths: Vec<PathBuf> = SOCKETS
        .iter()
        .chain(&optional)
        .chain([&SERVICE])
        .map(|u| unit_path(u))
        .collect();
    paths.push(prefix.join("bin/lunchd"));
    paths.push(prefix.join("libexec/lunchd-copy-credentials"));
    paths.push(Path::new("/").join(CERTBOT_HOOK));
    for path in &paths {
        let on_disk = under(&args.destdir, path);
        if !on_disk.exists() {
            continue;
        }
        println!("remove {}", on_disk.display());
        if !args.dry_run {
            fs::remove_file(&on_disk).with_context(|| format!("removing {}", on_disk.display()))?;
        }
    }
    let config = under(&args.destdir, &Path::new("/").join(CONFIG));
    if config.exists() {
        if fs::read_to_string(&config).ok().as_deref() == Some(&example_config(&crate::project_root())?) {
            println!("remove {} (unchanged)", config.display());
            if !args.dry_run {
                fs::remove_file(&config).with_context(|| format!("removing {}", config.display()))?;
                let _ = fs::remove_dir(config.parent().unwrap_or(&config));
            }
        } else {
            println!("kept {}: it was edited", config.display());
        }
    }
    if to_root && !args.dry_run {
        Command::new("systemctl").arg("daemon-reload").run_checked()?;
    }
    Ok(())
}

/// Every file install-units writes, rendered for systemd `version`.
fn plan(root: &Path, binary: &Path, domain: &str, prefix: &Path, version: u32) -> anyhow::Result<Vec<File>> {
    let deploy = root.join("deploy");
    let read = |name: &str| {
        let path = deploy.join(name);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let mut files = Vec::new();
    for socket in SOCKETS {
        files.push(File {
            path: unit_path(socket),
            contents: Contents::Text(read(socket)?),
            mode: 0o644,
        });
    }
    files.push(File {
        path: unit_path(SERVICE),
        contents: Contents::Text(render_service(&read(SERVICE)?, version, domain, prefix)?),
        mode: 0o644,
    });
    files.push(File {
        path: prefix.join("bin/lunchd"),
        contents: Contents::Copy(binary.to_path_buf()),
        mode: 0o755,
    });
    if version < REFRESH_ON_RELOAD {
        files.push(File {
            path: prefix.join("libexec/lunchd-copy-credentials"),
            contents: Contents::Copy(deploy.join("lunchd-copy-credentials")),
            mode: 0o755,
        });
    }
    files.push(File {
        path: Path::new("/").join(CONFIG),
        contents: Contents::Text(example_config(root)?),
        mode: 0o644,
    });
    files.push(File {
        path: Path::new("/").join(CERTBOT_HOOK),
        contents: Contents::Text(replace_once(
            &read("certbot-deploy-hook")?,
            TEMPLATE_LIVE_DIR,
            &live_dir(domain),
        )?),
        mode: 0o755,
    });
    Ok(files)
}

/// Adds the HTTP/3 socket to `files` and to the service (`--quic`).
fn add_quic(root: &Path, files: &mut Vec<File>) -> anyhow::Result<()> {
    let path = root.join("deploy").join(QUIC_SOCKET);
    let unit = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    add_socket(files, QUIC_SOCKET, unit)
}

/// With `--metrics ADDR`: deploy/lunchd-metrics.socket listening on
/// `addr`, added to `files` and to the service.
fn add_metrics(root: &Path, files: &mut Vec<File>, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let path = root.join("deploy").join(METRICS_SOCKET);
    let socket = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let socket = replace_once(
        &socket,
        &format!("\nListenStream={TEMPLATE_METRICS}\n"),
        &format!("\nListenStream={addr}\n"),
    )?;
    add_socket(files, METRICS_SOCKET, socket)
}

/// Adds the optional socket unit `name` (`unit`, its text) to `files`,
/// and to the service's sockets: passed (`Sockets=`), ordered after and
/// wanted (`Wants=`, not `Requires=`: lunchd serves without it, and a port
/// that cannot be bound leaves the others serving).
fn add_socket(files: &mut Vec<File>, name: &str, unit: String) -> anyhow::Result<()> {
    let service = files
        .iter_mut()
        .find(|f| f.path == unit_path(SERVICE))
        .context("install-units plans no lunchd.service")?;
    let Contents::Text(text) = &service.contents else {
        bail!("lunchd.service is not rendered text");
    };
    service.contents = Contents::Text(with_socket(text, name)?);
    files.push(File {
        path: unit_path(name),
        contents: Contents::Text(unit),
        mode: 0o644,
    });
    Ok(())
}

/// The rendered service `unit` with the socket unit `name` appended to its
/// `Sockets=` line and to the `After=` line of the other sockets, which a
/// `Wants=` line for it follows.
fn with_socket(unit: &str, name: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(unit.len() + 3 * name.len() + 8);
    let (mut sockets, mut after) = (0, 0);
    for line in unit.split_inclusive('\n') {
        let (text, end) = line.strip_suffix('\n').map_or((line, ""), |t| (t, "\n"));
        out.push_str(text);
        if text.starts_with("Sockets=") {
            out.push_str(&format!(" {name}"));
            sockets += 1;
        } else if text.starts_with("After=") && SOCKETS.iter().all(|s| text.contains(s)) {
            out.push_str(&format!(" {name}\nWants={name}"));
            after += 1;
        }
        out.push_str(end);
    }
    anyhow::ensure!(
        (sockets, after) == (1, 1),
        "lunchd.service has {sockets} Sockets= and {after} After= lines naming the sockets, expected one each"
    );
    Ok(out)
}

/// `deploy/lunchd.service` filled in for `domain` and `prefix` and adapted
/// to systemd `version`.
pub(crate) fn render_service(template: &str, version: u32, domain: &str, prefix: &Path) -> anyhow::Result<String> {
    let prefix = prefix.display().to_string();
    let live = live_dir(domain);
    let mut unit = template.to_owned();
    unit = replace_all(
        &unit,
        &format!("{TEMPLATE_PREFIX}/bin/lunchd "),
        &format!("{prefix}/bin/lunchd "),
    )?;
    if version >= REFRESH_ON_RELOAD {
        let (before, rest) = unit
            .split_once("# BEGIN credentials")
            .context("deploy/lunchd.service has no `# BEGIN credentials` line")?;
        let (_, after) = rest
            .split_once("# END credentials\n")
            .context("deploy/lunchd.service has no `# END credentials` line")?;
        let exec_start = unit
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .context("deploy/lunchd.service has no ExecStart=")?;
        let exec_start = replace_all(exec_start, " --reload-credentials=${RUNTIME_DIRECTORY}", "")?;
        unit = format!(
            "{before}# Key and chain: systemd copies them from the root-only live directory,\n\
             # readable by the dynamic user only, at start and, with\n\
             # RefreshOnReload=credentials, again before every reload.\n\
             LoadCredential=privkey.pem:{live}/privkey.pem\n\
             LoadCredential=fullchain.pem:{live}/fullchain.pem\n\
             RefreshOnReload=credentials\n\
             {exec_start}\n{after}"
        );
    } else {
        let helper = format!("{TEMPLATE_PREFIX}/libexec/lunchd-copy-credentials {TEMPLATE_LIVE_DIR} ");
        unit = replace_all(
            &unit,
            &helper,
            &format!("{prefix}/libexec/lunchd-copy-credentials {live} "),
        )?;
        unit = replace_all(&unit, &format!(":{TEMPLATE_LIVE_DIR}/"), &format!(":{live}/"))?;
    }
    if version >= NOTIFY_RELOAD_AFTER_EXEC_RELOAD {
        unit = replace_all(&unit, "\nType=notify\n", "\nType=notify-reload\n")?;
        // systemd sends SIGHUP itself, after ExecReload= (if any) succeeded.
        unit = unit.replace("ExecReload=/bin/kill -HUP $MAINPID\n", "");
    }
    if version >= NAMESPACED_CGROUPS_TMP {
        unit = replace_all(&unit, "\nProtectControlGroups=yes\n", "\nProtectControlGroups=strict\n")?;
        unit = replace_all(&unit, "\nPrivateTmp=yes\n", "\nPrivateTmp=disconnected\n")?;
    }
    if unit.contains(TEMPLATE_LIVE_DIR) && domain != "example.com" {
        bail!("deploy/lunchd.service mentions {TEMPLATE_LIVE_DIR} in a place install-units does not fill in");
    }
    Ok(format!(
        "# Written by `cargo xtask install-units` for systemd {version} from deploy/lunchd.service.\n{unit}"
    ))
}

fn replace_all(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    if !text.contains(from) {
        bail!("the template has no {from:?} to replace");
    }
    Ok(text.replace(from, to))
}

fn replace_once(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => bail!("the template has {n} occurrences of {from:?}, expected one"),
    }
}

fn live_dir(domain: &str) -> String {
    format!("/etc/letsencrypt/live/{domain}")
}

fn unit_path(name: &str) -> PathBuf {
    Path::new("/").join(UNIT_DIR).join(name)
}

/// `path` (absolute) under `destdir`.
fn under(destdir: &Path, path: &Path) -> PathBuf {
    destdir.join(path.strip_prefix("/").unwrap_or(path))
}

fn example_config(root: &Path) -> anyhow::Result<String> {
    let path = root.join("deploy/lunchd.toml");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(PLACEHOLDER_CONFIG.to_owned()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn check_domain(domain: &str) -> anyhow::Result<()> {
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        bail!("--domain {domain:?} is not a host name; give the name certbot issued the certificate for");
    }
    Ok(())
}

fn absolute_prefix(prefix: &Path) -> anyhow::Result<PathBuf> {
    let text = prefix.to_str().context("--prefix must be valid UTF-8")?;
    if !prefix.is_absolute() || text.chars().any(|c| c.is_whitespace() || c == '%' || c == '$') {
        bail!("--prefix {text:?} must be an absolute path without spaces, `%` or `$`");
    }
    Ok(PathBuf::from(text.trim_end_matches('/')))
}

/// The version `systemctl --version` reports, e.g. 252 for
/// `systemd 252 (252.39-1~deb12u2)`.
fn installed_systemd_version() -> anyhow::Result<u32> {
    let output = Command::new("systemctl")
        .arg("--version")
        .output()
        .context("running systemctl --version; pass --systemd-version N where systemd is not installed")?;
    parse_systemd_version(&String::from_utf8_lossy(&output.stdout))
        .context("systemctl --version printed no version; pass --systemd-version N")
}

fn parse_systemd_version(text: &str) -> Option<u32> {
    let mut words = text.lines().next()?.split_whitespace();
    if words.next()? != "systemd" {
        return None;
    }
    let number: String = words.next()?.chars().take_while(char::is_ascii_digit).collect();
    number.parse().ok()
}

pub(crate) fn build_release(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--locked", "-p", "lunchd"])
        .run_checked()?;
    Ok(())
}

fn print_file(destdir: &Path, file: &File) {
    let path = under(destdir, &file.path);
    match &file.contents {
        Contents::Text(text) => {
            println!("\n--- {} (mode {:o}) ---\n{text}", path.display(), file.mode);
        }
        Contents::Copy(source) => {
            println!(
                "\n--- {} (mode {:o}): copy of {} ---",
                path.display(),
                file.mode,
                source.display()
            );
        }
    }
}

fn write_file(destdir: &Path, file: &File) -> anyhow::Result<()> {
    let path = under(destdir, &file.path);
    let parent = path.parent().context("a file without a directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    if file.path.ends_with("lunchd.toml") && path.exists() {
        let Contents::Text(text) = &file.contents else {
            unreachable!("the configuration is text")
        };
        if fs::read_to_string(&path).ok().as_deref() != Some(text) {
            println!(
                "kept {}: it was edited (the example is deploy/lunchd.toml)",
                path.display()
            );
        }
        return Ok(());
    }
    // Written next to the target and renamed: a running system never sees
    // half a file, and a running binary is replaced, not overwritten.
    let tmp = parent.join(format!(
        ".{}.install-units",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    match &file.contents {
        Contents::Text(text) => fs::write(&tmp, text),
        Contents::Copy(source) => fs::copy(source, &tmp).map(drop),
    }
    .with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(file.mode))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Writes `files` under `destdir`, after `systemd-analyze verify` passed
/// them (when `check`): a unit that fails it is never written, and what was
/// installed before stays as it was.
fn write_verified(destdir: &Path, files: &[File], version: u32, check: bool) -> anyhow::Result<()> {
    if !check {
        println!("skipped systemd-analyze verify (--no-verify)");
        return files.iter().try_for_each(|file| write_file(destdir, file));
    }
    if destdir != Path::new("/") {
        verify(files, version, false)?;
        return files.iter().try_for_each(|file| write_file(destdir, file));
    }
    // Installed on this system, the units are verified where they are:
    // a scratch root would lack the programs they run (/bin/kill). What
    // was there before is put back if they fail.
    let previous = files
        .iter()
        .map(|file| {
            let path = under(destdir, &file.path);
            let before = fs::read(&path).ok().map(|bytes| {
                let mode = fs::metadata(&path).map_or(file.mode, |m| m.permissions().mode() & 0o7777);
                (bytes, mode)
            });
            (path, before)
        })
        .collect::<Vec<_>>();
    let written = files.iter().try_for_each(|file| write_file(destdir, file));
    let verified = written.and_then(|()| verify(files, version, true));
    if let Err(e) = verified {
        for (path, before) in previous {
            let restored = match before {
                Some((bytes, mode)) => {
                    fs::write(&path, bytes).and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
                }
                None => fs::remove_file(&path).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                }),
            };
            if let Err(undo) = restored {
                eprintln!("xtask: could not restore {}: {undo}", path.display());
            }
        }
        return Err(e.context("nothing was installed: the files from before are back"));
    }
    Ok(())
}

/// `systemd-analyze verify` of the units: `live`, of those written to
/// this system; otherwise before they are written, with `--root=` on a
/// scratch tree holding every file install-units would write and this
/// host's own unit directory (the units need sysinit.target and the
/// like). Warnings about lunchd's units fail it too, except, when the
/// units are for a newer systemd than the analyzer, the settings that
/// version added.
fn verify(files: &[File], version: u32, live: bool) -> anyhow::Result<()> {
    let mut args = vec!["verify".to_owned(), "--man=no".to_owned(), "--generators=no".to_owned()];
    let scratch = tempfile::Builder::new()
        .prefix("lunchd-verify-")
        .tempdir()
        .context("creating a scratch directory")?;
    if !live {
        copy_dir(
            Path::new("/usr/lib/systemd/system"),
            &scratch.path().join("usr/lib/systemd/system"),
        )?;
        for file in files {
            stage_file(scratch.path(), file)?;
        }
        args.push(format!("--root={}", scratch.path().display()));
    }
    args.extend([SERVICE, SOCKETS[0], SOCKETS[1]].map(str::to_owned));
    for unit in [QUIC_SOCKET, METRICS_SOCKET] {
        if files.iter().any(|f| f.path == unit_path(unit)) {
            args.push(unit.to_owned());
        }
    }
    let output = systemd_analyze(&args)?;
    let analyzer = systemd_analyze(&["--version"])
        .ok()
        .and_then(|o| parse_systemd_version(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or(0);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let mut problems = Vec::new();
    for line in stderr.lines().filter(|l| l.contains("lunchd")) {
        // What systemd-analyze 252 says about exactly the settings newer
        // versions get: (added in, the end of the warning).
        let newer = [
            (253, "Failed to parse service type, ignoring: notify-reload"),
            (
                REFRESH_ON_RELOAD,
                "Unknown key 'RefreshOnReload' in section [Service], ignoring.",
            ),
            (
                NAMESPACED_CGROUPS_TMP,
                "Failed to parse boolean value, ignoring: strict",
            ),
            (
                NAMESPACED_CGROUPS_TMP,
                "Failed to parse boolean value, ignoring: disconnected",
            ),
        ]
        .iter()
        .any(|(added, warning)| version >= *added && analyzer < *added && line.ends_with(warning));
        if newer {
            println!("note: systemd-analyze {analyzer} does not know a setting of systemd {version}: {line}");
        } else {
            problems.push(line);
        }
    }
    if !output.status.success() || !problems.is_empty() {
        bail!(
            "systemd-analyze verify found problems in the written units:\n{}",
            if problems.is_empty() {
                stderr.clone()
            } else {
                problems.join("\n")
            }
        );
    }
    println!("systemd-analyze verify: ok");
    Ok(())
}

/// `file` under the scratch root `root`, for `verify`: a copy (or, where
/// the mode is already right, a hard link) of what would be written.
fn stage_file(root: &Path, file: &File) -> anyhow::Result<()> {
    let path = under(root, &file.path);
    let parent = path.parent().context("a file without a directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    match &file.contents {
        Contents::Text(text) => fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
        Contents::Copy(source) => {
            // A link shares the source's mode, which must not be changed.
            let linked = fs::metadata(source).is_ok_and(|m| m.permissions().mode() & 0o7777 == file.mode)
                && fs::hard_link(source, &path).is_ok();
            if linked {
                return Ok(());
            }
            fs::copy(source, &path).with_context(|| format!("copying {}", source.display()))?;
        }
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Copies the files and symlinks of `from` (one level of subdirectories
/// deep, as unit directories are) to `to`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn print_next_steps(domain: &str, to_root: bool) {
    let live = live_dir(domain);
    println!(
        "\nnext steps:\n\
         1. the first certificate, before lunchd can start: `certbot certonly --standalone -d {domain}` (port 80\n   \
            still free) must leave {live}/privkey.pem and {live}/fullchain.pem; then switch renewals to lunchd's\n   \
            ACME webroot with `certbot certonly --webroot -w <[http] acme_webroot> -d {domain} --force-renewal`\n   \
            once lunchd runs (docs/deploy.md).\n\
         2. edit /etc/lunchd/lunchd.toml, then check it: `lunchd check-config /etc/lunchd/lunchd.toml`.\n\
         3. `systemctl enable --now {} {}`: lunchd starts on the first connection.\n\
         4. after a renewal the certbot hook runs `systemctl reload lunchd`; check with `systemctl status lunchd`.\n\
         5. upgrading? `systemctl restart lunchd` starts the new binary and units; the sockets keep every client.{}",
        SOCKETS[0],
        SOCKETS[1],
        if to_root {
            ""
        } else {
            "\n(installed under a destdir: systemd was not told)"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files install-units plans for `version` with `edit` applied to
    /// the service.
    fn edited(version: u32, edit: impl Fn(String) -> String) -> Vec<File> {
        let binary = std::env::current_exe().unwrap();
        let root = crate::project_root();
        let mut files = plan(&root, &binary, "lunch.example", Path::new(TEMPLATE_PREFIX), version).unwrap();
        for file in &mut files {
            if let (true, Contents::Text(text)) = (file.path.ends_with(SERVICE), &mut file.contents) {
                *text = edit(std::mem::take(text));
            }
        }
        files
    }

    /// Verifies the units for `version` with `edit` applied to the service.
    fn verify_edited(version: u32, edit: impl Fn(String) -> String) -> anyhow::Result<()> {
        verify(&edited(version, edit), version, false)
    }

    #[test]
    fn units_that_fail_verify_are_not_written() {
        let destdir = tempfile::tempdir().unwrap();
        let installed = under(destdir.path(), &unit_path(SERVICE));
        write_verified(destdir.path(), &edited(252, |unit| unit), 252, true).unwrap();
        let before = fs::read_to_string(&installed).unwrap();
        // A later install whose service fails verify (a key systemd does not
        // know, and a socket that changed beside it).
        let mut files = edited(252, |unit| unit.replace("ProtectHome=yes", "ProtectHomes=yes"));
        for file in &mut files {
            if let (true, Contents::Text(text)) = (file.path.ends_with(SOCKETS[0]), &mut file.contents) {
                text.push_str("# changed\n");
            }
        }
        let error = write_verified(destdir.path(), &files, 252, true).unwrap_err();
        assert!(format!("{error:#}").contains("ProtectHomes"), "{error:#}");
        assert_eq!(fs::read_to_string(&installed).unwrap(), before);
        let socket = fs::read_to_string(under(destdir.path(), &unit_path(SOCKETS[0]))).unwrap();
        assert!(!socket.contains("# changed"), "{socket}");
        // Into an empty destdir, nothing at all.
        let empty = tempfile::tempdir().unwrap();
        write_verified(empty.path(), &files, 252, true).unwrap_err();
        assert_eq!(fs::read_dir(empty.path()).unwrap().count(), 0);
    }

    #[test]
    fn verify_passes_the_units_and_stops_on_a_problem_in_them() {
        verify_edited(252, |unit| unit).unwrap();
        let error = verify_edited(252, |unit| unit.replace("\nType=notify\n", "\nType=notifyy\n")).unwrap_err();
        assert!(format!("{error:#}").contains("notifyy"), "{error:#}");
        let error = verify_edited(252, |unit| unit.replace("ProtectHome=yes", "ProtectHomes=yes")).unwrap_err();
        assert!(format!("{error:#}").contains("ProtectHomes"), "{error:#}");
        let error = verify_edited(252, |unit| {
            unit.replace("/usr/local/bin/lunchd --config", "/usr/local/bin/lunch --config")
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("/usr/local/bin/lunch"), "{error:#}");
    }

    #[test]
    fn verify_tolerates_only_the_settings_of_a_newer_systemd() {
        // Type=notify-reload and RefreshOnReload= are newer than the
        // analyzer where it is 252; anything else still fails.
        verify_edited(260, |unit| unit).unwrap();
        let error = verify_edited(260, |unit| {
            unit.replace(
                "RefreshOnReload=credentials",
                "RefreshOnReload=credentials\nRefreshOnReloadd=x",
            )
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("RefreshOnReloadd"), "{error:#}");
    }

    #[test]
    fn systemd_257_and_later_get_a_cgroup_namespace_and_a_disconnected_tmp() {
        let template = fs::read_to_string(crate::project_root().join("deploy/lunchd.service")).unwrap();
        for (version, cgroups, tmp) in [
            (252, "yes", "yes"),
            (256, "yes", "yes"),
            (257, "strict", "disconnected"),
            (262, "strict", "disconnected"),
        ] {
            let unit = render_service(&template, version, "lunch.example", Path::new(TEMPLATE_PREFIX)).unwrap();
            assert!(
                unit.contains(&format!("\nProtectControlGroups={cgroups}\n")),
                "systemd {version}:\n{unit}"
            );
            assert!(
                unit.contains(&format!("\nPrivateTmp={tmp}\n")),
                "systemd {version}:\n{unit}"
            );
        }
    }

    #[test]
    fn metrics_adds_a_third_socket_that_the_service_passes_and_wants() {
        let root = crate::project_root();
        for version in [252, 257, 262] {
            let mut files = plan(
                &root,
                Path::new("/bin/true"),
                "lunch.example",
                Path::new("/usr/local"),
                version,
            )
            .unwrap();
            add_metrics(&root, &mut files, "127.0.0.1:9100".parse().unwrap()).unwrap();
            let text = |name: &str| match &files.iter().find(|f| f.path == unit_path(name)).unwrap().contents {
                Contents::Text(t) => t.clone(),
                Contents::Copy(_) => panic!("{name} is a copy"),
            };
            let socket = text(METRICS_SOCKET);
            let listen: Vec<&str> = socket.lines().filter_map(|l| l.strip_prefix("ListenStream=")).collect();
            assert_eq!(listen, ["127.0.0.1:9100"]);
            assert!(socket.lines().any(|l| l == "FileDescriptorName=metrics"), "{socket}");
            // ADDR may be on a network that is not up when sockets bind.
            assert!(socket.lines().any(|l| l == "FreeBind=yes"), "{socket}");
            let template = fs::read_to_string(root.join("deploy").join(METRICS_SOCKET)).unwrap();
            assert_eq!(
                socket,
                template.replace(
                    &format!("\nListenStream={TEMPLATE_METRICS}\n"),
                    "\nListenStream=127.0.0.1:9100\n"
                ),
                "only ListenStream= differs from deploy/{METRICS_SOCKET}"
            );
            let service = text(SERVICE);
            assert!(
                service
                    .lines()
                    .any(|l| l == "Sockets=lunchd-http.socket lunchd-https.socket lunchd-metrics.socket"),
                "{service}"
            );
            assert!(service.lines().any(|l| l == "Wants=lunchd-metrics.socket"), "{service}");
            // Optional: lunchd starts without it.
            assert!(
                service
                    .lines()
                    .any(|l| l == "Requires=lunchd-http.socket lunchd-https.socket"),
                "{service}"
            );
            assert!(service.lines().any(|l| l == "LogsDirectory=lunchd"), "{service}");
        }
    }

    #[test]
    fn quic_and_metrics_together_are_both_passed_ordered_and_wanted() {
        let root = crate::project_root();
        let mut files = plan(
            &root,
            Path::new("/bin/true"),
            "lunch.example",
            Path::new("/usr/local"),
            262,
        )
        .unwrap();
        add_quic(&root, &mut files).unwrap();
        add_metrics(&root, &mut files, "127.0.0.1:9465".parse().unwrap()).unwrap();
        let service = match &files.iter().find(|f| f.path == unit_path(SERVICE)).unwrap().contents {
            Contents::Text(t) => t.clone(),
            Contents::Copy(_) => panic!("the service is a copy"),
        };
        let lines: Vec<&str> = service.lines().collect();
        let sockets = "lunchd-http.socket lunchd-https.socket lunchd-quic.socket lunchd-metrics.socket";
        assert!(lines.contains(&format!("Sockets={sockets}").as_str()), "{service}");
        assert!(lines.contains(&format!("After={sockets}").as_str()), "{service}");
        for unit in [QUIC_SOCKET, METRICS_SOCKET] {
            assert!(lines.contains(&format!("Wants={unit}").as_str()), "{service}");
            assert!(files.iter().any(|f| f.path == unit_path(unit)), "{unit} not written");
        }
    }

    #[test]
    fn the_metrics_socket_as_checked_in_listens_on_loopback() {
        let socket = std::fs::read_to_string(crate::project_root().join("deploy").join(METRICS_SOCKET)).unwrap();
        assert!(socket.contains(&format!("\nListenStream={TEMPLATE_METRICS}\n")));
        assert!(socket.contains("\nService=lunchd.service\n"));
        assert!(socket.contains("\nFreeBind=yes\n"));
        assert!(!socket.contains("IPAddress"));
    }

    #[test]
    fn versions_from_systemctl() {
        assert_eq!(
            parse_systemd_version("systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT"),
            Some(252)
        );
        assert_eq!(parse_systemd_version("systemd 260 (260~rc1)\n"), Some(260));
        assert_eq!(parse_systemd_version("systemd 255.4-1ubuntu8\n"), Some(255));
        assert_eq!(parse_systemd_version("something else 3\n"), None);
        assert_eq!(parse_systemd_version(""), None);
    }

    #[test]
    fn domains_and_prefixes() {
        assert!(check_domain("lunch.example.org").is_ok());
        for bad in ["", "a..b", "a b", "a/b", "x.com\nExecStart=/bin/sh", "%n"] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            absolute_prefix(Path::new("/opt/lunchd/")).unwrap(),
            Path::new("/opt/lunchd")
        );
        for bad in ["usr/local", "/opt/my lunch", "/opt/%n", "/opt/$X"] {
            assert!(absolute_prefix(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
