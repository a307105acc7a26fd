//! The access log: one line per answered request, written to a file of
//! its own (`$LOGS_DIRECTORY/access.log` under systemd's
//! `LogsDirectory=lunchd`), never to the journal.
//!
//! Why a file and not journal records: journald limits each service to
//! 10,000 records per 30 s by default and then drops whatever comes,
//! the errors that matter along with the traffic, reporting only a count
//! in its own log. A busy server reaches that in seconds. The file has no
//! such limit; what lunchd itself cannot write (a full queue, a full disk)
//! it counts (`lunchd_access_log_dropped_total`) and says in a warning at
//! most once a minute.
//!
//! Workers format the line and hand it to one writer thread through a
//! bounded queue, so no worker waits for the disk; the writer flushes
//! whenever the queue runs empty. The file is opened for appending, so
//! logrotate's `copytruncate` works, and reopened on reload for
//! logrotate's `create` with `postrotate systemctl reload lunchd`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

/// Records that may wait for the writer; beyond that they are dropped and
/// counted.
const QUEUE: usize = 16 * 1024;

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
pub fn format(record: &Record<'_>) -> String {
    let mut line = String::with_capacity(128);
    let since = record.time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let date = lunch_core::Date::from_days_since_epoch(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let _ = write!(
        line,
        "{date}T{:02}:{:02}:{:02}.{:03}Z ",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
    match record.client {
        Some(client) => {
            let _ = write!(line, "{client} ");
        }
        None => line.push_str("- "),
    }
    push_token(&mut line, record.server_name.unwrap_or("-"));
    line.push(' ');
    push_token(&mut line, record.protocol);
    line.push(' ');
    push_token(&mut line, record.method);
    line.push_str(" \"");
    push_escaped(&mut line, record.target);
    let _ = write!(line, "\" {} ", record.status);
    match record.bytes {
        Some(bytes) => {
            let _ = write!(line, "{bytes} ");
        }
        None => line.push_str("- "),
    }
    let _ = writeln!(line, "{:.6}", record.duration.as_secs_f64());
    line
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
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'"' && byte != b'\\' {
            line.push(char::from(byte));
        } else {
            let _ = write!(line, "\\x{byte:02x}");
        }
    }
}

enum Message {
    Line(String),
    Reopen,
}

/// The open access log.
#[derive(Debug)]
pub struct AccessLog {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    /// Whether the target keeps its query string.
    pub query: bool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Line(_) => "Line",
            Message::Reopen => "Reopen",
        })
    }
}

impl AccessLog {
    /// Opens `path` for appending and starts its writer thread; with
    /// `query`, targets keep their query strings.
    pub fn open(path: &Path, query: bool) -> std::io::Result<AccessLog> {
        let file = append(path)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            path: path.to_owned(),
            out: BufWriter::with_capacity(64 * 1024, file),
            dropped: Arc::clone(&dropped),
            warned: 0,
        };
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run(&receiver))?;
        Ok(AccessLog { sender, dropped, query })
    }

    /// Queues `record`; counts it as dropped when the writer is behind.
    pub fn log(&self, record: &Record<'_>) {
        match self.sender.try_send(Message::Line(format(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) {
        // Waits for room: a reopen must not be lost.
        let _ = self.sender.send(Message::Reopen);
    }

    /// Records dropped since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The access log `config` asks for (`[log] access`), in the directory
/// systemd made for it (`LogsDirectory=`, `$LOGS_DIRECTORY`).
pub fn configured(config: &crate::config::Config) -> anyhow::Result<Option<Arc<AccessLog>>> {
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
    Ok(Some(Arc::new(log)))
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    dropped: Arc<AtomicU64>,
    /// The drop count last warned about.
    warned: u64,
}

impl Writer {
    fn run(mut self, receiver: &Receiver<Message>) {
        let mut last_warning = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            let message = match receiver.try_recv() {
                Ok(message) => Some(message),
                Err(_) => {
                    // The queue ran empty: what is written becomes visible.
                    self.flush();
                    match receiver.recv_timeout(Duration::from_secs(1)) {
                        Ok(message) => Some(message),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            match message {
                Some(Message::Line(line)) if self.out.write_all(line.as_bytes()).is_err() => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Some(Message::Line(_)) | None => {}
                Some(Message::Reopen) => self.reopen(),
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped != self.warned && last_warning.elapsed() >= Duration::from_secs(60) {
                tracing::warn!(
                    file = %self.path.display(),
                    dropped = dropped - self.warned,
                    "the access log lost {} records since the last warning: the disk is full or slower than the \
                     requests; see lunchd_access_log_dropped_total",
                    dropped - self.warned
                );
                self.warned = dropped;
                last_warning = std::time::Instant::now();
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            // What stayed in the buffer is lost with the error.
            tracing::debug!("writing {}: {e}", self.path.display());
        }
    }

    fn reopen(&mut self) {
        self.flush();
        match append(&self.path) {
            Ok(file) => self.out = BufWriter::with_capacity(64 * 1024, file),
            Err(e) => tracing::error!(
                file = %self.path.display(),
                "cannot reopen the access log {}: {e}; still writing to the file open before",
                self.path.display()
            ),
        }
    }
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
    fn records_reach_the_file_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, false).unwrap();
        log.log(&record());
        let first = wait_for_lines(&path, 1);
        assert!(first.ends_with("\"/api/pick\" 200 1234 0.000512\n"), "{first}");

        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.reopen();
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
    fn what_cannot_be_queued_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path, false).unwrap();
        // More than the queue holds, faster than a thread drains it to disk.
        let sent = QUEUE as u64 * 4;
        for _ in 0..sent {
            log.log(&record());
        }
        let written = {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
                if lines + log.dropped() == sent || std::time::Instant::now() > deadline {
                    break lines;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        assert_eq!(written + log.dropped(), sent, "every record is written or counted");
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
