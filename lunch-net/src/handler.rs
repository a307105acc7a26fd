//! What answers a server's requests.

use std::convert::Infallible;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;

/// What answers a server's requests: a hyper service, cloned for each
/// connection, such as [`Redirector`](crate::redirect::Redirector) or an
/// axum router through [`tower_handler`].
pub trait Handler:
    Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Handler for S where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A tower service, such as an axum `Router`, as a [`Handler`].
pub fn tower_handler<T>(service: T) -> TowerToHyperService<T> {
    TowerToHyperService::new(service)
}
