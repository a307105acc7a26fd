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
//!   through [`router_handler`]) on a listener with bounded time, size and
//!   connection count, and drains gracefully on shutdown;
//! - [`Workers`] are the threads connections are served on, one
//!   single-threaded runtime per core.
//!
//! This crate never chooses a port, a path or a name: it is handed
//! listeners, certificate files and a handler.

mod deadlines;
pub mod redirect;
mod server;
pub mod sockets;
pub mod tls;
mod workers;

pub use server::{Handler, Limits, Probe, Server, Stats};
pub use workers::Workers;

use axum::Router;
use axum::http::{HeaderValue, header};
use hyper_util::service::TowerToHyperService;

/// An axum [`Router`] as a [`Handler`].
pub type RouterHandler = TowerToHyperService<Router>;

/// Serves `router` (the HTTPS application) with a [`Server`].
pub fn router_handler(router: Router) -> RouterHandler {
    TowerToHyperService::new(router)
}

/// Adds `Strict-Transport-Security: max-age=<max_age>` to every response of
/// `router`, unless the handler already set one.
pub fn with_hsts(router: Router, max_age: u64) -> Router {
    let value = HeaderValue::from_str(&format!("max-age={max_age}"))
        .unwrap_or_else(|_| unreachable!("digits are a valid header value"));
    // A plain function in a `MapResponseLayer`: no boxed future and no
    // service clone per request, as `axum::middleware::map_response` has.
    router.layer(tower::util::MapResponseLayer::new(
        move |mut response: axum::response::Response| {
            response
                .headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert_with(|| value.clone());
            response
        },
    ))
}
