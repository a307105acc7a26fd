//! The access log of the real binary: off by default; with `[log] access
//! = true` one line per request, over HTTP/1.1, HTTP/2 and the redirect,
//! in `$LOGS_DIRECTORY/access.log`; reopened on reload, and a reload
//! that cannot reopen it fails and says so.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Lunchd, NotifySocket, Start, TestCa, TlsConnection, lines, notify_field, write_leaf};

/// lunchd serving lunch.test with `[log]` set to `log`, and the CA that
/// issued its certificate.
fn start(dir: &Path, log: &str, logs: &Path) -> (Lunchd, TestCa) {
    start_with(dir, log, logs, |_| {})
}

/// [`start`], with `adjust` changing how it is started.
fn start_with(dir: &Path, log: &str, logs: &Path, adjust: impl FnOnce(&mut Start)) -> (Lunchd, TestCa) {
    let ca = TestCa::new();
    let (key, chain) = write_leaf(dir, &ca.issue(&["lunch.test"], 7));
    let config = dir.join("lunchd.toml");
    std::fs::write(&config, format!("[[dish]]\nname = \"Soup\"\n\n[log]\n{log}\n")).unwrap();
    let mut start = Start::with_certificate(&key, &chain, &[format!("--config={}", config.display())]);
    start
        .env
        .push(("LOGS_DIRECTORY".to_owned(), logs.display().to_string()));
    adjust(&mut start);
    (Lunchd::start(start), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (lunchd, ca) = start(dir.path(), "access = true", &logs);

    let mut h1 = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"http/1.1"])).await;
    let mut h2 = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(h1.get("lunch.test", "/healthz").await.status, 200);
    assert_eq!(h1.get("lunch.test", "/healthz?secret=1").await.status, 200);
    assert_eq!(h2.get("lunch.test", "/healthz").await.status, 200);
    assert_eq!(h2.get("lunch.test", "/no-such-page").await.status, 404);
    let redirect = support::raw_request(
        lunchd.port("http"),
        b"GET /menu?x=1 HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(support::status_of(&redirect), Some(301), "{redirect}");

    let lines = lines(&logs.join("access.log"), 5);
    assert_eq!(lines.len(), 5, "{lines:#?}\n{}", lunchd.log());
    let fields: Vec<Vec<&str>> = lines.iter().map(|l| l.split(' ').collect()).collect();
    for (line, f) in lines.iter().zip(&fields) {
        assert_eq!(f.len(), 9, "{line}");
        assert!(f[0].ends_with('Z') && f[0].contains('T'), "{line}");
        let duration: f64 = f[8].parse().unwrap();
        assert!((0.0..10.0).contains(&duration), "{line}");
    }
    // Lines of different worker threads may come out of order.
    let mut summary: Vec<(&str, &str, &str, &str, &str)> =
        fields.iter().map(|f| (f[2], f[3], f[4], f[5], f[6])).collect();
    summary.sort_unstable();
    assert_eq!(
        summary,
        [
            ("-", "h1", "GET", "\"/menu\"", "301"),
            ("lunch.test", "h1", "GET", "\"/healthz\"", "200"),
            ("lunch.test", "h1", "GET", "\"/healthz\"", "200"),
            ("lunch.test", "h2", "GET", "\"/healthz\"", "200"),
            ("lunch.test", "h2", "GET", "\"/no-such-page\"", "404"),
        ],
        "{lines:#?}"
    );
    assert!(fields.iter().all(|f| f[1].starts_with("127.0.0.1:")), "{lines:#?}");
    // The query string stays out unless configured.
    assert!(!lines.iter().any(|l| l.contains("secret")), "{lines:#?}");
    // Response bytes, when known up front.
    let healthz = fields.iter().find(|f| f[5] == "\"/healthz\"").unwrap();
    assert!(healthz[7].parse::<u64>().unwrap() > 0, "{lines:#?}");
}

#[test]
fn off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let (lunchd, _) = start(dir.path(), "level = \"info\"", &logs);
    let response = support::raw_request(
        lunchd.port("http"),
        b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(support::status_of(&response), Some(301), "{response}");
    drop(lunchd);
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 0);
}

/// The value of the sample `series` in a scrape of the metrics socket `port`.
fn metric(port: u16, series: &str) -> String {
    let response = support::raw_request(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    response
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{response}"))
        .to_owned()
}

/// logrotate's `create` leaves something lunchd cannot open where the log
/// was: the reload fails, visibly, and nothing written is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_reopened_fails_the_reload() {
    const WAIT: Duration = Duration::from_secs(15);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let notify = NotifySocket::new(dir.path());
    let (lunchd, ca) = start_with(dir.path(), "access = true", &logs, |start| {
        start.names = vec!["http", "https", "metrics"];
        start
            .env
            .push(("NOTIFY_SOCKET".to_owned(), notify.path.display().to_string()));
    });
    let mut tls = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
    notify.wait_for("READY=1", WAIT);
    assert_eq!(tls.get("lunch.test", "/healthz").await.status, 200);
    let log = logs.join("access.log");
    let rotated = logs.join("access.log.1");
    assert_eq!(lines(&log, 1).len(), 1, "{}", lunchd.log());

    // Moved away, and a directory where the file was: root cannot append
    // to that either.
    std::fs::rename(&log, &rotated).unwrap();
    std::fs::create_dir(&log).unwrap();
    lunchd.signal(libc::SIGHUP);
    let ready = notify.wait_for("READY=1", WAIT);
    let status = notify_field(ready.last().unwrap(), "STATUS").unwrap().to_owned();
    assert!(
        status.starts_with("reload failed at ") && status.contains(", the new configuration is served, but "),
        "{status}"
    );
    let reason = format!("cannot reopen the access log {}: ", log.display());
    assert!(status.contains(&reason), "{status}");
    lunchd.wait_log("reload failed", WAIT);
    let failed = lunchd.log();
    let line = failed.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("ERROR") && line.contains(&reason), "{failed}");
    let metrics = lunchd.port("metrics");
    assert_eq!(metric(metrics, "lunchd_last_reload_success"), "0");
    assert_eq!(metric(metrics, "lunchd_reloads_total{outcome=\"failed\"}"), "1");
    assert_eq!(metric(metrics, "lunchd_reloads_total{outcome=\"ok\"}"), "0");
    // Records still go to the file open before.
    assert_eq!(tls.get("lunch.test", "/no-such-page").await.status, 404);
    let kept = lines(&rotated, 2);
    assert_eq!(kept.len(), 2, "{kept:#?}");
    assert!(kept[1].contains("\"/no-such-page\" 404 "), "{kept:#?}");

    // Once the path is a file again, the next reload opens it.
    std::fs::remove_dir(&log).unwrap();
    lunchd.signal(libc::SIGHUP);
    let ready = notify.wait_for("READY=1", WAIT);
    let status = notify_field(ready.last().unwrap(), "STATUS").unwrap();
    assert!(status.contains("last reload ok at "), "{status}");
    assert_eq!(metric(metrics, "lunchd_last_reload_success"), "1");
    assert_eq!(tls.get("lunch.test", "/healthz").await.status, 200);
    let reopened = lines(&log, 1);
    assert_eq!(reopened.len(), 1, "{reopened:#?}");
    assert!(reopened[0].contains("\"/healthz\" 200 "), "{reopened:#?}");
}
