//! The running daemon: both servers, signals, reload and readiness.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::http::HeaderValue;
use axum::http::header::ALT_SVC;
use lunch_core::Picker;
use lunch_net::quic::QuicServer;
use lunch_net::redirect::{AllowedHosts, RedirectPolicy, SharedPolicy};
use lunch_net::tls::{CertificateFiles, CertificateStore, LoadedCertificate};
use lunch_net::{Probe, Server, Workers};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tower::util::MapResponse;

use crate::access::AccessLog;
use crate::app::{self, Health, Lunch, SharedLunch};
use crate::certwatch::{self, Occasion, Watch};
use crate::config::{self, Config};
use crate::metrics::{self, Metrics};
use crate::notify;
use crate::observe::{self, Observed};
use crate::status::{Reload, Status};

/// Everything `run` needs, prepared before the runtime starts.
pub struct Setup {
    /// The configuration in effect.
    pub config: Config,
    /// The file to re-read on reload, if any.
    pub config_path: Option<PathBuf>,
    /// Key and chain from the command line, which win over the file.
    pub cli_files: Option<CertificateFiles>,
    /// Where refreshed copies of the command line's key and chain may
    /// appear before a reload (`--reload-credentials`).
    pub reload_dir: Option<PathBuf>,
    /// The listener of the redirect server.
    pub http: Option<TcpListener>,
    /// The listener of the TLS server.
    pub https: TcpListener,
    /// The UDP socket of the HTTP/3 server, if systemd passed one.
    pub quic: Option<UdpSocket>,
    /// The listener of the metrics server, if any.
    pub metrics: Option<TcpListener>,
    /// The access log, when it is on.
    pub access: Option<&'static AccessLog>,
    /// Whether the listeners came from socket activation.
    pub activated: bool,
    /// The certificate to start with.
    pub certificate: LoadedCertificate,
    /// The threads connections are served on.
    pub workers: Workers,
}

/// Loads and checks the key and chain in effect for `config`: the command
/// line's files, or else the configuration's; `None` when neither names
/// any. With `reload_dir`, refreshed copies of the command line's files
/// there win (`--reload-credentials`).
pub fn load_certificate(
    config: &Config,
    cli: Option<&CertificateFiles>,
    reload_dir: Option<&Path>,
) -> anyhow::Result<Option<LoadedCertificate>> {
    let files = match (cli, &config.key, &config.certificate) {
        (Some(files), _, _) => refreshed_files(files.clone(), reload_dir),
        (None, Some(key), Some(chain)) => CertificateFiles {
            key: key.clone(),
            chain: chain.clone(),
        },
        _ => return Ok(None),
    };
    let certificate = LoadedCertificate::load(&files, SystemTime::now())?;
    check_names(config, &certificate)?;
    Ok(Some(certificate))
}

/// Refuses a certificate that does not cover the hosts the configuration
/// redirects to (`[http] canonical_host`, `allowed_hosts`): browsers sent
/// there would only get a certificate error.
fn check_names(config: &Config, certificate: &LoadedCertificate) -> anyhow::Result<()> {
    let info = certificate.info();
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    wanted.extend(config.canonical_host.as_deref().map(|h| (h, "[http] canonical_host")));
    wanted.extend(
        config
            .allowed_hosts
            .iter()
            .flatten()
            .map(|h| (h.as_str(), "[http] allowed_hosts")),
    );
    for (host, key) in wanted {
        let covered = match host.strip_prefix("*.") {
            Some(_) => info.names.iter().any(|name| name == host),
            None => info.covers(host),
        };
        if !covered {
            anyhow::bail!(
                "the certificate in {} is for {} but not `{host}` ({key}); issue a certificate that includes it, \
                 or change {key}",
                info.source,
                info.names.join(", "),
            );
        }
    }
    Ok(())
}

struct Daemon {
    config_path: Option<PathBuf>,
    cli_files: Option<CertificateFiles>,
    reload_dir: Option<PathBuf>,
    store: Arc<CertificateStore>,
    lunch: SharedLunch,
    policy: SharedPolicy,
    /// The https socket's own port, which redirects name unless
    /// `[http] https_port` says otherwise (at start and on every reload).
    https_socket_port: u16,
    status: Arc<Status>,
    watch: Arc<Watch>,
    access: Option<&'static AccessLog>,
}

/// Serves until SIGTERM or SIGINT; reloads on SIGHUP.
pub async fn run(setup: Setup) -> anyhow::Result<()> {
    let Setup {
        config,
        config_path,
        cli_files,
        reload_dir,
        http,
        https,
        quic,
        metrics: metrics_listener,
        access,
        activated,
        certificate,
        workers,
    } = setup;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let store = CertificateStore::new(certificate);
    let https_local = https.local_addr().context("reading the https socket's address")?;
    let https_socket_port = https_local.port();
    let lunch: SharedLunch = Arc::new(ArcSwap::from_pointee(lunch_from(&config)));
    let policy: SharedPolicy = Arc::new(ArcSwap::from_pointee(policy_from(&config, &store, https_socket_port)));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let status = Arc::new(Status::new(String::new(), certwatch::unix_now()));
    let metrics = metrics_listener.as_ref().map(|_| {
        let servers = ["https", "http"];
        Arc::new(Metrics::new(
            &servers,
            Arc::clone(&store),
            Arc::clone(&status),
            access,
            status.started(),
        ))
    });
    let counted = |name| metrics.as_ref().and_then(|m| m.server(name));

    let health = Health::default();
    let app = app::app(Arc::clone(&lunch), config.hsts_max_age, health.clone());
    let quic_local = quic
        .as_ref()
        .map(UdpSocket::local_addr)
        .transpose()
        .context("reading the quic socket's address")?;
    // Browsers learn of HTTP/3 from the responses over TCP.
    let alt_svc = quic_local.map(|addr| {
        HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", addr.port()))
            .unwrap_or_else(|_| unreachable!("digits are a valid header value"))
    });
    let tcp_app = MapResponse::new(app.clone(), move |mut response: axum::response::Response| {
        if let Some(alt_svc) = &alt_svc {
            response.headers_mut().insert(ALT_SVC, alt_svc.clone());
        }
        response
    });
    let tls_server = Server::tls(
        https,
        lunch_net::tls::server_config(Arc::clone(&store)),
        Observed::new(lunch_net::tower_handler(tcp_app), counted("https"), access),
        config.limits.clone(),
    )
    .context("starting the https server")?
    .with_workers(workers.clone())
    .with_proxy(config.proxy_from.clone());
    let tls_server = observe::server(tls_server, "https", metrics.as_deref(), access.is_some());
    let mut probes: Vec<Probe> = workers.probes();
    probes.push(tls_server.probe());
    let how = if activated { "socket from systemd" } else { "bound" };
    let mut listeners = format!("https on {https_local}");
    tracing::info!("serving https://{}/ ({how})", url_host(&https_local, &store));

    if !config.proxy_from.is_empty() {
        tracing::info!(
            "behind load balancers: https and http connections must come from {} ([proxy] from) and start \
             with a PROXY v2 header",
            config.proxy_from
        );
    }

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tls_server.run(stopped(stop_rx.clone())));
    // HTTP/3 runs on this thread's runtime, beside the accept loops: see
    // ARCHITECTURE.md (one socket, one endpoint task).
    match (quic, quic_local) {
        (Some(socket), Some(local)) => {
            // Counted and logged as https requests of protocol h3.
            let server = QuicServer::new(
                socket,
                lunch_net::quic::server_config(Arc::clone(&store) as _),
                Observed::new(lunch_net::tower_handler(app), counted("https"), access),
                config.limits.clone(),
            )
            .context("starting the http/3 server")?;
            let server = if access.is_some() {
                server.with_connection_info()
            } else {
                server
            };
            if let Some(metrics) = &metrics {
                metrics.quic(server.stats(), server.quic_stats());
            }
            probes.push(server.probe());
            listeners.push_str(&format!(", http/3 on {local}"));
            tracing::info!("serving http/3 on udp {local} ({how})");
            tasks.spawn(server.run(stopped(stop_rx.clone())));
        }
        _ => tracing::debug!("no http/3: no socket named `quic` was passed"),
    }
    match http.filter(|_| config.redirect) {
        Some(listener) => {
            let local = listener.local_addr().context("reading the http socket's address")?;
            let server = Server::plain(
                listener,
                Observed::new(
                    lunch_net::redirect::Redirector::new(Arc::clone(&policy)),
                    counted("http"),
                    access,
                ),
                config.limits.clone(),
            )
            .context("starting the http server")?
            .with_workers(workers.clone())
            .with_proxy(config.proxy_from.clone());
            let server = observe::server(server, "http", metrics.as_deref(), access.is_some());
            probes.push(server.probe());
            listeners.push_str(&format!(", http redirect on {local}"));
            tracing::info!("redirecting http://{}/ to https ({how})", url_host(&local, &store));
            tasks.spawn(server.run(stopped(stop_rx.clone())));
        }
        None => tracing::info!("no redirect server: [http] redirect = false"),
    }
    if let (Some(listener), Some(metrics)) = (metrics_listener, &metrics) {
        let server = metrics::server(listener, metrics, config.limits.clone())?;
        let server = observe::server(server, "metrics", Some(metrics), false);
        let local = server.local_addr().context("reading the metrics socket's address")?;
        tracing::info!("serving metrics on http://{local}/metrics ({how})");
        listeners.push_str(&format!(", metrics on {local}"));
        probes.push(server.probe());
        tasks.spawn(server.run(stopped(stop_rx.clone())));
    }

    let daemon = Daemon {
        config_path,
        cli_files,
        reload_dir,
        store,
        lunch,
        policy,
        https_socket_port,
        status,
        watch: Arc::new(Watch::default()),
        access,
    };
    daemon.status.serving(listeners);
    // Ready means serving: every worker and accept loop has answered once. A server
    // that failed instead is reported by the loop below.
    if all_answer(&probes).await {
        notify::ready(&daemon.status());
    }
    let certificate_watch = tokio::spawn(daemon.watch_certificate());
    let watchdog = notify::watchdog_interval().map(|interval| {
        tracing::info!("watchdog enabled: pinging every {:?}", interval / 2);
        tokio::spawn(watchdog(interval, probes))
    });

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => daemon.reload().await,
            Some(result) = tasks.join_next() => {
                // A server stopping on its own is a bug; let systemd restart us.
                result.context("a server task failed")?;
                anyhow::bail!("a server stopped unexpectedly");
            }
        }
    }
    // The drain stops the accept loops; the service manager stops watching
    // once it sees STOPPING=1.
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    certificate_watch.abort();
    notify::stopping(config.drain_delay + config.limits.drain_timeout);
    if !config.proxy_from.is_empty() {
        // Only behind a balancer: a client asking /healthz on a
        // connection that is being drained gets its usual answer.
        health.stopping();
    }
    if !config.drain_delay.is_zero() {
        // Behind a balancer: its health check sees the 503 and takes this
        // node out while it still serves, so no new connection meets a
        // closed listener. A second signal cuts the wait short.
        tracing::info!(
            "stopping: /healthz fails for {:?} ([proxy] drain_delay) before the servers stop accepting",
            config.drain_delay
        );
        tokio::select! {
            () = tokio::time::sleep(config.drain_delay) => {}
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
    tracing::info!("stopping: finishing in-flight requests");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Some(access) = &daemon.access {
        access.flush();
    }
    tracing::info!("stopped");
    Ok(())
}

impl Daemon {
    /// The STATUS= line, after a look at the certificate that says what
    /// needs attention (at start and after every reload).
    fn status(&self) -> String {
        let info = self.store.info();
        let check = self.watch.observe(&info, certwatch::unix_now(), Occasion::Load);
        self.status.line(&info, &check)
    }

    /// The hourly look at the certificate, which keeps STATUS= current.
    fn watch_certificate(&self) -> impl Future<Output = ()> + use<> {
        let status = Arc::clone(&self.status);
        certwatch::run(
            Arc::clone(&self.watch),
            Arc::clone(&self.store),
            certwatch::unix_now,
            move |info, check| notify::status(&status.line(info, check)),
        )
    }

    /// Re-reads the configuration and the certificate; swaps both only when
    /// both are valid.
    async fn reload(&self) {
        notify::reloading();
        tracing::info!("reloading");
        // Reopened whatever the configuration says, so that a broken file
        // does not keep lunchd writing to a log logrotate moved away. Off
        // this thread, which runs the accept loops and the watchdog: the
        // reopen writes out what the workers have buffered first.
        let reopened = match self.access {
            Some(access) => tokio::task::spawn_blocking(move || access.reopen())
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r),
            None => Ok(()),
        };
        let config_path = self.config_path.clone();
        let cli_files = self.cli_files.clone();
        let reload_dir = self.reload_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<(Config, Option<LoadedCertificate>)> {
            let config = match &config_path {
                Some(path) => config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => Config::default(),
            };
            let certificate = load_certificate(&config, cli_files.as_ref(), reload_dir.as_deref())?;
            Ok((config, certificate))
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        match loaded {
            Ok((config, certificate)) => {
                if let Some(certificate) = certificate {
                    tracing::info!("serving certificate {}", certificate.info());
                    self.store.replace(certificate);
                }
                self.lunch.store(Arc::new(lunch_from(&config)));
                self.policy
                    .store(Arc::new(policy_from(&config, &self.store, self.https_socket_port)));
                match reopened {
                    Ok(()) => {
                        tracing::info!(
                            "reloaded; listener addresses, http.redirect, https.hsts_max_age, [limits], [proxy] and \
                             [log] take effect on restart"
                        );
                        self.status.reloaded(Reload::Ok {
                            at: certwatch::unix_now(),
                        });
                    }
                    // The certificate and configuration do not wait for the
                    // log: a renewal must not fail for a logrotate setting.
                    // The reload still counts as failed, so that it is seen.
                    Err(e) => {
                        let problem = format!("{e:#}");
                        tracing::error!(
                            "reload failed: the new configuration and certificate are served, but {problem}"
                        );
                        self.status.reloaded(Reload::Failed {
                            at: certwatch::unix_now(),
                            problem,
                            applied: true,
                        });
                    }
                }
                notify::ready(&self.status());
            }
            Err(e) => {
                let problem = match reopened {
                    Ok(()) => format!("{e:#}"),
                    Err(reopen) => format!("{e:#}; and {reopen:#}"),
                };
                tracing::error!("reload failed, still serving the previous configuration and certificate: {problem}");
                self.status.reloaded(Reload::Failed {
                    at: certwatch::unix_now(),
                    problem,
                    applied: false,
                });
                notify::ready(&self.status());
            }
        }
    }
}

/// The refreshed copies of the command line's key and chain in
/// `reload_dir`, when both are there; otherwise `files` unchanged.
fn refreshed_files(files: CertificateFiles, reload_dir: Option<&Path>) -> CertificateFiles {
    let Some(dir) = reload_dir else {
        return files;
    };
    let (Some(key), Some(chain)) = (files.key.file_name(), files.chain.file_name()) else {
        return files;
    };
    let refreshed = CertificateFiles {
        key: dir.join(key),
        chain: dir.join(chain),
    };
    if refreshed.key.exists() && refreshed.chain.exists() {
        refreshed
    } else {
        tracing::info!(
            "no refreshed credentials in {}; re-reading {}",
            dir.display(),
            files.chain.display()
        );
        files
    }
}

fn lunch_from(config: &Config) -> Lunch {
    Lunch {
        picker: Picker::new(config.menu.clone(), config.mode, &config.team),
        utc_offset_minutes: config.utc_offset_minutes,
    }
}

/// The redirect policy of `config`; redirects name `[http] https_port`,
/// or else `https_socket_port`, the port the https socket listens on.
fn policy_from(config: &Config, store: &Arc<CertificateStore>, https_socket_port: u16) -> RedirectPolicy {
    RedirectPolicy {
        allowed: match &config.allowed_hosts {
            Some(hosts) => AllowedHosts::List(hosts.clone()),
            None => AllowedHosts::Certificate(Arc::clone(store)),
        },
        canonical: config.canonical_host.clone(),
        https_port: config.https_port.unwrap_or(https_socket_port),
        acme_webroot: config.acme_webroot.clone(),
    }
}

/// A host for log URLs: the certificate's first name, else the address.
fn url_host(addr: &std::net::SocketAddr, store: &CertificateStore) -> String {
    let info = store.info();
    match info.names.first() {
        Some(name) if addr.ip().is_loopback() || addr.ip().is_unspecified() => format!("{name}:{}", addr.port()),
        _ => addr.to_string(),
    }
}

/// Whether every server's accept loop answers.
async fn all_answer(probes: &[Probe]) -> bool {
    let mut alive = true;
    for probe in probes {
        alive &= probe.check().await;
    }
    alive
}

/// Pings systemd's watchdog at half the interval, and only while every
/// server's accept loop answers: a stuck loop lets the interval lapse, and
/// systemd restarts the service (`Restart=on-failure`).
async fn watchdog(interval: Duration, probes: Vec<Probe>) {
    let period = interval / 2;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let alive = tokio::time::timeout(period / 2, all_answer(&probes))
            .await
            .unwrap_or(false);
        if alive {
            notify::watchdog();
        } else {
            tracing::error!("a server stopped answering; withholding the watchdog ping");
        }
    }
}
