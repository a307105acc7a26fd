//! lunchd behind a load balancer that sends PROXY v2 headers (`[proxy]
//! from`), the real binary under socket activation: the balancer is a
//! loopback address of its own (127.0.0.2), the clients are the addresses
//! its headers name.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    Lunchd, NotifySocket, Start, TestCa, TlsConnection, connect_from, notify_field, proxy_v2, proxy_v2_local,
    write_leaf,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The load balancer's address.
const BALANCER: [u8; 4] = [127, 0, 0, 2];

fn header(source: &str, destination: &str) -> Vec<u8> {
    proxy_v2(source.parse().unwrap(), destination.parse().unwrap())
}

/// lunchd serving lunch.test behind the balancer, with the access log,
/// metrics, `limits` and more of `proxy`, and `env`; the CA of its
/// certificate.
fn start(dir: &Path, limits: &str, proxy: &str, env: &[(&str, String)]) -> (Lunchd, TestCa) {
    let ca = TestCa::new();
    let (key, chain) = write_leaf(dir, &ca.issue(&["lunch.test"], 7));
    let config = dir.join("lunchd.toml");
    std::fs::write(
        &config,
        format!("[limits]\n{limits}\n\n[log]\naccess = true\n\n[proxy]\nfrom = [\"127.0.0.2/32\"]\n{proxy}\n"),
    )
    .unwrap();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut start = Start::with_certificate(&key, &chain, &[format!("--config={}", config.display())]);
    start.names = vec!["http", "https", "metrics"];
    start
        .env
        .push(("LOGS_DIRECTORY".to_owned(), logs.display().to_string()));
    start
        .env
        .extend(env.iter().map(|(key, value)| ((*key).to_owned(), value.clone())));
    (Lunchd::start(start), ca)
}

/// A TLS connection through the balancer for `client`.
async fn through_balancer(lunchd: &Lunchd, ca: &TestCa, client: &str) -> TlsConnection {
    let mut tcp = connect_from(BALANCER, lunchd.port("https")).await.unwrap();
    let destination = format!("127.0.0.1:{}", lunchd.port("https"));
    tcp.write_all(&header(client, &destination)).await.unwrap();
    TlsConnection::connect_on(tcp, "lunch.test", ca.client_config(&[b"http/1.1"])).await
}

/// The status of `/healthz` on a new connection with a LOCAL header, as
/// HAProxy's `check-ssl check-send-proxy` asks it.
async fn health_check(lunchd: &Lunchd, ca: &TestCa) -> u16 {
    let mut tcp = connect_from(BALANCER, lunchd.port("https")).await.unwrap();
    tcp.write_all(&proxy_v2_local()).await.unwrap();
    let mut check = TlsConnection::connect_on(tcp, "lunch.test", ca.client_config(&[b"http/1.1"])).await;
    check.get("lunch.test", "/healthz").await.status
}

/// Whether lunchd closed `tcp` after `bytes` without answering a byte.
async fn closed_unanswered(mut tcp: TcpStream, bytes: &[u8]) -> bool {
    let _ = tcp.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("lunchd left the connection open");
    read.is_err() || answer.is_empty()
}

fn scrape(port: u16) -> String {
    support::raw_request(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
}

fn value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_the_one_the_header_names_and_others_are_refused_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (lunchd, ca) = start(dir.path(), "max_connections_per_client = 1", "", &[]);
    let https = lunchd.port("https");
    let hello = support::client_hello(ca.client_config(&[b"http/1.1"]));

    // A client's connection through the balancer; it stays open.
    let mut first = through_balancer(&lunchd, &ca, "203.0.113.7:40001").await;
    assert_eq!(first.get("lunch.test", "/healthz").await.status, 200);
    // Its second one is over its limit of one, and closed before TLS...
    let mut again = connect_from(BALANCER, https).await.unwrap();
    again
        .write_all(&header("203.0.113.7:40002", "127.0.0.1:443"))
        .await
        .unwrap();
    assert!(closed_unanswered(again, &hello).await, "{}", lunchd.log());
    // ...while another client through the same balancer is served: the
    // balancer's address is not one client.
    let mut other = through_balancer(&lunchd, &ca, "203.0.113.8:40003").await;
    assert_eq!(other.get("lunch.test", "/api/today").await.status, 200);
    // The balancer's health check (LOCAL) is served as the balancer's own.
    assert_eq!(health_check(&lunchd, &ca).await, 200);

    // A PROXY header from an address outside [proxy] from is refused, and
    // so is a connection from the balancer without one.
    let outsider = connect_from([127, 0, 0, 5], https).await.unwrap();
    let mut forged = header("203.0.113.66:40004", "127.0.0.1:443");
    forged.extend_from_slice(&hello);
    assert!(closed_unanswered(outsider, &forged).await);
    let bare = connect_from(BALANCER, https).await.unwrap();
    assert!(closed_unanswered(bare, &hello).await);

    // The redirect server reads the header too.
    let mut plain = connect_from(BALANCER, lunchd.port("http")).await.unwrap();
    let mut request = header("203.0.113.9:40005", "127.0.0.1:80");
    request.extend_from_slice(b"GET /menu HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n");
    plain.write_all(&request).await.unwrap();
    let mut response = String::new();
    plain.read_to_string(&mut response).await.unwrap();
    assert_eq!(support::status_of(&response), Some(301), "{response}");

    let metrics = scrape(lunchd.port("metrics"));
    let refused = |server: &str, reason: &str| {
        value(
            &metrics,
            &format!("lunchd_connections_refused_total{{server=\"{server}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("https", "proxy"), 2.0, "{metrics}");
    assert_eq!(refused("https", "per_client"), 1.0, "{metrics}");
    assert_eq!(refused("http", "proxy"), 0.0, "{metrics}");

    // The access log names the clients, and the balancer only for its own
    // health check.
    let lines = support::lines(&dir.path().join("logs/access.log"), 4);
    let mut clients: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().rsplit_once(':').unwrap().0)
        .collect();
    clients.sort_unstable();
    assert_eq!(
        clients,
        ["127.0.0.2", "203.0.113.7", "203.0.113.8", "203.0.113.9"],
        "{lines:#?}"
    );
    let log = lunchd.log();
    assert!(
        log.contains("closed connections that did not come from a trusted balancer with a valid PROXY v2 header"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("the per-client connection limit") && l.contains("203.0.113.7")),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_stop_the_health_check_fails_first_while_the_node_still_serves() {
    const WAIT: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::new(dir.path());
    let env = [("NOTIFY_SOCKET", notify.path.display().to_string())];
    // Longer than the test waits for the exit: only a second signal ends it.
    let (mut lunchd, ca) = start(dir.path(), "drain_timeout = 10", "drain_delay = 60", &env);
    assert_eq!(health_check(&lunchd, &ca).await, 200);
    notify.wait_for("READY=1", WAIT);
    let mut open = through_balancer(&lunchd, &ca, "203.0.113.7:40001").await;
    assert_eq!(open.get("lunch.test", "/api/today").await.status, 200);

    lunchd.signal(libc::SIGTERM);
    let messages = notify.wait_for("STOPPING=1", WAIT);
    let stopping = messages.last().unwrap();
    // systemd waits for the delay and the drain.
    let extend: u64 = notify_field(stopping, "EXTEND_TIMEOUT_USEC").unwrap().parse().unwrap();
    assert!(extend >= (60 + 10) * 1_000_000, "{stopping}");
    // The balancer's check fails from now on...
    assert_eq!(health_check(&lunchd, &ca).await, 503);
    // ...while new connections are still accepted and served, and open
    // ones too.
    let mut late = through_balancer(&lunchd, &ca, "203.0.113.8:40002").await;
    assert_eq!(late.get("lunch.test", "/api/today").await.status, 200);
    assert_eq!(open.get("lunch.test", "/api/today").await.status, 200);
    assert!(lunchd.child.try_wait().unwrap().is_none(), "{}", lunchd.log());

    // A second SIGTERM cuts the delay short: the drain, and exit 0.
    lunchd.signal(libc::SIGTERM);
    assert_eq!(lunchd.wait_exit(Duration::from_secs(30)), Some(0), "{}", lunchd.log());
    let log = lunchd.log();
    let delay = log.find("/healthz fails for 60s").expect(&log);
    let drain = log.find("finishing in-flight requests").expect(&log);
    assert!(delay < drain, "{log}");
}
