//! The HTTP/3 server on a real UDP socket, with a real quinn + h3 client:
//! Retry under load, the connection bound, and the drain at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;
use hyper::body::Buf;
use lunch_net::Limits;
use lunch_net::quic::{self, QuicServer};
use lunch_net::tls::{CertificateStore, LoadedCertificate};
use lunch_testkit::TestCa;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::oneshot;
use tokio::time::timeout;

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "lunch\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow lunch\n"
            }),
        )
        .route("/big", get(|| async { "lunch".repeat(BIG / 5) }))
}

/// The length of `/big`'s answer.
const BIG: usize = 256 * 1024;

struct Running {
    addr: SocketAddr,
    ca: TestCa,
    server_stats: Arc<lunch_net::Stats>,
    quic_stats: Arc<quic::QuicStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A store with a certificate for localhost from `ca`.
fn store(ca: &TestCa) -> Arc<CertificateStore> {
    let leaf = ca.issue(&["localhost"], 7);
    let certificate = LoadedCertificate::from_pem(
        leaf.key_pem.as_bytes(),
        "key.pem".as_ref(),
        leaf.chain_pem.as_bytes(),
        "fullchain.pem".as_ref(),
        SystemTime::now(),
    )
    .unwrap();
    CertificateStore::new(certificate)
}

fn serve(limits: Limits, retry_above: Option<usize>) -> Running {
    let ca = TestCa::new();
    let store = store(&ca);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut server = QuicServer::new(
        socket,
        quic::server_config(store),
        lunch_net::tower_handler(router()),
        limits,
    )
    .unwrap();
    if let Some(open) = retry_above {
        server = server.retry_above(open);
    }
    let addr = server.local_addr().unwrap();
    let (server_stats, quic_stats) = (server.stats(), server.quic_stats());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        ca,
        server_stats,
        quic_stats,
        stop: Some(stop),
        task,
    }
}

async fn connect(running: &Running) -> Result<quinn::Connection, quinn::ConnectionError> {
    connect_from(running, [127, 0, 0, 1], quinn::TransportConfig::default()).await
}

/// A connection from the loopback address `ip`, the client's side set
/// by `transport`.
async fn connect_from(
    running: &Running,
    ip: [u8; 4],
    transport: quinn::TransportConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let tls = QuicClientConfig::try_from(running.ca.client_config(&[b"h3"])).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((ip, 0))).unwrap();
    endpoint.set_default_client_config(config);
    endpoint.connect(running.addr, "localhost").unwrap().await
}

/// That the server refused a connection with CONNECTION_REFUSED.
fn assert_refused(connected: Result<quinn::Connection, quinn::ConnectionError>, who: &str) {
    match connected {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED,
                "{close}"
            )
        }
        other => panic!("{who} got {other:?}"),
    }
}

/// GET `path` on a new HTTP/3 session over `connection`: status and body.
async fn fetch(connection: &quinn::Connection, path: &str) -> (u16, String) {
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
        .await
        .unwrap();
    tokio::spawn(async move { driver.wait_idle().await });
    let request = hyper::Request::get(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut stream = send.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    (response.status().as_u16(), String::from_utf8(body).unwrap())
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn a_client_asked_to_retry_is_served_after_proving_its_address() {
    let running = serve(Limits::default(), Some(0));
    let connection = connect(&running).await.unwrap();
    assert_eq!(fetch(&connection, "/").await, (200, "lunch\n".to_owned()));
    assert_eq!(running.quic_stats.retried.load(Ordering::Relaxed), 1);
    assert_eq!(running.server_stats.accepted.load(Ordering::Relaxed), 1);

    // Below the threshold nobody is asked.
    let relaxed = serve(Limits::default(), None);
    let connection = connect(&relaxed).await.unwrap();
    assert_eq!(fetch(&connection, "/").await.0, 200);
    assert_eq!(relaxed.quic_stats.retried.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn clients_beyond_the_connection_bound_are_refused_until_one_closes() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let running = serve(limits, Some(usize::MAX));
    let first = connect(&running).await.unwrap();
    assert_eq!(fetch(&first, "/").await.0, 200);
    assert_refused(connect(&running).await, "a second client");
    assert_eq!(running.quic_stats.refused.load(Ordering::Relaxed), 1);

    first.close(0u32.into(), b"done");
    until("the first connection closing", || {
        running.server_stats.active.load(Ordering::Relaxed) == 0
    })
    .await;
    let third = connect(&running).await.unwrap();
    assert_eq!(fetch(&third, "/").await.0, 200);
}

/// One address holding its maximum is refused more, after a Retry has
/// proven the address is its own, while another address is served.
#[tokio::test]
async fn a_client_at_the_per_client_limit_is_refused_and_others_are_served() {
    let limits = Limits {
        max_connections_per_client: 2,
        ..Limits::default()
    };
    let running = serve(limits, None);
    // Held open: `fetch` ends its HTTP/3 session, and so the connection.
    let first = connect(&running).await.unwrap();
    let _second = connect(&running).await.unwrap();
    until("both handshakes done", || {
        running.quic_stats.handshakes.load(Ordering::Relaxed) == 2
    })
    .await;
    assert_refused(connect(&running).await, "a third connection from the same address");
    assert_eq!(running.server_stats.refused_per_client.load(Ordering::Relaxed), 1);
    // The refusal came after a Retry: the address was proven first.
    assert_eq!(running.quic_stats.retried.load(Ordering::Relaxed), 1);

    let other = connect_from(&running, [127, 0, 0, 2], quinn::TransportConfig::default())
        .await
        .unwrap();
    assert_eq!(fetch(&other, "/").await, (200, "lunch\n".to_owned()));

    first.close(0u32.into(), b"done");
    until("the first connection closing", || {
        running.server_stats.active.load(Ordering::Relaxed) == 1
    })
    .await;
    let again = connect(&running).await.unwrap();
    assert_eq!(fetch(&again, "/").await.0, 200);
    assert_eq!(running.server_stats.refused_per_client.load(Ordering::Relaxed), 1);
}

/// A client that keeps its connection alive but stops taking a
/// response (reads nothing, so gives no more stream credit) has the
/// response cut at the idle timeout, as a client that stops reading is
/// over TCP; its connection stays.
#[tokio::test]
async fn a_client_that_stops_taking_its_response_is_cut_at_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let running = serve(limits, None);
    let mut transport = quinn::TransportConfig::default();
    // Room for the response's head and a little of its body.
    transport.stream_receive_window(4096u32.into());
    transport.keep_alive_interval(Some(Duration::from_millis(100)));
    let connection = connect_from(&running, [127, 0, 0, 1], transport).await.unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
        .await
        .unwrap();
    tokio::spawn(async move { driver.wait_idle().await });
    let mut stream = send
        .send_request(hyper::Request::get("https://localhost/big").body(()).unwrap())
        .await
        .unwrap();
    stream.finish().await.unwrap();
    let response = timeout(Duration::from_secs(5), stream.recv_response())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    // Takes nothing for three idle timeouts, then reads what there is.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut body = 0;
    let ended = loop {
        match timeout(Duration::from_secs(5), stream.recv_data()).await {
            Ok(Ok(Some(chunk))) => body += chunk.remaining(),
            Ok(Ok(None)) => break "the end of the body",
            Ok(Err(e)) if e.to_string().contains("H3_REQUEST_CANCELLED") => break "a reset",
            Ok(Err(e)) => panic!("the stream failed otherwise, after {body} bytes: {e}"),
            Err(_) => break "nothing: the stream hung",
        }
    };
    assert_eq!(ended, "a reset", "after {body} bytes");
    assert!(body < BIG, "{body} bytes");
    // Only the request was cut, not the connection.
    assert!(connection.close_reason().is_none(), "{:?}", connection.close_reason());
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_then_closes() {
    let mut running = serve(Limits::default(), None);
    let connection = connect(&running).await.unwrap();
    let conn = connection.clone();
    let slow = tokio::spawn(async move { fetch(&conn, "/slow").await });
    until("the request arriving", || {
        running.server_stats.active.load(Ordering::Relaxed) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop.take().unwrap().send(()).unwrap();
    let answer = timeout(Duration::from_secs(5), slow).await.unwrap().unwrap();
    assert_eq!(answer, (200, "slow lunch\n".to_owned()));
    timeout(Duration::from_secs(5), &mut running.task)
        .await
        .unwrap()
        .unwrap();
    // The endpoint has closed the connection, and takes no new ones.
    assert!(
        timeout(Duration::from_secs(5), connection.closed()).await.is_ok(),
        "the connection stayed open"
    );
    let late = timeout(Duration::from_secs(2), connect(&running)).await;
    assert!(!matches!(late, Ok(Ok(_))), "a client connected after the shutdown");
}

/// The socket every client's datagrams queue on gets a receive buffer
/// beyond the kernel's default, as far as `net.core.rmem_max` allows.
#[tokio::test]
async fn the_socket_gets_a_larger_receive_buffer() {
    let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let same = socket2::SockRef::from(&socket).try_clone().unwrap();
    let before = same.recv_buffer_size().unwrap();
    let _server = QuicServer::new(
        socket,
        quic::server_config(store(&TestCa::new())),
        lunch_net::tower_handler(router()),
        Limits::default(),
    )
    .unwrap();
    let after = same.recv_buffer_size().unwrap();
    // Linux reports twice the size set. With rmem_max at its default
    // nothing can be gained, and this proves only that nothing shrank.
    let expected = ((4 << 20).min(rmem_max) * 2).max(before);
    assert!(
        after >= expected,
        "receive buffer {before} -> {after}, expected {expected}"
    );
}
