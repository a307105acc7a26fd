//! HTTP/3: lunchd under socket activation with a UDP socket named `quic`
//! beside `https` and `http`, and a real QUIC + HTTP/3 client (quinn, h3)
//! that verifies the certificate against the test CA.
//!
//! `systemd-socket-activate` listens on one kind of socket per run, so two
//! are chained: the outer one binds the UDP socket and passes it on, the
//! inner one adds the TCP sockets and names all three
//! (`--fdname=quic:https:http`), as systemd does for a service with three
//! socket units.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::{Buf, Bytes};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;
use support::{
    LUNCHD, Leaf, NotifySocket, TestCa, TlsConnection, free_port, locate_tool, require_tool, serial_of, served_config,
    write_leaf,
};

/// lunchd serving HTTP/3, HTTPS and the redirect, from a configuration
/// file with a test CA's certificate for `localhost` (serial 1).
struct H3Lunchd {
    child: Child,
    quic: u16,
    https: u16,
    /// The metrics socket, when started [`observed`](H3Lunchd::observed).
    metrics: Option<u16>,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
    ca: TestCa,
    leaf: Leaf,
}

impl H3Lunchd {
    fn start(limits: &str) -> H3Lunchd {
        H3Lunchd::start_with(limits, tempfile::tempdir().unwrap(), None, false)
    }

    /// With a metrics socket and the access log on, in `dir`/logs.
    fn observed(dir: tempfile::TempDir) -> H3Lunchd {
        H3Lunchd::start_with("", dir, None, true)
    }

    /// In `dir`, telling systemd's notifications to `notify`; `observed`
    /// adds a metrics socket and turns the access log on.
    fn start_with(limits: &str, dir: tempfile::TempDir, notify: Option<&NotifySocket>, observed: bool) -> H3Lunchd {
        let ca = TestCa::new();
        let leaf = ca.issue(&["lunch.test", "localhost"], 1);
        let (key, chain) = write_leaf(dir.path(), &leaf);
        let config = dir.path().join("lunchd.toml");
        let extra = if observed { "[log]\naccess = true" } else { "" };
        std::fs::write(&config, served_config(&key, &chain, limits, extra)).unwrap();
        let activate = require_tool("systemd-socket-activate", "systemd");
        let (quic, https, http) = (free_udp_port(), free_port(), free_port());
        let notify_env = notify.map(|n| format!("--setenv=NOTIFY_SOCKET={}", n.path.display()));
        let metrics = observed.then(free_port);
        let observe_args = match metrics {
            Some(port) => {
                let logs = dir.path().join("logs");
                std::fs::create_dir(&logs).unwrap();
                vec![
                    format!("--listen=127.0.0.1:{port}"),
                    "--fdname=quic:https:http:metrics".to_owned(),
                    format!("--setenv=LOGS_DIRECTORY={}", logs.display()),
                ]
            }
            None => vec!["--fdname=quic:https:http".to_owned()],
        };
        let mut child = Command::new(&activate)
            .arg("--datagram")
            .arg(format!("--listen=127.0.0.1:{quic}"))
            .arg("--fdname=quic")
            .arg(&activate)
            .arg(format!("--listen=127.0.0.1:{https}"))
            .arg(format!("--listen=127.0.0.1:{http}"))
            .args(&observe_args)
            .args(&notify_env)
            .arg("--setenv=RUST_LOG=debug,h2=info,rustls=info,hyper=info,quinn=info,quinn_proto=info,h3=info")
            .arg(LUNCHD)
            .arg(format!("--config={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running systemd-socket-activate: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let lunchd = H3Lunchd {
            child,
            quic,
            https,
            metrics,
            log,
            dir,
            ca,
            leaf,
        };
        lunchd.wait_log(&format!("Listening on 127.0.0.1:{quic}"));
        // The first datagram starts the chain, and lunchd reads it as the
        // first packet on its socket: garbage, which it must drop.
        let garbage = UdpSocket::bind("127.0.0.1:0").unwrap();
        garbage.send_to(b"not a quic packet", ("127.0.0.1", quic)).unwrap();
        lunchd.wait_log(&format!("serving http/3 on udp 127.0.0.1:{quic}"));
        lunchd
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_log(&self, needle: &str) {
        // Generous: a bound on a wait, not a timing; a busy machine can
        // take seconds to start the chain.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log never contained {needle:?}:\n{}", self.log());
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; the chain has exec'd into lunchd.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "lunchd panicked:\n{log}");
    }

    async fn connect(&self) -> H3Connection {
        H3Connection::connect(self.quic, &self.ca).await
    }

    /// `GET /metrics` from the metrics socket of an `observed` lunchd.
    fn scrape(&self) -> String {
        let response = support::raw_request(
            self.metrics.expect("a metrics socket"),
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(support::status_of(&response), Some(200), "{response}");
        response
    }
}

impl Drop for H3Lunchd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One QUIC connection with HTTP/3 on it.
struct H3Connection {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    serial: String,
    port: u16,
}

struct H3Response {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl H3Connection {
    async fn connect(port: u16, ca: &TestCa) -> H3Connection {
        H3Connection::try_connect(port, ca).await.expect("a QUIC connection")
    }

    async fn try_connect(port: u16, ca: &TestCa) -> Result<H3Connection, String> {
        H3Connection::try_connect_with(port, ca, quinn::TransportConfig::default()).await
    }

    async fn try_connect_with(
        port: u16,
        ca: &TestCa,
        transport: quinn::TransportConfig,
    ) -> Result<H3Connection, String> {
        let tls = QuicClientConfig::try_from(ca.client_config(&[b"h3"])).unwrap();
        let mut client = quinn::ClientConfig::new(Arc::new(tls));
        client.transport_config(Arc::new(transport));
        H3Connection::try_connect_as(port, client).await
    }

    /// With `client`'s settings (and its TLS session cache: a second
    /// connection with the same settings resumes).
    async fn try_connect_as(port: u16, client: quinn::ClientConfig) -> Result<H3Connection, String> {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(client);
        let connecting = endpoint
            .connect(SocketAddr::from(([127, 0, 0, 1], port)), "localhost")
            .unwrap();
        let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "the QUIC handshake timed out".to_owned())?
            .map_err(|e| format!("the QUIC handshake failed: {e}"))?;
        let certs = connection
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        let serial = serial_of(&certs[0]);
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(|e| format!("HTTP/3 setup failed: {e}"))?;
        let driver = tokio::spawn(async move { driver.wait_idle().await });
        Ok(H3Connection {
            endpoint,
            connection,
            send,
            driver,
            serial,
            port,
        })
    }

    async fn get(&mut self, path: &str) -> H3Response {
        self.request(path, &[]).await.expect("an HTTP/3 response")
    }

    async fn request(&mut self, path: &str, headers: &[(&str, String)]) -> Result<H3Response, String> {
        let mut request = hyper::Request::get(format!("https://localhost:{}{path}", self.port));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let exchange = async {
            let mut stream = self
                .send
                .send_request(request.body(()).unwrap())
                .await
                .map_err(|e| format!("sending the request: {e}"))?;
            stream
                .finish()
                .await
                .map_err(|e| format!("finishing the request: {e}"))?;
            let response = stream
                .recv_response()
                .await
                .map_err(|e| format!("receiving the response: {e}"))?;
            let mut body = Vec::new();
            while let Some(mut chunk) = stream
                .recv_data()
                .await
                .map_err(|e| format!("receiving the body: {e}"))?
            {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    body.extend_from_slice(part);
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            Ok(H3Response {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no response within 10 s".to_owned())?
    }
}

#[tokio::test]
async fn the_lunch_is_served_over_http3_with_a_verified_certificate_and_advertised_over_tcp() {
    let lunchd = H3Lunchd::start("");
    let mut h3 = lunchd.connect().await;
    assert_eq!(h3.serial, lunchd.leaf.serial);

    let response = h3.get("/api/lunch").await;
    assert_eq!(response.status, 200, "{}", lunchd.log());
    assert_eq!(response.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert!(json["lunch"].is_string(), "{json}");
    // The same headers as over TCP.
    assert!(response.headers.contains_key("content-security-policy"));
    assert!(response.headers.contains_key("strict-transport-security"));
    assert!(!response.headers.contains_key("connection"));

    // The same JSON errors, on the same connection.
    let response = h3.get("/api/lunch?tag=nothing-has-this-tag").await;
    assert_eq!(response.status, 404, "{}", response.body);
    let json: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("nothing-has-this-tag"),
        "{json}"
    );
    let response = h3.get("/healthz").await;
    assert_eq!((response.status, response.body.as_str()), (200, "ok\n"));

    // HTTPS over TCP tells browsers where HTTP/3 is.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut tcp = TlsConnection::connect(lunchd.https, "localhost", lunchd.ca.client_config(&[alpn])).await;
        let response = tcp.get("localhost", "/api/lunch").await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.headers["alt-svc"],
            format!("h3=\":{}\"; ma=86400", lunchd.quic),
            "{alpn:?}"
        );
    }
    lunchd.assert_no_panic();
}

#[tokio::test]
async fn http3_requests_are_counted_as_h3_and_written_to_the_access_log() {
    let lunchd = H3Lunchd::observed(tempfile::tempdir().unwrap());
    let scrape = || lunchd.scrape();
    let count = |text: &str, class: &str| -> f64 {
        let series = format!("lunchd_http_requests_total{{server=\"https\",protocol=\"h3\",class=\"{class}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let before = scrape();
    assert_eq!((count(&before, "2xx"), count(&before, "4xx")), (0.0, 0.0));

    let mut h3 = lunchd.connect().await;
    assert_eq!(h3.get("/healthz").await.status, 200);
    assert_eq!(h3.get("/healthz").await.status, 200);
    assert_eq!(h3.get("/no-such-page").await.status, 404);
    let after = scrape();
    assert_eq!(
        (count(&after, "2xx"), count(&after, "4xx")),
        (2.0, 1.0),
        "{}",
        lunchd.log()
    );
    // Not counted as a TCP protocol.
    assert!(
        after.contains("lunchd_http_requests_total{server=\"https\",protocol=\"h2\",class=\"2xx\"} 0"),
        "{after}"
    );
    // The QUIC connection, as server quic; TCP's counters untouched.
    for series in [
        "lunchd_connections_accepted_total{server=\"quic\"} 1",
        "lunchd_connections_open{server=\"quic\"} 1",
        "lunchd_connections_refused_total{server=\"quic\",reason=\"limit\"} 0",
        "lunchd_connections_refused_total{server=\"quic\",reason=\"per_client\"} 0",
        "lunchd_connections_retried_total{server=\"quic\"} 0",
        "lunchd_tls_handshakes_total{server=\"quic\",kind=\"full\"} 1",
        "lunchd_tls_handshakes_total{server=\"quic\",kind=\"resumed\"} 0",
        "lunchd_tls_handshake_failures_total{server=\"quic\",reason=\"error\"} 0",
        "lunchd_connections_accepted_total{server=\"https\"} 0",
        "lunchd_tls_handshakes_total{kind=\"full\"} 0",
    ] {
        assert!(after.lines().any(|l| l == series), "no {series} in:\n{after}");
    }

    let path = lunchd.dir.path().join("logs/access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 3 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let client = h3.endpoint.local_addr().unwrap().to_string();
    let mut lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}\n{}", lunchd.log());
    lines.sort_unstable_by_key(|f| f[5]);
    for fields in &lines {
        assert_eq!(fields.len(), 9, "{text}");
        // The client's address as the QUIC connection saw it, the server
        // name it sent in its handshake.
        assert_eq!(fields[1], client, "{text}");
        assert_eq!((fields[2], fields[3], fields[4]), ("localhost", "h3", "GET"), "{text}");
    }
    let summary: Vec<(&str, &str)> = lines.iter().map(|f| (f[5], f[6])).collect();
    assert_eq!(
        summary,
        [
            ("\"/healthz\"", "200"),
            ("\"/healthz\"", "200"),
            ("\"/no-such-page\"", "404")
        ],
        "{text}"
    );
    lunchd.assert_no_panic();
}

#[tokio::test]
async fn readiness_and_status_include_http3() {
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::new(dir.path());
    let lunchd = H3Lunchd::start_with("", dir, Some(&notify), false);
    let messages = notify.wait_for("READY=1", Duration::from_secs(10));
    let ready = messages.last().unwrap();
    assert!(
        ready.contains(&format!("http/3 on 127.0.0.1:{}", lunchd.quic)),
        "{ready}\n{}",
        lunchd.log()
    );
    lunchd.assert_no_panic();
}

#[tokio::test]
async fn a_reload_changes_the_certificate_on_quic_and_keeps_open_connections() {
    let lunchd = H3Lunchd::start("");
    let mut before = lunchd.connect().await;
    assert_eq!(before.get("/healthz").await.status, 200);
    assert_eq!(before.serial, lunchd.leaf.serial);

    let renewed = lunchd.ca.issue(&["lunch.test", "localhost"], 2);
    write_leaf(lunchd.dir.path(), &renewed);
    lunchd.signal(libc::SIGHUP);
    lunchd.wait_log(&format!("(serial {}, ", renewed.serial));

    let mut after = lunchd.connect().await;
    assert_eq!(after.serial, renewed.serial);
    assert_eq!(after.get("/healthz").await.status, 200);
    // The connection from before the reload still serves.
    assert_eq!(before.get("/api/lunch").await.status, 200, "{}", lunchd.log());
    lunchd.assert_no_panic();
}

#[tokio::test]
async fn garbage_and_oversized_headers_leave_other_clients_served() {
    let lunchd = H3Lunchd::start("max_header_bytes = 16384");
    // Datagrams that are not QUIC, and some that look like a long-header
    // Initial of an unknown version or with a truncated header.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut packets: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0xff; 1500], b"GET / HTTP/1.1\r\n\r\n".to_vec()];
    let mut initial = vec![0xc0, 0x00, 0x00, 0x00, 0x01, 0x08];
    initial.extend_from_slice(&[7; 8]);
    initial.resize(1200, 0x42);
    packets.push(initial.clone());
    initial[1..5].copy_from_slice(&[0x1a, 0x2a, 0x3a, 0x4a]);
    packets.push(initial);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 1400) as usize + 1;
        packets.push((0..len).map(|i| (state >> (i % 56)) as u8).collect());
    }
    for packet in &packets {
        socket.send_to(packet, ("127.0.0.1", lunchd.quic)).unwrap();
    }

    // A 1 MB header section: refused, by 431 or by the client itself once
    // it knows the server's limit, and the connection or others go on.
    let mut h3 = lunchd.connect().await;
    match h3.request("/api/lunch", &[("x-big", "a".repeat(1024 * 1024))]).await {
        Ok(response) => assert_eq!(response.status, 431, "{}", response.body),
        Err(e) => assert!(e.contains("header") || e.contains("Header"), "{e}"),
    }
    let mut other = lunchd.connect().await;
    assert_eq!(other.get("/healthz").await.status, 200, "{}", lunchd.log());
    // Just over the limit: the server's 431, if the client sends it.
    match h3.request("/api/lunch", &[("x-big", "a".repeat(20_000))]).await {
        Ok(response) => assert_eq!(response.status, 431, "{}", response.body),
        Err(e) => assert!(e.contains("header") || e.contains("Header"), "{e}"),
    }
    assert_eq!(h3.get("/healthz").await.status, 200, "{}", lunchd.log());
    lunchd.assert_no_panic();
}

#[tokio::test]
async fn sigterm_sends_goaway_and_exits_cleanly() {
    let mut lunchd = H3Lunchd::start("drain_timeout = 5");
    let mut h3 = lunchd.connect().await;
    assert_eq!(h3.get("/healthz").await.status, 200);
    lunchd.signal(libc::SIGTERM);
    // The client sees the connection end cleanly: GOAWAY, then the close.
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut h3.driver)
        .await
        .expect("the connection ended")
        .unwrap();
    assert!(ended.is_h3_no_error(), "{ended}\n{}", lunchd.log());
    let status = lunchd.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", lunchd.log());
    assert!(h3.connection.close_reason().is_some());
    lunchd.assert_no_panic();
}

/// The QUIC server's connections in the metrics, as server `quic`: a
/// second connection with the same client settings resumes its TLS
/// session (and, with half of `max_connections` open, proves its address
/// with a Retry first), and beyond `max_connections` clients are refused.
#[tokio::test]
async fn quic_connections_handshakes_and_refusals_are_in_the_metrics() {
    let lunchd = H3Lunchd::start_with("max_connections = 2", tempfile::tempdir().unwrap(), None, true);
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let tls = QuicClientConfig::try_from(lunchd.ca.client_config(&[b"h3"])).unwrap();
    let client = quinn::ClientConfig::new(Arc::new(tls));
    let mut first = H3Connection::try_connect_as(lunchd.quic, client.clone()).await.unwrap();
    // The request lets the session tickets arrive before the next handshake.
    assert_eq!(first.get("/healthz").await.status, 200);
    let mut second = H3Connection::try_connect_as(lunchd.quic, client).await.unwrap();
    assert_eq!(second.get("/healthz").await.status, 200);
    // Both slots taken: a third client is refused.
    let refused = H3Connection::try_connect(lunchd.quic, &lunchd.ca).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("refused")),
        "{:?}",
        refused.err()
    );
    let text = lunchd.scrape();
    for (series, expected) in [
        ("lunchd_connections_accepted_total{server=\"quic\"}", 2.0),
        ("lunchd_connections_open{server=\"quic\"}", 2.0),
        ("lunchd_tls_handshakes_total{server=\"quic\",kind=\"full\"}", 1.0),
        ("lunchd_tls_handshakes_total{server=\"quic\",kind=\"resumed\"}", 1.0),
        ("lunchd_connections_retried_total{server=\"quic\"}", 1.0),
        ("lunchd_connection_limit_reached_total{server=\"quic\"}", 1.0),
        (
            "lunchd_connections_refused_total{server=\"quic\",reason=\"limit\"}",
            1.0,
        ),
    ] {
        assert_eq!(value(&text, series), expected, "{series}\n{text}");
    }
    drop((first, second));
    lunchd.assert_no_panic();
}

/// A response held in flight by QUIC flow control when SIGTERM arrives:
/// the client grants its request stream 1 KB and stops reading after the
/// headers, so lunchd has answered but cannot send the rest of the page
/// until the client reads on. The GOAWAY refuses new requests and new
/// connections while lunchd waits, and the page then arrives whole.
#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones() {
    let mut lunchd = H3Lunchd::start("drain_timeout = 20");
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(1024));
    let mut h3 = H3Connection::try_connect_with(lunchd.quic, &lunchd.ca, transport)
        .await
        .unwrap();
    let request = hyper::Request::get(format!("https://localhost:{}/", lunchd.quic))
        .body(())
        .unwrap();
    let mut stream = h3.send.send_request(request).await.unwrap();
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    assert_eq!(response.status(), 200);
    let length: usize = response.headers()["content-length"].to_str().unwrap().parse().unwrap();
    assert!(length > 4 * 1024, "the page ({length} bytes) fits in the window");

    lunchd.signal(libc::SIGTERM);
    lunchd.wait_log("draining connections");
    // The GOAWAY reaches the client: a new request on the connection is
    // refused, by the client itself or by lunchd.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        let request = hyper::Request::get(format!("https://localhost:{}/healthz", lunchd.quic))
            .body(())
            .unwrap();
        match h3.send.send_request(request).await {
            Err(e) => format!("not sent: {e}"),
            Ok(mut late) => {
                let _ = late.finish().await;
                match late.recv_response().await {
                    Err(e) => format!("sent, then: {e}"),
                    Ok(r) => panic!("a request after the GOAWAY answered {}", r.status()),
                }
            }
        }
    })
    .await
    .expect("a request after the GOAWAY neither refused nor answered");
    eprintln!("request after the GOAWAY: {refused}");
    // A new connection is refused at once, not left to time out.
    match H3Connection::try_connect(lunchd.quic, &lunchd.ca).await {
        Ok(_) => panic!("a new connection was accepted while draining"),
        Err(e) => assert!(e.contains("refused"), "{e}"),
    }
    assert!(
        lunchd.child.try_wait().unwrap().is_none(),
        "lunchd exited with a request in flight:\n{}",
        lunchd.log()
    );

    let mut body = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(mut chunk) = stream.recv_data().await? {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok::<_, h3::error::StreamError>(())
    })
    .await
    .expect("the response in flight never completed");
    read.unwrap_or_else(|e| panic!("the response in flight was cut off after {} bytes: {e}", body.len()));
    assert_eq!(body.len(), length, "{}", lunchd.log());
    assert!(String::from_utf8_lossy(&body).trim_end().ends_with("</html>"));
    let status = lunchd.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", lunchd.log());
    assert!(!lunchd.log().contains("drain deadline passed"), "{}", lunchd.log());
    lunchd.assert_no_panic();
}

/// Headless Chromium loads the lunch over HTTP/3: forced onto QUIC for an
/// origin whose port has no TCP socket at all, so only HTTP/3 can answer,
/// and lunchd logs the QUIC connection. Chromium accepts the test CA's
/// certificate by its key (`--ignore-certificate-errors-spki-list`).
#[test]
fn chromium_loads_the_lunch_over_http3() {
    let chromium = match std::env::var_os("LUNCHD_CHROMIUM") {
        Some(path) => std::path::PathBuf::from(path),
        None => match locate_tool("chromium", "chromium") {
            Ok(path) => path,
            Err(missing) if std::env::var_os("LUNCHD_SKIP_BROWSER").is_some_and(|v| v == "1") => {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("SKIPPED: chromium over HTTP/3 ({missing}) because LUNCHD_SKIP_BROWSER=1\n").as_bytes(),
                );
                return;
            }
            Err(missing) => panic!("{missing}, or set LUNCHD_SKIP_BROWSER=1 to skip this test"),
        },
    };
    let lunchd = H3Lunchd::start("");
    assert!(std::net::TcpStream::connect(("127.0.0.1", lunchd.quic)).is_err());
    let profile = lunchd.dir.path().join("chromium");
    let origin = format!("localhost:{}", lunchd.quic);
    let output = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--host-resolver-rules=MAP localhost 127.0.0.1, MAP * ~NOTFOUND")
        .arg("--enable-quic")
        .arg(format!("--origin-to-force-quic-on={origin}"))
        .arg(format!(
            "--ignore-certificate-errors-spki-list={}",
            spki_hash(&lunchd.leaf.der)
        ))
        .arg("--dump-dom")
        .arg(format!("https://{origin}/api/lunch"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("{\"lunch\":"),
        "chromium did not get the lunch over HTTP/3:\n{dom}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        lunchd.log()
    );
    lunchd.wait_log("http/3 connection established");
    lunchd.assert_no_panic();
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of a DER certificate.
fn spki_hash(der: &[u8]) -> String {
    use base64::Engine;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Real QUIC Initials, each from its own client (its own connection IDs),
/// captured on a socket that never answers.
async fn captured_initials(ca: &TestCa, count: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = sink.local_addr().unwrap();
    let tls = Arc::new(QuicClientConfig::try_from(ca.client_config(&[b"h3"])).unwrap());
    let mut initials = Vec::new();
    let mut buf = vec![0; 2048];
    for _ in 0..count {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::clone(&tls) as _));
        let connecting = endpoint.connect(target, "localhost").unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        initials.push(buf[..len].to_vec());
        drop(connecting);
        endpoint.close(0u32.into(), b"");
    }
    initials
}

#[tokio::test]
async fn an_initial_flood_from_many_ports_leaves_real_clients_served() {
    let lunchd = H3Lunchd::start("max_connections = 20\nhandshake_timeout = 2");
    let initials = captured_initials(&lunchd.ca, 200).await;
    // Each from its own source port, and never followed up: half-open
    // handshakes, or Retries that nobody answers.
    let mut senders = Vec::new();
    for initial in &initials {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.send_to(initial, ("127.0.0.1", lunchd.quic)).unwrap();
        senders.push(socket);
    }
    // A real client is served during the flood: it passes the Retry that
    // the load asks for, and finds a free connection slot.
    let mut client = lunchd.connect().await;
    assert_eq!(client.get("/healthz").await.status, 200, "{}", lunchd.log());
    // The half-open handshakes end at the handshake timeout.
    lunchd.wait_log("handshake timed out");
    let mut later = lunchd.connect().await;
    assert_eq!(later.get("/api/lunch").await.status, 200);
    lunchd.assert_no_panic();
}

#[tokio::test]
async fn request_streams_without_complete_headers_are_closed_at_the_header_timeout() {
    let lunchd = H3Lunchd::start("header_timeout = 1");
    let mut h3 = lunchd.connect().await;
    // Streams that start a HEADERS frame of 1000 bytes and send 3.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let (mut send, recv) = h3.connection.open_bi().await.unwrap();
        send.write_all(&[0x01, 0x43, 0xe8, 0x00, 0x00, 0x80]).await.unwrap();
        stalled.push((send, recv));
    }
    // Others are served meanwhile, on the same connection too.
    assert_eq!(h3.get("/healthz").await.status, 200);
    let mut other = lunchd.connect().await;
    assert_eq!(other.get("/healthz").await.status, 200);
    // Each stalled stream is given up by the server.
    for (_, mut recv) in stalled {
        let read = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1024)).await;
        assert!(
            matches!(read, Ok(Err(_)) | Ok(Ok(_))),
            "a stalled stream stayed open: {read:?}"
        );
    }
    lunchd.wait_log("request headers timed out");
    assert_eq!(h3.get("/api/lunch").await.status, 200);
    lunchd.assert_no_panic();
}
