//! The service manager notification protocol (`sd_notify(3)`): readiness,
//! reload, stop and watchdog. Every call does nothing when `NOTIFY_SOCKET`
//! is unset, as in development.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Both servers are serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts. systemd 253's `Type=notify-reload` requires
/// `MONOTONIC_USEC` with `RELOADING=1`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading")]),
        Err(e) => {
            tracing::warn!("cannot read CLOCK_MONOTONIC: {e}");
            send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
        }
    }
}

/// The service stops; draining may take up to `drain`, which systemd is
/// asked to allow for.
pub fn stopping(drain: std::time::Duration) {
    let extend = u32::try_from(drain.as_micros() + 5_000_000).unwrap_or(u32::MAX);
    send(&[
        NotifyState::Stopping,
        NotifyState::ExtendTimeoutUsec(extend),
        NotifyState::Status("draining connections"),
    ]);
}

/// The servers made progress since the last ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
