//! The servers under test: lunchd under `systemd-socket-activate`, and
//! Debian's nginx configured for the same work.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lunch_testkit::{Checked, NotifySocket, try_free_port as free_port};

use super::procs::{self, Guard};

/// The body nginx answers, `<h1>Soup</h1>`.
pub(crate) const NGINX_BODY: &str = "<h1>Soup</h1>";
/// lunchd's lightest real route: `ok\n` with lunchd's usual headers.
pub(crate) const LUNCHD_PATH: &str = "/healthz";
/// nginx's `return 200` location.
pub(crate) const NGINX_PATH: &str = "/";
/// nginx's location that logs `$ssl_session_reused`, for the handshake check.
const NGINX_VERIFY_PATH: &str = "/verify-full-handshakes";

/// An ECDSA P-256 key and a self-signed certificate for localhost and
/// 127.0.0.1, made with openssl.
pub(crate) struct Certificate {
    pub(crate) key: PathBuf,
    pub(crate) chain: PathBuf,
}

impl Certificate {
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<Certificate> {
        let key = dir.join("key.pem");
        let chain = dir.join("cert.pem");
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&chain)
            .args([
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ])
            .read_checked()
            .context("openssl could not make a certificate")?;
        Ok(Certificate { key, chain })
    }
}

/// When `notify` receives `READY=1`, waiting at most `timeout`.
pub(crate) fn ready_at(notify: &NotifySocket, timeout: Duration) -> anyhow::Result<Instant> {
    Ok(notify.try_wait_for("READY=1", timeout)?.at)
}

/// What a lunchd under test has switched on beyond the defaults, to
/// measure what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Feature {
    /// A third socket named `metrics` (served, not scraped during the load).
    Metrics,
    /// `[log] access = true`, into a file in the scratch directory.
    AccessLog,
    /// Nothing: a second default lunchd, whose "cost" is the noise floor
    /// of the comparison.
    Twin,
}

impl Feature {
    /// The server's name in the results.
    pub(crate) fn server(self) -> &'static str {
        match self {
            Feature::Metrics => "lunchd+metrics",
            Feature::AccessLog => "lunchd+access-log",
            Feature::Twin => "lunchd+twin",
        }
    }
}

/// lunchd, socket-activated and ready.
pub(crate) struct Lunchd {
    pub(crate) guard: Guard,
    pub(crate) http: u16,
    pub(crate) https: u16,
    /// The UDP port of its `quic` socket, when started with one.
    pub(crate) quic: Option<u16>,
    /// From the activating connection to READY=1.
    pub(crate) start_to_ready: Duration,
}

impl Lunchd {
    /// Starts `systemd-socket-activate` with sockets named `http` and
    /// `https` (and `metrics` with [`Feature::Metrics`]), activates lunchd
    /// with a first connection, and waits for READY=1.
    pub(crate) fn start(
        binary: &Path,
        cert: &Certificate,
        dir: &Path,
        notify: &NotifySocket,
        feature: Option<Feature>,
    ) -> anyhow::Result<Lunchd> {
        Lunchd::launch(binary, cert, dir, notify, feature, false, &[])
    }

    /// As [`start`](Lunchd::start), with lunchd run by `wrapper` (a
    /// command and its arguments, such as valgrind's), which then has
    /// lunchd's PID and sockets.
    pub(crate) fn start_under(
        binary: &Path,
        cert: &Certificate,
        dir: &Path,
        notify: &NotifySocket,
        feature: Option<Feature>,
        wrapper: &[String],
    ) -> anyhow::Result<Lunchd> {
        Lunchd::launch(binary, cert, dir, notify, feature, false, wrapper)
    }

    /// As [`start`](Lunchd::start), with a UDP socket named `quic` too.
    /// `systemd-socket-activate` takes one kind of socket per run, so two
    /// are chained, as lunchd/tests/h3.rs does: the outer binds the UDP
    /// socket and passes it on, the inner adds the TCP ones. A first
    /// datagram starts the chain.
    pub(crate) fn start_with_quic(
        binary: &Path,
        cert: &Certificate,
        dir: &Path,
        notify: &NotifySocket,
    ) -> anyhow::Result<Lunchd> {
        Lunchd::launch(binary, cert, dir, notify, None, true, &[])
    }

    fn launch(
        binary: &Path,
        cert: &Certificate,
        dir: &Path,
        notify: &NotifySocket,
        feature: Option<Feature>,
        quic: bool,
        wrapper: &[String],
    ) -> anyhow::Result<Lunchd> {
        let (http, https) = (free_port()?, free_port()?);
        let quic = quic.then(free_udp_port).transpose()?;
        let dir = match feature {
            Some(feature) => dir.join(feature.server()),
            None => dir.to_owned(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("lunchd.toml");
        let access = if feature == Some(Feature::AccessLog) {
            "access = true\n"
        } else {
            ""
        };
        // Room for `--idle`'s connections, all from 127.0.0.1.
        std::fs::write(
            &config,
            format!(
                "[log]\nlevel = \"info\"\n{access}\n[limits]\nmax_connections = 4096\nmax_connections_per_client = 4096\n"
            ),
        )?;
        notify.drain();
        let mut command = Command::new("systemd-socket-activate");
        if let Some(port) = quic {
            command
                .arg("--datagram")
                .arg(format!("--listen=127.0.0.1:{port}"))
                .arg("--fdname=quic")
                .arg("systemd-socket-activate")
                // The inner one names the socket it inherits first.
                .arg("--fdname=quic");
        }
        command
            .arg(format!("--listen=127.0.0.1:{http}"))
            .arg("--fdname=http")
            .arg(format!("--listen=127.0.0.1:{https}"))
            .arg("--fdname=https");
        let sockets = if feature == Some(Feature::Metrics) {
            command
                .arg(format!("--listen=127.0.0.1:{}", free_port()?))
                .arg("--fdname=metrics");
            3
        } else {
            2
        };
        let mut child = command
            .arg(format!("--setenv=NOTIFY_SOCKET={}", notify.path.display()))
            .arg(format!("--setenv=LOGS_DIRECTORY={}", dir.display()))
            .args(wrapper)
            .arg(binary)
            .arg("--config")
            .arg(&config)
            .arg("--key")
            .arg(&cert.key)
            .arg("--certificate")
            .arg(&cert.chain)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting systemd-socket-activate (Debian package systemd)")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let guard = Guard::new("lunchd", child);
        let listening = procs::watch_lines(stderr, &dir.join("lunchd.log"), "Listening on")?;
        // With quic only the outer one listens until the first datagram.
        for _ in 0..if quic.is_some() { 1 } else { sockets } {
            listening
                .recv_timeout(Duration::from_secs(10))
                .context("systemd-socket-activate did not listen within 10 s")?;
        }
        let activated = Instant::now();
        // The first connection makes systemd-socket-activate exec lunchd;
        // with quic the first datagram, which lunchd reads as its first
        // packet and drops.
        let trigger = match quic {
            Some(port) => {
                UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.send_to(b"not a quic packet", ("127.0.0.1", port)))
                    .context("activating lunchd")?;
                None
            }
            None => Some(TcpStream::connect(("127.0.0.1", https)).context("activating lunchd")?),
        };
        // Under a wrapper such as valgrind lunchd starts tens of times slower.
        let ready_within = Duration::from_secs(if wrapper.is_empty() { 15 } else { 90 });
        let ready = ready_at(notify, ready_within)
            .with_context(|| format!("lunchd did not get ready; see {}", dir.join("lunchd.log").display()))?;
        drop(trigger);
        Ok(Lunchd {
            guard,
            http,
            https,
            quic,
            start_to_ready: ready - activated,
        })
    }
}

/// A UDP port free now on 127.0.0.1.
pub(crate) fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx with `return 200` and `return 301` servers.
pub(crate) struct Nginx {
    pub(crate) guard: Guard,
    pub(crate) http: u16,
    pub(crate) https: u16,
    dir: PathBuf,
}

impl Nginx {
    pub(crate) fn start(cert: &Certificate, dir: &Path) -> anyhow::Result<Nginx> {
        let (http, https) = (free_port()?, free_port()?);
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, cert, http, https))?;
        let mut nginx = Command::new("nginx");
        nginx
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
        let guard = spawn_nginx(nginx, https, &dir).context("starting nginx (Debian package nginx-light)")?;
        Ok(Nginx {
            guard,
            http,
            https,
            dir,
        })
    }

    /// Checks with nginx's `$ssl_session_reused` that `ab` makes a full
    /// handshake on every connection: (full, resumed).
    pub(crate) fn ab_handshakes(&self) -> anyhow::Result<(usize, usize)> {
        // nginx opened the log at start; it only ever gets these lines.
        let log = self.dir.join("session-reused.log");
        super::load::ab_count(&format!("https://127.0.0.1:{}{NGINX_VERIFY_PATH}", self.https), 200)?;
        // nginx writes the line after the response; give the last ones a moment.
        std::thread::sleep(Duration::from_millis(200));
        let text = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        let full = text.lines().filter(|l| l.trim() == ".").count();
        let resumed = text.lines().filter(|l| l.trim() == "r").count();
        Ok((full, resumed))
    }
}

fn nginx_conf(dir: &Path, cert: &Certificate, http: u16, https: u16) -> String {
    let dir = dir.display();
    let (key, chain) = (cert.key.display(), cert.chain.display());
    format!(
        r#"# Written by `cargo xtask bench`: the same work as lunchd's.
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
    log_format reused '$ssl_session_reused';
    server {{
        listen 127.0.0.1:{https} ssl http2;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{ return 200 "{NGINX_BODY}"; }}
        location = {NGINX_VERIFY_PATH} {{
            access_log {dir}/session-reused.log reused;
            return 200 "{NGINX_BODY}";
        }}
    }}
    server {{
        listen 127.0.0.1:{http};
        return 301 https://$host:{https}$request_uri;
    }}
}}
"#
    )
}

/// Starts nginx by `command`, which gives it its prefix, configuration and
/// error log (in `dir`, which the error names), and waits until it accepts
/// on `https`. Stopped with SIGQUIT, nginx's
/// graceful shutdown.
pub(crate) fn spawn_nginx(mut command: Command, https: u16, dir: &Path) -> anyhow::Result<Guard> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {:?}", command.get_program()))?;
    let mut guard = Guard::new("nginx", child).stop_with("QUIT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", https)).is_err() {
        anyhow::ensure!(
            guard.running() && Instant::now() < deadline,
            "nginx did not start; see {}",
            dir.join("error.log").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(guard)
}

/// `GET /` on a plain HTTP port: the status code and the Location header.
pub(crate) fn redirect_check(port: u16) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /soup?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.take(64 * 1024).read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let location = response
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("location").then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, location))
}

/// Bytes of the response head and body over HTTPS, with curl.
pub(crate) fn response_size(url: &str) -> Option<(u64, u64)> {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_header} %{size_download}",
        ])
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut words = text.split_whitespace();
    (words.next()? == "200").then_some(())?;
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}
