//! The accept loop: one [`Server`] per listening socket, bounded by
//! [`Limits::max_connections`] and, per client, by
//! [`Limits::max_connections_per_client`], handing each connection to a
//! worker (or its own runtime) and draining them on shutdown. Behind
//! trusted load balancers ([`Server::with_proxy`]) the client of a
//! connection is the one its PROXY header names.

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

use crate::admission::Gate;
use crate::clients::Clients;
use crate::connection::{Connection, ConnectionTask};
use crate::handler::Handler;
use crate::limits::{Limits, Stats};
use crate::probe::{Probe, Questions};
use crate::proxy::Trusted;
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
    proxy: Trusted,
}

impl<S> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.name)
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .field("proxy", &self.proxy)
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
            proxy: Trusted::default(),
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

    /// Expects every connection to come from a load balancer in `trusted`
    /// and to start with a PROXY v2 header, read within
    /// [`Limits::handshake_timeout`] (which then covers header and TLS
    /// handshake together). The client the header names is the
    /// connection's client everywhere: for
    /// [`Limits::max_connections_per_client`], in
    /// [`ConnectionInfo`](crate::ConnectionInfo) and in log lines; a LOCAL
    /// header (a health check) leaves the balancer as the client. A
    /// connection from elsewhere, or with a missing, malformed or late
    /// header, is closed before TLS and counted in
    /// [`Stats::refused_proxy`]. Empty (the default): no header is read,
    /// and one sent is garbage like any other.
    pub fn with_proxy(mut self, trusted: Trusted) -> Server<S> {
        self.proxy = trusted;
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
            proxy,
        } = self;
        // Once every probe handed out is gone, no question can come.
        drop(probe);
        let mut conn = Connection::new(handler, &limits, tls);
        conn.connection_info = connection_info;
        let conn = Arc::new(conn);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let gate = Arc::new(Gate::new(
            name,
            Clients::new(limits.max_connections_per_client, limits.client_ipv6_prefix),
            proxy,
            Arc::clone(&stats),
        ));
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
                        // close (counted and reported by the gate).
                        let Some(client) = gate.at_accept(peer) else {
                            drop(stream);
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
        spawn(Server::plain(listener(), redirector(), limits).unwrap())
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

    /// A handler that answers with the client's address as the server
    /// gives it in [`ConnectionInfo`](crate::ConnectionInfo).
    fn echo_client() -> impl Handler {
        use http_body_util::Full;
        use hyper::body::{Bytes, Incoming};
        hyper::service::service_fn(|request: hyper::Request<Incoming>| async move {
            let peer = request
                .extensions()
                .get::<crate::ConnectionInfo>()
                .map_or_else(|| "none".to_owned(), |info| info.peer.to_string());
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(peer))))
        })
    }

    fn v2_header(source: &str) -> Vec<u8> {
        use ppp::v2;
        let source: SocketAddr = source.parse().unwrap();
        let destination: SocketAddr = if source.is_ipv4() {
            "10.77.0.1:443".parse().unwrap()
        } else {
            "[2001:db8::1]:443".parse().unwrap()
        };
        let addresses: v2::Addresses = (source, destination).into();
        v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    /// Runs `server` until `stop` is sent.
    fn spawn<S: Handler>(
        server: Server<S>,
    ) -> (
        SocketAddr,
        Arc<Stats>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let addr = server.local_addr().unwrap();
        let stats = server.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        (addr, stats, stop, running)
    }

    /// Whether the server closed `stream` without a byte of answer.
    async fn closed_unanswered(stream: &mut TcpStream) -> bool {
        let mut buf = Vec::new();
        let read = timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
            .await
            .expect("the server left the connection open");
        read.is_err() || buf.is_empty()
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_proxy_header_from_outside_the_trusted_networks_is_refused() {
        let server = Server::plain(listener(), echo_client(), Limits::default())
            .unwrap()
            .with_proxy(Trusted::parse(&["127.0.0.9/32"]).unwrap());
        let (addr, stats, stop, running) = spawn(server);
        let mut outsider = connect_from([127, 0, 0, 2], addr).await;
        let mut bytes = v2_header("203.0.113.5:51234");
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n");
        outsider.write_all(&bytes).await.unwrap();
        assert!(closed_unanswered(&mut outsider).await);
        assert_eq!(count(&stats.refused_proxy), 1);
        assert_eq!(count(&stats.accepted), 1);
        // From the trusted address, a request without the header is
        // refused too, and one with it is served.
        let mut bare = connect_from([127, 0, 0, 9], addr).await;
        bare.write_all(b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(closed_unanswered(&mut bare).await);
        assert_eq!(count(&stats.refused_proxy), 2);
        let mut proxied = connect_from([127, 0, 0, 9], addr).await;
        proxied.write_all(&bytes).await.unwrap();
        let mut response = String::new();
        proxied.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
        assert_eq!(count(&stats.refused_proxy), 2);
        assert_eq!(count(&stats.refused_per_client), 0);
        stop.send(()).unwrap();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn behind_a_balancer_the_header_names_the_client_for_the_limit_and_the_handler() {
        let limits = Limits {
            max_connections: 8,
            max_connections_per_client: 1,
            ..Limits::default()
        };
        let server = Server::plain(listener(), echo_client(), limits)
            .unwrap()
            .with_proxy(Trusted::parse(&["127.0.0.2/32"]).unwrap())
            .with_connection_info();
        let (addr, stats, stop, running) = spawn(server);
        // The first client's connection is served, and stays open.
        let mut first = connect_from([127, 0, 0, 2], addr).await;
        let mut bytes = v2_header("203.0.113.5:51234");
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: lunch.test\r\n\r\n");
        first.write_all(&bytes).await.unwrap();
        let mut head = vec![0u8; 1024];
        let n = timeout(Duration::from_secs(10), first.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        let response = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
        assert!(response.ends_with("\r\n\r\n203.0.113.5:51234"), "{response}");
        // A second connection of that client, through the same balancer, is
        // over its limit of one...
        let mut again = connect_from([127, 0, 0, 2], addr).await;
        again.write_all(&v2_header("203.0.113.5:51235")).await.unwrap();
        assert!(closed_unanswered(&mut again).await);
        assert_eq!(count(&stats.refused_per_client), 1);
        // ...while another client through it is served: the balancer's own
        // address is not one client.
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        let mut bytes = v2_header("[2001:db8::7]:4000");
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n");
        other.write_all(&bytes).await.unwrap();
        let mut response = String::new();
        other.read_to_string(&mut response).await.unwrap();
        assert!(response.ends_with("\r\n\r\n[2001:db8::7]:4000"), "{response}");
        assert_eq!(count(&stats.refused_per_client), 1);
        assert_eq!(count(&stats.refused_proxy), 0);
        drop(first);
        stop.send(()).unwrap();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn on_tls_the_header_comes_first_and_a_late_or_broken_one_is_closed_by_the_deadline() {
        let (acceptor, client_config) = crate::testing::tls_pair(&[]);
        let tls = acceptor.config().clone();
        let limits = Limits {
            handshake_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let server = Server::tls(listener(), tls.clone(), echo_client(), limits.clone())
            .unwrap()
            .with_proxy(Trusted::parse(&["127.0.0.0/8"]).unwrap())
            .with_connection_info();
        let (addr, stats, stop, running) = spawn(server);
        // A header, then the TLS handshake: the request sees the client.
        let mut tcp = connect_from([127, 0, 0, 3], addr).await;
        tcp.write_all(&v2_header("198.51.100.20:6000")).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_config.clone());
        let name = rustls::pki_types::ServerName::try_from("lunch.test").unwrap();
        let mut tls_stream = connector.connect(name.clone(), tcp).await.unwrap();
        tls_stream
            .write_all(b"GET / HTTP/1.1\r\nHost: lunch.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        let _ = tls_stream.read_to_string(&mut response).await;
        assert!(response.ends_with("\r\n\r\n198.51.100.20:6000"), "{response}");
        // Half a header, then silence: closed at the handshake deadline.
        let mut slow = connect_from([127, 0, 0, 3], addr).await;
        slow.write_all(&v2_header("198.51.100.20:6001")[..10]).await.unwrap();
        assert!(closed_unanswered(&mut slow).await);
        // A ClientHello where the header belongs: closed at once.
        let mut hello = connect_from([127, 0, 0, 3], addr).await;
        hello
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        assert!(closed_unanswered(&mut hello).await);
        assert_eq!(count(&stats.refused_proxy), 2);
        assert_eq!(count(&stats.handshake_failures), 0);
        assert_eq!(count(&stats.handshakes_full), 1);
        stop.send(()).unwrap();
        running.await.unwrap();

        // Without trusted balancers a PROXY header is garbage, as before:
        // it does not start like a ClientHello, so the sniff takes it for
        // plain HTTP.
        let server = Server::tls(listener(), tls, echo_client(), limits).unwrap();
        let (addr, stats, stop, running) = spawn(server);
        let mut tcp = connect_from([127, 0, 0, 3], addr).await;
        tcp.write_all(&v2_header("198.51.100.20:6002")).await.unwrap();
        assert!(connector.connect(name, tcp).await.is_err());
        assert_eq!(count(&stats.plaintext_on_tls) + count(&stats.handshake_failures), 1);
        assert_eq!(count(&stats.refused_proxy), 0);
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
