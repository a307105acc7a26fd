//! HTTP/3 over QUIC on one UDP socket: [`QuicServer`].
//!
//! quinn runs the QUIC endpoint (handshakes, loss recovery, the
//! anti-amplification limit before an address is validated, Retry), h3
//! the HTTP/3 framing; the requests go to the same kind of handler as the
//! TCP server's, so routes, headers and errors are the same on both.
//!
//! The TLS configuration ([`server_config`]) takes a certificate resolver,
//! so a [`CertificateStore`](crate::tls::CertificateStore) serves TCP and
//! QUIC alike and one reload changes the certificate on both. It allows
//! TLS 1.3 only (QUIC has no other), ALPN `h3`, and no 0-RTT: early data
//! can be replayed.
//!
//! The endpoint and its connections run on the runtime that calls
//! [`QuicServer::run`]: every datagram of every connection passes through
//! the one socket and quinn's endpoint task, so spreading connections over
//! threads would add a cross-thread wake-up per packet and no parallelism
//! in the part that reads the socket.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{CONNECTION, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, EndpointConfig, IdleTimeout, Incoming, TokioRuntime, TransportConfig, VarInt};
use rustls::server::ResolvesServerCert;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::admission::Gate;
use crate::clients::Clients;
use crate::handler::{ConnectionInfo, Handler, tag};
use crate::limits::{Limits, OpenConnection, Stats};
use crate::probe::{Probe, Questions};
use crate::proxy::Trusted;

/// The ALPN protocol of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";

/// Why a QUIC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The TLS configuration lacks what QUIC needs.
    #[error("the TLS configuration cannot serve QUIC: {0}; it needs TLS 1.3 with TLS_AES_128_GCM_SHA256")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A limit is out of the range QUIC can express.
    #[error("the idle timeout {0:?} is too long for QUIC; use at most a few hours")]
    IdleTimeout(Duration),
    /// The socket could not be used.
    #[error("cannot serve QUIC on the UDP socket: {0}")]
    Socket(#[from] io::Error),
}

/// The rustls configuration of the QUIC server: TLS 1.3 only, ALPN `h3`,
/// no early data, the certificate from `resolver` (a
/// [`CertificateStore`](crate::tls::CertificateStore)).
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|_| unreachable!("the aws-lc-rs provider supports TLS 1.3"))
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    // 0-RTT data can be replayed by anyone who saw it; a lunch is not worth
    // the risk, and a full handshake costs one round trip more.
    config.max_early_data_size = 0;
    Arc::new(config)
}

/// What only a QUIC server counts, beside its [`Stats`] (whose
/// `handshakes_full` and `handshakes_resumed` stay 0: quinn does not say
/// which kind a handshake was, so QUIC counts them here).
#[derive(Debug, Default)]
pub struct QuicStats {
    /// Clients asked to prove their address with a Retry.
    pub retried: AtomicU64,
    /// Clients refused because `max_connections` were open.
    pub refused: AtomicU64,
    /// Clients refused because the server was draining.
    pub refused_draining: AtomicU64,
    /// QUIC handshakes completed (and HTTP/3 set up).
    pub handshakes: AtomicU64,
    /// Client hellos that presented a session ticket this server issued
    /// and still held: the handshakes that resumed (one whose resumption
    /// then failed, on a ticket for another server name, say, would be
    /// counted too).
    pub resumed: AtomicU64,
}

impl QuicStats {
    /// Handshakes completed in full and resumed.
    pub fn handshakes(&self) -> (u64, u64) {
        let resumed = self.resumed.load(Ordering::Relaxed);
        let all = self.handshakes.load(Ordering::Relaxed);
        (all.saturating_sub(resumed), resumed)
    }
}

/// The session store of the QUIC server's TLS, counting the tickets
/// clients present back into [`QuicStats::resumed`]: what rustls tells a
/// TCP server with `handshake_kind`, and quinn does not pass on.
#[derive(Debug)]
struct CountResumptions {
    inner: Arc<dyn rustls::server::StoresServerSessions>,
    stats: Arc<QuicStats>,
}

impl CountResumptions {
    fn count(&self, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if value.is_some() {
            self.stats.resumed.fetch_add(1, Ordering::Relaxed);
        }
        value
    }
}

impl rustls::server::StoresServerSessions for CountResumptions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.count(self.inner.get(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.count(self.inner.take(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// The HTTP/3 server on one UDP socket.
pub struct QuicServer<S> {
    endpoint: Endpoint,
    handler: S,
    limits: Limits,
    retry_above: usize,
    connection_info: bool,
    stats: Arc<Stats>,
    quic_stats: Arc<QuicStats>,
    probe: Probe,
    questions: Questions,
}

impl<S> std::fmt::Debug for QuicServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicServer")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("limits", &self.limits)
            .field("retry_above", &self.retry_above)
            .field("connection_info", &self.connection_info)
            .finish_non_exhaustive()
    }
}

impl<S: Handler<QuicBody>> QuicServer<S> {
    /// An HTTP/3 server on `socket` with `tls` (from [`server_config`]),
    /// answered by `handler` within `limits`. Call from within a tokio
    /// runtime: the endpoint runs on it.
    ///
    /// From the limits it takes the handshake, idle and header timeouts,
    /// `max_streams` (concurrent requests per connection),
    /// `max_header_bytes` (a larger header section is answered with 431)
    /// and `max_connections` (clients beyond it are refused).
    pub fn new(
        socket: std::net::UdpSocket,
        tls: Arc<rustls::ServerConfig>,
        handler: S,
        limits: Limits,
    ) -> Result<QuicServer<S>, QuicError> {
        let quic_stats = Arc::new(QuicStats::default());
        let mut tls = (*tls).clone();
        tls.session_storage = Arc::new(CountResumptions {
            inner: Arc::clone(&tls.session_storage),
            stats: Arc::clone(&quic_stats),
        });
        let crypto = QuicServerConfig::try_from(Arc::new(tls))?;
        let mut transport = TransportConfig::default();
        transport.max_idle_timeout(Some(
            IdleTimeout::try_from(limits.idle_timeout).map_err(|_| QuicError::IdleTimeout(limits.idle_timeout))?,
        ));
        transport.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_streams));
        // A client opens three: control and the two QPACK streams; a few
        // more for extensions it may try (they are read and discarded).
        transport.max_concurrent_uni_streams(VarInt::from_u32(8));
        // What a client may have lunchd buffer: quinn keeps data that
        // arrives out of order up to these windows, and by default a
        // connection's total is unbounded. lunchd's requests carry no
        // large bodies; the windows match HTTP/2's over TCP.
        transport.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
        transport.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        // Handshakes not yet looked at by the accept loop; beyond this
        // quinn refuses them itself.
        config.max_incoming(limits.max_connections.max(1));
        socket.set_nonblocking(true)?;
        raise_receive_buffer(&socket);
        let endpoint = Endpoint::new(EndpointConfig::default(), Some(config), socket, Arc::new(TokioRuntime))?;
        let (probe, questions) = Probe::accept_loop();
        Ok(QuicServer {
            endpoint,
            handler,
            retry_above: limits.max_connections / 2,
            connection_info: false,
            limits,
            stats: Arc::default(),
            quic_stats,
            probe,
            questions,
        })
    }

    /// Asks clients whose address is not validated yet for a Retry round
    /// trip while at least `open` connections are open (by default half
    /// of `max_connections`; 0 asks every client). A Retry proves the
    /// client receives at its address before the server keeps any state
    /// for it or sends more than the Retry itself.
    pub fn retry_above(mut self, open: usize) -> QuicServer<S> {
        self.retry_above = open;
        self
    }

    /// Gives every request a [`ConnectionInfo`]: the client's address
    /// and the server name it sent, as the TCP server's
    /// [`with_connection_info`](crate::Server::with_connection_info) does.
    pub fn with_connection_info(mut self) -> QuicServer<S> {
        self.connection_info = true;
        self
    }

    /// The address the server receives on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// A handle to check the server is alive.
    pub fn probe(&self) -> Probe {
        self.probe.clone()
    }

    /// The server's counters (`plaintext_on_tls` stays 0).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The counters only QUIC has.
    pub fn quic_stats(&self) -> Arc<QuicStats> {
        Arc::clone(&self.quic_stats)
    }

    /// Serves until `shutdown` completes, then sends every connection an
    /// HTTP/3 GOAWAY, gives in-flight requests [`Limits::drain_timeout`]
    /// to finish and closes the endpoint.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let QuicServer {
            endpoint,
            handler,
            limits,
            retry_above,
            connection_info,
            stats,
            quic_stats,
            probe,
            mut questions,
        } = self;
        drop(probe);
        let limits = Arc::new(limits);
        let (stopping_tx, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut shutdown = pin!(shutdown);
        let mut full_since_warned = false;
        let gate = Arc::new(Gate::new(
            "quic",
            Clients::new(limits.max_connections_per_client, limits.client_ipv6_prefix),
            Trusted::default(),
            Arc::clone(&stats),
        ));
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(question) = questions.next() => question.answer(),
                Some(_) = connections.join_next() => {}
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let open = stats.active.load(Ordering::Relaxed);
                    if open >= limits.max_connections {
                        if !full_since_warned {
                            stats.limit_reached.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(server = "quic", limit = limits.max_connections, "connection limit reached; refusing new clients");
                            full_since_warned = true;
                        }
                        quic_stats.refused.fetch_add(1, Ordering::Relaxed);
                        incoming.refuse();
                        continue;
                    }
                    full_since_warned = false;
                    // IPv4 clients of a dual-stack socket by their IPv4
                    // address, as over TCP.
                    let peer = incoming.remote_address();
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    // The per-client limit, as over TCP. Until a Retry has
                    // proven it, the source address may be forged, and a
                    // forger must not use up its owner's slots: a client
                    // takes its slot once its handshake is done (which
                    // proves its address), and is turned away here, before
                    // any TLS work, only when its address is proven.
                    let full = gate.is_full(peer);
                    let unproven = !incoming.remote_address_validated() && incoming.may_retry();
                    if full && !unproven {
                        gate.refuse_client(peer);
                        incoming.refuse();
                        continue;
                    }
                    if unproven && (full || open >= retry_above) {
                        quic_stats.retried.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().ignore();
                        }
                        continue;
                    }
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let task = serve_connection(
                        incoming,
                        peer,
                        handler.clone(),
                        Arc::clone(&limits),
                        connection_info,
                        Accounts {
                            open: OpenConnection::new(&stats),
                            stats: Arc::clone(&stats),
                            quic_stats: Arc::clone(&quic_stats),
                            gate: Arc::clone(&gate),
                        },
                        stopping.clone(),
                    );
                    connections.spawn(task);
                }
            }
        }
        let _ = stopping_tx.send(true);
        // No new connections from here, and each of those open gets its
        // GOAWAY. New clients are refused at once (CONNECTION_REFUSED)
        // rather than left to time out, so that they can go elsewhere or
        // come back when systemd has started lunchd again.
        let open = stats.active.load(Ordering::Relaxed);
        if open > 0 {
            tracing::info!(server = "quic", open, "draining connections");
        }
        let drained = timeout(limits.drain_timeout, async {
            loop {
                tokio::select! {
                    joined = connections.join_next() => if joined.is_none() { break },
                    Some(incoming) = endpoint.accept() => {
                        quic_stats.refused_draining.fetch_add(1, Ordering::Relaxed);
                        incoming.refuse();
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                server = "quic",
                open = stats.active.load(Ordering::Relaxed),
                "drain deadline passed; closing the remaining connections"
            );
            connections.abort_all();
        }
        endpoint.close(VarInt::from_u32(H3_NO_ERROR), b"shutting down");
        // Lets the CONNECTION_CLOSE frames go out; bounded in case a peer is gone.
        let _ = timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

/// The receive buffer the QUIC socket should have at least, in bytes.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Every QUIC client's datagrams queue on the one socket, and one thread
/// reads them: the kernel's default buffer (208 KiB, about 90 full-size
/// datagrams) overflows in a burst or while the thread waits for a core,
/// and each datagram dropped there costs a retransmission and shrinks
/// the sender's congestion window. Raises it towards [`RECEIVE_BUFFER`]
/// (the kernel caps it at `net.core.rmem_max`; systemd's
/// `ReceiveBuffer=` can go beyond, and a larger buffer is left as it is).
fn raise_receive_buffer(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    // Linux reports twice what was asked: the bookkeeping it adds.
    match socket.recv_buffer_size() {
        Ok(size) if size / 2 >= RECEIVE_BUFFER => {}
        _ => {
            if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
                tracing::debug!(server = "quic", "cannot raise the receive buffer: {e}");
            }
        }
    }
}

/// `H3_NO_ERROR`, the application close code of a clean shutdown.
const H3_NO_ERROR: u32 = 0x100;

/// `H3_EXCESSIVE_LOAD`: the close code for a client over the per-client
/// limit.
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// Bytes a client may have in flight to lunchd on one stream.
const STREAM_RECEIVE_WINDOW: u32 = 64 << 10;

/// Bytes a client may have in flight to lunchd on one connection.
const RECEIVE_WINDOW: u32 = 1 << 20;

/// What a connection is counted and admitted by.
struct Accounts {
    /// Counts the connection open until it is dropped.
    open: OpenConnection,
    stats: Arc<Stats>,
    quic_stats: Arc<QuicStats>,
    gate: Arc<Gate>,
}

async fn serve_connection<S: Handler<QuicBody>>(
    incoming: Incoming,
    peer: SocketAddr,
    handler: S,
    limits: Arc<Limits>,
    connection_info: bool,
    accounts: Accounts,
    mut stopping: watch::Receiver<bool>,
) {
    let Accounts {
        open: _open,
        stats,
        quic_stats,
        gate,
    } = accounts;
    let handshake = async {
        let connection = incoming.accept()?.await?;
        let h3 = h3::server::builder()
            .max_field_section_size(limits.max_header_bytes as u64)
            .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok::<_, io::Error>((connection, h3))
    };
    let (connection, mut h3) = match timeout(limits.handshake_timeout, handshake).await {
        Ok(Ok(established)) => established,
        Ok(Err(e)) => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(server = "quic", %peer, "handshake failed: {e}");
            return;
        }
        Err(_) => {
            // Dropping the connection closes it.
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(server = "quic", %peer, "handshake timed out");
            return;
        }
    };
    quic_stats.handshakes.fetch_add(1, Ordering::Relaxed);
    let Some(_client) = gate.admit(peer) else {
        connection.close(
            VarInt::from_u32(H3_EXCESSIVE_LOAD),
            b"too many connections from this client",
        );
        return;
    };
    tracing::debug!(server = "quic", %peer, "http/3 connection established");
    let info = connection_info.then(|| ConnectionInfo {
        peer,
        server_name: connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.server_name)
            .map(Into::into),
    });
    let mut requests = JoinSet::new();
    let mut draining = *stopping.borrow_and_update();
    if draining {
        let _ = h3.shutdown(1).await;
    }
    let mut clean = true;
    loop {
        // After the GOAWAY no request is accepted: once those in flight
        // are answered the connection is done, however long the client
        // would keep it open.
        if draining && requests.is_empty() {
            break;
        }
        tokio::select! {
            Ok(_) = stopping.changed(), if !draining => {
                draining = true;
                // GOAWAY: requests already accepted finish, later ones are
                // refused so the client retries them elsewhere. Its stream
                // ID is the first one not processed: one after the last
                // accepted (h3 counts the `1` in streams).
                if let Err(e) = h3.shutdown(1).await {
                    tracing::debug!(server = "quic", %peer, "goaway failed: {e}");
                    clean = false;
                    break;
                }
            }
            Some(_) = requests.join_next() => {}
            accepted = h3.accept() => match accepted {
                // A request that crossed the GOAWAY on the wire, on the
                // stream the GOAWAY names: h3 lets it through, but the
                // client was told it is not processed.
                Ok(Some(resolver)) if draining => {
                    let header_timeout = limits.header_timeout;
                    requests.spawn(async move {
                        if let Ok(Ok((_, mut stream))) = timeout(header_timeout, resolver.resolve_request()).await {
                            stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                            stream.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
                        }
                    });
                }
                Ok(Some(resolver)) => {
                    let handler = handler.clone();
                    let info = info.clone();
                    let (header_timeout, write_timeout) = (limits.header_timeout, limits.idle_timeout);
                    requests.spawn(async move {
                        match timeout(header_timeout, resolver.resolve_request()).await {
                            Ok(Ok((request, stream))) => {
                                serve_request(request, stream, handler, peer, info.as_ref(), write_timeout).await;
                            }
                            Ok(Err(e)) => tracing::debug!(server = "quic", %peer, "bad request: {e}"),
                            Err(_) => tracing::debug!(server = "quic", %peer, "request headers timed out"),
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(server = "quic", %peer, "connection ended: {e}");
                    }
                    clean = false;
                    break;
                }
            },
        }
    }
    while requests.join_next().await.is_some() {}
    if clean {
        // quinn drops what a closed connection has not yet sent, and the
        // last response was only handed to it (h3-quinn's finish does not
        // wait for the acknowledgement): give its packets time to arrive,
        // and the client time to close first, as it does once a GOAWAY
        // leaves it nothing in flight.
        let linger = (connection.rtt() * 4 + Duration::from_millis(50)).min(Duration::from_secs(1));
        let _ = timeout(linger, connection.closed()).await;
    }
    connection.close(VarInt::from_u32(H3_NO_ERROR), b"");
}

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

async fn serve_request<S: Handler<QuicBody>>(
    request: Request<()>,
    stream: Stream,
    handler: S,
    peer: SocketAddr,
    info: Option<&ConnectionInfo>,
    write_timeout: Duration,
) {
    let (mut send, recv) = stream.split();
    let returned = Arc::new(Mutex::new(None));
    let mut request = request.map(|()| QuicBody {
        stream: Some(recv),
        returned: Arc::clone(&returned),
    });
    tag(&mut request, info);
    let Ok(response) = handler.handle(request).await;
    let (mut parts, body) = response.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114 4.2).
    for name in [
        CONNECTION,
        TRANSFER_ENCODING,
        UPGRADE,
        HeaderName::from_static("keep-alive"),
    ] {
        parts.headers.remove(name);
    }
    if !sent(write_timeout, peer, send.send_response(Response::from_parts(parts, ()))).await {
        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        return;
    }
    let mut body = pin!(body);
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                tracing::debug!(server = "quic", %peer, "the response body failed: {e}");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
        };
        let done = match frame.into_data() {
            Ok(data) => sent(write_timeout, peer, send.send_data(data)).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => sent(write_timeout, peer, send.send_trailers(trailers)).await,
                Err(_) => true,
            },
        };
        if !done {
            send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            return;
        }
    }
    if !sent(write_timeout, peer, send.finish()).await {
        send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
    }
    let unread = returned.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(recv) = unread {
        finish_reading(recv).await;
    }
}

/// Waits for one write of a response, within `limit`: the stream
/// credit a client gives is how it reads, and one that stops giving it
/// is cut off as a client that stops reading is over TCP. False when the
/// write failed or timed out (logged).
async fn sent<E: std::fmt::Display>(
    limit: Duration,
    peer: SocketAddr,
    sending: impl Future<Output = Result<(), E>>,
) -> bool {
    match timeout(limit, sending).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(server = "quic", %peer, "sending the response failed: {e}");
            false
        }
        Err(_) => {
            tracing::debug!(server = "quic", %peer, "the client stopped reading responses");
            false
        }
    }
}

/// Reads what is left of a request the handler did not read, up to a
/// bound, so that the stream ends cleanly: a request stream dropped before
/// its end makes quinn send STOP_SENDING with code 0, which clients such
/// as curl report as an error even after a complete response. For a GET
/// the end came with the headers and this returns at once.
async fn finish_reading(mut recv: RequestBody) {
    let drained = timeout(Duration::from_secs(1), async {
        let mut left = 64 * 1024_usize;
        while let Ok(Some(data)) = recv.recv_data().await {
            left = left.checked_sub(data.remaining())?;
        }
        Some(())
    })
    .await;
    if !matches!(drained, Ok(Some(()))) {
        recv.stop_sending(h3::error::Code::H3_NO_ERROR);
    }
}

type RequestBody = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The body of an HTTP/3 request, read from its stream as the handler
/// asks for it.
pub struct QuicBody {
    /// `None` only while dropping.
    stream: Option<RequestBody>,
    /// Where the stream goes when the body is dropped, for the server to
    /// end it cleanly.
    returned: Arc<Mutex<Option<RequestBody>>>,
}

impl Drop for QuicBody {
    fn drop(&mut self) {
        *self.returned.lock().unwrap_or_else(PoisonError::into_inner) = self.stream.take();
    }
}

impl std::fmt::Debug for QuicBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QuicBody").finish_non_exhaustive()
    }
}

impl Body for QuicBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(stream) = self.get_mut().stream.as_mut() else {
            return Poll::Ready(None);
        };
        match stream.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(Some(mut data))) => {
                let len = data.remaining();
                Poll::Ready(Some(Ok(Frame::data(data.copy_to_bytes(len)))))
            }
            // Trailers of requests are not read: no route uses them.
            Poll::Ready(Ok(None)) => Poll::Ready(None),
        }
    }
}
