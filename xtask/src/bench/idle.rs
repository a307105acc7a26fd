//! `--idle N`: the memory a server spends on an idle TLS connection. N
//! connections, each after one request (HTTP/1.1 or HTTP/2), are held
//! open without a byte more; the server's resident memory (VmRSS summed
//! over its processes) before and after, divided by N, is the cost of one.
//! A connection the server closed before the measurement (lunchd closes a
//! keep-alive connection without a next request after its header
//! timeout, 10 s by default, and opening thousands of connections on a
//! busy machine can take that long) would make the server look cheaper:
//! the measurement fails instead.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use lunch_testkit::h2::{self, ACK, END_HEADERS, END_STREAM, HEADERS, SETTINGS, frame};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::procs;
use super::servers::Certificate;

/// The protocol of the one request each idle connection makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub(crate) const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }

    fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Http1 => b"http/1.1",
            Protocol::Http2 => b"h2",
        }
    }
}

/// One server's memory for `connections` idle connections of `protocol`.
#[derive(Debug, Clone)]
pub(crate) struct Idle {
    pub(crate) server: &'static str,
    pub(crate) protocol: Protocol,
    pub(crate) connections: usize,
    pub(crate) before_kib: u64,
    pub(crate) after_kib: u64,
}

impl Idle {
    pub(crate) fn kib_per_connection(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.connections as f64
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A client that accepts only the bench's certificate (pinned: it is
/// self-signed, and a CA too, which webpki refuses as a server's
/// certificate) and offers `protocol`.
fn client_config(cert: &Certificate, protocol: Protocol) -> anyhow::Result<Arc<ClientConfig>> {
    let pinned = CertificateDer::pem_file_iter(&cert.chain)
        .context("reading the bench certificate")?
        .next()
        .context("the bench certificate file is empty")?
        .context("reading the bench certificate")?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let verifier = Arc::new(Pinned {
        cert: pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![protocol.alpn().to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly one certificate, and signatures made with its key.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the bench's certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Measures `server` (its processes descend from `pid`) holding `n` idle
/// connections of `protocol` on 127.0.0.1:`port`, each after one `GET
/// path`.
pub(crate) fn measure(
    server: &'static str,
    pid: u32,
    port: u16,
    path: &str,
    protocol: Protocol,
    n: usize,
    cert: &Certificate,
) -> anyhow::Result<Idle> {
    let config = client_config(cert, protocol)?;
    // Warm-up: what the first connections allocate once (session caches,
    // allocator arenas, worker state) is not a connection's cost.
    drop(open(&config, port, path, protocol, n.min(100))?);
    settle();
    let before_kib = procs::rss_kib(&procs::family(pid));
    let held = open(&config, port, path, protocol, n).with_context(|| format!("{server}: {} idle", protocol.name()))?;
    settle();
    let after_kib = procs::rss_kib(&procs::family(pid));
    let closed = closed_by_server(&held)?;
    anyhow::ensure!(
        closed == 0,
        "{server}: {closed} of the {n} idle {} connections were closed before they were measured (by a \
         timeout of the server's?); measure fewer connections or on a quieter machine",
        protocol.name()
    );
    drop(held);
    settle();
    Ok(Idle {
        server,
        protocol,
        connections: n,
        before_kib,
        after_kib,
    })
}

/// How many of `held` the server has closed: their sockets got its FIN
/// and wait in CLOSE_WAIT for this end to close (from /proc/net/tcp,
/// whatever bytes they have unread).
fn closed_by_server(held: &[Tls]) -> anyhow::Result<usize> {
    const CLOSE_WAIT: &str = "08";
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let waiting: std::collections::HashSet<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            (fields.get(3) == Some(&CLOSE_WAIT)).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect();
    Ok(held
        .iter()
        .filter(|tls| tls.sock.local_addr().is_ok_and(|addr| waiting.contains(&addr.port())))
        .count())
}

/// Time for the server to finish with connections opened or closed.
fn settle() {
    thread::sleep(Duration::from_secs(2));
}

/// Opens `n` connections from a few threads at once: on a busy machine,
/// one after the other, the first would reach lunchd's header timeout
/// before the last is open.
fn open(config: &Arc<ClientConfig>, port: u16, path: &str, protocol: Protocol, n: usize) -> anyhow::Result<Vec<Tls>> {
    const THREADS: usize = 4;
    thread::scope(|scope| {
        let openers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(THREADS)
                        .map(|i| one_request(config, port, path, protocol).with_context(|| format!("connection {i}")))
                        .collect::<anyhow::Result<Vec<Tls>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for opener in openers {
            all.extend(
                opener
                    .join()
                    .map_err(|_| anyhow::anyhow!("a thread opening connections panicked"))??,
            );
        }
        Ok(all)
    })
}

/// A TLS connection that has made one request and read its answer.
fn one_request(config: &Arc<ClientConfig>, port: u16, path: &str, protocol: Protocol) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ClientConnection::new(Arc::clone(config), ServerName::try_from("localhost")?.to_owned())?;
    let mut tls = StreamOwned::new(conn, tcp);
    match protocol {
        Protocol::Http1 => {
            write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
            read_http1_response(&mut tls)?;
        }
        Protocol::Http2 => http2_request(&mut tls, path)?,
    }
    Ok(tls)
}

fn read_http1_response(tls: &mut Tls) -> anyhow::Result<()> {
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tls.read(&mut buf)?;
        anyhow::ensure!(n > 0, "closed before the response ended");
        response.extend_from_slice(&buf[..n]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        anyhow::ensure!(head.starts_with("http/1.1 200 "), "not a 200: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no content-length")?;
        if response.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// `GET https://localhost{path}` on stream 1, read to the end of its
/// answer; the server's SETTINGS are acknowledged.
fn http2_request(tls: &mut Tls, path: &str) -> anyhow::Result<()> {
    let block = h2::get(path, "localhost");
    let mut hello = h2::PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    tls.write_all(&hello)?;
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload)?;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes(head[5..9].try_into()?) & 0x7fff_ffff;
        if kind == SETTINGS && flags & ACK == 0 {
            tls.write_all(&frame(SETTINGS, ACK, 0, &[]))?;
        }
        anyhow::ensure!(
            kind != 0x3 && kind != 0x7,
            "the server reset the stream or the connection"
        );
        if stream == 1 && flags & END_STREAM != 0 {
            anyhow::ensure!(tls.conn.alpn_protocol() == Some(b"h2"), "the server did not choose h2");
            return Ok(());
        }
    }
}
