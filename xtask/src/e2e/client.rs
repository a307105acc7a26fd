//! Clients of the lunchd inside the container: HTTP/1.1 over TLS verified
//! against the test CA (rustls), on sockets made in the container's network
//! namespace, and a load generator that counts refused connections.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::container::Container;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS client settings: trust only the test CA, send `name` as SNI.
#[derive(Clone)]
pub(crate) struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    pub(crate) fn new(ca_der: &[u8], name: &str) -> anyhow::Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_der.to_vec()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            name: ServerName::try_from(name.to_owned()).context("the test domain is not a valid server name")?,
        })
    }

    /// The same settings offering `alpn` instead of HTTP/1.1.
    pub(crate) fn config_for(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// The server name sent.
    pub(crate) fn name(&self) -> String {
        self.name.to_str().into_owned()
    }
}

/// A plain TCP connection to `127.0.0.1:port` inside the container.
pub(crate) fn connect(container: &Container, port: u16) -> anyhow::Result<TcpStream> {
    let stream = container.in_netns(|| TcpStream::connect_timeout(&loopback(port), IO_TIMEOUT))??;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection over TLS.
pub(crate) struct TlsConnection {
    stream: StreamOwned<ClientConnection, TcpStream>,
    host: String,
}

impl TlsConnection {
    /// Connects and completes the handshake (the certificate is verified
    /// against the test CA).
    pub(crate) fn open(tls: &Tls, tcp: TcpStream) -> anyhow::Result<TlsConnection> {
        let conn = ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .context("TLS handshake with lunchd")?;
        }
        Ok(TlsConnection {
            stream,
            host: tls.name.to_str().into_owned(),
        })
    }

    /// The certificate the server presented, DER.
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
    }

    /// The negotiated ALPN protocol.
    pub(crate) fn alpn(&self) -> Option<String> {
        self.stream
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// `GET path`, keeping the connection open.
    pub(crate) fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lunchd-e2e\r\n\r\n",
            self.host
        );
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        read_response(&mut self.stream)
    }
}

/// Reads one HTTP/1.1 response with a Content-Length or chunked body.
pub(crate) fn read_response(stream: &mut impl Read) -> anyhow::Result<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 64 * 1024 {
            bail!("response headers longer than 64 KiB");
        }
        match stream.read(&mut byte) {
            Ok(0) => bail!("connection closed before the response headers ended"),
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(e).context("reading the response headers"),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = find("content-length") {
        let length: usize = length.parse().context("bad Content-Length")?;
        body.resize(length, 0);
        stream.read_exact(&mut body).context("reading the response body")?;
    } else if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte)?;
                line.push(byte[0]);
            }
            let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).context("bad chunk size")?;
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// What a load run saw.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Connection attempts.
    pub(crate) attempts: usize,
    /// Attempts refused by the kernel: no socket was listening.
    pub(crate) refused: usize,
    /// Requests answered with 200.
    pub(crate) answered: usize,
    /// Other failures (reset in flight, timeout, bad status), with why.
    pub(crate) failed: Vec<String>,
    /// Start times and outcomes of every attempt, to find the ones made
    /// while the service was down.
    pub(crate) log: Vec<(Instant, bool)>,
}

/// Opens a new TLS connection every `interval` and makes one request on
/// it, until `stop` is set (or `max_attempts`). Runs inside the
/// container's network namespace.
pub(crate) fn load(
    container: &Container,
    tls: &Tls,
    port: u16,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Load> {
    load_at(
        Path::new(&format!("/proc/{}/ns/net", container.pid1())),
        loopback(port),
        tls,
        "/healthz",
        interval,
        stop,
    )
}

/// [`load`] from the network namespace at `ns`, to `addr`, asking for
/// `path`.
pub(crate) fn load_at(
    ns: &Path,
    addr: SocketAddr,
    tls: &Tls,
    path: &str,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Load> {
    const MAX_ATTEMPTS: usize = 20_000;
    super::container::in_netns(ns, || {
        let mut load = Load::default();
        while !stop.load(Ordering::Relaxed) && load.attempts < MAX_ATTEMPTS {
            let started = Instant::now();
            load.attempts += 1;
            let outcome = TcpStream::connect_timeout(&addr, IO_TIMEOUT);
            let ok = match outcome {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    load.refused += 1;
                    false
                }
                Err(e) => {
                    load.failed.push(format!("connect: {e}"));
                    false
                }
                Ok(tcp) => match one_request(tls, tcp, path) {
                    Ok(()) => {
                        load.answered += 1;
                        true
                    }
                    Err(e) => {
                        load.failed.push(format!("{e:#}"));
                        false
                    }
                },
            };
            load.log.push((started, ok));
            if let Some(rest) = interval.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        load
    })
}

fn one_request(tls: &Tls, tcp: TcpStream, path: &str) -> anyhow::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut conn = TlsConnection::open(tls, tcp)?;
    let response = conn.get(path)?;
    if response.status != 200 {
        bail!("status {}", response.status);
    }
    Ok(())
}

/// What the clients that connected while lunchd hung saw.
#[derive(Debug, Default)]
pub(crate) struct Hung {
    pub(crate) attempts: usize,
    pub(crate) refused: usize,
    /// Connections not answered with 200, with why.
    pub(crate) failed: Vec<String>,
}

/// How long a client waits for a hung lunchd: longer than the watchdog
/// takes to have it restarted.
const PATIENCE: Duration = Duration::from_secs(60);

/// Opens a connection every `interval` until `stop`; each waits on its own
/// thread (up to [`PATIENCE`]) for the handshake and an answer to
/// `GET /healthz`.
pub(crate) fn while_hung(
    container: &Container,
    tls: &Tls,
    port: u16,
    interval: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Hung> {
    let mut hung = Hung::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut waiting = Vec::new();
        while !stop.load(Ordering::Relaxed) && hung.attempts < 1000 {
            let started = Instant::now();
            hung.attempts += 1;
            match container.in_netns(|| TcpStream::connect_timeout(&loopback(port), IO_TIMEOUT))? {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => hung.refused += 1,
                Err(e) => hung.failed.push(format!("connect: {e}")),
                Ok(tcp) => waiting.push(scope.spawn(move || {
                    tcp.set_read_timeout(Some(PATIENCE))?;
                    tcp.set_write_timeout(Some(PATIENCE))?;
                    let mut conn = TlsConnection::open(tls, tcp)?;
                    let response = conn.get("/healthz")?;
                    if response.status != 200 {
                        bail!("status {}", response.status);
                    }
                    Ok(())
                })),
            }
            if let Some(rest) = interval.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        for handle in waiting {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => hung.failed.push(format!("{e:#}")),
                Err(_) => hung.failed.push("a client thread panicked".to_owned()),
            }
        }
        Ok(())
    })?;
    Ok(hung)
}
