//! Per-client connection counts: which client a peer address belongs to
//! ([`ClientKey`]), how many connections each client holds on a server
//! ([`Clients`]), and the rate-limited report of refusals ([`Refusals`]).
//!
//! The accept loop admits a connection with [`Clients::admit`] before any
//! TLS work; the [`ClientSlot`] it gets travels with the connection to its
//! worker and gives the slot back when the connection ends, on whichever
//! thread that is. The counts are sharded so that connections ending on
//! several workers at once rarely wait for each other; an entry exists
//! only while its client has a connection open, so the table is bounded
//! by the server's connection limit.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Shards of the count table; a power of two.
const SHARDS: usize = 16;

/// One client as the per-client limit sees it: an IPv4 address, or an
/// IPv6 address cut to its network prefix (a host usually holds a whole
/// /64, and can pick any address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    V4(u32),
    V6(u128),
}

impl ClientKey {
    /// The client `ip` belongs to, its IPv6 addresses grouped by their
    /// first `ipv6_prefix` bits. An IPv4-mapped IPv6 address (a dual-stack
    /// socket's view of an IPv4 client) is that IPv4 client.
    pub(crate) fn of(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                ClientKey::V6(u128::from(v6) & mask)
            }
        }
    }
}

/// How many connections each client holds on one server, within a limit.
#[derive(Debug)]
pub(crate) struct Clients {
    max: u32,
    ipv6_prefix: u8,
    hasher: RandomState,
    shards: [Mutex<HashMap<ClientKey, u32>>; SHARDS],
}

impl Clients {
    /// At most `max` connections per client (at least one), IPv6 clients
    /// grouped by `ipv6_prefix` bits.
    pub(crate) fn new(max: usize, ipv6_prefix: u8) -> Clients {
        Clients {
            max: u32::try_from(max).unwrap_or(u32::MAX).max(1),
            ipv6_prefix,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// The most connections one client may hold.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }

    fn shard(&self, key: &ClientKey) -> &Mutex<HashMap<ClientKey, u32>> {
        // Keyed by a random hasher: a client cannot choose its shard.
        &self.shards[self.hasher.hash_one(key) as usize & (SHARDS - 1)]
    }

    /// A slot for one more connection from `ip`, or `None` when its client
    /// already holds the maximum.
    pub(crate) fn admit(self: &Arc<Clients>, ip: IpAddr) -> Option<ClientSlot> {
        let key = ClientKey::of(ip, self.ipv6_prefix);
        // The table stays consistent whatever panicked while it was held:
        // every change is a single insert or remove.
        let mut counts = self.shard(&key).lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        drop(counts);
        Some(ClientSlot {
            clients: Arc::clone(self),
            key,
        })
    }

    /// Connections `ip`'s client holds now.
    /// How many slots the client of `ip` holds.
    pub(crate) fn held(&self, ip: IpAddr) -> u32 {
        let key = ClientKey::of(ip, self.ipv6_prefix);
        let counts = self.shard(&key).lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&key).copied().unwrap_or(0)
    }

    /// Clients with a connection open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// One connection's place in its client's count, given back on drop
/// however the connection's task ends.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    clients: Arc<Clients>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .clients
            .shard(&self.key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Refusals counted between log lines, so that a client hammering the
/// server costs one line per [`Refusals::INTERVAL`], not one per attempt.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    unreported: u64,
    last_report: Option<Instant>,
}

impl Refusals {
    /// The shortest time between two reports.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

    /// Counts one refusal; returns the number to report now, if a report
    /// is due (the first refusal is reported at once).
    pub(crate) fn refused(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self
            .last_report
            .is_none_or(|last| now.duration_since(last) >= Refusals::INTERVAL);
        if !due {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn check(a: &str, b: &str, prefix: u8, same: bool) {
        let key = |ip: &str| ClientKey::of(ip.parse().unwrap(), prefix);
        assert_eq!(key(a) == key(b), same, "{a} and {b} with /{prefix}");
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_prefix_and_ipv4_ones_by_address() {
        check("127.0.0.2", "127.0.0.2", 64, true);
        check("127.0.0.2", "127.0.0.3", 64, false);
        check("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", 64, true);
        check("2001:db8:1:2::1", "2001:db8:1:3::1", 64, false);
        check("2001:db8:1:2::1", "2001:db8:1:3::1", 48, true);
        check("2001:db8::1", "2001:db8::2", 128, false);
        // A dual-stack socket's IPv4 client is the IPv4 client.
        check("::ffff:192.0.2.1", "192.0.2.1", 64, true);
        check("::ffff:192.0.2.1", "::ffff:192.0.2.2", 64, false);
    }

    #[test]
    fn a_client_gets_its_maximum_and_its_slots_back_when_connections_end() {
        let clients = Arc::new(Clients::new(2, 64));
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let b_neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 1, 2, 3, 4));
        let first = clients.admit(a).unwrap();
        let second = clients.admit(a).unwrap();
        assert!(clients.admit(a).is_none());
        // Others are not affected; an IPv6 /64 is one client.
        let b1 = clients.admit(b).unwrap();
        let _b2 = clients.admit(b_neighbour).unwrap();
        assert!(clients.admit(b).is_none());
        assert_eq!(clients.held(a), 2);
        drop(first);
        assert_eq!(clients.held(a), 1);
        let third = clients.admit(a).unwrap();
        drop((second, third, b1));
        // A client with nothing open takes no room in the table.
        assert_eq!(clients.len(), 1);
        let panicked = std::thread::spawn({
            let clients = Arc::clone(&clients);
            move || {
                let _slot = clients.admit(a).unwrap();
                panic!("a connection's task panics");
            }
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(clients.held(a), 0);
    }

    #[test]
    fn refusals_are_reported_at_most_once_per_interval_with_their_count() {
        let start = Instant::now();
        let mut refusals = Refusals::default();
        assert_eq!(refusals.refused(start), Some(1));
        let second = Duration::from_secs(1);
        for i in 1..10 {
            assert_eq!(refusals.refused(start + i * second), None);
        }
        assert_eq!(refusals.refused(start + Refusals::INTERVAL), Some(10));
        assert_eq!(refusals.refused(start + Refusals::INTERVAL + second), None);
    }
}
