//! A `NOTIFY_SOCKET` listener that records what a service manager would
//! receive from sd_notify(3).

use std::fmt;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bound `NOTIFY_SOCKET`.
pub struct NotifySocket {
    /// What to pass as `NOTIFY_SOCKET`: a path, or `@name` in the abstract
    /// namespace.
    pub path: PathBuf,
    socket: UnixDatagram,
}

/// The messages up to and including the awaited one.
#[derive(Debug)]
pub struct Notified {
    /// Every message received, the awaited one last.
    pub messages: Vec<String>,
    /// When the awaited message was received.
    pub at: Instant,
}

/// No awaited message came in time.
#[derive(Debug)]
pub struct NotNotified {
    /// The line awaited.
    pub needle: String,
    /// How long it was awaited.
    pub timeout: Duration,
    /// What came instead.
    pub seen: Vec<String>,
}

impl fmt::Display for NotNotified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no notification {:?} within {:?}; got {:?}",
            self.needle, self.timeout, self.seen
        )
    }
}

impl std::error::Error for NotNotified {}

impl NotifySocket {
    /// A socket at `dir/notify.sock`. Panics where it cannot bind.
    #[track_caller]
    pub fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        match NotifySocket::bind(path.clone()) {
            Ok(notify) => notify,
            Err(e) => panic!("binding {}: {e}", path.display()),
        }
    }

    /// A socket at `path`, replacing a socket file left there.
    pub fn bind(path: PathBuf) -> io::Result<NotifySocket> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        Ok(NotifySocket { path, socket })
    }

    /// A socket in the abstract namespace (`@name`), as service managers
    /// other than PID 1 may pass; `tag` makes the name unique within a
    /// process.
    #[track_caller]
    pub fn new_abstract(tag: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("lunchd-test-{}-{tag}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| UnixDatagram::bind_addr(&addr));
        let socket = match addr {
            Ok(socket) => socket,
            Err(e) => panic!("binding @{name}: {e}"),
        };
        NotifySocket {
            path: PathBuf::from(format!("@{name}")),
            socket,
        }
    }

    /// The next message, waiting at most `timeout`; `None` when none came.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        // A zero timeout would mean "block forever".
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .ok()?;
        let mut buf = vec![0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one has a line that starts with `needle` (that one
    /// included), waiting at most `timeout` overall.
    pub fn try_wait_for(&self, needle: &str, timeout: Duration) -> Result<Notified, NotNotified> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(message) = self.recv(left) else { break };
            let at = Instant::now();
            let found = message.lines().any(|l| l.starts_with(needle));
            seen.push(message);
            if found {
                return Ok(Notified { messages: seen, at });
            }
        }
        Err(NotNotified {
            needle: needle.to_owned(),
            timeout,
            seen,
        })
    }

    /// [`NotifySocket::try_wait_for`], panicking when nothing came; returns
    /// the messages.
    #[track_caller]
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Vec<String> {
        match self.try_wait_for(needle, timeout) {
            Ok(notified) => notified.messages,
            Err(e) => panic!("{e}"),
        }
    }

    /// Drops the messages already received.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        let _ = self.socket.set_nonblocking(true);
        while self.socket.recv(&mut buf).is_ok() {}
        let _ = self.socket.set_nonblocking(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(notify: &NotifySocket, message: &str) {
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(message.as_bytes(), &notify.path).unwrap();
    }

    #[test]
    fn waits_for_a_line_and_keeps_what_came_before() {
        let dir = std::env::temp_dir().join(format!("lunch-testkit-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let notify = NotifySocket::new(&dir);
        send(&notify, "STATUS=starting");
        send(&notify, "MAINPID=1\nREADY=1");
        let notified = notify.try_wait_for("READY=1", Duration::from_secs(5)).unwrap();
        assert_eq!(notified.messages, ["STATUS=starting", "MAINPID=1\nREADY=1"]);

        send(&notify, "STATUS=old");
        notify.drain();
        let error = notify
            .try_wait_for("STOPPING=1", Duration::from_millis(50))
            .unwrap_err();
        assert!(error.seen.is_empty(), "{error}");
        assert!(error.to_string().starts_with("no notification \"STOPPING=1\" within"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
