//! Serving one accepted connection: the TLS handshake (on a TLS server),
//! then hyper's HTTP/2 or HTTP/1 per ALPN, within the connection's
//! deadlines, until it ends or the server drains it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

use crate::admission::Admission;
use crate::deadlines::{Deadlines, Heads};
use crate::handler::{ConnectionInfo, Handler, tag};
use crate::handshake::{Handshake, handshake};
use crate::limits::{Limits, OpenConnection, Stats};

/// What every connection of one server shares.
pub(crate) struct Connection<S> {
    handler: S,
    tls: Option<TlsAcceptor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Enforced on HTTP/2 header lists by [`serve_http2`].
    max_header_bytes: usize,
    handshake_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Whether requests get a [`ConnectionInfo`].
    pub(crate) connection_info: bool,
}

impl<S> Connection<S> {
    pub(crate) fn new(handler: S, limits: &Limits, tls: Option<TlsAcceptor>) -> Connection<S> {
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
            .max_header_list_size(u32::try_from(http2_header_cap(limits.max_header_bytes)).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(256))
            // What a stream may queue for a client that does not read (or
            // grants no window): lunchd's answers are a few KiB, and the
            // stream's initial window is 64 KiB, so this slows nothing.
            .max_send_buf_size(64 * 1024);
        // No keep-alive PINGs: a client answering them would count as
        // progress and keep an idle connection open past `idle_timeout`
        // for ever. `Deadlines` already closes idle and dead connections.
        Connection {
            handler,
            tls,
            http1,
            http2,
            max_header_bytes: limits.max_header_bytes,
            handshake_timeout: limits.handshake_timeout,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            connection_info: false,
        }
    }
}

/// One accepted connection, with what ties it to its server.
pub(crate) struct ConnectionTask<S> {
    pub(crate) conn: Arc<Connection<S>>,
    pub(crate) stats: Arc<Stats>,
    /// Held until the connection ends, so that the drain waits for it.
    pub(crate) watcher: Watcher,
    /// Becomes true when the server stops accepting.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The connection's slot under `Limits::max_connections`.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// The connection's place in its client's count, or the gate that
    /// admits the client its PROXY header names.
    pub(crate) client: Option<Admission>,
}

impl<S: Handler> ConnectionTask<S> {
    pub(crate) async fn run(self, mut stream: TcpStream, peer: SocketAddr) {
        // Released after the connection stops counting as open.
        let _permit = self.permit;
        let _open = OpenConnection::new(&self.stats);
        // From accept to a finished TLS handshake, a PROXY header included.
        let deadline = Instant::now() + self.conn.handshake_timeout;
        let (peer, _client) = match self.client {
            Some(Admission::Proxied(gate)) => {
                match gate.proxied(&mut stream, peer, self.conn.handshake_timeout).await {
                    Some((client, slot)) => (client, Some(slot)),
                    None => return,
                }
            }
            Some(Admission::Admitted(slot)) => (peer, Some(slot)),
            None => (peer, None),
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::clone(&self.conn);
        let service = conn.handler.clone();
        let info = |server_name: Option<&str>| {
            conn.connection_info.then(|| ConnectionInfo {
                peer,
                server_name: server_name.map(Into::into),
            })
        };
        match &conn.tls {
            None => {
                if let Err(e) = serve_http1(&conn, stream, service, info(None), self.stopping).await {
                    tracing::debug!(%peer, "http connection ended: {}", Causes(&e));
                }
            }
            Some(acceptor) => match timeout_at(deadline, handshake(acceptor, stream)).await {
                Ok(Ok(Handshake::Tls(tls))) => {
                    let session = tls.get_ref().1;
                    let kind = match session.handshake_kind() {
                        Some(rustls::HandshakeKind::Resumed) => &self.stats.handshakes_resumed,
                        _ => &self.stats.handshakes_full,
                    };
                    kind.fetch_add(1, Ordering::Relaxed);
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let info = info(session.server_name());
                    let served = if h2 {
                        serve_http2(&conn, tls, service, info, self.watcher).await
                    } else {
                        serve_http1(&conn, tls, service, info, self.stopping).await
                    };
                    if let Err(e) = served {
                        tracing::debug!(%peer, "https connection ended: {}", Causes(&e));
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
                    self.stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            },
        }
    }
}

/// The header list size the HTTP/2 server announces and h2 enforces,
/// above the configured one, so that a list between `max_header_bytes`
/// and this reaches [`serve_http2`], which answers a 431 that says what
/// happened. h2 answers a larger list with an empty 431 itself, and ends
/// the connection (GOAWAY) when a block is over four times this or takes
/// more CONTINUATION frames than this needs: a client sending that much
/// is attacking, not mistaken. The cap is what a connection holds of a
/// refused header list at most, while it is decoded; 128 KiB at least
/// lets a 100 KB header (a cookie gone wrong) get its 431.
fn http2_header_cap(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(8).max(128 * 1024)
}

/// The size of `request`'s header list as HTTP/2 counts it (RFC 9113
/// §6.5.2: name, value and 32 bytes per field, pseudo-headers included).
fn header_list_size<B>(request: &Request<B>) -> usize {
    const PER_FIELD: usize = 32;
    let uri = request.uri();
    let pseudo = [
        (":method".len(), request.method().as_str().len()),
        (":scheme".len(), uri.scheme_str().map_or(0, str::len)),
        (":authority".len(), uri.authority().map_or(0, |a| a.as_str().len())),
        (":path".len(), uri.path_and_query().map_or(0, |p| p.as_str().len())),
    ];
    let fields = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().len(), value.len()));
    pseudo
        .into_iter()
        .chain(fields)
        .map(|(name, value)| name + value + PER_FIELD)
        .sum()
}

/// The answer to an HTTP/2 request whose header list is over the limit:
/// a 431 on its stream, in the JSON error shape lunchd's API uses, rather
/// than a reset, which a client would take as "safe to retry".
fn headers_too_large(max_header_bytes: usize) -> Response<Full<Bytes>> {
    let body =
        format!("{{\"error\":\"request headers too large; send at most {max_header_bytes} bytes of headers\"}}\n");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serves one HTTP/2 connection within its idle deadline; a request whose
/// header list is over the limit gets [`headers_too_large`] and the
/// connection goes on.
async fn serve_http2<I, S: Handler>(
    conn: &Connection<S>,
    io: I,
    service: S,
    info: Option<ConnectionInfo>,
    watcher: Watcher,
) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Deadlines::idle(io, conn.idle_timeout));
    let max = conn.max_header_bytes;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let too_large = header_list_size(&request) > max;
        let answer = (!too_large).then(|| {
            tag(&mut request, info.as_ref());
            service.handle(request)
        });
        async move {
            Ok::<_, Infallible>(match answer {
                Some(answer) => answer.await?.map(Either::Left),
                None => headers_too_large(max).map(Either::Right),
            })
        }
    });
    watcher.watch(conn.http2.serve_connection(io, service)).await
}

/// An error with its causes, `: `-separated: hyper's own message says
/// only "connection error" when a deadline cut the connection.
struct Causes<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// How long a connection that has not delivered its first request yet is
/// given for it when the server stops: enough for a request in transit
/// (a round trip or two), short enough that a client that connected and
/// stays silent, such as a browser's preconnect, does not hold up a restart.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Serves one HTTP/1 connection, with its idle and header deadlines; when
/// the server stops, shuts it down gracefully. A connection that has not
/// yet delivered a request first gets [`FIRST_REQUEST_GRACE`] (at most the
/// header timeout) for it: its client has sent the request, or is sending
/// it, and closing the connection as idle would lose it (a restart right
/// after a client connected). HTTP/2 needs no such wait: its GOAWAY tells
/// the client which requests were not served.
async fn serve_http1<I, S: Handler>(
    conn: &Connection<S>,
    io: I,
    service: S,
    info: Option<ConnectionInfo>,
    mut stopping: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let heads = Heads::default();
    let io = Deadlines::http1(io, conn.idle_timeout, conn.header_timeout, heads.clone());
    let request_seen = Arc::new(Notify::new());
    let seen = Arc::clone(&request_seen);
    let service = hyper::service::service_fn(move |mut request| {
        tag(&mut request, info.as_ref());
        // Only the first request matters to the drain; a stored permit
        // makes `notified()` return at once, however late the drain starts.
        if heads.arrived() == 0 {
            seen.notify_one();
        }
        service.handle(request)
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

#[cfg(test)]
mod tests {
    use hyper_util::server::graceful::GracefulShutdown;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::redirect::Redirector;
    use crate::testing::{redirector, socket_pair, tls_pair};

    /// Serves the server end of a fresh socket pair as one connection of
    /// `conn`; returns the client end and the connection's task.
    async fn serve(
        conn: &Arc<Connection<Redirector>>,
        stats: &Arc<Stats>,
        graceful: &GracefulShutdown,
    ) -> (TcpStream, tokio::task::JoinHandle<()>) {
        let (client, server) = socket_pair().await;
        let peer = server.peer_addr().unwrap();
        let task = ConnectionTask {
            conn: Arc::clone(conn),
            stats: Arc::clone(stats),
            watcher: graceful.watcher(),
            stopping: watch::channel(false).1,
            permit: None,
            client: None,
        };
        (client, tokio::spawn(task.run(server, peer)))
    }

    #[test]
    fn a_header_list_is_measured_as_http2_counts_it() {
        let request = Request::get("https://localhost/healthz?x")
            .header("x-a", "bb")
            .body(())
            .unwrap();
        let pseudo = (7 + 3) + (7 + 5) + (10 + 9) + (5 + 10);
        assert_eq!(header_list_size(&request), pseudo + (3 + 2) + 5 * 32);
        // What the server accepts below its limit, h2 lets through.
        for max in [8192, 16 * 1024, 1024 * 1024] {
            assert!(http2_header_cap(max) >= 4 * max, "{max}");
        }
    }

    #[tokio::test]
    async fn a_plain_connection_is_served_and_counted_while_open() {
        let conn = Arc::new(Connection::new(redirector(), &Limits::default(), None));
        let stats = Arc::new(Stats::default());
        let graceful = GracefulShutdown::new();
        let (mut client, task) = serve(&conn, &stats, &graceful).await;
        client
            .write_all(b"GET /menu HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
        assert!(response.contains("location: https://lunch.test/menu\r\n"), "{response}");
        task.await.unwrap();
        assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_tls_server_counts_plain_http_and_failed_handshakes() {
        let (acceptor, _) = tls_pair(&[]);
        let limits = Limits {
            handshake_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let conn = Arc::new(Connection::new(redirector(), &limits, Some(acceptor)));
        let stats = Arc::new(Stats::default());
        let graceful = GracefulShutdown::new();
        let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);

        let (mut client, task) = serve(&conn, &stats, &graceful).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        task.await.unwrap();
        assert_eq!(count(&stats.plaintext_on_tls), 1);
        assert_eq!(count(&stats.handshake_failures), 0);

        let (mut client, task) = serve(&conn, &stats, &graceful).await;
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        task.await.unwrap();
        assert_eq!(count(&stats.handshake_failures), 1);

        // A client that starts a handshake and stalls is cut at the deadline.
        let (mut client, task) = serve(&conn, &stats, &graceful).await;
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        task.await.unwrap();
        assert_eq!(count(&stats.handshake_failures), 2);
        assert_eq!(count(&stats.plaintext_on_tls), 1);
        assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    }
}
