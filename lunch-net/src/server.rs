//! The accept loop: one [`Server`] per listening socket, bounded by
//! [`Limits::max_connections`] and, per client, by
//! [`Limits::max_connections_per_client`], handing each connection to a
//! worker (or its own runtime) and draining them on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::clients::{Clients, Refusals};
use crate::connection::{Connection, ConnectionTask};
use crate::handler::Handler;
use crate::limits::{Limits, Stats};
use crate::probe::{Probe, Questions};
use crate::workers::Workers;

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
    probe: Probe,
    questions: Questions,
    connection_info: bool,
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
    /// A plain HTTP/1.1 server on `listener`, answered by `handler` within
    /// `limits`. `listener` must be non-blocking; call from within a tokio
    /// runtime.
    pub fn plain(listener: std::net::TcpListener, handler: S, limits: Limits) -> io::Result<Server<S>> {
        Server::new("http", listener, handler, limits, None)
    }

    /// A TLS server on `listener`, with HTTP/2 or HTTP/1.1 as the client's
    /// ALPN chooses, answered by `handler` within `limits`. `listener` must
    /// be non-blocking; call from within a tokio runtime.
    pub fn tls(
        listener: std::net::TcpListener,
        tls: Arc<ServerConfig>,
        handler: S,
        limits: Limits,
    ) -> io::Result<Server<S>> {
        Server::new("https", listener, handler, limits, Some(TlsAcceptor::from(tls)))
    }

    fn new(
        name: &'static str,
        listener: std::net::TcpListener,
        handler: S,
        limits: Limits,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Server<S>> {
        let listener = TcpListener::from_std(listener)?;
        let (probe, questions) = Probe::accept_loop();
        Ok(Server {
            name,
            listener,
            handler,
            limits,
            tls,
            workers: None,
            stats: Arc::default(),
            probe,
            questions,
            connection_info: false,
        })
    }

    /// Names the server in its log lines: `http` or `https` unless named.
    pub fn named(mut self, name: &'static str) -> Server<S> {
        self.name = name;
        self
    }

    /// Gives every request a [`ConnectionInfo`](crate::ConnectionInfo)
    /// extension: the client's address and the TLS server name, for an
    /// access log. Off by default: it costs an allocation per request.
    pub fn with_connection_info(mut self) -> Server<S> {
        self.connection_info = true;
        self
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
        self.probe.clone()
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
            probe,
            mut questions,
            connection_info,
        } = self;
        // Once every probe handed out is gone, no question can come.
        drop(probe);
        let mut conn = Connection::new(handler, &limits, tls);
        conn.connection_info = connection_info;
        let conn = Arc::new(conn);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let clients = Arc::new(Clients::new(
            limits.max_connections_per_client,
            limits.client_ipv6_prefix,
        ));
        let mut refusals = Refusals::default();
        let graceful = GracefulShutdown::new();
        let (stopping_tx, stopping) = watch::channel(false);
        let mut shutdown = pin!(shutdown);
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut full_since_warned = false;
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(question) = questions.next() => question.answer(),
                acquired = Arc::clone(&slots).acquire_owned(), if permit.is_none() => {
                    permit = acquired.ok();
                    full_since_warned = false;
                }
                accepted = listener.accept(), if permit.is_some() => match accepted {
                    Ok((stream, peer)) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        // Before any TLS work, and without taking the
                        // connection slot: a refusal costs a lookup and a
                        // close.
                        let Some(client) = clients.admit(peer.ip()) else {
                            stats.refused_per_client.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                            if let Some(refused) = refusals.refused(tokio::time::Instant::now()) {
                                tracing::warn!(
                                    server = name,
                                    refused,
                                    latest = %peer.ip(),
                                    limit = limits.max_connections_per_client,
                                    "closed connections from clients that already hold the per-client connection limit"
                                );
                            }
                            continue;
                        };
                        let task = ConnectionTask {
                            conn: Arc::clone(&conn),
                            stats: Arc::clone(&stats),
                            watcher: graceful.watcher(),
                            stopping: stopping.clone(),
                            permit: permit.take(),
                            client: Some(client),
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
                stats.limit_reached.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::testing::redirector;

    fn listener() -> std::net::TcpListener {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    }

    async fn get(client: &mut TcpStream) -> String {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        response
    }

    /// A plain server within `limits`, running until `stop` is sent.
    fn start(
        limits: Limits,
    ) -> (
        SocketAddr,
        Arc<Stats>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let server = Server::plain(listener(), redirector(), limits).unwrap();
        let addr = server.local_addr().unwrap();
        let stats = server.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        (addr, stats, stop, running)
    }

    #[tokio::test]
    async fn clients_beyond_the_connection_limit_wait_for_a_free_slot() {
        let limits = Limits {
            max_connections: 1,
            ..Limits::default()
        };
        let (addr, stats, stop, running) = start(limits);
        let first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(async move { get(&mut second).await });
        // The second client sits in the listen queue for as long as the
        // first one holds the only slot...
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        assert!(!waiting.is_finished());
        // ...and is served once it is free.
        drop(first);
        let response = timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
        assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
        stop.send(()).unwrap();
        running.await.unwrap();
    }

    /// Connects to `addr` from `from` (any address of 127.0.0.0/8 is
    /// local on Linux).
    async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn a_client_over_its_limit_is_closed_and_others_are_served() {
        let limits = Limits {
            max_connections: 4,
            max_connections_per_client: 2,
            ..Limits::default()
        };
        let (addr, stats, stop, running) = start(limits);
        let held = [
            connect_from([127, 0, 0, 2], addr).await,
            connect_from([127, 0, 0, 2], addr).await,
        ];
        // The third from the same address is closed without an answer,
        // and again each time it comes back...
        for attempt in 1..=5u64 {
            let mut over = connect_from([127, 0, 0, 2], addr).await;
            let mut buf = Vec::new();
            let read = timeout(Duration::from_secs(10), over.read_to_end(&mut buf))
                .await
                .unwrap();
            assert!(read.is_err() || buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
            assert_eq!(stats.refused_per_client.load(Ordering::Relaxed), attempt);
        }
        // ...while another address is served, and does not count as refused.
        for _ in 0..3 {
            let mut other = connect_from([127, 0, 0, 3], addr).await;
            let response = timeout(Duration::from_secs(10), get(&mut other)).await.unwrap();
            assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
        }
        assert_eq!(stats.refused_per_client.load(Ordering::Relaxed), 5);
        // A closed connection gives its client's slot back.
        drop(held);
        let response = timeout(Duration::from_secs(10), async {
            loop {
                // Refused until the server has seen the held ones close.
                let mut again = connect_from([127, 0, 0, 2], addr).await;
                let mut response = String::new();
                let _ = again
                    .write_all(b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = again.read_to_string(&mut response).await;
                if !response.is_empty() {
                    return response;
                }
            }
        })
        .await
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 301 "), "{response}");
        stop.send(()).unwrap();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn the_probe_answers_while_the_loop_runs() {
        let server = Server::plain(listener(), redirector(), Limits::default()).unwrap();
        let probe = server.probe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        assert!(probe.check().await);
        stop.send(()).unwrap();
        running.await.unwrap();
        assert!(!probe.check().await, "a stopped server answered");
    }
}
