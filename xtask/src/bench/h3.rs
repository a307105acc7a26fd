//! `cargo xtask bench --h3`: HTTP/3 load against lunchd's `quic` socket
//! and against nginx's `listen ... quic` + `http3 on`, in the same run.
//!
//! This host's Debian (bookworm) has no nginx with HTTP/3, so nginx and
//! the curl that checks each server answers over HTTP/3
//! (`--http3-only`) come from the forky tree that the e2e builds (cached
//! under target/e2e-trees) and run in `chroot TREE`. A chroot shares the
//! host's network and PID namespaces: its curl reaches lunchd on the
//! host's 127.0.0.1, and the CPU and RSS of the chrooted nginx are read
//! from the host's /proc like any other process's.
//!
//! The load is this module's own client (quinn + h3, the libraries
//! lunchd serves with), shaped like the h2 test's h2load: two threads,
//! 64 connections, 10 requests in flight on each. forky's h2load has
//! `--h3` in its help but is built without ngtcp2: every request fails.
//! The method is the other tests': server CPU (utime + stime of the
//! server's processes) per request, peak RSS sampled every 0.5 s, after a
//! warm-up.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Buf;
use lunch_testkit::{Checked, NotifySocket, TestCa, try_free_port as free_port};

use super::load::Outcome;
use super::procs::{self, Guard, Sampler};
use super::servers::{self, Certificate, Lunchd, free_udp_port};
use crate::e2e::tree;

/// The load, shaped as the h2 test's but over QUIC.
const TITLE: &str = "HTTP/3 (quinn+h3 client, 2 threads, 64 connections, 10 streams each)";
const CONNECTIONS: usize = 64;
const STREAMS: usize = 10;

/// One server's HTTP/3 result.
struct H3Run {
    server: &'static str,
    url: String,
    outcome: Outcome,
    /// Why requests failed, a few of each kind.
    failures: Vec<String>,
    cpu_seconds: f64,
    /// The load client's own CPU (this process) over the same time.
    client_cpu_seconds: f64,
    /// Datagrams the kernel dropped because the server's socket buffer
    /// was full, over the same time.
    drops: u64,
    seconds: f64,
    peak_rss_kib: u64,
    idle_rss_kib: u64,
}

impl H3Run {
    fn us_per_request(&self) -> f64 {
        if self.outcome.requests == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.outcome.requests as f64
    }

    fn client_us_per_request(&self) -> f64 {
        if self.outcome.requests == 0 {
            return f64::NAN;
        }
        self.client_cpu_seconds * 1e6 / self.outcome.requests as f64
    }

    /// Of one core, how busy the server was.
    fn server_busy(&self) -> f64 {
        self.cpu_seconds / self.seconds
    }
}

/// A directory inside the tree, seen from the host as `host` and from the
/// chroot as `inside`; removed when dropped.
struct Shared {
    host: PathBuf,
    inside: PathBuf,
}

impl Shared {
    fn new(tree: &Path) -> anyhow::Result<Shared> {
        // /run: a booted tree mounts a tmpfs over it, so nothing left here
        // by an interrupted run shows in the e2e's containers.
        let inside = PathBuf::from(format!("/run/lunchd-bench-h3-{}", std::process::id()));
        let host = tree.join(inside.strip_prefix("/").unwrap_or(&inside));
        let _ = std::fs::remove_dir_all(&host);
        std::fs::create_dir_all(&host).with_context(|| format!("creating {}", host.display()))?;
        Ok(Shared { host, inside })
    }

    /// `host`'s path for the chroot.
    fn inside(&self, host: &Path) -> PathBuf {
        host.strip_prefix(&self.host)
            .map_or_else(|_| host.to_owned(), |rest| self.inside.join(rest))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// Runs the HTTP/3 test against lunchd and nginx for `duration` seconds
/// each and writes `out`/h3-results.md.
pub(super) fn run(binary: &Path, duration: f64, out: &Path) -> anyhow::Result<()> {
    for (tool, package) in [
        ("systemd-socket-activate", "systemd"),
        ("openssl", "openssl"),
        ("debootstrap", "debootstrap"),
    ] {
        if !crate::system::on_path(tool) {
            crate::system::apt_install("bench", &[package])?;
        }
    }
    let root = crate::project_root();
    let cache = crate::system::target_dir(&root).join("e2e-trees");
    let mirror = tree::host_mirror()?;
    let tree = tree::ensure(&cache, "forky", &mirror)?;
    let tree = tree.dir;
    for tool in ["usr/bin/h2load", "usr/sbin/nginx", "usr/bin/curl"] {
        anyhow::ensure!(
            tree.join(tool).exists(),
            "the forky tree {} has no /{tool}; remove it so that it is built again",
            tree.display()
        );
    }
    let shared = Shared::new(&tree)?;
    // A test CA's certificate, so that the client verifies both servers.
    let ca = TestCa::try_new().context("making a test CA")?;
    let leaf = ca
        .try_issue_with(&["localhost"], 1, |_| {})
        .context("issuing the test certificate")?;
    let cert = Certificate {
        key: shared.host.join("key.pem"),
        chain: shared.host.join("fullchain.pem"),
    };
    std::fs::write(&cert.key, &leaf.key_pem)?;
    std::fs::write(&cert.chain, &leaf.chain_pem)?;
    let tls = ca.client_config(&[b"h3"]);
    let notify_path = shared.host.join("notify.sock");
    let notify =
        NotifySocket::bind(notify_path.clone()).with_context(|| format!("binding {}", notify_path.display()))?;
    let ticks = procs::clock_ticks();

    let lunchd = Lunchd::start_with_quic(binary, &cert, &shared.host.join("lunchd"), &notify)?;
    let lunchd_quic = lunchd.quic.context("lunchd started without its quic socket")?;
    let nginx = Nginx::start(&tree, &shared, &cert)?;
    let targets = [
        ("lunchd", lunchd.guard.pid(), lunchd_quic, servers::LUNCHD_PATH),
        ("nginx", nginx.guard.pid(), nginx.quic, servers::NGINX_PATH),
    ];
    std::thread::sleep(Duration::from_secs(1));
    let mut runs = Vec::new();
    for (server, pid, port, path) in targets {
        let url = format!("https://127.0.0.1:{port}{path}");
        check_h3(&tree, server, &url)?;
        let idle_rss_kib = procs::rss_kib(&procs::family(pid));
        eprintln!("bench: {server}: {TITLE} for {duration} s: {url}");
        load(port, path, &tls, super::warm_up(duration)).with_context(|| format!("{server}: h3 warm-up"))?;
        let sampler = Sampler::start(pid);
        let client_before = procs::cpu_ticks(&[std::process::id()]);
        let drops_before = udp_drops(port);
        let started = Instant::now();
        let (outcome, failures) = load(port, path, &tls, duration).with_context(|| format!("{server}: h3"))?;
        let seconds = started.elapsed().as_secs_f64();
        let client_ticks = procs::cpu_ticks(&[std::process::id()]).saturating_sub(client_before);
        let drops = udp_drops(port).saturating_sub(drops_before);
        let usage = sampler.finish(ticks);
        let run = H3Run {
            server,
            url,
            outcome,
            failures,
            cpu_seconds: usage.cpu_seconds,
            client_cpu_seconds: client_ticks as f64 / ticks as f64,
            drops,
            seconds,
            peak_rss_kib: usage.peak_rss_kib,
            idle_rss_kib,
        };
        eprintln!(
            "bench:   {:.0} req/s, {:.2} µs server CPU per request (server {:.0}% of a core busy; client {:.2} µs per request; {} datagrams dropped at the server's socket), peak RSS {:.1} MiB, {} errors{}",
            run.outcome.rps,
            run.us_per_request(),
            run.server_busy() * 100.0,
            run.client_us_per_request(),
            run.drops,
            super::mib(run.peak_rss_kib),
            run.outcome.errors,
            if run.failures.is_empty() {
                String::new()
            } else {
                format!(": {}", run.failures.join("; "))
            }
        );
        runs.push(run);
    }
    drop(nginx);
    drop(lunchd);

    let markdown = markdown(&runs, duration);
    println!("{markdown}");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("h3-results.md");
    std::fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: results in {}", path.display());
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.outcome.errors > 0 || r.outcome.requests == 0)
        .map(|r| {
            format!(
                "{}: {} errors, {} requests",
                r.server, r.outcome.errors, r.outcome.requests
            )
        })
        .collect();
    anyhow::ensure!(failed.is_empty(), "requests failed: {}", failed.join("; "));
    Ok(())
}

fn markdown(runs: &[H3Run], duration: f64) -> String {
    let mut md = String::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        md,
        "## HTTP/3\n\n{cpus} CPUs, client and server on the same cores; {duration} s after a warm-up; \
         127.0.0.1 only; nginx from Debian forky, in a chroot; the load client is xtask's own \
         (its CPU per request beside the server's; server busy: of one core).\n"
    );
    let _ = writeln!(
        md,
        "| server | test | req/s | server CPU µs/req | server busy | client CPU µs/req | socket drops | p50 ms | p99 ms | RSS idle MiB | RSS peak MiB | errors | url |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | h3 | {:.0} | {:.2} | {:.0}% | {:.2} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} |",
            r.server,
            r.outcome.rps,
            r.us_per_request(),
            r.server_busy() * 100.0,
            r.client_us_per_request(),
            r.drops,
            r.outcome.p50_ms,
            r.outcome.p99_ms,
            super::mib(r.idle_rss_kib),
            super::mib(r.peak_rss_kib),
            r.outcome.errors,
            r.url
        );
    }
    for r in runs.iter().filter(|r| !r.failures.is_empty()) {
        let _ = writeln!(md, "\n{} errors: {}", r.server, r.failures.join("; "));
    }
    if let [lunchd, nginx] = runs {
        let _ = writeln!(
            md,
            "\nlunchd/nginx server CPU per request: {:.2}",
            lunchd.us_per_request() / nginx.us_per_request()
        );
    }
    md
}

/// The datagrams dropped so far by the kernel on the UDP sockets bound to
/// `port` (nginx has one per worker): the last column of /proc/net/udp.
fn udp_drops(port: u16) -> u64 {
    let local = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?;
            address
                .ends_with(&local)
                .then(|| fields.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// One HTTP/3 GET with the tree's curl, which must answer 200.
fn check_h3(tree: &Path, server: &str, url: &str) -> anyhow::Result<()> {
    let status = Command::new("chroot")
        .arg(tree)
        .args([
            "curl",
            "-sk",
            "--http3-only",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg(url)
        .read_checked()
        .with_context(|| format!("{server} answered no HTTP/3 request at {url}"))?;
    anyhow::ensure!(
        status.trim() == "200 3",
        "{server} answered {status:?} over HTTP/3 at {url}; expected `200 3`"
    );
    Ok(())
}

/// `CONNECTIONS` HTTP/3 connections to 127.0.0.1:`port`, `STREAMS`
/// requests for `path` in flight on each, for `seconds`, on two threads.
/// Returns the outcome and why requests failed (a few of each kind).
fn load(
    port: u16,
    path: &str,
    tls: &Arc<rustls::ClientConfig>,
    seconds: f64,
) -> anyhow::Result<(Outcome, Vec<String>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the load client's runtime")?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::clone(tls))
        .context("the client's TLS configuration cannot do QUIC")?;
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let uri: http::Uri = format!("https://localhost:{port}{path}").parse()?;
    runtime.block_on(async move {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let mut connections = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            let (client, uri) = (client.clone(), uri.clone());
            connections.spawn(async move { connection(target, client, uri, deadline).await });
        }
        let mut all = Tally::default();
        while let Some(done) = connections.join_next().await {
            all.merge(done.context("a load connection panicked")?);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut durations = all.durations;
        durations.sort_unstable();
        let at = |q: f64| {
            durations
                .get(((durations.len().saturating_sub(1)) as f64 * q).round() as usize)
                .map_or(f64::NAN, |&us| us as f64 / 1000.0)
        };
        let outcome = Outcome {
            requests: durations.len() as u64,
            rps: durations.len() as f64 / elapsed,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            errors: all.errors,
            tls: Some("TLSv1.3 over QUIC".to_owned()),
        };
        let failures = all.why.into_iter().map(|(why, n)| format!("{n}× {why}")).collect();
        Ok((outcome, failures))
    })
}

/// What some of the load's requests saw: the durations (µs) of those
/// answered with 200, the count of the others and why they failed.
#[derive(Default)]
struct Tally {
    durations: Vec<u64>,
    errors: u64,
    why: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.errors += 1;
        *self.why.entry(why).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.durations.extend(other.durations);
        self.errors += other.errors;
        for (why, n) in other.why {
            *self.why.entry(why).or_default() += n;
        }
    }
}

/// One connection's share of [`load`].
async fn connection(target: SocketAddr, client: quinn::ClientConfig, uri: http::Uri, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let connect = async {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        endpoint.set_default_client_config(client);
        let connection = endpoint.connect(target, "localhost")?.await?;
        let (driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("HTTP/3 setup: {e}"))?;
        Ok::<_, anyhow::Error>((endpoint, connection, driver, send))
    };
    let (endpoint, connection, mut driver, send) = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => {
            tally.fail(format!("connecting: {e:#}"));
            return tally;
        }
        Err(_) => {
            tally.fail("connecting: no handshake within 10 s".to_owned());
            return tally;
        }
    };
    let driver = tokio::spawn(async move { driver.wait_idle().await });
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let (mut send, uri) = (send.clone(), uri.clone());
        streams.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let began = Instant::now();
                let request = http::Request::get(uri.clone()).body(()).unwrap_or_default();
                let exchange = async {
                    let mut stream = send.send_request(request).await.map_err(|e| format!("sending: {e}"))?;
                    stream.finish().await.map_err(|e| format!("finishing: {e}"))?;
                    let response = stream.recv_response().await.map_err(|e| format!("response: {e}"))?;
                    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("body: {e}"))? {
                        chunk.advance(chunk.remaining());
                    }
                    Ok::<_, String>(response.status())
                };
                match tokio::time::timeout(Duration::from_secs(10), exchange).await {
                    Ok(Ok(http::StatusCode::OK)) => {
                        tally
                            .durations
                            .push(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    Ok(Ok(status)) => tally.fail(format!("status {status}")),
                    Ok(Err(why)) => tally.fail(why),
                    Err(_) => tally.fail("no answer within 10 s".to_owned()),
                }
            }
            tally
        });
    }
    drop(send);
    while let Some(done) = streams.join_next().await {
        match done {
            Ok(t) => tally.merge(t),
            Err(_) => tally.fail("a stream task panicked".to_owned()),
        }
    }
    connection.close(0_u32.into(), b"");
    driver.abort();
    endpoint.wait_idle().await;
    tally
}

/// The tree's nginx with HTTP/3 on `quic` and HTTPS on a TCP port, as the
/// other tests configure it.
struct Nginx {
    guard: Guard,
    quic: u16,
}

impl Nginx {
    fn start(tree: &Path, shared: &Shared, cert: &Certificate) -> anyhow::Result<Nginx> {
        let (quic, https) = (free_udp_port()?, free_port()?);
        let dir = shared.host.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let inside = shared.inside(&dir);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&inside, shared, cert, quic, https))?;
        let mut nginx = Command::new("chroot");
        nginx
            .arg(tree)
            .arg("nginx")
            .arg("-p")
            .arg(&inside)
            .arg("-c")
            .arg(inside.join("nginx.conf"));
        nginx.arg("-e").arg(inside.join("error.log"));
        // chroot execs nginx: the pid is nginx's master.
        let guard = servers::spawn_nginx(nginx, https, &dir).context("starting the forky tree's nginx")?;
        Ok(Nginx { guard, quic })
    }
}

fn nginx_conf(dir: &Path, shared: &Shared, cert: &Certificate, quic: u16, https: u16) -> String {
    let (key, chain) = (shared.inside(&cert.key), shared.inside(&cert.chain));
    let (dir, key, chain) = (dir.display(), key.display(), chain.display());
    let body = servers::NGINX_BODY;
    let path = servers::NGINX_PATH;
    format!(
        r#"# Written by `cargo xtask bench --h3`: the same work as lunchd's.
worker_processes auto;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    default_type text/html;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{https} ssl;
        listen 127.0.0.1:{quic} quic reuseport;
        http2 on;
        http3 on;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location {path} {{ return 200 "{body}"; }}
    }}
}}
"#
    )
}
