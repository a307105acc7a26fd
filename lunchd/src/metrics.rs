//! Prometheus metrics, served on the optional socket named `metrics`
//! (`GET /metrics`, the text exposition format 0.0.4; docs/metrics.md).
//!
//! Counters on the request path (fed by [`crate::observe`]) are sharded per thread: each thread adds
//! to cells of its own, padded apart, so the worker threads never write to
//! one cache line, and a thread that owns its shard adds with a plain load
//! and store instead of a locked read-modify-write; a scrape adds the
//! shards up. Everything else (reloads,
//! the certificate, connection counts) is read when scraped, from where it
//! is kept anyway.
//!
//! Hand-rolled rather than with prometheus-client: that crate's counters
//! are one shared atomic each, which every worker thread would write on
//! every request, and the exposition format is a few lines of text that
//! `promtool check metrics` verifies in tests/metrics.rs.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode, Version};
use lunch_net::quic::QuicStats;
use lunch_net::tls::{CertificateInfo, CertificateStore};

use crate::access::AccessLog;
use crate::certwatch;
use crate::status::{Reloads, Status};

/// How many shards each sharded counter has: the first `SHARDS - 1`
/// threads to count own one each; any beyond share [`SHARED`] (still
/// correct, merely contended).
const SHARDS: usize = 64;

/// The shard that threads share once every other one is taken.
const SHARED: Shard = Shard { index: 0, owned: false };

/// Counters per [`Line`].
const LINE: usize = 16;

/// 128 bytes of counters, aligned so: a cache line pair, what adjacent-line
/// prefetching pulls in together. A shard is whole lines, so no two shards
/// ever share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line([AtomicU64; LINE]);

/// A thread's place in the sharded counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: usize,
    /// Whether no other thread ever writes to it: shards are never handed
    /// out twice, even after their thread has ended.
    owned: bool,
}

/// The shard of the calling thread, given out in turn on first use.
pub(crate) fn shard() -> Shard {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static SHARD: Shard = match NEXT.fetch_add(1, Ordering::Relaxed) {
            index if index < SHARDS => Shard { index, owned: true },
            _ => SHARED,
        };
    }
    SHARD.with(|s| *s)
}

/// `cells` counters, each split into one cell per shard.
#[derive(Debug)]
struct Sharded {
    /// Lines per shard.
    stride: usize,
    lines: Box<[Line]>,
}

impl Sharded {
    fn new(cells: usize) -> Sharded {
        let stride = cells.div_ceil(LINE).max(1);
        let lines = (0..stride * SHARDS).map(|_| Line::default()).collect();
        Sharded { stride, lines }
    }

    fn cell(&self, shard: usize, cell: usize) -> &AtomicU64 {
        &self.lines[self.stride * shard + cell / LINE].0[cell % LINE]
    }

    fn add(&self, shard: Shard, cell: usize, value: u64) {
        let cell = self.cell(shard.index, cell);
        if shard.owned {
            // The only writer: a scrape reads the old value or the new.
            cell.store(cell.load(Ordering::Relaxed).wrapping_add(value), Ordering::Relaxed);
        } else {
            cell.fetch_add(value, Ordering::Relaxed);
        }
    }

    fn sum(&self, cell: usize) -> u64 {
        (0..SHARDS)
            .map(|shard| self.cell(shard, cell).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Request duration buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BUCKET_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

const PROTOCOLS: [&str; 3] = ["h1", "h2", "h3"];

/// The `server` label of the HTTP/3 server's connections.
const QUIC: &str = "quic";
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

// The cells of one server: requests by protocol and class, then the
// duration buckets (one more for +Inf), then the sum of durations in µs.
const REQUESTS: usize = 0;
const DURATION_BUCKETS: usize = REQUESTS + PROTOCOLS.len() * CLASSES.len();
const DURATION_SUM: usize = DURATION_BUCKETS + BUCKETS.len() + 1;
const SERVER_CELLS: usize = DURATION_SUM + 1;

/// The request counters of one server (`https`, `http`).
#[derive(Debug)]
pub struct ServerMetrics {
    name: &'static str,
    cells: Sharded,
}

impl ServerMetrics {
    fn new(name: &'static str) -> ServerMetrics {
        ServerMetrics {
            name,
            cells: Sharded::new(SERVER_CELLS),
        }
    }

    /// Counts one answered request.
    pub fn record(&self, version: Version, status: StatusCode, elapsed: Duration) {
        let protocol = match version {
            Version::HTTP_2 => 1,
            Version::HTTP_3 => 2,
            _ => 0,
        };
        let class = (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1;
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_MICROS.partition_point(|&le| le < micros);
        let shard = shard();
        self.cells.add(shard, REQUESTS + protocol * CLASSES.len() + class, 1);
        self.cells.add(shard, DURATION_BUCKETS + bucket, 1);
        self.cells.add(shard, DURATION_SUM, micros);
    }
}

/// A metric family: its name, type and help, as rendered and as
/// docs/metrics.md lists them.
#[derive(Debug)]
pub struct Family {
    /// The metric's name.
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its labels (docs/metrics.md; the samples spell them out).
    #[cfg_attr(not(test), allow(dead_code))]
    pub labels: &'static str,
    /// What it means.
    pub help: &'static str,
}

/// Every metric lunchd exposes, in the order of the exposition.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "lunchd_build_info",
        kind: "gauge",
        labels: "version",
        help: "Always 1; the version of lunchd running.",
    },
    Family {
        name: "process_start_time_seconds",
        kind: "gauge",
        labels: "",
        help: "When lunchd started, in seconds since the epoch.",
    },
    Family {
        name: "lunchd_http_requests_total",
        kind: "counter",
        labels: "server, protocol, class",
        help: "Requests answered, by server (https, or http: the redirect), protocol (h1, h2, or h3: HTTP/3, counted under https) and status class (2xx...).",
    },
    Family {
        name: "lunchd_http_request_duration_seconds",
        kind: "histogram",
        labels: "server",
        help: "Time from a request's headers to its response's headers.",
    },
    Family {
        name: "lunchd_connections_accepted_total",
        kind: "counter",
        labels: "server",
        help: "Connections accepted, by server (https, http, metrics, or quic: HTTP/3, counted when its handshake starts, Retries and refusals not included).",
    },
    Family {
        name: "lunchd_connections_open",
        kind: "gauge",
        labels: "server",
        help: "Connections open now, by server.",
    },
    Family {
        name: "lunchd_connection_limit_reached_total",
        kind: "counter",
        labels: "server",
        help: "Times a server reached [limits] max_connections and stopped accepting until one ended; over TCP clients wait, none is refused; quic refuses them (lunchd_connections_refused_total, reason limit).",
    },
    Family {
        name: "lunchd_connections_refused_total",
        kind: "counter",
        labels: "server, reason",
        help: "Connections closed before TLS or HTTP, by reason: per_client (the client already held [limits] max_connections_per_client), proxy (with [proxy] set: from outside [proxy] from, or without a valid PROXY v2 header within [limits] handshake_timeout), or limit (server quic only: [limits] max_connections were open).",
    },
    Family {
        name: "lunchd_connections_retried_total",
        kind: "counter",
        labels: "server",
        help: "Clients asked to prove their address with a QUIC Retry before any state is kept for them (server quic; above half of [limits] max_connections open).",
    },
    Family {
        name: "lunchd_tls_handshakes_total",
        kind: "counter",
        labels: "server, kind",
        help: "TLS handshakes completed, by kind: full, or resumed (a session ticket or ID); over TCP without a server label, over QUIC with server quic.",
    },
    Family {
        name: "lunchd_tls_handshake_failures_total",
        kind: "counter",
        labels: "server, reason",
        help: "TLS connections that never got to HTTP, by reason: error (bad or unsupported hello, alert), timeout, or plain_http (plain HTTP sent to the TLS port); over TCP without a server label, over QUIC with server quic.",
    },
    Family {
        name: "lunchd_reloads_total",
        kind: "counter",
        labels: "outcome",
        help: "Reloads (SIGHUP, systemctl reload) by outcome: ok, or failed (the previous state still served).",
    },
    Family {
        name: "lunchd_last_reload_success",
        kind: "gauge",
        labels: "",
        help: "0 if the last reload failed (the previous state still served), else 1.",
    },
    Family {
        name: "lunchd_last_reload_timestamp_seconds",
        kind: "gauge",
        labels: "",
        help: "When the last reload ended (the start, before the first one), in seconds since the epoch.",
    },
    Family {
        name: "lunchd_access_log_dropped_total",
        kind: "counter",
        labels: "",
        help: "Access log records lost: the writer fell behind or the file could not be written.",
    },
    Family {
        name: "lunchd_certificate_not_before_timestamp_seconds",
        kind: "gauge",
        labels: "serial",
        help: "Start of the serving certificate's validity, in seconds since the epoch; serial in hex.",
    },
    Family {
        name: "lunchd_certificate_not_after_timestamp_seconds",
        kind: "gauge",
        labels: "serial",
        help: "End of the serving certificate's validity, in seconds since the epoch; serial in hex.",
    },
];

/// What a scrape reports.
#[derive(Debug)]
pub struct Metrics {
    version: &'static str,
    started: i64,
    servers: Vec<&'static ServerMetrics>,
    store: Arc<CertificateStore>,
    status: Arc<Status>,
    access: Option<&'static AccessLog>,
    connections: std::sync::Mutex<Vec<(&'static str, Arc<lunch_net::Stats>)>>,
    quic: std::sync::Mutex<Option<Arc<QuicStats>>>,
}

impl Metrics {
    /// Reports the connection counters `stats` of the server `name`.
    pub fn connections(&self, name: &'static str, stats: Arc<lunch_net::Stats>) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, stats));
    }

    /// Reports the HTTP/3 server's counters, as server `quic`.
    pub fn quic(&self, stats: Arc<lunch_net::Stats>, quic: Arc<QuicStats>) {
        self.connections(QUIC, stats);
        *self.quic.lock().unwrap_or_else(|e| e.into_inner()) = Some(quic);
    }

    /// Metrics of the servers named `servers`, the certificate in `store`,
    /// the reloads `status` records and the access log; `started` in
    /// seconds since the epoch.
    pub fn new(
        servers: &[&'static str],
        store: Arc<CertificateStore>,
        status: Arc<Status>,
        access: Option<&'static AccessLog>,
        started: i64,
    ) -> Metrics {
        Metrics {
            version: env!("CARGO_PKG_VERSION"),
            started,
            // They live as long as the process: each request refers to its
            // server's counters without counting references, which would
            // be a cache line every worker writes.
            servers: servers
                .iter()
                .map(|name| &*Box::leak(Box::new(ServerMetrics::new(name))))
                .collect(),
            store,
            status,
            access,
            connections: std::sync::Mutex::default(),
            quic: std::sync::Mutex::default(),
        }
    }

    /// The request counters of the server `name`.
    pub fn server(&self, name: &str) -> Option<&'static ServerMetrics> {
        self.servers.iter().find(|s| s.name == name).copied()
    }

    /// The exposition, in the text format 0.0.4.
    pub fn render(&self) -> String {
        // Read once per scrape: a reload between two families would
        // otherwise give one certificate's start and another's end.
        let reloads = self.status.reloads();
        let info = self.store.info();
        let mut out = String::with_capacity(4096);
        for family in FAMILIES {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            self.samples(family.name, &info, &reloads, &mut out);
        }
        out
    }

    /// The samples of the family `name`, for the certificate `info` and
    /// the reloads `reloads` of this scrape.
    fn samples(&self, name: &str, info: &CertificateInfo, reloads: &Reloads, out: &mut String) {
        let serial = label_value(&info.serial);
        match name {
            "lunchd_build_info" => sample(out, name, &format!("version=\"{}\"", label_value(self.version)), 1),
            "process_start_time_seconds" => sample(out, name, "", self.started),
            "lunchd_http_requests_total" => {
                for server in &self.servers {
                    for (p, protocol) in PROTOCOLS.iter().enumerate() {
                        for (c, class) in CLASSES.iter().enumerate() {
                            let labels =
                                format!("server=\"{}\",protocol=\"{protocol}\",class=\"{class}\"", server.name);
                            sample(out, name, &labels, server.cells.sum(REQUESTS + p * CLASSES.len() + c));
                        }
                    }
                }
            }
            "lunchd_http_request_duration_seconds" => {
                for server in &self.servers {
                    let mut cumulative = 0u64;
                    for (i, le) in BUCKETS.iter().enumerate() {
                        cumulative += server.cells.sum(DURATION_BUCKETS + i);
                        let labels = format!("server=\"{}\",le=\"{le}\"", server.name);
                        sample(out, &format!("{name}_bucket"), &labels, cumulative);
                    }
                    cumulative += server.cells.sum(DURATION_BUCKETS + BUCKETS.len());
                    let labels = format!("server=\"{}\"", server.name);
                    sample(
                        out,
                        &format!("{name}_bucket"),
                        &format!("{labels},le=\"+Inf\""),
                        cumulative,
                    );
                    let seconds = server.cells.sum(DURATION_SUM) as f64 / 1e6;
                    sample(out, &format!("{name}_sum"), &labels, seconds);
                    sample(out, &format!("{name}_count"), &labels, cumulative);
                }
            }
            "lunchd_connections_accepted_total"
            | "lunchd_connections_open"
            | "lunchd_connection_limit_reached_total"
            | "lunchd_connections_refused_total" => {
                let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
                let quic = self.quic.lock().unwrap_or_else(|e| e.into_inner());
                for (server, stats) in connections.iter() {
                    let value = match name {
                        "lunchd_connections_accepted_total" => stats.accepted.load(Ordering::Relaxed),
                        "lunchd_connections_open" => stats.active.load(Ordering::Relaxed) as u64,
                        "lunchd_connection_limit_reached_total" => stats.limit_reached.load(Ordering::Relaxed),
                        _ => {
                            let per_client = stats.refused_per_client.load(Ordering::Relaxed);
                            // QUIC has no PROXY header to refuse, but a
                            // connection bound that refuses rather than waits.
                            let other = match (*server, quic.as_ref()) {
                                (QUIC, Some(quic)) => ("limit", quic.refused.load(Ordering::Relaxed)),
                                _ => ("proxy", stats.refused_proxy.load(Ordering::Relaxed)),
                            };
                            for (reason, value) in [("per_client", per_client), other] {
                                let labels = format!("server=\"{server}\",reason=\"{reason}\"");
                                sample(out, name, &labels, value);
                            }
                            continue;
                        }
                    };
                    sample(out, name, &format!("server=\"{server}\""), value);
                }
            }
            "lunchd_connections_retried_total" => {
                if let Some(quic) = self.quic.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    let labels = format!("server=\"{QUIC}\"");
                    sample(out, name, &labels, quic.retried.load(Ordering::Relaxed));
                }
            }
            "lunchd_tls_handshakes_total" | "lunchd_tls_handshake_failures_total" => {
                let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
                // TCP's servers summed, without a server label as before
                // HTTP/3; the QUIC server's apart.
                let sum = |field: fn(&lunch_net::Stats) -> &AtomicU64| {
                    connections
                        .iter()
                        .filter(|(server, _)| *server != QUIC)
                        .map(|(_, stats)| field(stats).load(Ordering::Relaxed))
                        .sum::<u64>()
                };
                let quic = connections.iter().find(|(server, _)| *server == QUIC).map(|(_, s)| s);
                let quic_handshakes = self
                    .quic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|q| q.handshakes());
                if name == "lunchd_tls_handshakes_total" {
                    sample(out, name, "kind=\"full\"", sum(|s| &s.handshakes_full));
                    sample(out, name, "kind=\"resumed\"", sum(|s| &s.handshakes_resumed));
                    if let Some((full, resumed)) = quic_handshakes {
                        sample(out, name, &format!("server=\"{QUIC}\",kind=\"full\""), full);
                        sample(out, name, &format!("server=\"{QUIC}\",kind=\"resumed\""), resumed);
                    }
                } else {
                    let failed = sum(|s| &s.handshake_failures);
                    let timeouts = sum(|s| &s.handshake_timeouts);
                    sample(out, name, "reason=\"error\"", failed.saturating_sub(timeouts));
                    sample(out, name, "reason=\"timeout\"", timeouts);
                    sample(out, name, "reason=\"plain_http\"", sum(|s| &s.plaintext_on_tls));
                    if let Some(stats) = quic {
                        let failed = stats.handshake_failures.load(Ordering::Relaxed);
                        let timeouts = stats.handshake_timeouts.load(Ordering::Relaxed);
                        let labels = |reason| format!("server=\"{QUIC}\",reason=\"{reason}\"");
                        sample(out, name, &labels("error"), failed.saturating_sub(timeouts));
                        sample(out, name, &labels("timeout"), timeouts);
                    }
                }
            }
            "lunchd_reloads_total" => {
                sample(out, name, "outcome=\"ok\"", reloads.ok);
                sample(out, name, "outcome=\"failed\"", reloads.failed);
            }
            "lunchd_access_log_dropped_total" => {
                sample(out, name, "", self.access.as_ref().map_or(0, |a| a.dropped()));
            }
            "lunchd_last_reload_success" => sample(out, name, "", u8::from(reloads.last_ok)),
            "lunchd_last_reload_timestamp_seconds" => sample(out, name, "", reloads.last_at),
            "lunchd_certificate_not_before_timestamp_seconds" => sample(
                out,
                name,
                &format!("serial=\"{serial}\""),
                certwatch::unix(info.not_before),
            ),
            "lunchd_certificate_not_after_timestamp_seconds" => sample(
                out,
                name,
                &format!("serial=\"{serial}\""),
                certwatch::unix(info.not_after),
            ),
            _ => unreachable!("every family has its samples: {name}"),
        }
    }
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format wants.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The handler of the metrics socket: `GET /metrics` and nothing else.
#[derive(Debug, Clone)]
pub struct Endpoint(pub Arc<Metrics>);

impl Service<Request<Incoming>> for Endpoint {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(answer(&self.0, request.method(), request.uri().path())))
    }
}

fn answer(metrics: &Metrics, method: &Method, path: &str) -> Response<Body> {
    let plain = |status: StatusCode, text: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Body::from(text))
            .unwrap_or_default()
    };
    if path != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert("allow", hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let body = metrics.render();
    Response::builder()
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .header("cache-control", "no-store")
        .body(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(body)
        })
        .unwrap_or_default()
}

/// The server of the metrics socket. It runs on the main thread, away
/// from the workers, with the same limits as the others.
pub fn server(
    listener: std::net::TcpListener,
    metrics: &Arc<Metrics>,
    limits: lunch_net::Limits,
) -> anyhow::Result<lunch_net::Server<Endpoint>> {
    use anyhow::Context;
    Ok(
        lunch_net::Server::plain(listener, Endpoint(Arc::clone(metrics)), limits)
            .context("starting the metrics server")?
            .named("metrics"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Reload;

    fn metrics() -> Metrics {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["lunch.test".to_owned()]).unwrap();
        let name = std::path::Path::new("(test)");
        let certificate = lunch_net::tls::LoadedCertificate::from_pem(
            signing_key.serialize_pem().as_bytes(),
            name,
            cert.pem().as_bytes(),
            name,
            std::time::SystemTime::now(),
        )
        .unwrap();
        let status = Arc::new(Status::new("https on 127.0.0.1:8443".to_owned(), 1_796_119_200));
        Metrics::new(
            &["https", "http"],
            CertificateStore::new(certificate),
            status,
            None,
            1_796_119_200,
        )
    }

    /// The value of the sample `series` (name and labels as rendered).
    fn value(exposition: &str, series: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn requests_are_counted_by_server_protocol_and_class() {
        let metrics = metrics();
        let https = metrics.server("https").unwrap();
        https.record(Version::HTTP_11, StatusCode::OK, Duration::from_micros(300));
        https.record(Version::HTTP_2, StatusCode::OK, Duration::from_micros(700));
        https.record(Version::HTTP_2, StatusCode::NOT_FOUND, Duration::from_millis(30));
        // Counted from another thread: another shard, the same sum.
        let other = https;
        std::thread::spawn(move || other.record(Version::HTTP_2, StatusCode::OK, Duration::from_secs(20)))
            .join()
            .unwrap();
        metrics
            .server("http")
            .unwrap()
            .record(Version::HTTP_11, StatusCode::PERMANENT_REDIRECT, Duration::ZERO);

        let text = metrics.render();
        let expected = [
            (
                r#"lunchd_http_requests_total{server="https",protocol="h1",class="2xx"}"#,
                1.0,
            ),
            (
                r#"lunchd_http_requests_total{server="https",protocol="h2",class="2xx"}"#,
                2.0,
            ),
            (
                r#"lunchd_http_requests_total{server="https",protocol="h2",class="4xx"}"#,
                1.0,
            ),
            (
                r#"lunchd_http_requests_total{server="https",protocol="h1",class="5xx"}"#,
                0.0,
            ),
            (
                r#"lunchd_http_requests_total{server="http",protocol="h1",class="3xx"}"#,
                1.0,
            ),
            (
                r#"lunchd_http_request_duration_seconds_bucket{server="https",le="0.0005"}"#,
                1.0,
            ),
            (
                r#"lunchd_http_request_duration_seconds_bucket{server="https",le="0.001"}"#,
                2.0,
            ),
            (
                r#"lunchd_http_request_duration_seconds_bucket{server="https",le="0.05"}"#,
                3.0,
            ),
            (
                r#"lunchd_http_request_duration_seconds_bucket{server="https",le="10"}"#,
                3.0,
            ),
            (
                r#"lunchd_http_request_duration_seconds_bucket{server="https",le="+Inf"}"#,
                4.0,
            ),
            (r#"lunchd_http_request_duration_seconds_count{server="https"}"#, 4.0),
            (r#"lunchd_http_request_duration_seconds_sum{server="https"}"#, 20.031),
            (r#"lunchd_http_request_duration_seconds_count{server="http"}"#, 1.0),
        ];
        for (series, expected) in expected {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
    }

    #[test]
    fn reloads_and_the_certificate() {
        let metrics = metrics();
        let text = metrics.render();
        assert_eq!(value(&text, "lunchd_last_reload_success"), Some(1.0), "{text}");
        assert_eq!(
            value(&text, "lunchd_last_reload_timestamp_seconds"),
            Some(1_796_119_200.0)
        );
        metrics.status.reloaded(Reload::Ok { at: 1_796_119_260 });
        metrics.status.reloaded(Reload::Failed {
            at: 1_796_119_320,
            problem: "bad".to_owned(),
            applied: false,
        });
        let text = metrics.render();
        assert_eq!(
            value(&text, r#"lunchd_reloads_total{outcome="ok"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, r#"lunchd_reloads_total{outcome="failed"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "lunchd_last_reload_success"), Some(0.0), "{text}");
        assert_eq!(
            value(&text, "lunchd_last_reload_timestamp_seconds"),
            Some(1_796_119_320.0)
        );
        let info = metrics.store.info();
        let not_after = format!(
            "lunchd_certificate_not_after_timestamp_seconds{{serial=\"{}\"}}",
            info.serial
        );
        assert_eq!(
            value(&text, &not_after),
            Some(certwatch::unix(info.not_after) as f64),
            "{text}"
        );
        let version = format!("lunchd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
        assert_eq!(value(&text, &version), Some(1.0), "{text}");
    }

    #[test]
    fn only_get_metrics_is_served() {
        let metrics = metrics();
        let check = |method: Method, path: &str, expected: StatusCode| {
            assert_eq!(answer(&metrics, &method, path).status(), expected, "{method} {path}");
        };
        check(Method::GET, "/metrics", StatusCode::OK);
        check(Method::HEAD, "/metrics", StatusCode::OK);
        check(Method::POST, "/metrics", StatusCode::METHOD_NOT_ALLOWED);
        check(Method::GET, "/", StatusCode::NOT_FOUND);
        check(Method::GET, "/metrics/", StatusCode::NOT_FOUND);
        let response = answer(&metrics, &Method::GET, "/metrics");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn shards_are_apart() {
        let sharded = Sharded::new(3);
        assert_eq!(sharded.stride, 1);
        assert_eq!(std::mem::align_of::<Line>(), 128);
        assert_eq!(Sharded::new(SERVER_CELLS).stride, SERVER_CELLS.div_ceil(LINE));
        let (a, b) = (
            sharded.cell(0, 0) as *const _ as usize,
            sharded.cell(1, 0) as *const _ as usize,
        );
        assert_eq!(b - a, 128);
        assert_eq!(a % 128, 0);
        let owned = |index| Shard { index, owned: true };
        sharded.add(SHARED, 2, 5);
        sharded.add(owned(SHARDS - 1), 2, 7);
        sharded.add(owned(1), 0, 1);
        assert_eq!(sharded.sum(2), 12);
        assert_eq!(sharded.sum(0), 1);
        assert_eq!(sharded.sum(1), 0);
    }

    /// More threads than shards: each owned shard has one thread, the
    /// rest share one with atomic adds, and no count is lost.
    #[test]
    fn threads_beyond_the_shards_share_one_and_lose_nothing() {
        let sharded = Arc::new(Sharded::new(1));
        let threads = 2 * SHARDS;
        let start = Arc::new(std::sync::Barrier::new(threads));
        let shards: Vec<Shard> = (0..threads)
            .map(|_| {
                let (sharded, start) = (Arc::clone(&sharded), Arc::clone(&start));
                std::thread::spawn(move || {
                    let shard = shard();
                    start.wait();
                    for _ in 0..10_000 {
                        sharded.add(shard, 0, 1);
                    }
                    shard
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        assert_eq!(sharded.sum(0), 10_000 * threads as u64);
        let mut owned: Vec<usize> = shards.iter().filter(|s| s.owned).map(|s| s.index).collect();
        let count = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(owned.len(), count, "a shard was owned twice");
        assert!(!owned.contains(&SHARED.index));
        assert!(shards.iter().filter(|s| !s.owned).all(|s| *s == SHARED));
        assert!(count < SHARDS && threads - count >= SHARDS, "{count} owned");
    }

    /// docs/metrics.md lists every metric, generated from [`FAMILIES`].
    #[test]
    fn docs_list_every_metric() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let docs = std::fs::read_to_string(path).unwrap();
        let (begin, end) = (
            "<!-- BEGIN metrics: generated by a test, see metrics.rs -->\n",
            "<!-- END metrics -->",
        );
        let start = docs.find(begin).expect("the BEGIN marker") + begin.len();
        let stop = docs.find(end).expect("the END marker");
        let expected = docs_table();
        assert!(
            docs[start..stop] == expected,
            "docs/metrics.md is out of date; put this between the markers:\n{expected}"
        );
    }

    fn docs_table() -> String {
        let mut table = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
        for family in FAMILIES {
            let labels = if family.labels.is_empty() {
                "–".to_owned()
            } else {
                family
                    .labels
                    .split(", ")
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                table,
                "| `{}` | {} | {labels} | {} |",
                family.name, family.kind, family.help
            );
        }
        table
    }
}
