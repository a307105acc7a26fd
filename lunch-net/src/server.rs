//! The accept loop and connection handling shared by both servers.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::deadlines::{Deadlines, Heads};
use crate::workers::Workers;

/// Bounds on what one client can hold or make the server do.
///
/// The defaults are safe for a server on the internet; every field is
/// configurable in lunchd's `[limits]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time from accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to receive a request's complete headers (HTTP/1), from the
    /// start of the connection or the end of the previous response. Like
    /// the idle timeout, enforced within a quarter of it after it passes.
    pub header_timeout: Duration,
    /// Time a connection may pass without a byte read or written.
    pub idle_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
    /// Open connections per server; further clients wait in the kernel's
    /// listen queue.
    pub max_connections: usize,
    /// Size of a request head (HTTP/1) or header list (HTTP/2), in bytes.
    pub max_header_bytes: usize,
    /// Number of header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_streams: 100,
        }
    }
}

/// Counters of one server, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicUsize,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Plain-HTTP requests refused on the TLS port.
    pub plaintext_on_tls: AtomicU64,
}

/// Asks a running server's accept loop, or a connection worker, to answer,
/// proving that it and the runtime under it still make progress.
#[derive(Debug, Clone)]
pub struct Probe(Probed);

#[derive(Debug, Clone)]
enum Probed {
    AcceptLoop(mpsc::Sender<oneshot::Sender<()>>),
    Worker(tokio::runtime::Handle),
}

impl Probe {
    pub(crate) fn worker(handle: tokio::runtime::Handle) -> Probe {
        Probe(Probed::Worker(handle))
    }

    /// Whether it answered; false once the server or worker has stopped.
    pub async fn check(&self) -> bool {
        match &self.0 {
            Probed::AcceptLoop(sender) => {
                let (tx, rx) = oneshot::channel();
                sender.send(tx).await.is_ok() && rx.await.is_ok()
            }
            Probed::Worker(handle) => handle.spawn(async {}).await.is_ok(),
        }
    }
}

/// What answers a server's requests: a hyper service, cloned for each
/// connection, such as [`Redirector`](crate::redirect::Redirector) or an
/// axum router through [`tower_handler`](crate::tower_handler).
pub trait Handler:
    Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Handler for S where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// One server on one listening socket: plain HTTP/1.1, or TLS with HTTP/2
/// and HTTP/1.1 chosen by ALPN.
pub struct Server<S> {
    name: &'static str,
    listener: TcpListener,
    handler: S,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    workers: Option<Workers>,
    stats: Arc<Stats>,
    probe_tx: mpsc::Sender<oneshot::Sender<()>>,
    probe_rx: mpsc::Receiver<oneshot::Sender<()>>,
}

impl<S> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S: Handler> Server<S> {
    /// A plain HTTP/1.1 server. `listener` must be non-blocking; call from
    /// within a tokio runtime.
    pub fn plain(
        name: &'static str,
        listener: std::net::TcpListener,
        handler: S,
        limits: Limits,
    ) -> io::Result<Server<S>> {
        Server::new(name, listener, handler, limits, None)
    }

    /// A TLS server. `listener` must be non-blocking; call from within a
    /// tokio runtime.
    pub fn tls(
        name: &'static str,
        listener: std::net::TcpListener,
        handler: S,
        limits: Limits,
        config: Arc<ServerConfig>,
    ) -> io::Result<Server<S>> {
        Server::new(name, listener, handler, limits, Some(TlsAcceptor::from(config)))
    }

    fn new(
        name: &'static str,
        listener: std::net::TcpListener,
        handler: S,
        limits: Limits,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Server<S>> {
        let listener = TcpListener::from_std(listener)?;
        let (probe_tx, probe_rx) = mpsc::channel(4);
        Ok(Server {
            name,
            listener,
            handler,
            limits,
            tls,
            workers: None,
            stats: Arc::default(),
            probe_tx,
            probe_rx,
        })
    }

    /// Serves connections on `workers` instead of the runtime that runs
    /// the accept loop.
    pub fn with_workers(mut self, workers: Workers) -> Server<S> {
        self.workers = Some(workers);
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to check the server is alive.
    pub fn probe(&self) -> Probe {
        Probe(Probed::AcceptLoop(self.probe_tx.clone()))
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open
    /// connections [`Limits::drain_timeout`] to finish their requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            name,
            listener,
            handler,
            limits,
            tls,
            workers,
            stats,
            probe_tx,
            mut probe_rx,
        } = self;
        drop(probe_tx);
        let conn = Arc::new(Connection::new(handler, &limits, tls));
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let (stopping_tx, stopping) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut full_since_warned = false;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(reply) = probe_rx.recv() => {
                    let _ = reply.send(());
                }
                acquired = Arc::clone(&slots).acquire_owned(), if permit.is_none() => {
                    permit = acquired.ok();
                    full_since_warned = false;
                }
                accepted = listener.accept(), if permit.is_some() => match accepted {
                    Ok((stream, peer)) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let task = ConnectionTask {
                            conn: Arc::clone(&conn),
                            stats: Arc::clone(&stats),
                            watcher: graceful.watcher(),
                            stopping: stopping.clone(),
                            _permit: permit.take(),
                        };
                        match &workers {
                            Some(workers) => {
                                if let Err(e) = workers.spawn(stream, move |stream| task.run(stream, peer)) {
                                    tracing::warn!(server = name, %peer, "could not hand the connection to a worker: {e}");
                                }
                            }
                            None => {
                                tokio::spawn(task.run(stream, peer));
                            }
                        }
                    }
                    Err(e) => accept_error(name, &e).await,
                },
                else => break,
            }
            if permit.is_none() && slots.available_permits() == 0 && !full_since_warned {
                tracing::warn!(
                    server = name,
                    limit = limits.max_connections,
                    "connection limit reached; new clients wait"
                );
                full_since_warned = true;
            }
        }
        drop(listener);
        let _ = stopping_tx.send(true);
        let open = stats.active.load(Ordering::Relaxed);
        if open > 0 {
            tracing::info!(server = name, open, "draining connections");
        }
        match timeout(limits.drain_timeout, graceful.shutdown()).await {
            Ok(()) => tracing::debug!(server = name, "all connections closed"),
            Err(_) => tracing::warn!(
                server = name,
                open = stats.active.load(Ordering::Relaxed),
                "drain deadline passed; closing the remaining connections"
            ),
        }
    }
}

/// Accept errors: per-connection ones are skipped, resource exhaustion
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) waits a moment instead of spinning.
async fn accept_error(name: &'static str, e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    ) {
        return;
    }
    tracing::error!(server = name, "accept failed: {e}; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// What every connection of one server shares.
struct Connection<S> {
    handler: S,
    tls: Option<TlsAcceptor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl<S> Connection<S> {
    fn new(handler: S, limits: &Limits, tls: Option<TlsAcceptor>) -> Connection<S> {
        let mut http1 = http1::Builder::new();
        // `Deadlines` enforces the header timeout without a timer per request.
        http1
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256));
        // No keep-alive PINGs: a client answering them would count as
        // progress and keep an idle connection open past `idle_timeout`
        // for ever. `Deadlines` already closes idle and dead connections.
        Connection {
            handler,
            tls,
            http1,
            http2,
            handshake_timeout: limits.handshake_timeout,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }
}

struct ConnectionTask<S> {
    conn: Arc<Connection<S>>,
    stats: Arc<Stats>,
    /// Held until the connection ends, so that the drain waits for it.
    watcher: Watcher,
    /// Becomes true when the server stops accepting.
    stopping: watch::Receiver<bool>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<S: Handler> ConnectionTask<S> {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let _open = OpenConnection::new(&self.stats);
        let _ = stream.set_nodelay(true);
        let conn = Arc::clone(&self.conn);
        let service = conn.handler.clone();
        match &conn.tls {
            None => {
                if let Err(e) = serve_http1(&conn, stream, service, self.stopping).await {
                    tracing::debug!(%peer, "http connection ended: {e}");
                }
            }
            Some(acceptor) => match timeout(conn.handshake_timeout, handshake(acceptor, stream)).await {
                Ok(Ok(Handshake::Tls(tls))) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let served = if h2 {
                        let io = TokioIo::new(Deadlines::idle(tls, conn.idle_timeout));
                        self.watcher.watch(conn.http2.serve_connection(io, service)).await
                    } else {
                        serve_http1(&conn, tls, service, self.stopping).await
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, "https connection ended: {e}");
                    }
                }
                Ok(Ok(Handshake::Plaintext)) => {
                    self.stats.plaintext_on_tls.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(Handshake::Closed)) => {}
                Ok(Err(e)) => {
                    self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    self.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            },
        }
    }
}

/// How long a connection that has not delivered its first request yet is
/// given for it when the server stops: enough for a request in transit
/// (a round trip or two), short enough that a client that connected and
/// stays silent, such as a browser's preconnect, does not hold up a restart.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Serves one HTTP/1 connection, with its idle and header deadlines; when
/// the server stops, shuts it down gracefully. A connection that has not yet delivered a request first gets
/// [`FIRST_REQUEST_GRACE`] (at most the header timeout) for it: its client
/// has sent the request, or is sending it, and closing the connection as
/// idle would lose it (a restart right after a client connected). HTTP/2
/// needs no such wait: its GOAWAY tells the client which requests were not
/// served.
async fn serve_http1<I, S: Handler>(
    conn: &Connection<S>,
    io: I,
    service: S,
    mut stopping: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let heads = Heads::default();
    let io = Deadlines::http1(io, conn.idle_timeout, conn.header_timeout, heads.clone());
    let request_seen = Arc::new(Notify::new());
    let seen = Arc::clone(&request_seen);
    let service = hyper::service::service_fn(move |request| {
        // Only the first request matters to the drain; a stored permit
        // makes `notified()` return at once, however late the drain starts.
        if heads.arrived() == 0 {
            seen.notify_one();
        }
        service.call(request)
    });
    let mut served = pin!(conn.http1.serve_connection(TokioIo::new(io), service));
    let stop = async {
        let _ = stopping.wait_for(|stop| *stop).await;
        let grace = conn.header_timeout.min(FIRST_REQUEST_GRACE);
        let _ = timeout(grace, request_seen.notified()).await;
    };
    tokio::select! {
        result = served.as_mut() => return result,
        () = stop => {}
    }
    served.as_mut().graceful_shutdown();
    served.await
}

/// Counts a connection as open for as long as it lives, however its task
/// ends.
struct OpenConnection(Arc<Stats>);

impl OpenConnection {
    fn new(stats: &Arc<Stats>) -> OpenConnection {
        stats.active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(stats))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Handshake {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plaintext,
    Closed,
}

/// The first byte of a TLS connection is a handshake record (0x16). Anything
/// else is most likely `http://` sent to the HTTPS port: answer it in plain
/// text instead of a TLS alert the client cannot show.
async fn handshake(acceptor: &TlsAcceptor, mut stream: TcpStream) -> io::Result<Handshake> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(Handshake::Closed);
    }
    if first[0] != 0x16 {
        refuse_plaintext(&mut stream).await;
        return Ok(Handshake::Plaintext);
    }
    Ok(Handshake::Tls(Box::new(acceptor.accept(stream).await?)))
}

async fn refuse_plaintext(stream: &mut TcpStream) {
    const BODY: &str = "This port speaks HTTPS only; use an https:// address.\n";
    // Read what the client sent so closing does not reset the connection
    // before it has read the answer.
    let mut request = [0u8; 4096];
    let _ = timeout(Duration::from_millis(100), stream.read(&mut request)).await;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
