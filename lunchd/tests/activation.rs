//! lunchd started the way systemd starts it: sockets passed by name through
//! `systemd-socket-activate`, a test CA, real TLS clients.

mod support;

use std::time::Duration;

use support::{Lunchd, Start, TestCa, TlsConnection, raw_request, write_leaf};

const MENU: [&str; 5] = ["Sandwich", "Soup", "Salad", "Burger", "Sushi"];

/// lunchd with a certificate for `names`, sockets passed in `order`.
fn start(dir: &std::path::Path, ca: &TestCa, names: &[&str], order: Vec<&'static str>, config: &str) -> Lunchd {
    let leaf = ca.issue(names, 1);
    let (key, chain) = write_leaf(dir, &leaf);
    let config_path = dir.join("lunchd.toml");
    std::fs::write(&config_path, config).unwrap();
    Lunchd::start(Start {
        names: order,
        ..Start::with_certificate(&key, &chain, &[format!("--config={}", config_path.display())])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_lunch_over_h2_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let lunchd = start(dir.path(), &ca, &["lunch.test", "localhost"], vec!["http", "https"], "");
    let https = lunchd.port("https");

    let mut h2 = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2", b"http/1.1"])).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let response = h2.get("lunch.test", "/api/lunch").await;
    assert_eq!(response.status, 200, "{}", lunchd.log());
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert!(MENU.contains(&json["lunch"].as_str().unwrap()), "{json}");
    assert_eq!(response.headers["strict-transport-security"], "max-age=31536000");

    let mut h1 = TlsConnection::connect(https, "localhost", ca.client_config(&[b"http/1.1"])).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    // Several requests on one keep-alive connection.
    for _ in 0..3 {
        assert_eq!(h1.get("localhost", "/healthz").await.body, "ok\n");
    }
    // A client offering no ALPN at all gets HTTP/1.1.
    let mut plain = TlsConnection::connect(https, "localhost", ca.client_config(&[])).await;
    assert_eq!(plain.alpn, None);
    assert_eq!(plain.get("localhost", "/healthz").await.status, 200);
    lunchd.wait_log("socket from systemd", Duration::from_secs(5));
}

/// Connections are served thread-per-core: one `worker-N` thread per core,
/// and no multi-threaded runtime's workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_per_core() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let lunchd = start(dir.path(), &ca, &["lunch.test"], vec!["http", "https"], "");
    let mut tls = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(tls.get("lunch.test", "/healthz").await.status, 200);
    let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", lunchd.pid()))
        .unwrap()
        .map(|task| {
            std::fs::read_to_string(task.unwrap().path().join("comm"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    threads.sort();
    let cores = std::thread::available_parallelism().unwrap().get();
    let workers: Vec<&String> = threads.iter().filter(|name| name.starts_with("worker-")).collect();
    let mut expected: Vec<String> = (0..cores).map(|i| format!("worker-{i}")).collect();
    expected.sort();
    assert_eq!(workers, expected.iter().collect::<Vec<_>>(), "threads: {threads:?}");
    assert!(
        !threads.iter().any(|name| name.starts_with("tokio-runtime")),
        "threads: {threads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_map_by_name_not_by_order() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    // https first: fd 3 is https, fd 4 is http.
    let lunchd = start(dir.path(), &ca, &["lunch.test"], vec!["https", "http"], "");
    let mut tls = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(tls.get("lunch.test", "/healthz").await.status, 200);
    let response = raw_request(lunchd.port("http"), b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
}

/// The Location a request with `host` gets from the redirect port.
fn location(port: u16, target: &str, host: Option<&str>) -> String {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let response = raw_request(
        port,
        format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes(),
    );
    let status = response.split(' ').nth(1).unwrap_or("").to_owned();
    match response.lines().find_map(|l| l.strip_prefix("location: ")) {
        Some(location) => format!("{status} {location}"),
        None => status,
    }
}

#[test]
fn redirects_only_to_names_the_certificate_covers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let lunchd = start(
        dir.path(),
        &ca,
        &["lunch.test", "*.lunch.test", "127.0.0.1"],
        vec!["http", "https"],
        "",
    );
    let (http, https) = (lunchd.port("http"), lunchd.port("https"));
    let check = |target: &str, host: Option<&str>, expected: &str| {
        let expected = expected.replace("PORT", &https.to_string());
        assert_eq!(location(http, target, host), expected, "host {host:?}");
    };
    check("/x?y=1", Some("lunch.test"), "301 https://lunch.test:PORT/x?y=1");
    check("/", Some("www.lunch.test:80"), "301 https://www.lunch.test:PORT/");
    check("/a", Some("127.0.0.1:8080"), "301 https://127.0.0.1:PORT/a");
    // Not covered, hostile or missing: no canonical host configured, so 400.
    check("/", Some("evil.test"), "400");
    check("/", Some("lunch.test.evil.test"), "400");
    check("/", Some("lunch.test@evil.test"), "400");
    check("/", None, "400");
    // HTTP/1.0 without Host.
    let response = raw_request(http, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.0 400") || response.starts_with("HTTP/1.1 400"),
        "{response}"
    );
    // Other methods keep method and body: 308.
    let response = raw_request(
        http,
        b"POST /form HTTP/1.1\r\nHost: lunch.test\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 308 "), "{response}");
}

#[test]
fn canonical_host_public_port_and_acme_webroot() {
    let dir = tempfile::tempdir().unwrap();
    let webroot = dir.path().join("acme");
    std::fs::create_dir_all(webroot.join(".well-known/acme-challenge")).unwrap();
    std::fs::write(
        webroot.join(".well-known/acme-challenge/tok3n_-A"),
        "tok3n_-A.thumbprint",
    )
    .unwrap();
    std::fs::write(dir.path().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("secret"),
        webroot.join(".well-known/acme-challenge/link"),
    )
    .unwrap();
    let ca = TestCa::new();
    let config = format!(
        "[http]\ncanonical_host = \"lunch.test\"\nhttps_port = 443\nacme_webroot = \"{}\"\n",
        webroot.display()
    );
    let lunchd = start(dir.path(), &ca, &["lunch.test"], vec!["http", "https"], &config);
    let http = lunchd.port("http");
    assert_eq!(location(http, "/x", Some("evil.test")), "301 https://lunch.test/x");
    assert_eq!(location(http, "/x", Some("lunch.test")), "301 https://lunch.test/x");

    let challenge = raw_request(
        http,
        b"GET /.well-known/acme-challenge/tok3n_-A HTTP/1.1\r\nHost: lunch.test\r\n\r\n",
    );
    assert!(challenge.starts_with("HTTP/1.1 200 "), "{challenge}");
    assert!(challenge.ends_with("\r\n\r\ntok3n_-A.thumbprint"), "{challenge}");
    for target in [
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/link",
        "/.well-known/acme-challenge/..%2f..%2fsecret",
        "/.well-known/acme-challenge/../../secret",
        "/.well-known/acme-challenge/",
    ] {
        let response = raw_request(
            http,
            format!("GET {target} HTTP/1.1\r\nHost: lunch.test\r\n\r\n").as_bytes(),
        );
        assert!(
            !response.contains("secret\r") && !response.ends_with("secret"),
            "{target}: {response}"
        );
        assert!(
            response.starts_with("HTTP/1.1 404 ") || response.starts_with("HTTP/1.1 301 "),
            "{target}: {response}"
        );
    }

    // Without the key, a reload falls back to the https socket's own port.
    support::write_atomic(
        &dir.path().join("lunchd.toml"),
        config.replace("https_port = 443\n", "").as_bytes(),
    );
    lunchd.signal(libc::SIGHUP);
    lunchd.wait_log("reloaded;", Duration::from_secs(10));
    assert_eq!(
        location(http, "/x", Some("lunch.test")),
        format!("301 https://lunch.test:{}/x", lunchd.port("https")),
        "{}",
        lunchd.log()
    );
}

#[test]
fn https_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let lunchd = start(
        dir.path(),
        &ca,
        &["lunch.test"],
        vec!["https"],
        "[http]\nredirect = false\n",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut tls = TlsConnection::connect(lunchd.port("https"), "lunch.test", ca.client_config(&[b"h2"])).await;
        assert_eq!(tls.get("lunch.test", "/healthz").await.status, 200);
    });
    lunchd.wait_log("no redirect server", Duration::from_secs(5));
}

/// Starts lunchd with `names` and returns its exit code and log once it
/// has exited (it is started by a first connection).
fn failed_start(names: Vec<&'static str>, config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let mut lunchd = start(dir.path(), &ca, &["lunch.test"], names, config);
    let port = lunchd.ports[0].1;
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let code = lunchd.wait_exit(Duration::from_secs(10));
    (code, lunchd.log())
}

#[test]
fn wrong_socket_names_say_what_to_fix() {
    let (code, log) = failed_start(vec!["https"], "");
    assert_eq!(code, Some(1));
    assert!(
        log.contains(
            "lunchd: error: no socket named `http` was passed; add a socket unit with FileDescriptorName=http"
        ),
        "{log}"
    );
    let (code, log) = failed_start(vec!["http", "web"], "");
    assert_eq!(code, Some(1));
    assert!(
        log.contains("socket 1 is named `web`; lunchd knows only `http`, `https`, `metrics` and `quic`"),
        "{log}"
    );
    let (code, log) = failed_start(vec!["https", "https"], "");
    assert_eq!(code, Some(1));
    assert!(log.contains("two sockets are named `https`"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_the_new_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.issue(&["lunch.test"], 1);
    let (key, chain) = write_leaf(dir.path(), &first);
    let lunchd = Lunchd::start(Start::with_certificate(&key, &chain, &[]));
    let https = lunchd.port("https");
    let mut before = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"http/1.1"])).await;
    let mut before_h2 = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(before.serial, first.serial);
    assert_eq!(before.get("lunch.test", "/healthz").await.status, 200);

    // Renewal: new files in place, then SIGHUP.
    let second = ca.issue(&["lunch.test"], 2);
    write_leaf(dir.path(), &second);
    lunchd.signal(libc::SIGHUP);
    let serial = support::eventually(Duration::from_secs(10), || async {
        let tls = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2"])).await;
        (tls.serial == second.serial).then_some(tls.serial)
    })
    .await;
    assert_eq!(serial, second.serial);
    // Connections from before the reload keep working, on the old certificate.
    assert_eq!(before.get("lunch.test", "/healthz").await.status, 200);
    assert_eq!(before_h2.get("lunch.test", "/api/lunch").await.status, 200);

    // A broken key: the reload fails, the second certificate keeps serving.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    lunchd.signal(libc::SIGHUP);
    lunchd.wait_log(
        "reload failed, still serving the previous configuration and certificate",
        Duration::from_secs(10),
    );
    let after = TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2"])).await;
    assert_eq!(after.serial, second.serial);
    assert!(
        lunchd.log().contains("key.pem holds a key lunchd cannot use"),
        "{}",
        lunchd.log()
    );
}

/// systemd before 260 copies credentials only at start; the unit's
/// ExecReload= puts renewed files into the runtime directory, and lunchd
/// reloads from there (`--reload-credentials`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_prefers_refreshed_credentials() {
    let credentials = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.issue(&["lunch.test"], 1);
    let key = credentials.path().join("privkey.pem");
    let chain = credentials.path().join("fullchain.pem");
    std::fs::write(&key, &first.key_pem).unwrap();
    std::fs::write(&chain, &first.chain_pem).unwrap();
    let lunchd = Lunchd::start(Start::with_certificate(
        &key,
        &chain,
        &[format!("--reload-credentials={}", runtime.path().display())],
    ));
    let https = lunchd.port("https");
    let client = || TlsConnection::connect(https, "lunch.test", ca.client_config(&[b"h2"]));
    assert_eq!(client().await.serial, first.serial);

    // Nothing refreshed yet: the reload re-reads the credentials.
    lunchd.signal(libc::SIGHUP);
    lunchd.wait_log("no refreshed credentials in", Duration::from_secs(10));
    assert_eq!(client().await.serial, first.serial);

    // The renewed pair in the runtime directory wins.
    let second = ca.issue(&["lunch.test"], 2);
    std::fs::write(runtime.path().join("privkey.pem"), &second.key_pem).unwrap();
    std::fs::write(runtime.path().join("fullchain.pem"), &second.chain_pem).unwrap();
    lunchd.signal(libc::SIGHUP);
    let serial = support::eventually(Duration::from_secs(10), || async {
        let serial = client().await.serial;
        (serial == second.serial).then_some(serial)
    })
    .await;
    assert_eq!(serial, second.serial);
}
