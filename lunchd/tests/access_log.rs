//! The access log of the real binary: off by default; with `[log] access
//! = true` one line per request, over HTTP/1.1, HTTP/2 and the redirect,
//! in `$LOGS_DIRECTORY/access.log`.

mod support;

use std::path::Path;

use support::{Lunchd, Start, TestCa, TlsConnection, lines, write_leaf};

/// lunchd serving lunch.test with `[log]` set to `log`, and the CA that
/// issued its certificate.
fn start(dir: &Path, log: &str, logs: &Path) -> (Lunchd, TestCa) {
    let ca = TestCa::new();
    let (key, chain) = write_leaf(dir, &ca.issue(&["lunch.test"], 7));
    let config = dir.join("lunchd.toml");
    std::fs::write(&config, format!("[[dish]]\nname = \"Soup\"\n\n[log]\n{log}\n")).unwrap();
    let mut start = Start::with_certificate(&key, &chain, &[format!("--config={}", config.display())]);
    start
        .env
        .push(("LOGS_DIRECTORY".to_owned(), logs.display().to_string()));
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
