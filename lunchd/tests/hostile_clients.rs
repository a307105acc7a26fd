//! Fairness between clients: one address that holds its maximum of
//! connections and keeps reopening the ones lunchd closes does not keep
//! another address from being served.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{Served, TlsConnection, connect_from, eventually};
use tokio::io::AsyncReadExt;

const ATTACKER: [u8; 4] = [127, 0, 0, 2];
const OTHER: [u8; 4] = [127, 0, 0, 3];

/// What lunchd logs, at most once per 10 s, when it refuses connections.
const REFUSED_LOG: &str = "closed connections from clients that already hold the per-client connection limit";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_at_its_maximum_leaves_every_other_address_served() {
    // The attacker runs more connections than the whole server has slots.
    // Without a per-client limit it would hold all 12 for the handshake
    // timeout (30 s), and the other address would wait in the listen
    // queue longer than the bound on each of its requests below.
    let served = Served::start(
        "handshake_timeout = 30\nmax_connections = 12\nmax_connections_per_client = 8",
        "",
    )
    .await;
    let port = served.https();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..16)
        .map(|_| {
            let (stop, closed) = (Arc::clone(&stop), Arc::clone(&closed));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Connects, sends nothing, and reopens once closed.
                    if let Ok(mut stream) = connect_from(ATTACKER, port).await {
                        let mut byte = [0u8; 1];
                        let _ = stream.read(&mut byte).await;
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    // The attacker holds its maximum once lunchd refuses it.
    eventually(Duration::from_secs(30), || async {
        served.lunchd.log().contains(REFUSED_LOG).then_some(())
    })
    .await;
    let closed_before = closed.load(Ordering::Relaxed);

    let mut answered = 0;
    for i in 0..20 {
        let alpn: &[u8] = if i % 2 == 0 { b"h2" } else { b"http/1.1" };
        let config = served.ca.client_config(&[alpn]);
        let request = async {
            let tcp = connect_from(OTHER, port).await.unwrap();
            let mut tls = TlsConnection::connect_on(tcp, "localhost", config).await;
            tls.get("localhost", "/healthz").await
        };
        // A bound so that a starved client fails instead of hanging; far
        // shorter than the 30 s an attacker's connection holds its slot.
        let response = tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "request {i} from another address not answered:\n{}",
                    served.lunchd.log()
                )
            });
        assert_eq!((response.status, response.body.as_str()), (200, "ok\n"));
        answered += 1;
    }
    assert_eq!(answered, 20);
    // All the while the attacker kept reopening and being refused (its
    // held connections last the handshake timeout, longer than the test).
    assert!(
        closed.load(Ordering::Relaxed) > closed_before,
        "the attacker stopped reopening"
    );

    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.abort();
    }
    served.assert_healthy().await;
}
