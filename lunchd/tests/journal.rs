//! What the real binary writes to stderr when that is the journal
//! (`JOURNAL_STREAM` names stderr's device and inode): a syslog priority
//! before every line, which journald stores as `PRIORITY=`. Elsewhere the
//! human format, unchanged. Also the certificate watch as an operator
//! meets it: a warning and a STATUS= line when renewal is overdue.

mod support;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{LUNCHD, NotifySocket, TestCa, notify_field, write_leaf};

const HOUR: u64 = 3600;

/// A configuration serving `key` and `chain` on ephemeral loopback ports.
fn config(dir: &Path, key: &Path, chain: &Path, dish: &str) -> PathBuf {
    let path = dir.join("lunchd.toml");
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[https]\nlisten = \"127.0.0.1:0\"\nkey = \"{}\"\ncertificate = \"{}\"\n\n\
         [[dish]]\n{dish}\n",
        key.display(),
        chain.display()
    );
    support::write_atomic(&path, text.as_bytes());
    path
}

/// A 160-hour certificate for lunch.test with `left` hours of it left:
/// key, chain and serial.
fn six_day_certificate(dir: &Path, ca: &TestCa, left: u64) -> (PathBuf, PathBuf, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = |secs: u64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs);
    // Half an hour more than `left`, so that lunchd, which reads it a
    // moment later and counts whole hours down, still sees `left` hours.
    let not_after = now + left * HOUR + HOUR / 2;
    let leaf = ca.issue_with(&["lunch.test"], 0x51, |p| {
        p.not_before = at(not_after - 160 * HOUR);
        p.not_after = at(not_after);
    });
    let (key, chain) = write_leaf(dir, &leaf);
    (key, chain, leaf.serial)
}

/// `DEVICE:INODE` of `path`, as systemd sets `JOURNAL_STREAM`.
fn identity(path: &Path) -> String {
    let metadata = std::fs::metadata(path).unwrap();
    format!("{}:{}", metadata.dev(), metadata.ino())
}

/// A started lunchd, killed when dropped unless it has exited: a failed
/// assertion must not leave it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// lunchd with `config`, its stderr going to `log`.
fn start(config: &Path, log: &Path, env: &[(&str, String)]) -> Running {
    let mut command = Command::new(LUNCHD);
    command
        .arg(format!("--config={}", config.display()))
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    Running(command.spawn().unwrap())
}

/// The log once it contains `needle`.
fn wait_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Running, signal: i32) {
    // SAFETY: kill(2) on the child this test started and has not reaped.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.0.id() as i32, signal) };
    assert_eq!(rc, 0);
}

fn stop(mut child: Running) {
    signal(&child, libc::SIGTERM);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A journal line's priority and text.
fn priority(line: &str) -> Option<(u8, &str)> {
    let rest = line.strip_prefix('<')?;
    let (priority, text) = rest.split_once('>')?;
    Some((priority.parse().ok()?, text))
}

#[test]
fn every_line_carries_its_priority_when_stderr_is_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    // A fifth of its lifetime left: renewal should have happened.
    let (key, chain, serial) = six_day_certificate(dir.path(), &ca, 32);
    let config = config(dir.path(), &key, &chain, "name = \"Soup\"");
    let log = dir.path().join("stderr");
    let notify = NotifySocket::new(dir.path());
    File::create(&log).unwrap();
    let child = start(
        &config,
        &log,
        &[
            ("JOURNAL_STREAM", identity(&log)),
            ("NOTIFY_SOCKET", notify.path.display().to_string()),
        ],
    );

    let ready = notify.wait_for("READY=1", Duration::from_secs(15));
    let status = notify_field(ready.last().unwrap(), "STATUS").unwrap();
    assert!(
        status.starts_with(&format!("certificate {} expires in 32 hours", chain.display())),
        "{status}"
    );
    assert!(status.contains("journalctl -u certbot"), "{status}");
    assert!(status.contains("for lunch.test"), "{status}");
    assert!(status.contains("; started "), "{status}");

    // Two problems: a reason of two lines.
    support::write_atomic(&config, b"[[dish]]\nname = \"\"\nweight = -1.0\n");
    signal(&child, libc::SIGHUP);
    wait_log(&log, "reload failed");
    let ready = notify.wait_for("READY=1", Duration::from_secs(15));
    let status = notify_field(ready.last().unwrap(), "STATUS").unwrap();
    assert!(status.starts_with("reload failed at "), "{status}");
    assert!(status.contains("certificate "), "{status}");
    stop(child);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(u8, &str)> = text
        .lines()
        .map(|line| priority(line).unwrap_or_else(|| panic!("no priority on {line:?} in:\n{text}")))
        .collect();
    let find = |needle: &str| {
        lines
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .map(|(p, _)| *p)
            .collect::<Vec<u8>>()
    };
    assert_eq!(find("INFO serving https://lunch.test:"), [6], "{text}");
    // Once at start, once after the failed reload, which still serves it.
    assert_eq!(find("WARN the certificate in"), [4, 4], "{text}");
    assert_eq!(find(&format!("serial={serial}")), [4, 4], "{text}");
    assert_eq!(find("ERROR reload failed"), [3], "{text}");
    // The reason's second line is an error too, not information.
    let reason: Vec<&(u8, &str)> = lines.iter().filter(|(_, t)| t.contains("lunchd.toml:")).collect();
    assert_eq!(reason.len(), 2, "{text}");
    assert!(reason.iter().all(|(p, _)| *p == 3), "{text}");
    assert!(!text.contains('\x1b'), "colours in the journal:\n{text}");
    // journald adds the time.
    assert!(lines.iter().all(|(_, t)| !t.starts_with("20")), "{text}");
    // Levels unpadded: `<6>INFO serving`, not `<6> INFO serving`.
    assert!(lines.iter().all(|(_, t)| !t.starts_with(' ')), "{text}");
}

#[test]
fn the_last_words_are_an_error_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lunchd.toml");
    std::fs::write(&config, "[[dish]]\nname = \"\"\nweight = -1.0\n").unwrap();
    let log = dir.path().join("stderr");
    File::create(&log).unwrap();
    let status = start(&config, &log, &[("JOURNAL_STREAM", identity(&log))])
        .0
        .wait()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("<3>lunchd: error: invalid configuration"), "{text}");
    assert!(text.lines().count() >= 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with("<3>")), "{text}");
}

#[test]
fn elsewhere_the_human_format_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (key, chain, _) = six_day_certificate(dir.path(), &ca, 32);
    let config = config(dir.path(), &key, &chain, "name = \"Soup\"");
    let other = dir.path().join("other");
    File::create(&other).unwrap();
    // Unset, and set for another stream (a wrapper redirected stderr).
    for env in [vec![], vec![("JOURNAL_STREAM", identity(&other))]] {
        let log = dir.path().join("stderr");
        let child = start(&config, &log, &env);
        wait_log(&log, "serving https://");
        stop(child);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains('\x1b'), "{env:?}: no colours:\n{text}");
        let plain = without_colours(&text);
        for line in plain.lines() {
            // `2026-12-01T09:40:00.123456Z  INFO serving https://…`
            let (time, rest) = line.split_once(' ').unwrap();
            assert!(
                time.len() == 27 && time.starts_with("20") && time.ends_with('Z'),
                "{env:?}: {line:?}"
            );
            assert!(
                [" INFO ", " WARN ", "ERROR ", "DEBUG "]
                    .iter()
                    .any(|level| rest.starts_with(level)),
                "{env:?}: {line:?}"
            );
        }
        assert!(plain.contains(" WARN the certificate in"), "{plain}");
        assert!(plain.contains(" INFO serving https://lunch.test:"), "{plain}");
    }
}

/// `text` without ANSI SGR sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
