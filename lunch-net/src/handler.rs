//! What answers a server's requests: any hyper service whose responses
//! have a body of [`Bytes`] chunks. lunch-net does not choose the body
//! type: an axum router answers with axum's body, the
//! [`Redirector`](crate::redirect::Redirector) with a `Full<Bytes>`.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;

use hyper::body::{Body, Bytes, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;

/// The body of a handler's responses: chunks of [`Bytes`], sent from any
/// thread.
pub trait ResponseBody: Body<Data = Bytes, Error: Into<Box<dyn Error + Send + Sync>>> + Send + 'static {}

impl<B> ResponseBody for B where B: Body<Data = Bytes, Error: Into<Box<dyn Error + Send + Sync>>> + Send + 'static {}

/// What answers a server's requests: a hyper service, cloned for each
/// connection, such as [`Redirector`](crate::redirect::Redirector) or an
/// axum router through [`tower_handler`]. Every such service is a
/// `Handler`; there is nothing to implement.
///
/// `R` is the body of the requests: hyper's [`Incoming`] over TCP,
/// `quic::QuicBody` over HTTP/3 (an axum router takes either).
pub trait Handler<R = Incoming>: Clone + Send + Sync + 'static {
    /// The body of its responses.
    type Body: ResponseBody;
    /// The answer to one request.
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;

    /// Answers `request`.
    fn handle(&self, request: Request<R>) -> Self::Future;
}

impl<S, B, R> Handler<R> for S
where
    S: Service<Request<R>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static,
    B: ResponseBody,
{
    type Body = B;
    type Future = S::Future;

    fn handle(&self, request: Request<R>) -> S::Future {
        self.call(request)
    }
}

/// What a request's connection is, as an extension of every request of a
/// server made [`with_connection_info`](crate::Server::with_connection_info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The TLS server name (SNI) the client sent, if any.
    pub server_name: Option<std::sync::Arc<str>>,
}

/// Gives `request` the extension `info`, when there is one.
pub(crate) fn tag<B>(request: &mut Request<B>, info: Option<&ConnectionInfo>) {
    if let Some(info) = info {
        request.extensions_mut().insert(info.clone());
    }
}

/// A tower service, such as an axum `Router`, as a [`Handler`].
pub fn tower_handler<T>(service: T) -> TowerToHyperService<T> {
    TowerToHyperService::new(service)
}
