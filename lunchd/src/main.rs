//! lunchd: Lunch as a Service.
//!
//! `main` does what must happen before the async runtime starts (parse
//! arguments, read the configuration, adopt the inherited sockets and
//! unset their variables while the process is single-threaded), then hands
//! over to [`daemon::run`].

mod access;
mod app;
mod certwatch;
mod cli;
mod config;
mod daemon;
mod dev_cert;
mod logging;
mod metrics;
mod notify;
mod observe;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use lunch_net::sockets::{self, ListenEnv, Role, SocketError};
use lunch_net::tls::CertificateFiles;

use crate::cli::{Cli, Command};
use crate::config::Config;

fn main() -> ExitCode {
    logging::install_panic_hook();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Printed without the log prefix so that a user sees it plainly,
            // and journald records it as the unit's last words, an error.
            logging::fatal(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::CheckConfig { ref path }) => {
            let path = path
                .clone()
                .or(cli.config.clone())
                .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
            check_config(&path)
        }
        None => serve(cli),
    }
}

fn check_config(path: &Path) -> anyhow::Result<()> {
    match config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} dishes, {} picks)",
                path.display(),
                config.menu.dishes().len(),
                config.mode
            );
            Ok(())
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            anyhow::bail!("{}: {} problem(s) found", path.display(), errors.0.len())
        }
    }
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let config_path = match cli.config {
        Some(path) => Some(path),
        None => Some(PathBuf::from(config::DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let config = match &config_path {
        Some(path) => config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?,
        None => Config::default(),
    };
    logging::init(&config.log_level);
    match &config_path {
        Some(path) => tracing::info!("configuration from {}", path.display()),
        None => tracing::info!("no configuration file; using built-in defaults"),
    }

    let cli_files = match (cli.key, cli.certificate) {
        (Some(key), Some(chain)) => Some(CertificateFiles { key, chain }),
        _ => None,
    };
    // At start the command line's files are read as given; refreshed
    // copies only matter for a reload.
    let certificate = match daemon::load_certificate(&config, cli_files.as_ref(), None)? {
        Some(certificate) => certificate,
        None => {
            tracing::warn!(
                "no certificate configured: serving a generated self-signed development certificate for localhost; \
                 set https.key and https.certificate (or --key and --certificate) for production"
            );
            dev_cert::generate()?
        }
    };
    tracing::info!("certificate {}", certificate.info());

    let Taken {
        http,
        https,
        quic,
        metrics,
        activated,
    } = take_listeners(&config)?;
    let access = access::configured(&config)?;

    // Connections are served thread-per-core (see `lunch_net::Workers`);
    // this thread runs the accept loops, signals, reloads and readiness.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = lunch_net::Workers::start(cores).context("starting the connection workers")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(daemon::run(daemon::Setup {
        config,
        config_path,
        cli_files,
        reload_dir: cli.reload_credentials,
        http,
        https,
        quic,
        metrics,
        access,
        activated,
        certificate,
        workers: workers.clone(),
    }));
    // The servers have drained; this ends what is left.
    workers.shutdown();
    result
}

/// The sockets to serve on.
struct Taken {
    http: Option<std::net::TcpListener>,
    https: std::net::TcpListener,
    /// The UDP socket for HTTP/3: only ever passed by systemd (a
    /// `FileDescriptorName=quic` socket); without it there is no HTTP/3.
    quic: Option<std::net::UdpSocket>,
    /// Only ever passed by systemd (`lunchd-metrics.socket`).
    metrics: Option<std::net::TcpListener>,
    activated: bool,
}

/// Adopts the sockets systemd passed, by name, or binds the configured
/// fallback addresses when there are none.
fn take_listeners(config: &Config) -> anyhow::Result<Taken> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let env = ListenEnv {
        pid: pid.as_deref(),
        fds: fds.as_deref(),
        names: names.as_deref(),
    };
    let parsed = sockets::parse_listen_env(env, std::process::id());
    // The variables describe this process only; children must not see them.
    // SAFETY: called from `main` before the runtime or any other thread
    // starts, so nothing reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    match parsed? {
        Some(names) => {
            let required: &[Role] = if config.redirect {
                &[Role::Https, Role::Http]
            } else {
                &[Role::Https]
            };
            let mut listeners = sockets::adopt(&names, required).map_err(with_config_hint)?;
            let https = listeners.take(Role::Https)?;
            let http = if config.redirect {
                Some(listeners.take(Role::Http)?)
            } else {
                None
            };
            let quic = listeners.take_datagram(Role::Quic);
            Ok(Taken {
                http,
                https,
                quic,
                metrics: listeners.take(Role::Metrics).ok(),
                activated: true,
            })
        }
        None => {
            let https = sockets::bind(config.https_listen)?;
            let http = if config.redirect {
                Some(sockets::bind(config.http_listen)?)
            } else {
                None
            };
            Ok(Taken {
                http,
                https,
                quic: None,
                metrics: None,
                activated: false,
            })
        }
    }
}

/// A socket error, with the configuration key that changes what is needed.
fn with_config_hint(e: SocketError) -> anyhow::Error {
    match e {
        SocketError::Missing { role: Role::Http } => {
            anyhow::anyhow!("{e}, or set `redirect = false` under [http] to run HTTPS only")
        }
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_http_socket_names_the_key_that_makes_it_optional() {
        let err = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let e = sockets::map_names(&names, &[Role::Https, Role::Http]).unwrap_err();
            format!("{:#}", with_config_hint(e))
        };
        assert_eq!(
            err(&["https"]),
            "no socket named `http` was passed; add a socket unit with FileDescriptorName=http to the service's \
             Sockets=, or set `redirect = false` under [http] to run HTTPS only"
        );
        assert_eq!(
            err(&["http"]),
            "no socket named `https` was passed; add a socket unit with FileDescriptorName=https to the service's Sockets="
        );
    }
}
