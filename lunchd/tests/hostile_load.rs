//! Resource exhaustion: slowloris on both ports and a connection flood past
//! `max_connections`. Normal clients keep being served (or are served again
//! once the flood stops), slow clients are cut off by the timeouts, and the
//! process's descriptors and memory stay bounded.

mod support;

use std::time::Duration;

use support::{Served, client_hello, eventually, fd_count, rss_kib, settled_fd_count, tls_stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a slow client misbehaves.
#[derive(Debug, Clone, Copy)]
enum Slow {
    /// Request headers, one byte every 200 ms, never finished.
    Headers,
    /// A TLS ClientHello, one byte every 200 ms.
    Hello,
    /// Connects and sends nothing.
    Silent,
}

/// Connects, misbehaves, and reports whether the server closed the
/// connection within 60 s.
async fn slow_client(port: u16, how: Slow, hello: Vec<u8>, connected: tokio::sync::mpsc::Sender<()>) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let _ = connected.send(()).await;
    let script: Vec<u8> = match how {
        Slow::Headers => [&b"GET / HTTP/1.1\r\nHost: lunch.test\r\nX-Slow: "[..], &[b'a'; 4096]].concat(),
        Slow::Hello => hello,
        Slow::Silent => Vec::new(),
    };
    let (mut reader, mut writer) = stream.split();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut next = script.iter();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if let Some(byte) = next.next() {
                    if writer.write_all(&[*byte]).await.is_err() {
                        return true;
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_while_others_are_served() {
    let served = Served::start("header_timeout = 3\nhandshake_timeout = 3\nidle_timeout = 5", "").await;
    let pid = served.lunchd.pid();
    let base = settled_fd_count(pid).await;
    let hello = client_hello(served.ca.client_config(&[b"h2"]));
    let (connected_tx, mut connected) = tokio::sync::mpsc::channel(1024);
    let mut slow = tokio::task::JoinSet::new();
    let mut count = 0;
    for i in 0..150 {
        for (port, how) in [
            (served.http(), Slow::Headers),
            (served.https(), if i % 2 == 0 { Slow::Hello } else { Slow::Silent }),
        ] {
            slow.spawn(slow_client(port, how, hello.clone(), connected_tx.clone()));
            count += 1;
        }
    }
    drop(connected_tx);
    for _ in 0..count {
        connected.recv().await.expect("a slow client could not connect");
    }
    // lunchd holds them all...
    eventually(Duration::from_secs(20), || async {
        (fd_count(pid) >= base + count).then_some(())
    })
    .await;

    // ...and meanwhile others get answers.
    for _ in 0..5 {
        served.assert_healthy().await;
    }

    let mut cut_off = 0;
    while let Some(closed) = slow.join_next().await {
        cut_off += usize::from(closed.unwrap());
    }
    assert_eq!(cut_off, count, "slow clients still connected after 60 s");
    assert!(served.lunchd.log().contains("TLS handshake timed out"));
    served.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_recovers() {
    const LIMIT: usize = 50;
    let served = Served::start(
        &format!("max_connections = {LIMIT}\nhandshake_timeout = 30\nheader_timeout = 30"),
        "",
    )
    .await;
    let pid = served.lunchd.pid();
    let fds_before = settled_fd_count(pid).await;
    let rss_before = rss_kib(pid);

    // Ten times the limit on each port, holding every connection open.
    let mut flood = Vec::new();
    for _ in 0..10 * LIMIT {
        for port in [served.http(), served.https()] {
            flood.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
    }
    served
        .lunchd
        .wait_log("connection limit reached; new clients wait", Duration::from_secs(20));
    // Both servers fill up to the limit, and no further.
    let full = eventually(Duration::from_secs(20), || async {
        let fds = fd_count(pid);
        (fds + 4 >= fds_before + 2 * LIMIT).then_some(fds)
    })
    .await;
    for _ in 0..20 {
        let fds = fd_count(pid);
        assert!(
            fds <= fds_before + 2 * LIMIT + 2,
            "{fds} descriptors, {fds_before} before the flood"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss = rss_kib(pid);
    assert!(
        rss < rss_before + 64 * 1024,
        "resident memory grew from {rss_before} KiB to {rss} KiB"
    );
    eprintln!("flood: {fds_before} -> {full} descriptors, {rss_before} -> {rss} KiB resident");

    // A waiting client is served once the flood goes away.
    let waiting = {
        let port = served.https();
        let config = served.ca.client_config(&[b"h2"]);
        tokio::spawn(async move {
            let mut tls = support::TlsConnection::connect(port, "localhost", config).await;
            tls.get("localhost", "/healthz").await.status
        })
    };
    drop(flood);
    assert_eq!(waiting.await.unwrap(), 200);
    served.assert_healthy().await;
    eventually(Duration::from_secs(20), || async {
        (fd_count(pid) <= fds_before + 4).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_responses_is_cut_off() {
    let served = Served::start("idle_timeout = 3", "").await;
    let mut tls = tls_stream(served.https(), served.ca.client_config(&[b"http/1.1"])).await;
    let batch = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(1000);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sending = tokio::spawn({
        let sent = std::sync::Arc::clone(&sent);
        async move {
            // Pipelined requests until the server gives up on it; never a read.
            while tls.write_all(batch.as_bytes()).await.is_ok() {
                sent.fetch_add(1000, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // Others are served meanwhile...
    served.assert_healthy().await;
    // ...and the client that takes nothing is closed: its writes fail once
    // lunchd has closed the connection (the bound only keeps a failure
    // from hanging the suite).
    tokio::time::timeout(Duration::from_secs(120), sending)
        .await
        .expect("a client that never reads was not cut off")
        .unwrap();
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent >= 1000, "only {sent} requests were sent");
    eprintln!("slow reader: cut off after {sent} pipelined requests");
    served.assert_healthy().await;
}
