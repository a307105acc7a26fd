//! What a server allows one client ([`Limits`]) and what it counts while
//! it runs ([`Stats`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Bounds on what one client can hold or make the server do.
///
/// The defaults are safe for a server on the internet; the caller decides
/// whether and how they are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time from accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to receive a request's complete headers (HTTP/1), from the
    /// start of the connection or the end of the previous response. Like
    /// the idle timeout, enforced within a quarter of it after it passes.
    pub header_timeout: Duration,
    /// Time a connection may pass without a byte read or written.
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
    /// Open connections per server; further clients wait in the kernel's
    /// listen queue.
    pub max_connections: usize,
    /// Open connections per client and server; a client's connection over
    /// it is closed at once after accept, before any TLS work. Connections
    /// closed so do not count against `max_connections`.
    pub max_connections_per_client: usize,
    /// Leading bits of an IPv6 address that name one client for
    /// `max_connections_per_client`: a host usually holds a whole /64.
    pub client_ipv6_prefix: u8,
    /// Size of a request head (HTTP/1) or header list (HTTP/2), in bytes.
    pub max_header_bytes: usize,
    /// Number of header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 1024,
            // An office behind one NAT address: 50 people with a tab or
            // two open, one HTTP/2 connection each (browsers open up to 6
            // per host for HTTP/1.1, briefly) stay far below it, and one
            // address still holds at most a quarter of `max_connections`.
            max_connections_per_client: 256,
            client_ipv6_prefix: 64,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_streams: 100,
        }
    }
}

/// Counters of one server, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicUsize,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Of those, the ones that timed out.
    pub handshake_timeouts: AtomicU64,
    /// Plain-HTTP requests refused on the TLS port.
    pub plaintext_on_tls: AtomicU64,
    /// Connections closed right after accept because their client already
    /// held `Limits::max_connections_per_client`.
    pub refused_per_client: AtomicU64,
    /// Connections closed before TLS (or HTTP) on a server with trusted
    /// balancers: from a peer outside their networks, or with a PROXY
    /// header that was missing, malformed, too long or late.
    pub refused_proxy: AtomicU64,
    /// TLS handshakes completed in full.
    pub handshakes_full: AtomicU64,
    /// TLS handshakes that resumed an earlier session.
    pub handshakes_resumed: AtomicU64,
    /// Times the server reached `max_connections` and stopped accepting
    /// until a connection ended (new clients wait in the listen queue;
    /// none is refused).
    pub limit_reached: AtomicU64,
}

/// Counts a connection as open for as long as it lives, however its task
/// ends.
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<Stats>);

impl OpenConnection {
    pub(crate) fn new(stats: &Arc<Stats>) -> OpenConnection {
        stats.active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(stats))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_bound_every_client() {
        let limits = Limits::default();
        for timeout in [
            limits.handshake_timeout,
            limits.header_timeout,
            limits.idle_timeout,
            limits.drain_timeout,
        ] {
            assert!(
                timeout >= Duration::from_secs(1) && timeout <= Duration::from_secs(600),
                "{limits:?}"
            );
        }
        // A slow client gets no more time for a head or a handshake than
        // for silence.
        assert!(limits.header_timeout <= limits.idle_timeout, "{limits:?}");
        assert!(limits.handshake_timeout <= limits.idle_timeout, "{limits:?}");
        assert!(limits.max_connections >= 1);
        assert!(
            (1..=limits.max_connections).contains(&limits.max_connections_per_client),
            "{limits:?}"
        );
        assert!((16..=128).contains(&limits.client_ipv6_prefix), "{limits:?}");
        // hyper's HTTP/1 read buffer is at least 8 KiB: less would not bound
        // anything lower.
        assert!(limits.max_header_bytes >= 8192, "{limits:?}");
        assert!(limits.max_header_bytes <= 1024 * 1024, "{limits:?}");
        assert!((1..=1000).contains(&limits.max_headers), "{limits:?}");
        assert!((1..=10_000).contains(&limits.max_streams), "{limits:?}");
    }

    #[test]
    fn a_connection_counts_as_open_until_it_ends_however_it_ends() {
        let stats = Arc::new(Stats::default());
        let first = OpenConnection::new(&stats);
        let second = OpenConnection::new(&stats);
        assert_eq!(stats.active.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(stats.active.load(Ordering::Relaxed), 1);
        let panicked = std::thread::spawn(move || {
            let _open = second;
            panic!("a connection's task panics");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    }
}
