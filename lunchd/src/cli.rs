//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Lunch as a Service: picks what to have for lunch, over HTTPS.
///
/// Under systemd, lunchd takes its listening sockets named `http` and
/// `https` from socket activation and its key and certificate from
/// $CREDENTIALS_DIRECTORY. Started by hand with no configuration, it serves
/// on 127.0.0.1:8080 (redirect) and 127.0.0.1:8443 (HTTPS) with a generated
/// development certificate.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Configuration file [default: /etc/lunchd/lunchd.toml if it exists,
    /// else built-in defaults].
    #[arg(long, short, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,

    /// Private key file (PEM); overrides `https.key` in the configuration.
    #[arg(long, value_name = "PATH", requires = "certificate")]
    pub key: Option<PathBuf>,

    /// Certificate chain file (PEM, leaf first); overrides
    /// `https.certificate`.
    #[arg(long, value_name = "PATH", requires = "key")]
    pub certificate: Option<PathBuf>,

    /// On reload, read the key and certificate from files of the same
    /// names in DIR when both are there, else from --key and
    /// --certificate again. For systemd before 260, whose LoadCredential=
    /// copies files only at start: the unit's ExecReload= copies renewed
    /// files into DIR, its RuntimeDirectory.
    #[arg(long, value_name = "DIR", requires = "key")]
    pub reload_credentials: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration file and report every problem in it.
    CheckConfig {
        /// The file [default: --config, or /etc/lunchd/lunchd.toml].
        path: Option<PathBuf>,
    },
}
