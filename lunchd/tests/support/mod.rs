//! Shared helpers of the integration tests: a test CA, the real `lunchd`
//! binary started under `systemd-socket-activate` with named sockets on
//! free loopback ports, a `NOTIFY_SOCKET` listener, and real TLS and HTTP
//! clients.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use lunch_testkit::{
    Leaf, NotifySocket, TestCa, free_port, hex, locate_tool, proxy_v2, proxy_v2_local, require_tool,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream as AsyncTcpStream;

/// The binary under test.
pub const LUNCHD: &str = env!("CARGO_BIN_EXE_lunchd");

/// Writes `leaf` as `key.pem` and `fullchain.pem` in `dir`, replacing any
/// previous files atomically (as certbot does with its symlinks).
pub fn write_leaf(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let chain = dir.join("fullchain.pem");
    write_atomic(&key, leaf.key_pem.as_bytes());
    write_atomic(&chain, leaf.chain_pem.as_bytes());
    (key, chain)
}

pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// How to start lunchd.
pub struct Start {
    /// Socket names in the order they are passed, e.g. `["http", "https"]`.
    pub names: Vec<&'static str>,
    /// Extra arguments after the binary.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Default for Start {
    fn default() -> Start {
        Start {
            names: vec!["http", "https"],
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Start {
    /// Sockets `http` and `https`, serving the key and chain at `key` and
    /// `chain`, then `extra` arguments.
    pub fn with_certificate(key: &Path, chain: &Path, extra: &[String]) -> Start {
        let mut args = vec![
            format!("--key={}", key.display()),
            format!("--certificate={}", chain.display()),
        ];
        args.extend_from_slice(extra);
        Start {
            args,
            ..Start::default()
        }
    }
}

/// lunchd running under `systemd-socket-activate`.
pub struct Lunchd {
    pub child: Child,
    /// Port of each named socket.
    pub ports: Vec<(&'static str, u16)>,
    log: Arc<Mutex<String>>,
    /// The threads that copy stdout and stderr into `log`.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Lunchd {
    /// Starts `systemd-socket-activate` with one listening socket per name
    /// and waits until it listens. lunchd itself starts on the first
    /// connection, like a service behind socket units.
    ///
    /// A port found free can be taken again before it is bound (by another
    /// test, or as the local port of an outgoing connection); then it starts
    /// over with new ports.
    pub fn start(start: Start) -> Lunchd {
        let mut attempts = 0;
        loop {
            match Lunchd::try_start(&start) {
                Ok(lunchd) => return lunchd,
                Err(log) if log.contains("Address already in use") && attempts < 5 => attempts += 1,
                Err(log) => panic!("systemd-socket-activate did not listen:\n{log}"),
            }
        }
    }

    fn try_start(start: &Start) -> Result<Lunchd, String> {
        let ports: Vec<(&'static str, u16)> = start.names.iter().map(|n| (*n, free_port())).collect();
        let mut command = Command::new(require_tool("systemd-socket-activate", "systemd"));
        for (name, port) in &ports {
            command
                .arg(format!("--listen=127.0.0.1:{port}"))
                .arg(format!("--fdname={name}"));
        }
        for (key, value) in &start.env {
            command.arg(format!("--setenv={key}={value}"));
        }
        command
            .arg("--setenv=RUST_LOG=debug,h2=info,rustls=info,hyper=info")
            .arg(LUNCHD)
            .args(&start.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("running systemd-socket-activate: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // One per socket, counted below.
                if line.starts_with("Listening on") {
                    let _ = tx.send(());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&log);
        let stdout = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut out);
            sink.lock().unwrap().push_str(&out);
        });
        let mut lunchd = Lunchd {
            child,
            ports,
            log,
            readers: vec![stderr, stdout],
        };
        for _ in &lunchd.ports {
            if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                let _ = lunchd.child.kill();
                let _ = lunchd.child.wait();
                return Err(lunchd.log());
            }
        }
        Ok(lunchd)
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| *n == name).map(|(_, p)| *p).unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything lunchd logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log never contained {needle:?}:\n{}", self.log());
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its output is all in the log once the pipes are drained.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("lunchd did not exit within {timeout:?}:\n{}", self.log());
    }
}

impl Drop for Lunchd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` as raw bytes and returns the whole raw response (until
/// the server closes or 5 s pass).
pub fn raw_request(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if complete(&response) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// Whether a raw HTTP/1 response with Content-Length is complete.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    length.is_some_and(|n| body.len() >= n)
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One TLS connection to lunchd, kept open for several requests.
pub struct TlsConnection {
    pub alpn: Option<Vec<u8>>,
    /// The serial of the certificate the server presented, lowercase hex.
    pub serial: String,
    sender: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl TlsConnection {
    /// Connects to 127.0.0.1:`port` with SNI `host`, verifying against `config`.
    pub async fn connect(port: u16, host: &str, config: Arc<rustls::ClientConfig>) -> TlsConnection {
        let tcp = AsyncTcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        TlsConnection::connect_on(tcp, host, config).await
    }

    /// As [`TlsConnection::connect`], over `tcp`.
    pub async fn connect_on(tcp: AsyncTcpStream, host: &str, config: Arc<rustls::ClientConfig>) -> TlsConnection {
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = session.peer_certificates().unwrap()[0].clone();
        let serial = serial_of(&leaf);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        TlsConnection { alpn, serial, sender }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Response {
        self.request(hyper::Method::GET, host, path, &[]).await
    }

    pub async fn request(
        &mut self,
        method: hyper::Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri = if h2 {
            format!("https://{host}{path}")
        } else {
            path.to_owned()
        };
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        if !h2 {
            builder = builder.header("host", host);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Empty::<Bytes>::new()).unwrap();
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
            Sender::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(request).await.unwrap()
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// The serial number of a DER certificate, lowercase hex.
pub fn serial_of(cert: &CertificateDer<'_>) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).unwrap();
    hex(parsed.raw_serial())
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `from`
/// (Linux routes all of 127.0.0.0/8 to `lo`), so that one test can be
/// several clients.
pub async fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<AsyncTcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Retries `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lines of the file at `path` once there are `count`, or what there
/// is after 10 s.
pub fn lines(path: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `key` in a notification message, if it is there.
pub fn notify_field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// CLOCK_MONOTONIC now, in microseconds, as `MONOTONIC_USEC=` carries it.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

// ---- Helpers of the hostile-input tests (tests/hostile_*.rs). ----

/// lunchd serving a test CA's certificate for `lunch.test` and `localhost`
/// (serial 1) from a configuration file, under socket activation.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub leaf: Leaf,
    pub key: PathBuf,
    pub chain: PathBuf,
    pub config: PathBuf,
    pub lunchd: Lunchd,
}

impl Served {
    /// `limits` goes under `[limits]`; `extra` (other sections) after it.
    pub async fn start(limits: &str, extra: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let leaf = ca.issue(&["lunch.test", "localhost"], 1);
        let (key, chain) = write_leaf(dir.path(), &leaf);
        let config = dir.path().join("lunchd.toml");
        std::fs::write(&config, served_config(&key, &chain, limits, extra)).unwrap();
        let lunchd = Lunchd::start(Start {
            args: vec![format!("--config={}", config.display())],
            ..Start::default()
        });
        let served = Served {
            dir,
            ca,
            leaf,
            key,
            chain,
            config,
            lunchd,
        };
        // lunchd starts on the first connection.
        let mut first = served.connect(&[b"http/1.1"]).await;
        assert_eq!(first.get("localhost", "/healthz").await.status, 200);
        served.lunchd.wait_log("redirecting http://", Duration::from_secs(10));
        served
    }

    pub fn https(&self) -> u16 {
        self.lunchd.port("https")
    }

    pub fn http(&self) -> u16 {
        self.lunchd.port("http")
    }

    pub async fn connect(&self, alpn: &[&[u8]]) -> TlsConnection {
        TlsConnection::connect(self.https(), "localhost", self.ca.client_config(alpn)).await
    }

    /// Both servers answer a normal request on a new connection, and
    /// nothing has panicked.
    pub async fn assert_healthy(&self) {
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let mut tls = self.connect(&[alpn]).await;
            let response = tls.get("localhost", "/healthz").await;
            assert_eq!(
                (response.status, response.body.as_str()),
                (200, "ok\n"),
                "{}",
                self.lunchd.log()
            );
        }
        let response = exchange_one(self.http(), b"GET /p HTTP/1.1\r\nHost: lunch.test\r\n\r\n").await;
        let expected = format!("location: https://lunch.test:{}/p\r\n", self.https());
        assert!(
            response.starts_with("HTTP/1.1 301 ") && response.contains(&expected),
            "{response}"
        );
        self.assert_no_panic();
    }

    pub fn assert_no_panic(&self) {
        let log = self.lunchd.log();
        assert!(!log.contains("panicked"), "lunchd panicked:\n{log}");
    }
}

pub fn served_config(key: &Path, chain: &Path, limits: &str, extra: &str) -> String {
    format!(
        "[https]\nkey = \"{}\"\ncertificate = \"{}\"\n\n[limits]\n{limits}\n\n{extra}\n",
        key.display(),
        chain.display()
    )
}

/// Sends `request` on a new connection (then half-closes if `half_close`)
/// and reads until the server closes or 10 s pass. Returns what was read,
/// lossily as text, and whether the server closed the connection.
pub async fn exchange(port: u16, request: &[u8], half_close: bool) -> (String, bool) {
    let stream = AsyncTcpStream::connect(("127.0.0.1", port)).await.unwrap();
    exchange_on(stream, request, half_close).await
}

/// [`exchange`] on an open stream, plain or TLS.
pub async fn exchange_on<S>(stream: S, request: &[u8], half_close: bool) -> (String, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    exchange_until(stream, request, half_close, false).await
}

/// Sends `request` and reads one complete response (with Content-Length),
/// without waiting for the server to close a keep-alive connection.
pub async fn exchange_one(port: u16, request: &[u8]) -> String {
    let stream = AsyncTcpStream::connect(("127.0.0.1", port)).await.unwrap();
    exchange_until(stream, request, false, true).await.0
}

async fn exchange_until<S>(mut stream: S, request: &[u8], half_close: bool, one: bool) -> (String, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may refuse before reading everything; that is an answer too.
    let _ = stream.write_all(request).await;
    let _ = stream.flush().await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut response = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                if one && complete(&response) {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&response).into_owned(), closed)
}

/// The status code of a raw HTTP/1 response, if it is one.
pub fn status_of(response: &str) -> Option<u16> {
    let rest = response
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| response.strip_prefix("HTTP/1.0 "))?;
    rest.get(..3)?.parse().ok()
}

/// A raw TLS connection to 127.0.0.1:`port` (SNI `localhost`) offering `alpn`.
pub async fn tls_stream(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<AsyncTcpStream> {
    let tcp = AsyncTcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// The bytes of a real TLS ClientHello for `localhost`.
pub fn client_hello(config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut client = rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open descriptors of process `pid` once the count holds still for 100 ms
/// (connections closed a moment ago are released first).
pub async fn settled_fd_count(pid: i32) -> usize {
    eventually(Duration::from_secs(20), || async {
        let fds = fd_count(pid);
        tokio::time::sleep(Duration::from_millis(100)).await;
        (fd_count(pid) == fds).then_some(fds)
    })
    .await
}
