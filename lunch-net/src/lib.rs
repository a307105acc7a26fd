//! lunchd's network layer: turns the sockets systemd hands over into
//! servers: plain HTTP, HTTPS over TCP and HTTP/3 over QUIC.
//!
//! - [`sockets`] interprets `LISTEN_FDS`/`LISTEN_FDNAMES`, gives each
//!   socket name its [`Role`](sockets::Role) and adopts the sockets (or
//!   binds fallback addresses);
//! - [`redirect`] is the plain-HTTP server's handler: permanent redirects
//!   to HTTPS for allowed host names only, and ACME http-01 challenges
//!   from a webroot;
//! - [`tls`] loads and checks the certificate and swaps it atomically on
//!   reload;
//! - [`Server`] runs a [`Handler`] (the redirector, or an axum router
//!   through [`tower_handler`]) on a listener within [`Limits`], and
//!   drains gracefully when its shutdown future completes;
//! - [`quic`] serves HTTP/3 on a UDP socket with the same handler and
//!   certificate store;
//! - [`Workers`] are the threads connections are served on, one
//!   single-threaded runtime per core; a [`Probe`] proves a server or a
//!   worker still makes progress.
//!
//! This crate never chooses a port, a path or a name: it is handed
//! listeners, certificate files and a handler.

mod admission;
mod clients;
mod connection;
mod deadlines;
mod handler;
mod handshake;
mod limits;
mod probe;
pub mod proxy;
pub mod quic;
pub mod redirect;
mod server;
pub mod sockets;
#[cfg(test)]
mod testing;
pub mod tls;
mod workers;

pub use handler::{ConnectionInfo, Handler, tower_handler};
pub use limits::{Limits, Stats};
pub use probe::Probe;
pub use server::Server;
pub use workers::Workers;
