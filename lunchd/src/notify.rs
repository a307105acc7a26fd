//! The service manager notification protocol (`sd_notify(3)`): readiness,
//! reload, stop and watchdog. Every call does nothing when `NOTIFY_SOCKET`
//! is unset, as in development.
//!
//! The datagram is sent here rather than by `sd_notify::notify` because
//! that does not understand abstract socket addresses (`@name`), which
//! service managers other than PID 1 (user managers, containers) may use.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use sd_notify::NotifyState;

/// Where notifications go; read once, on the first one.
fn socket_path() -> Option<&'static OsString> {
    static PATH: std::sync::OnceLock<Option<OsString>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()))
        .as_ref()
}

fn send(states: &[NotifyState<'_>]) {
    let Some(path) = socket_path() else {
        return;
    };
    let mut message = String::new();
    for state in states {
        // A newline inside a value would start a new assignment.
        message.push_str(&state.to_string().replace('\n', " "));
        message.push('\n');
    }
    if let Err(e) = send_to(path, message.as_bytes()) {
        tracing::warn!("cannot notify the service manager at {}: {e}", path.to_string_lossy());
    }
}

fn send_to(path: &OsString, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message, &addr)?
    } else if bytes.starts_with(b"/") {
        socket.send_to(message, path)?
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "only file system and abstract socket addresses are supported",
        ));
    };
    if sent != message.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "message truncated"));
    }
    Ok(())
}

/// The watchdog interval systemd expects pings within, as
/// `sd_watchdog_enabled(3)` reads it: `WATCHDOG_USEC` set to a positive
/// number, and `WATCHDOG_PID`, when set, naming this process.
pub fn watchdog_interval() -> Option<Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0 && u != u64::MAX)?;
    match pid {
        Some(pid) if pid.trim().parse::<u32>().ok() != Some(own_pid) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

/// systemd reads notifications into a buffer of `PIPE_BUF` (4096) bytes
/// and drops a longer message whole, READY=1 included; a status (a list
/// of configuration errors, say) is cut to leave room for the rest.
const MAX_STATUS: usize = 2048;

fn bounded(status: &str) -> std::borrow::Cow<'_, str> {
    if status.len() <= MAX_STATUS {
        return status.into();
    }
    let mut end = MAX_STATUS;
    while !status.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (see the journal)", &status[..end]).into()
}

/// Both servers are serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&bounded(status))]);
}

/// The status changed while serving (the certificate's remaining time).
pub fn status(status: &str) {
    send(&[NotifyState::Status(&bounded(status))]);
}

/// A reload starts. systemd 253's `Type=notify-reload` requires
/// `MONOTONIC_USEC`, the time the reload began, with `RELOADING=1`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading")]),
        Err(e) => {
            tracing::warn!("cannot read CLOCK_MONOTONIC: {e}");
            send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
        }
    }
}

/// The service stops; it may take up to `drain` (the drain delay and the
/// drain deadline) before the last request has finished. systemd is asked
/// to allow for that in case `TimeoutStopSec=` is shorter; it never
/// shortens the timeout.
pub fn stopping(drain: Duration) {
    let extend = u32::try_from(drain.as_micros() + 5_000_000).unwrap_or(u32::MAX);
    send(&[
        NotifyState::Stopping,
        NotifyState::ExtendTimeoutUsec(extend),
        NotifyState::Status("stopping: finishing in-flight requests"),
    ]);
}

/// The servers made progress since the last ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(usec: Option<&str>, pid: Option<&str>, expected: Option<u64>) {
        assert_eq!(
            parse_watchdog(usec, pid, 42),
            expected.map(Duration::from_micros),
            "WATCHDOG_USEC={usec:?} WATCHDOG_PID={pid:?}"
        );
    }

    #[test]
    fn long_statuses_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_STATUS);
        let cut = bounded(&long);
        assert!(cut.len() < MAX_STATUS + 40, "{}", cut.len());
        assert!(cut.ends_with("… (see the journal)"));
    }

    #[test]
    fn watchdog_follows_sd_watchdog_enabled() {
        check(None, None, None);
        check(Some("2000000"), None, Some(2_000_000));
        check(Some("2000000"), Some("42"), Some(2_000_000));
        check(Some("2000000"), Some("41"), None);
        check(Some("2000000"), Some("x"), None);
        check(Some("0"), None, None);
        check(Some("-5"), None, None);
        check(Some("18446744073709551615"), None, None);
        check(Some("soon"), None, None);
    }
}
