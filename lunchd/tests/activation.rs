//! lunchd started the way systemd starts it: sockets passed by name.

mod support;

use std::time::Duration;

use support::{Lunchd, Start, TestCa, TlsConnection, raw_request, write_leaf};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_lunch_over_h2_and_http1_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(&["lunch.test", "localhost"], 1);
    let (key, chain) = write_leaf(dir.path(), &leaf);
    let lunchd = Lunchd::start(Start {
        args: vec![
            format!("--key={}", key.display()),
            format!("--certificate={}", chain.display()),
        ],
        ..Start::default()
    });
    let https = lunchd.port("https");

    let mut h2 = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2", b"http/1.1"])).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.serial, leaf.serial);
    let response = h2.get("lunch.test", "/api/lunch").await;
    assert_eq!(response.status, 200, "{}", lunchd.log());
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert!(["Sandwich", "Soup", "Salad", "Burger", "Sushi"].contains(&json["lunch"].as_str().unwrap()));

    let mut h1 = TlsConnection::connect(https, "localhost", ca.client_config(&[b"http/1.1"])).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.get("localhost", "/healthz").await.body, "ok\n");

    let response = raw_request(lunchd.port("http"), b"GET /x?y=1 HTTP/1.1\r\nHost: lunch.test\r\n\r\n");
    let expected = format!("location: https://lunch.test:{https}/x?y=1\r\n");
    assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
    assert!(response.contains(&expected), "{response}");
    lunchd.wait_log("socket from systemd", Duration::from_secs(1));
}
