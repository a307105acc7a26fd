//! lunchd's network layer: turns the sockets systemd hands over into two
//! servers.
//!
//! - [`sockets`] interprets `LISTEN_FDS`/`LISTEN_FDNAMES` and adopts the
//!   sockets named `http` and `https` (or binds fallback addresses);
//! - [`redirect`] is the plain-HTTP server: permanent redirects to HTTPS for
//!   allowed host names only, and ACME http-01 challenges from a webroot;
//! - [`tls`] loads and checks the certificate and swaps it atomically on
//!   reload;
//! - [`Server`] runs a [`Handler`] (the redirector, or an axum router
//!   through [`tower_handler`]) on a listener with bounded time, size and
//!   connection count, and drains gracefully on shutdown;
//! - [`Workers`] are the threads connections are served on, one
//!   single-threaded runtime per core.
//!
//! This crate never chooses a port, a path or a name: it is handed
//! listeners, certificate files and a handler.

mod connection;
mod deadlines;
mod handler;
mod handshake;
mod limits;
mod probe;
pub mod redirect;
mod server;
pub mod sockets;
#[cfg(test)]
mod testing;
pub mod tls;
mod workers;

pub use handler::{Handler, tower_handler};
pub use limits::{Limits, Stats};
pub use probe::Probe;
pub use server::Server;
pub use workers::Workers;
