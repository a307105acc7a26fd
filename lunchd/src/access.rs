//! The access log: one line per answered request, written to a file of
//! its own (`$LOGS_DIRECTORY/access.log` under systemd's
//! `LogsDirectory=lunchd`), never to the journal.
//!
//! Why a file and not journal records: journald limits each service to
//! 10,000 records per 30 s by default and then drops whatever comes,
//! the errors that matter along with the traffic, reporting only a count
//! in its own log. A busy server reaches that in seconds. The file has no
//! such limit; what lunchd itself cannot write (a writer far behind, a
//! full disk) it counts (`lunchd_access_log_dropped_total`) and says in a
//! warning at most once a minute.
//!
//! Workers format each line into the buffer of one of 8 shards, chosen by
//! the thread's metrics shard (given out in turn): up to 8 threads each
//! have a mutex no other takes, beyond that threads share shards. A writer
//! thread swaps the buffers out every 100 ms and writes them with one
//! `write` each. No worker waits for the disk or wakes another thread per
//! request. The file is opened for appending, so logrotate's
//! `copytruncate` works, and reopened on reload for logrotate's `create`
//! with `postrotate systemctl reload lunchd`; what waits is written at
//! shutdown.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// One answered request.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// When the request arrived.
    pub time: SystemTime,
    /// The client's address, when known.
    pub client: Option<SocketAddr>,
    /// The TLS server name (SNI) the client asked for, when known.
    pub server_name: Option<&'a str>,
    /// `h1` or `h2`.
    pub protocol: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path, with the query when so configured.
    pub target: &'a str,
    /// The response status.
    pub status: u16,
    /// The response body's length, when known before it is sent.
    pub bytes: Option<u64>,
    /// From the request's headers to the response's.
    pub duration: Duration,
}

/// `2026-12-01T10:00:00.123Z 192.0.2.1:51234 lunch.example.com h2 GET
/// "/api/pick" 200 1234 0.000512`, a dash for what is unknown.
#[cfg(test)]
fn format(record: &Record<'_>) -> String {
    let mut line = String::with_capacity(128);
    format_into(&mut line, record);
    line
}

/// [`format`], appended to `line`. Written byte by byte rather than
/// through `core::fmt`, which cost most of a record: the timestamp up to
/// the second is kept per thread and remade once a second, the numbers
/// and an IPv4 address are written digit by digit.
fn format_into(line: &mut String, record: &Record<'_>) {
    let since = record.time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    STAMP.with(|stamp| {
        let mut stamp = stamp.borrow_mut();
        if stamp.0 != Some(secs) {
            let date = lunch_core::Date::from_days_since_epoch(secs.div_euclid(86_400));
            let rem = secs.rem_euclid(86_400);
            stamp.1.clear();
            let _ = write!(
                stamp.1,
                "{date}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            stamp.0 = Some(secs);
        }
        line.push_str(&stamp.1);
    });
    push_number(line, u64::from(since.subsec_millis()), 3);
    line.push_str("Z ");
    match record.client {
        Some(SocketAddr::V4(client)) => {
            for (i, octet) in client.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    line.push('.');
                }
                push_number(line, u64::from(octet), 1);
            }
            line.push(':');
            push_number(line, u64::from(client.port()), 1);
            line.push(' ');
        }
        Some(client) => {
            let _ = write!(line, "{client} ");
        }
        None => line.push_str("- "),
    }
    push_token(line, record.server_name.unwrap_or("-"));
    line.push(' ');
    push_token(line, record.protocol);
    line.push(' ');
    push_token(line, record.method);
    line.push_str(" \"");
    push_escaped(line, record.target);
    line.push_str("\" ");
    push_number(line, u64::from(record.status), 1);
    line.push(' ');
    match record.bytes {
        Some(bytes) => {
            push_number(line, bytes, 1);
            line.push(' ');
        }
        None => line.push_str("- "),
    }
    let micros = u64::try_from(record.duration.as_micros()).unwrap_or(u64::MAX);
    push_number(line, micros / 1_000_000, 1);
    line.push('.');
    push_number(line, micros % 1_000_000, 6);
    line.push('\n');
}

thread_local! {
    /// The second the timestamp prefix below is for, and the prefix:
    /// `2026-12-01T10:00:00.`.
    static STAMP: std::cell::RefCell<(Option<i64>, String)> = const {
        std::cell::RefCell::new((None, String::new()))
    };
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn push_number(line: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while n > 0 || start == digits.len() {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = start.min(digits.len().saturating_sub(width));
    for &digit in &digits[start..] {
        line.push(char::from(digit));
    }
}

/// A field that should hold no space: escaped like the path.
fn push_token(line: &mut String, token: &str) {
    if token.is_empty() {
        line.push('-');
    } else {
        push_escaped(line, token);
    }
}

/// Printable ASCII as it is; `"`, `\`, spaces, control characters and
/// anything else as `\xNN` bytes, so one record stays one parsable line
/// whatever a client sends.
fn push_escaped(line: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' {
            line.push(char::from(byte));
        } else {
            line.push_str("\\x");
            line.push(char::from(HEX[usize::from(byte >> 4)]));
            line.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// Shards of the buffer records wait in; a thread appends to the one of
/// its metrics shard modulo this, so up to this many threads do not
/// contend.
const SHARDS: usize = 8;

/// What one shard may hold before records are dropped (and counted):
/// a second of a busy server's lines, at the writer's pace.
const SHARD_BYTES: usize = 4 << 20;

/// How often the writer takes the waiting lines to the file.
const PERIOD: Duration = Duration::from_millis(100);

/// The open access log.
#[derive(Debug)]
pub struct AccessLog {
    shared: Arc<Shared>,
    /// Whether the target keeps its query string.
    pub query: bool,
}

#[derive(Debug)]
struct Shared {
    shards: [Mutex<String>; SHARDS],
    dropped: AtomicU64,
    file: Mutex<Output>,
}

#[derive(Debug)]
struct Output {
    path: PathBuf,
    file: File,
    /// The drop count last warned about, and when.
    warned: (u64, Option<Instant>),
}

impl AccessLog {
    /// Opens `path` for appending and starts its writer thread; with
    /// `query`, targets keep their query strings.
    pub fn open(path: &Path, query: bool) -> std::io::Result<AccessLog> {
        let shared = Arc::new(Shared {
            shards: std::array::from_fn(|_| Mutex::new(String::new())),
            dropped: AtomicU64::new(0),
            file: Mutex::new(Output {
                path: path.to_owned(),
                file: append(path)?,
                warned: (0, None),
            }),
        });
        let writer = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || {
                // Ends when the log is dropped.
                while let Some(shared) = writer.upgrade() {
                    shared.drain();
                    drop(shared);
                    std::thread::sleep(PERIOD);
                }
            })?;
        Ok(AccessLog { shared, query })
    }

    /// Adds `record`; counts it as dropped when the writer is far behind.
    pub fn log(&self, record: &Record<'_>) {
        let shard = crate::metrics::shard().index % SHARDS;
        let mut buffer = lock(&self.shared.shards[shard]);
        if buffer.len() < SHARD_BYTES {
            format_into(&mut buffer, record);
        } else {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes what waits to the file, now (at shutdown).
    pub fn flush(&self) {
        self.shared.drain();
    }

    /// Reopens the file (after logrotate moved it away). When that fails
    /// the file open before stays open, and records keep going there.
    pub fn reopen(&self) -> anyhow::Result<()> {
        self.shared.drain();
        let mut output = lock(&self.shared.file);
        let file = append(&output.path).map_err(|e| {
            anyhow::anyhow!(
                "cannot reopen the access log {}: {e}; still writing to the file open before, which logrotate \
                 may have moved: make {} a file lunchd can append to, then reload",
                output.path.display(),
                output.path.display()
            )
        })?;
        output.file = file;
        Ok(())
    }

    /// Records dropped since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Takes every shard's lines to the file.
    fn drain(&self) {
        let mut output = lock(&self.file);
        let mut spare = String::new();
        for shard in &self.shards {
            // Swapped out under the shard's lock, written outside it; the
            // emptied buffer goes to the next shard, keeping its capacity.
            std::mem::swap(&mut *lock(shard), &mut spare);
            if !spare.is_empty() && output.file.write_all(spare.as_bytes()).is_err() {
                let lost = spare.bytes().filter(|&b| b == b'\n').count() as u64;
                self.dropped.fetch_add(lost, Ordering::Relaxed);
            }
            spare.clear();
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        let (warned, at) = output.warned;
        if dropped != warned && at.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                file = %output.path.display(),
                dropped = dropped - warned,
                "the access log lost {} records since the last warning: the disk is full or slower than the \
                 requests; see lunchd_access_log_dropped_total",
                dropped - warned
            );
            output.warned = (dropped, Some(Instant::now()));
        }
    }
}

/// The access log `config` asks for (`[log] access`), in the directory
/// systemd made for it (`LogsDirectory=`, `$LOGS_DIRECTORY`).
/// It lives as long as the process: requests refer to it without counting
/// references, which would be a cache line all workers write.
pub fn configured(config: &crate::config::Config) -> anyhow::Result<Option<&'static AccessLog>> {
    use anyhow::Context;
    if !config.access_log {
        return Ok(None);
    }
    let directory = std::env::var_os("LOGS_DIRECTORY").filter(|d| !d.is_empty()).context(
        "[log] access = true, but LOGS_DIRECTORY is not set: add LogsDirectory=lunchd to lunchd.service, \
             or set LOGS_DIRECTORY to a writable directory",
    )?;
    // systemd separates several directories with colons; the first is ours.
    let directory = PathBuf::from(
        directory
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    let path = directory.join("access.log");
    let log = AccessLog::open(&path, config.access_query)
        .with_context(|| format!("opening the access log {}", path.display()))?;
    tracing::info!("access log in {}", path.display());
    Ok(Some(Box::leak(Box::new(log))))
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_119_200_123),
            client: Some("192.0.2.1:51234".parse().unwrap()),
            server_name: Some("lunch.example.com"),
            protocol: "h2",
            method: "GET",
            target: "/api/pick",
            status: 200,
            bytes: Some(1234),
            duration: Duration::from_micros(512),
        }
    }

    fn check(record: Record<'_>, expected: &str) {
        assert_eq!(format(&record), format!("{expected}\n"));
    }

    #[test]
    fn lines() {
        check(
            record(),
            "2026-12-01T10:00:00.123Z 192.0.2.1:51234 lunch.example.com h2 GET \"/api/pick\" 200 1234 0.000512",
        );
        check(
            Record {
                client: Some("[2001:db8::1]:443".parse().unwrap()),
                server_name: None,
                protocol: "h1",
                method: "HEAD",
                target: "/",
                status: 308,
                bytes: None,
                duration: Duration::from_secs(2),
                ..record()
            },
            "2026-12-01T10:00:00.123Z [2001:db8::1]:443 - h1 HEAD \"/\" 308 - 2.000000",
        );
        // Whatever a client sends stays on one line, one field each.
        check(
            Record {
                client: None,
                server_name: Some("a b"),
                method: "GE T",
                target: "/a\"b\\c d\n\u{e9}",
                ..record()
            },
            "2026-12-01T10:00:00.123Z - a\\x20b h2 GE\\x20T \"/a\\x22b\\x5cc\\x20d\\x0a\\xc3\\xa9\" 200 1234 0.000512",
        );
    }

    #[test]
    fn numbers_and_times() {
        let mut line = String::new();
        for (n, width, expected) in [
            (0, 1, "0"),
            (7, 3, "007"),
            (512, 6, "000512"),
            (1_234_567, 1, "1234567"),
            (1_234_567, 3, "1234567"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            line.clear();
            push_number(&mut line, n, width);
            assert_eq!(line, expected);
        }
        // The cached second is remade when the second changes, on the
        // same thread.
        for (millis, expected) in [
            (1_796_119_200_123, "2026-12-01T10:00:00.123Z"),
            (1_796_119_200_999, "2026-12-01T10:00:00.999Z"),
            (1_796_119_201_000, "2026-12-01T10:00:01.000Z"),
            (1_796_205_599_001, "2026-12-02T09:59:59.001Z"),
            (0, "1970-01-01T00:00:00.000Z"),
        ] {
            let line = format(&Record {
                time: SystemTime::UNIX_EPOCH + Duration::from_millis(millis),
                ..record()
            });
            assert!(line.starts_with(&format!("{expected} ")), "{line}");
        }
        check(
            Record {
                client: Some("0.0.0.0:0".parse().unwrap()),
                status: 404,
                bytes: Some(0),
                duration: Duration::from_micros(12_345_678),
                ..record()
            },
            "2026-12-01T10:00:00.123Z 0.0.0.0:0 lunch.example.com h2 GET \"/api/pick\" 404 0 12.345678",
        );
    }

    #[test]
    fn records_reach_the_file_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, false).unwrap();
        log.log(&record());
        let first = wait_for_lines(&path, 1);
        assert!(first.ends_with("\"/api/pick\" 200 1234 0.000512\n"), "{first}");

        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.reopen().unwrap();
        log.log(&Record {
            status: 404,
            ..record()
        });
        let second = wait_for_lines(&path, 1);
        assert!(second.contains(" 404 "), "{second}");
        let rotated = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        assert_eq!(rotated, first);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_failed_reopen_says_why_and_keeps_the_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let log = AccessLog::open(&path, false).unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Nothing can append to a directory, root included.
        std::fs::create_dir(&path).unwrap();
        let e = format!("{:#}", log.reopen().unwrap_err());
        assert!(
            e.starts_with(&format!("cannot reopen the access log {}: ", path.display())),
            "{e}"
        );
        log.log(&record());
        let kept = wait_for_lines(&rotated, 1);
        assert!(kept.contains(" 200 "), "{kept}");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn every_record_is_written_or_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, false).unwrap();
        // Faster than the writer's pace: more than a shard holds between
        // two of its rounds, so some may be dropped.
        let sent = 3 * SHARD_BYTES as u64 / format(&record()).len() as u64;
        for _ in 0..sent {
            log.log(&record());
        }
        log.flush();
        let written = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
        assert_eq!(
            written + log.dropped(),
            sent,
            "{written} written, {} dropped",
            log.dropped()
        );
        assert!(written > 0);
    }

    fn wait_for_lines(path: &Path, lines: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{lines} lines not written: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
