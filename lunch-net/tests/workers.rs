//! Connections are served on the worker threads, spread over them, and the
//! workers' probes tell whether they still run.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use lunch_net::{Limits, Server, Workers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A server on `workers` whose one route answers with the name of the
/// thread that served it.
fn start(workers: &Workers) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let router = Router::new().route(
        "/thread",
        get(|| async { std::thread::current().name().unwrap_or("unnamed").to_owned() }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::plain(listener, lunch_net::tower_handler(router), Limits::default())
        .unwrap()
        .with_workers(workers.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx)
}

/// Sends one keep-alive request and returns the body.
async fn thread_of(client: &mut TcpStream) -> String {
    client
        .write_all(b"GET /thread HTTP/1.1\r\nHost: lunch.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .unwrap();
            if body.len() == length {
                assert!(head.starts_with("HTTP/1.1 200"), "{text:?}");
                return body.to_owned();
            }
        }
        let n = timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed: {text:?}");
        response.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn connections_are_spread_over_the_workers_and_stay_on_theirs() {
    let workers = Workers::start(2).unwrap();
    let (addr, stop) = start(&workers);
    let mut clients = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..4 {
        let mut client = TcpStream::connect(addr).await.unwrap();
        threads.push(thread_of(&mut client).await);
        clients.push(client);
    }
    // Each new connection went to the worker with fewer open ones.
    let mut sorted = threads.clone();
    sorted.sort();
    assert_eq!(sorted, ["worker-0", "worker-0", "worker-1", "worker-1"], "{threads:?}");
    assert_eq!(workers.open_connections(), [2, 2]);
    // Later requests on a connection are served where it lives.
    for (client, first) in clients.iter_mut().zip(&threads) {
        assert_eq!(&thread_of(client).await, first);
    }
    drop(clients);
    for _ in 0..500 {
        if workers.open_connections() == [0, 0] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        workers.open_connections(),
        [0, 0],
        "closed connections are still counted"
    );
    let _ = stop.send(());
    workers.shutdown();
}

#[tokio::test]
async fn probes_answer_until_the_workers_shut_down() {
    let workers = Workers::start(3).unwrap();
    let probes = workers.probes();
    assert_eq!(probes.len(), 3);
    for probe in &probes {
        assert!(probe.check().await);
    }
    let stopping = workers.clone();
    tokio::task::spawn_blocking(move || stopping.shutdown()).await.unwrap();
    for probe in &probes {
        assert!(!probe.check().await, "a stopped worker answered");
    }
}
