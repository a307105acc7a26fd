//! Stopping a server loses no request a client has already sent.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use lunch_net::{Limits, Server, Workers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// A running server with one accepted client connection: the client, the
/// stop trigger and the server's task.
async fn one_connection(
    router: Router,
    limits: Limits,
    workers: Option<Workers>,
) -> (tokio::net::TcpStream, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = Server::plain(listener, lunch_net::tower_handler(router), limits).unwrap();
    if let Some(workers) = workers {
        server = server.with_workers(workers);
    }
    let stats = server.stats();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..500 {
        if stats.active.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        stats.active.load(Ordering::Relaxed),
        1,
        "the connection was not accepted"
    );
    (client, stop_tx, running)
}

/// A client connects, the server is told to stop, then the request
/// arrives: the server answers it before closing, rather than closing the
/// connection as idle (what a restart right after a connection did).
#[tokio::test]
async fn a_request_arriving_as_the_server_stops_is_answered() {
    request_arriving_as_the_server_stops(None).await;
}

/// The same when the connection lives on a worker thread.
#[tokio::test]
async fn a_request_arriving_as_the_server_stops_is_answered_on_a_worker() {
    let workers = Workers::start(2).unwrap();
    request_arriving_as_the_server_stops(Some(workers.clone())).await;
    workers.shutdown();
}

async fn request_arriving_as_the_server_stops(workers: Option<Workers>) {
    let router = Router::new().route("/", get(|| async { "lunch" }));
    let (mut client, stop_tx, running) = one_connection(router, Limits::default(), workers).await;
    stop_tx.send(()).unwrap();
    // Let the server act on the stop before the request arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    timeout(Duration::from_secs(10), client.read_to_end(&mut response))
        .await
        .expect("the server kept the connection open")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    assert!(response.ends_with("lunch"), "{response:?}");
    timeout(Duration::from_secs(10), running)
        .await
        .expect("the server did not stop")
        .unwrap();
}

/// A client that connects and says nothing does not hold up the stop for
/// the whole header timeout.
#[tokio::test]
async fn a_silent_connection_does_not_hold_up_the_stop() {
    let limits = Limits {
        header_timeout: Duration::from_secs(3600),
        drain_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let (mut client, stop_tx, running) = one_connection(Router::new(), limits, None).await;
    stop_tx.send(()).unwrap();
    timeout(Duration::from_secs(30), running)
        .await
        .expect("a silent connection held up the stop")
        .unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{rest:?}");
}
