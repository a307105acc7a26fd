//! Serving one accepted connection: the TLS handshake (on a TLS server),
//! then hyper's HTTP/2 or HTTP/1 per ALPN, within the connection's
//! deadlines, until it ends or the server drains it.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::deadlines::{Deadlines, Heads};
use crate::handler::{ConnectionInfo, Handler, HyperService, tag};
use crate::handshake::{Handshake, handshake};
use crate::limits::{Limits, OpenConnection, Stats};

/// What every connection of one server shares.
pub(crate) struct Connection<S> {
    handler: S,
    tls: Option<TlsAcceptor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
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
}

impl<S: Handler> ConnectionTask<S> {
    pub(crate) async fn run(self, stream: TcpStream, peer: SocketAddr) {
        // Released after the connection stops counting as open.
        let _permit = self.permit;
        let _open = OpenConnection::new(&self.stats);
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
                    tracing::debug!(%peer, "http connection ended: {e}");
                }
            }
            Some(acceptor) => match timeout(conn.handshake_timeout, handshake(acceptor, stream)).await {
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
                        let io = TokioIo::new(Deadlines::idle(tls, conn.idle_timeout));
                        self.watcher
                            .watch(conn.http2.serve_connection(io, HyperService(service, info)))
                            .await
                    } else {
                        serve_http1(&conn, tls, service, info, self.stopping).await
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
                    self.stats.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
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
        };
        (client, tokio::spawn(task.run(server, peer)))
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
