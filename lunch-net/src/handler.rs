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
pub trait Handler: Clone + Send + Sync + 'static {
    /// The body of its responses.
    type Body: ResponseBody;
    /// The answer to one request.
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;

    /// Answers `request`.
    fn handle(&self, request: Request<Incoming>) -> Self::Future;
}

impl<S, B> Handler for S
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static,
    B: ResponseBody,
{
    type Body = B;
    type Future = S::Future;

    fn handle(&self, request: Request<Incoming>) -> S::Future {
        self.call(request)
    }
}

/// A [`Handler`] as the hyper service it is, for hyper's connection
/// builders; no cost beyond the call it forwards.
#[derive(Debug, Clone)]
pub(crate) struct HyperService<H>(pub(crate) H);

impl<H: Handler> Service<Request<Incoming>> for HyperService<H> {
    type Response = Response<H::Body>;
    type Error = Infallible;
    type Future = H::Future;

    fn call(&self, request: Request<Incoming>) -> H::Future {
        self.0.handle(request)
    }
}

/// A tower service, such as an axum `Router`, as a [`Handler`].
pub fn tower_handler<T>(service: T) -> TowerToHyperService<T> {
    TowerToHyperService::new(service)
}
