//! The metrics socket of the real binary under `systemd-socket-activate`
//! with a third socket named `metrics`: the exposition passes `promtool
//! check metrics`, request counters grow with the requests made, reloads
//! are counted by outcome, the certificate's dates are the served ones.

mod support;

use std::time::Duration;

use support::{Lunchd, NotifySocket, Start, TestCa, TlsConnection, notify_field, write_atomic, write_leaf};

const WAIT: Duration = Duration::from_secs(15);

/// The body of `GET /metrics` on `port`.
fn scrape(port: u16) -> String {
    let response = support::raw_request(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(support::status_of(&response), Some(200), "{response}");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// The value of the sample `series` (name and labels as rendered).
fn value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

/// `promtool check metrics` (Debian package prometheus) on `text`.
fn promtool(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(support::require_tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_socket_tells_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    // 2030-01-01T00:00:00Z, 1893456000 s after the epoch.
    let leaf = ca.issue_with(&["lunch.test"], 9, |p| p.not_after = rcgen::date_time_ymd(2030, 1, 1));
    let (key, chain) = write_leaf(dir.path(), &leaf);
    let config = dir.path().join("lunchd.toml");
    write_atomic(&config, b"[[dish]]\nname = \"Soup\"\n");
    let notify = NotifySocket::new(dir.path());
    let mut start = Start::with_certificate(&key, &chain, &[format!("--config={}", config.display())]);
    start.names = vec!["http", "https", "metrics"];
    start
        .env
        .push(("NOTIFY_SOCKET".to_owned(), notify.path.display().to_string()));
    let lunchd = Lunchd::start(start);
    let metrics = lunchd.port("metrics");

    // The first connection starts lunchd (socket activation).
    let before = scrape(metrics);
    notify.wait_for("READY=1", WAIT);
    promtool(&before);
    let requests = |server: &str, protocol: &str, class: &str| {
        format!("lunchd_http_requests_total{{server=\"{server}\",protocol=\"{protocol}\",class=\"{class}\"}}")
    };
    assert_eq!(value(&before, &requests("https", "h1", "2xx")), 0.0);
    assert_eq!(
        value(
            &before,
            &format!(
                "lunchd_certificate_not_after_timestamp_seconds{{serial=\"{}\"}}",
                leaf.serial
            )
        ),
        1_893_456_000.0
    );
    assert_eq!(
        value(
            &before,
            &format!("lunchd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );

    let https = lunchd.port("https");
    let h1_config = ca.client_config(&[b"http/1.1"]);
    let mut h1 = TlsConnection::connect(https, "lunch.test", h1_config.clone()).await;
    for _ in 0..2 {
        assert_eq!(h1.get("lunch.test", "/healthz").await.status, 200);
    }
    // The same client again resumes its session (a TLS 1.3 ticket).
    let mut again = TlsConnection::connect(https, "lunch.test", h1_config).await;
    assert_eq!(again.get("lunch.test", "/healthz").await.status, 200);
    // Plain HTTP on the TLS port.
    let plain = support::raw_request(https, b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n");
    assert_eq!(support::status_of(&plain), Some(400), "{plain}");
    let mut h2 = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(h2.get("lunch.test", "/healthz").await.status, 200);
    assert_eq!(h2.get("lunch.test", "/nowhere").await.status, 404);
    let redirect = support::raw_request(
        lunchd.port("http"),
        b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(support::status_of(&redirect), Some(301), "{redirect}");

    let after = scrape(metrics);
    promtool(&after);
    assert_eq!(value(&after, &requests("https", "h1", "2xx")), 3.0);
    assert_eq!(value(&after, &requests("https", "h2", "2xx")), 1.0);
    assert_eq!(value(&after, &requests("https", "h2", "4xx")), 1.0);
    assert_eq!(value(&after, &requests("http", "h1", "3xx")), 1.0);
    assert_eq!(
        value(&after, "lunchd_http_request_duration_seconds_count{server=\"https\"}"),
        5.0
    );
    assert_eq!(value(&after, "lunchd_tls_handshakes_total{kind=\"full\"}"), 2.0);
    assert_eq!(value(&after, "lunchd_tls_handshakes_total{kind=\"resumed\"}"), 1.0);
    assert_eq!(
        value(&after, "lunchd_tls_handshake_failures_total{reason=\"plain_http\"}"),
        1.0
    );
    assert_eq!(
        value(&after, "lunchd_tls_handshake_failures_total{reason=\"error\"}"),
        0.0
    );
    assert_eq!(
        value(&after, "lunchd_connections_accepted_total{server=\"https\"}"),
        4.0
    );
    assert_eq!(value(&after, "lunchd_connections_accepted_total{server=\"http\"}"), 1.0);
    assert_eq!(
        value(&after, "lunchd_connections_open{server=\"metrics\"}"),
        1.0,
        "this scrape's own"
    );
    // h1, again and h2 are still open; the plain-HTTP one closed (its
    // count goes down just after the client sees the close).
    let deadline = std::time::Instant::now() + WAIT;
    while value(&scrape(metrics), "lunchd_connections_open{server=\"https\"}") != 3.0 {
        assert!(std::time::Instant::now() < deadline, "{}", scrape(metrics));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        value(&after, "lunchd_connection_limit_reached_total{server=\"https\"}"),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "lunchd_connections_refused_total{server=\"https\",reason=\"per_client\"}"
        ),
        0.0
    );

    // One good reload, one failed.
    lunchd.signal(libc::SIGHUP);
    let ready = notify.wait_for("READY=1", WAIT);
    assert!(
        !notify_field(ready.last().unwrap(), "STATUS")
            .unwrap()
            .contains("failed")
    );
    write_atomic(&config, b"[[dish]]\nname = \"\"\n");
    lunchd.signal(libc::SIGHUP);
    let ready = notify.wait_for("READY=1", WAIT);
    assert!(
        notify_field(ready.last().unwrap(), "STATUS")
            .unwrap()
            .starts_with("reload failed")
    );
    let reloaded = scrape(metrics);
    promtool(&reloaded);
    assert_eq!(value(&reloaded, "lunchd_reloads_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(value(&reloaded, "lunchd_reloads_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(value(&reloaded, "lunchd_last_reload_success"), 0.0);

    // Nothing else is served there.
    let other = support::raw_request(
        metrics,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(support::status_of(&other), Some(404), "{other}");
}
