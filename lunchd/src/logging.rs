//! Where log records go and how they look.
//!
//! On a terminal or into a file, the human format of `tracing_subscriber`
//! (time, level, message). When stderr is the journal — `JOURNAL_STREAM`
//! names stderr's device and inode, as `systemd.exec(5)` documents — each
//! line starts with its syslog priority, `<3>` for an error, `<4>` for a
//! warning, `<6>` for information and `<7>` for debugging, which journald
//! strips and stores as `PRIORITY=` (`SyslogLevelPrefix=yes`, the
//! default), so that `journalctl -p warning` and `-p err` find them.
//!
//! Why the stream and not journald's native protocol (tracing-journald):
//! the stream is the file descriptor systemd hands over at exec, so it
//! needs nothing of the sandbox. The native protocol needs
//! `/run/systemd/journal/socket` to be reachable: it is under
//! `RestrictAddressFamilies=AF_UNIX` and `ProtectSystem=strict` (a socket
//! inode stays connectable on a read-only mount), but not under
//! `RootDirectory=`, `TemporaryFileSystem=/run` or `InaccessiblePaths=`,
//! where tracing-journald drops every record without a word. On one stream
//! the records also stay in order with everything else the process
//! writes there (main's last error, a panic). What the stream cannot carry
//! are journal fields of their own: the values an operator filters on are
//! in the message as `key=value` (`journalctl -u lunchd --grep
//! 'serial='`), and the machine-readable ones (certificate dates, reload
//! outcomes) are metrics.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of the stream systemd connected, and stderr is still it
/// (not redirected by a wrapper, nor a child's inherited variable).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(expected) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    stderr_identity() == Some(expected)
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// The syslog priority journald stores for a record of `level`.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `text` with `<priority>` before every line: journald reads each line
/// of a stream as a record of its own, and a line without a prefix as
/// information.
fn prefix_lines(priority: u8, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(format!("<{priority}>").as_bytes());
        out.extend_from_slice(line);
    }
    out
}

/// Installs the global subscriber for the filter `level` (`[log] level`;
/// `RUST_LOG` wins).
pub fn init(level: &str) {
    use tracing_subscriber::EnvFilter;
    // rustls warns once per handshake about client mistakes it handles
    // anyway (an IP address as SNI, as wrk and some scanners send): not the
    // operator's concern, and a way to flood the journal.
    let directives = if level.contains("rustls") {
        level.to_owned()
    } else {
        format!("{level},rustls=error")
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&directives))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if stderr_is_journal() {
        // journald stamps every line itself and shows no colours.
        builder.without_time().with_ansi(false).with_writer(Journal).init();
    } else {
        builder.with_writer(std::io::stderr).init();
    }
}

/// Makes a panic an error record: in the journal `<3>` before each of its
/// lines (`journalctl -p err` finds it), where Rust's own hook would
/// write lines journald stores as information. The panic itself goes on:
/// a connection's task that panics ends alone, as before.
///
/// Before the subscriber is installed, or when it drops errors, Rust's
/// own hook prints it instead; otherwise that hook is not called, so the
/// panic is not written twice. A backtrace, when `RUST_BACKTRACE` asks for
/// one, is part of the record.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !tracing::dispatcher::has_been_set() || !tracing::enabled!(Level::ERROR) {
            default(info);
            return;
        }
        let mut message = panic_message(std::thread::current().name(), info.location(), info.payload());
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            message.push_str(&format!("\nstack backtrace:\n{backtrace}"));
        }
        tracing::error!("{message}");
    }));
}

/// `thread 'worker-0' panicked at src/app.rs:10:5: the message`, as Rust's
/// own hook says it (and as tests look for it), on one line.
fn panic_message(
    thread: Option<&str>,
    location: Option<&std::panic::Location<'_>>,
    payload: &(dyn std::any::Any + Send),
) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let at = location.map_or_else(|| "an unknown location".to_owned(), ToString::to_string);
    format!("thread '{}' panicked at {at}: {text}", thread.unwrap_or("<unnamed>"))
}

/// Prints the error that ends the process, as an error in the journal.
pub fn fatal(message: &str) {
    let line = format!("lunchd: error: {message}\n");
    let mut stderr = std::io::stderr().lock();
    let _ = if stderr_is_journal() {
        stderr.write_all(&prefix_lines(3, line.as_bytes()))
    } else {
        stderr.write_all(line.as_bytes())
    };
}

/// Writes each record to stderr with its priority before every line.
struct Journal;

impl<'a> MakeWriter<'a> for Journal {
    type Writer = PriorityLines;

    fn make_writer(&'a self) -> PriorityLines {
        PriorityLines::new(priority(Level::INFO))
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> PriorityLines {
        PriorityLines::new(priority(*meta.level()))
    }
}

/// One record, written in one `write` when it is complete so that records
/// of different threads do not interleave.
struct PriorityLines {
    priority: u8,
    buffer: Vec<u8>,
}

impl PriorityLines {
    fn new(priority: u8) -> PriorityLines {
        PriorityLines {
            priority,
            buffer: Vec::new(),
        }
    }
}

impl Write for PriorityLines {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PriorityLines {
    fn drop(&mut self) {
        // The human format pads ` INFO` and ` WARN` to the width of
        // `ERROR`; in the journal that is only a stray space.
        let record = self.buffer.strip_prefix(b" ").unwrap_or(&self.buffer);
        if !record.is_empty() {
            let _ = std::io::stderr().lock().write_all(&prefix_lines(self.priority, record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_prefix(priority: u8, text: &str, expected: &str) {
        let out = prefix_lines(priority, text.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{text:?}");
    }

    #[test]
    fn every_line_carries_the_priority() {
        check_prefix(3, "reload failed\n", "<3>reload failed\n");
        check_prefix(
            3,
            "reload failed:\nlunchd.toml:3:1: bad\nlunchd.toml:4:1: worse\n",
            "<3>reload failed:\n<3>lunchd.toml:3:1: bad\n<3>lunchd.toml:4:1: worse\n",
        );
        check_prefix(6, "no newline", "<6>no newline");
        check_prefix(6, "", "");
    }

    #[test]
    fn a_panic_is_described_as_rust_describes_it() {
        let location = std::panic::Location::caller();
        let at = format!("{}:{}:{}", location.file(), location.line(), location.column());
        let check = |thread, payload: &(dyn std::any::Any + Send), expected: String| {
            assert_eq!(panic_message(thread, Some(location), payload), expected);
        };
        check(
            Some("worker-0"),
            &"index out of bounds",
            format!("thread 'worker-0' panicked at {at}: index out of bounds"),
        );
        check(
            None,
            &String::from("formatted 7"),
            format!("thread '<unnamed>' panicked at {at}: formatted 7"),
        );
        check(
            Some("main"),
            &7_u32,
            format!("thread 'main' panicked at {at}: Box<dyn Any>"),
        );
        assert_eq!(
            panic_message(Some("main"), None, &"x"),
            "thread 'main' panicked at an unknown location: x"
        );
    }

    /// Set in the child process of [`a_panic_reaches_the_journal_as_an_error`].
    const CHILD: &str = "LUNCHD_PANIC_HOOK_CHILD";

    /// What the child process does: a journal subscriber and the hook,
    /// then a thread that panics, then a line to show the process lives on.
    /// Not a test of its own: run (as ignored) only by the test above.
    #[test]
    #[ignore = "the child process of a_panic_reaches_the_journal_as_an_error"]
    fn panic_hook_child_process() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        init("info");
        install_panic_hook();
        let joined = std::thread::Builder::new()
            .name("worker-7".to_owned())
            .spawn(|| panic!("the dish is gone\nsecond line"))
            .unwrap()
            .join();
        assert!(joined.is_err());
        tracing::info!("still serving");
    }

    #[test]
    fn a_panic_reaches_the_journal_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stderr");
        let stderr = std::fs::File::create(&path).unwrap();
        let metadata = stderr.metadata().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "logging::tests::panic_hook_child_process",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD, "1")
            .env("JOURNAL_STREAM", format!("{}:{}", metadata.dev(), metadata.ino()))
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(status.success(), "{status}: {text}");
        let panics: Vec<&str> = text.lines().filter(|l| l.contains("panicked")).collect();
        assert_eq!(panics.len(), 1, "written once:\n{text}");
        assert!(
            panics[0].starts_with("<3>ERROR thread 'worker-7' panicked at lunchd/src/logging.rs:"),
            "{text}"
        );
        assert!(panics[0].ends_with(": the dish is gone"), "{text}");
        assert!(text.contains("\n<3>second line\n"), "{text}");
        assert!(text.contains("<6>INFO still serving\n"), "{text}");
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let cases = [
            (Level::ERROR, 3),
            (Level::WARN, 4),
            (Level::INFO, 6),
            (Level::DEBUG, 7),
            (Level::TRACE, 7),
        ];
        for (level, expected) in cases {
            assert_eq!(priority(level), expected, "{level}");
        }
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        let cases: [(&str, Option<(u64, u64)>); 6] = [
            ("8:12345", Some((8, 12345))),
            ("0:0", Some((0, 0))),
            ("64769:2883595", Some((64769, 2883595))),
            ("", None),
            ("8", None),
            ("8:x", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_journal_stream(value), expected, "{value:?}");
        }
    }

    #[test]
    fn stderr_identity_is_what_fstat_says() {
        let (device, inode) = stderr_identity().expect("stderr is open in tests");
        let metadata = std::fs::metadata("/proc/self/fd/2").unwrap();
        assert_eq!((device, inode), (metadata.dev(), metadata.ino()));
    }
}
