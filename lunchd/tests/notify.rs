//! The service manager protocol, as systemd sees it: the real binary under
//! `systemd-socket-activate`, with `NOTIFY_SOCKET` pointing at a datagram
//! socket this test reads.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use support::{
    Leaf, Lunchd, NotifySocket, Start, TestCa, TlsConnection, monotonic_usec, notify_field, raw_request, write_atomic,
    write_leaf,
};

const WAIT: Duration = Duration::from_secs(10);

/// lunchd with a key and chain in `dir`, no configuration file of the host,
/// and `NOTIFY_SOCKET` (plus `env`) set. It starts on the first connection.
fn start(dir: &Path, notify: &NotifySocket, env: &[(&str, &str)]) -> Lunchd {
    let config = dir.join("lunchd.toml");
    std::fs::write(&config, "").unwrap();
    let mut vars = vec![("NOTIFY_SOCKET".to_owned(), notify.path.display().to_string())];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Lunchd::start(Start {
        env: vars,
        ..Start::with_certificate(
            &dir.join("key.pem"),
            &dir.join("fullchain.pem"),
            &[format!("--config={}", config.display())],
        )
    })
}

/// Makes systemd-socket-activate start lunchd, as a first client would.
fn activate(lunchd: &Lunchd) {
    drop(TcpStream::connect(("127.0.0.1", lunchd.port("https"))).unwrap());
}

/// lunchd with a certificate for lunch.test, started and past its first
/// READY=1.
struct Ready {
    // Before `dir`, so that lunchd stops before its directory goes.
    lunchd: Lunchd,
    notify: NotifySocket,
    ca: TestCa,
    leaf: Leaf,
    /// The notifications up to and including READY=1.
    messages: Vec<String>,
    dir: tempfile::TempDir,
}

fn ready(serial: u64, env: &[(&str, &str)]) -> Ready {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(&["lunch.test"], serial);
    write_leaf(dir.path(), &leaf);
    let notify = NotifySocket::new(dir.path());
    let lunchd = start(dir.path(), &notify, env);
    activate(&lunchd);
    let messages = notify.wait_for("READY=1", WAIT);
    Ready {
        lunchd,
        notify,
        ca,
        leaf,
        messages,
        dir,
    }
}

fn has_line(messages: &[String], line: &str) -> bool {
    messages.iter().any(|m| m.lines().any(|l| l == line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_both_sockets_serve_with_a_useful_status() {
    let Ready {
        lunchd, ca, messages, ..
    } = &ready(7, &[]);
    assert_eq!(
        messages.len(),
        1,
        "READY=1 must be the first notification: {messages:?}"
    );
    let status = notify_field(&messages[0], "STATUS").expect("READY=1 comes with a STATUS=");
    let https = format!("https on 127.0.0.1:{}", lunchd.port("https"));
    let http = format!("http redirect on 127.0.0.1:{}", lunchd.port("http"));
    assert!(status.contains(&https), "{status}");
    assert!(status.contains(&http), "{status}");
    assert!(
        status.contains("certificate") && status.contains("lunch.test"),
        "{status}"
    );
    assert!(status.contains("expires"), "{status}");

    // Both accept loops answered before READY=1, so both serve now.
    let mut tls = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(tls.get("lunch.test", "/healthz").await.status, 200);
    let redirect = raw_request(lunchd.port("http"), b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n");
    assert!(redirect.starts_with("HTTP/1.1 301 "), "{redirect}");
}

#[test]
fn no_ready_when_the_certificate_cannot_be_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(&["lunch.test"], 7);
    write_leaf(dir.path(), &leaf);
    write_atomic(&dir.path().join("fullchain.pem"), b"not a certificate\n");
    let notify = NotifySocket::new(dir.path());
    let mut lunchd = start(dir.path(), &notify, &[]);
    activate(&lunchd);

    assert_eq!(lunchd.wait_exit(WAIT), Some(1), "{}", lunchd.log());
    // The process is gone, so nothing more can arrive.
    let mut messages = Vec::new();
    while let Some(message) = notify.recv(Duration::from_millis(100)) {
        messages.push(message);
    }
    assert!(!has_line(&messages, "READY=1"), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_between_reloading_and_ready() {
    let Ready {
        lunchd,
        notify,
        ca,
        leaf: old,
        dir,
        ..
    } = &ready(1, &[]);
    let port = lunchd.port("https");
    // A fresh client configuration per connection: a resumed session would
    // report the certificate of the session it resumes.
    let client = || ca.client_config(&[b"h2"]);
    assert_eq!(
        TlsConnection::connect(port, "lunch.test", client()).await.serial,
        old.serial
    );

    let new = ca.issue(&["lunch.test"], 2);
    write_leaf(dir.path(), &new);
    let before = monotonic_usec();
    lunchd.signal(libc::SIGHUP);

    let messages = notify.wait_for("RELOADING=1", WAIT);
    let reloading = messages.last().unwrap();
    let stamp: u64 = notify_field(reloading, "MONOTONIC_USEC")
        .expect("RELOADING=1 comes with MONOTONIC_USEC= (Type=notify-reload needs it)")
        .parse()
        .unwrap();
    assert!(
        stamp >= before,
        "MONOTONIC_USEC={stamp} is older than the signal ({before})"
    );
    assert!(stamp <= monotonic_usec(), "MONOTONIC_USEC={stamp} is in the future");

    let messages = notify.wait_for("READY=1", WAIT);
    let status = notify_field(messages.last().unwrap(), "STATUS").unwrap();
    assert!(!status.contains("failed"), "{status}");
    assert_eq!(
        TlsConnection::connect(port, "lunch.test", client()).await.serial,
        new.serial
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_on_reload_keeps_the_old_one_and_says_why() {
    let Ready {
        lunchd,
        notify,
        ca,
        leaf: old,
        dir,
        ..
    } = &ready(1, &[]);

    // A chain whose certificate does not belong to the key.
    let other = ca.issue(&["lunch.test"], 3);
    write_atomic(&dir.path().join("fullchain.pem"), other.chain_pem.as_bytes());
    lunchd.signal(libc::SIGHUP);
    notify.wait_for("RELOADING=1", WAIT);
    let messages = notify.wait_for("READY=1", WAIT);
    let status = notify_field(messages.last().unwrap(), "STATUS").unwrap();
    assert!(status.starts_with("reload failed"), "{status}");
    assert!(status.contains("key"), "the reason is missing: {status}");

    let tls = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(tls.serial, old.serial);
    lunchd.wait_log("reload failed", WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let Ready { lunchd, notify, ca, .. } = &mut ready(1, &[]);

    // A request held in flight by HTTP/2 flow control: the client grants a
    // one-byte window and reads nothing, so the server has answered with
    // the headers but cannot finish the body until the client reads.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", lunchd.port("https")))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("lunch.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("https://lunch.test/api/lunch")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    lunchd.signal(libc::SIGTERM);
    let messages = notify.wait_for("STOPPING=1", WAIT);
    let stopping = messages.last().unwrap();
    assert!(notify_field(stopping, "EXTEND_TIMEOUT_USEC").is_some(), "{stopping}");
    assert!(
        lunchd.child.try_wait().unwrap().is_none(),
        "lunchd exited with a request in flight:\n{}",
        lunchd.log()
    );

    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("the response in flight never completed")
        .expect("the response in flight was cut off")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json["lunch"].is_string(), "{json}");
    assert_eq!(lunchd.wait_exit(WAIT), Some(0), "{}", lunchd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_arrive_when_watchdog_usec_is_set() {
    let Ready { lunchd, notify, .. } = &ready(1, &[("WATCHDOG_USEC", "200000")]);
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", WAIT);
    }
    lunchd.wait_log("watchdog enabled", WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_an_abstract_socket() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    write_leaf(dir.path(), &ca.issue(&["lunch.test"], 1));
    let notify = NotifySocket::new_abstract("abstract");
    assert!(notify.path.display().to_string().starts_with('@'));
    let lunchd = start(dir.path(), &notify, &[]);
    activate(&lunchd);
    let messages = notify.wait_for("READY=1", WAIT);
    assert!(has_line(&messages, "READY=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reload_failure_still_fits_one_notification() {
    let Ready {
        lunchd, notify, dir, ..
    } = &ready(1, &[]);

    // Hundreds of problems: tens of kilobytes of reasons.
    let bad = "[[dish]]\nname = \"\"\nweight = -1.0\n\n".repeat(300);
    write_atomic(&dir.path().join("lunchd.toml"), bad.as_bytes());
    lunchd.signal(libc::SIGHUP);
    notify.wait_for("RELOADING=1", WAIT);
    let messages = notify.wait_for("READY=1", WAIT);
    let ready = messages.last().unwrap();
    // systemd drops a notification longer than PIPE_BUF (4096 bytes) whole.
    assert!(ready.len() < 4096, "{} bytes", ready.len());
    let status = notify_field(ready, "STATUS").unwrap();
    assert!(status.starts_with("reload failed"), "{status}");
    assert!(status.contains("dish 1 has an empty name"), "{status}");
}
