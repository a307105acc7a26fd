//! Who a connection's client is, and whether it may open one more
//! connection: the [`Gate`] of one server.
//!
//! Without trusted balancers the peer is the client, and the accept loop
//! admits it by its address before any other work ([`Gate::at_accept`]).
//! With them, a peer outside their networks is closed at accept, and a
//! connection from a balancer is admitted on its worker, once its PROXY
//! header has named the client ([`Gate::proxied`]): the header read waits
//! on the network, which the accept loop must not, and the balancer's own
//! address is no client to limit.
//!
//! Every refusal is counted in [`Stats`] and reported at most once per
//! [`Refusals::INTERVAL`] for each kind, from whichever thread refused.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncRead;

use crate::clients::{ClientSlot, Clients, Refusals};
use crate::limits::Stats;
use crate::proxy::{self, Header, ProxyError, Trusted};

/// What the accept loop decided about a connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// The peer is the client, admitted with this slot.
    Admitted(ClientSlot),
    /// From a trusted balancer: its PROXY header names the client, who
    /// is admitted once it is read.
    Proxied(Arc<Gate>),
}

/// The per-client limit and the trusted balancers of one server.
#[derive(Debug)]
pub(crate) struct Gate {
    name: &'static str,
    clients: Arc<Clients>,
    trusted: Trusted,
    stats: Arc<Stats>,
    per_client: Mutex<Refusals>,
    proxy: Mutex<Refusals>,
}

impl Gate {
    /// The gate of the server `name`, counting in `stats`.
    pub(crate) fn new(name: &'static str, clients: Clients, trusted: Trusted, stats: Arc<Stats>) -> Gate {
        Gate {
            name,
            clients: Arc::new(clients),
            trusted,
            stats,
            per_client: Mutex::default(),
            proxy: Mutex::default(),
        }
    }

    /// At accept, without reading: the client's slot, a connection from a
    /// balancer whose header is still to be read, or `None` when the
    /// connection is to be closed (counted and reported).
    pub(crate) fn at_accept(self: &Arc<Gate>, peer: SocketAddr) -> Option<Admission> {
        if self.trusted.is_empty() {
            return self.admit(peer).map(Admission::Admitted);
        }
        if self.trusted.contains(peer.ip()) {
            return Some(Admission::Proxied(Arc::clone(self)));
        }
        self.refuse_proxy(&ProxyError::Untrusted(peer));
        None
    }

    /// For a connection from the balancer `peer`: reads its PROXY header
    /// within `deadline` and admits the client it names (the balancer
    /// itself for a LOCAL header, such as a health check's). `None` when
    /// the connection is to be closed (counted and reported).
    pub(crate) async fn proxied<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        peer: SocketAddr,
        deadline: Duration,
    ) -> Option<(SocketAddr, ClientSlot)> {
        let client = match proxy::read_header(stream, peer, deadline).await {
            Ok(Header::Proxy { source, .. }) => source,
            Ok(Header::Local) => peer,
            Err(e) => {
                self.refuse_proxy(&e);
                return None;
            }
        };
        Some((client, self.admit(client)?))
    }

    /// The client's slot, or `None` when it already holds the per-client
    /// limit (counted and reported).
    pub(crate) fn admit(&self, client: SocketAddr) -> Option<ClientSlot> {
        let slot = self.clients.admit(client.ip());
        if slot.is_none() {
            self.refuse_client(client);
        }
        slot
    }

    /// Whether `client` holds the per-client limit now, without taking a
    /// slot: for a server that admits a client only once its address is
    /// proven (QUIC) and turns it away earlier only if that is sure.
    pub(crate) fn is_full(&self, client: SocketAddr) -> bool {
        self.clients.held(client.ip()) >= self.clients.max()
    }

    /// Counts and reports a connection closed for the per-client limit.
    pub(crate) fn refuse_client(&self, client: SocketAddr) {
        self.stats.refused_per_client.fetch_add(1, Ordering::Relaxed);
        if let Some(refused) = report(&self.per_client) {
            tracing::warn!(
                server = self.name,
                refused,
                latest = %client.ip(),
                limit = self.clients.max(),
                "closed connections from clients that already hold the per-client connection limit"
            );
        }
    }

    fn refuse_proxy(&self, error: &ProxyError) {
        self.stats.refused_proxy.fetch_add(1, Ordering::Relaxed);
        if let Some(refused) = report(&self.proxy) {
            tracing::warn!(
                server = self.name,
                refused,
                latest = %error,
                "closed connections that did not come from a trusted balancer with a valid PROXY v2 header"
            );
        }
    }
}

/// Counts a refusal; the number to report now, if a report is due.
fn report(refusals: &Mutex<Refusals>) -> Option<u64> {
    refusals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .refused(tokio::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use ppp::v2;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn gate(max: usize, trusted: &[&str]) -> Arc<Gate> {
        Arc::new(Gate::new(
            "test",
            Clients::new(max, 64),
            Trusted::parse(trusted).unwrap(),
            Arc::default(),
        ))
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn header(source: &str) -> Vec<u8> {
        let addresses: v2::Addresses = (addr(source), addr("10.77.0.1:443")).into();
        v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[test]
    fn without_balancers_the_peer_is_admitted_at_accept() {
        let gate = gate(1, &[]);
        let first = gate.at_accept(addr("192.0.2.1:1000"));
        assert!(matches!(first, Some(Admission::Admitted(_))), "{first:?}");
        assert!(gate.at_accept(addr("192.0.2.1:1001")).is_none());
        assert_eq!(gate.stats.refused_per_client.load(Ordering::Relaxed), 1);
        assert_eq!(gate.stats.refused_proxy.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn behind_a_balancer_clients_are_admitted_by_their_own_address() {
        let gate = gate(1, &["10.77.0.1/32"]);
        let balancer = addr("10.77.0.1:40000");
        // An outsider is closed at accept; the balancer is not admitted as
        // a client there.
        assert!(gate.at_accept(addr("198.51.100.9:5555")).is_none());
        assert_eq!(gate.stats.refused_proxy.load(Ordering::Relaxed), 1);
        let mut held = Vec::new();
        for client in ["203.0.113.5:1", "203.0.113.6:1"] {
            assert!(matches!(gate.at_accept(balancer), Some(Admission::Proxied(_))));
            let (mut tx, mut rx) = tokio::io::duplex(256);
            tx.write_all(&header(client)).await.unwrap();
            let (seen, slot) = gate.proxied(&mut rx, balancer, Duration::from_secs(1)).await.unwrap();
            assert_eq!(seen, addr(client));
            held.push(slot);
        }
        // Each client holds its one connection; the balancer holds none.
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(gate.clients.held(ip("203.0.113.5")), 1);
        assert_eq!(gate.clients.held(ip("10.77.0.1")), 0);
        let (mut tx, mut rx) = tokio::io::duplex(256);
        tx.write_all(&header("203.0.113.5:2")).await.unwrap();
        assert!(gate.proxied(&mut rx, balancer, Duration::from_secs(1)).await.is_none());
        assert_eq!(gate.stats.refused_per_client.load(Ordering::Relaxed), 1);
        // A LOCAL header (a health check) is the balancer's own connection.
        let local = v2::Builder::new(v2::Version::Two | v2::Command::Local, 0)
            .build()
            .unwrap();
        let (mut tx, mut rx) = tokio::io::duplex(256);
        tx.write_all(&local).await.unwrap();
        let (seen, _slot) = gate.proxied(&mut rx, balancer, Duration::from_secs(1)).await.unwrap();
        assert_eq!(seen, balancer);
        // Garbage where the header belongs is refused and counted.
        let (mut tx, mut rx) = tokio::io::duplex(256);
        tx.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(gate.proxied(&mut rx, balancer, Duration::from_secs(1)).await.is_none());
        assert_eq!(gate.stats.refused_proxy.load(Ordering::Relaxed), 2);
        assert_eq!(gate.stats.refused_per_client.load(Ordering::Relaxed), 1);
    }
}
