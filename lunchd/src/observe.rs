//! What lunchd sees of each request it answers: a handler wrapper that
//! counts the answer in the metrics and writes the access log line, each
//! only when it is on. With both off it costs a branch per request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use hyper::service::Service;
use hyper::{Request, Response, Version};

use lunch_net::ConnectionInfo;

use crate::access::{self, AccessLog};
use crate::metrics::ServerMetrics;

/// A handler whose answers are counted in `metrics` and logged in
/// `access`, where those are on.
#[derive(Debug, Clone)]
pub struct Observed<H> {
    inner: H,
    metrics: Option<&'static ServerMetrics>,
    access: Option<&'static AccessLog>,
}

impl<H> Observed<H> {
    /// `inner`, observed.
    pub fn new(inner: H, metrics: Option<&'static ServerMetrics>, access: Option<&'static AccessLog>) -> Observed<H> {
        Observed { inner, metrics, access }
    }
}

/// `server`, named `name`, with its connection counters in `metrics` and,
/// for the access log, each request's client and TLS server name.
pub fn server<S: lunch_net::Handler>(
    server: lunch_net::Server<S>,
    name: &'static str,
    metrics: Option<&crate::metrics::Metrics>,
    access: bool,
) -> lunch_net::Server<S> {
    if let Some(metrics) = metrics {
        metrics.connections(name, server.stats());
    }
    if access { server.with_connection_info() } else { server }
}

/// What the access log needs of the request, taken before the handler
/// consumes it.
struct Seen {
    log: &'static AccessLog,
    time: SystemTime,
    method: hyper::Method,
    uri: hyper::Uri,
    connection: Option<ConnectionInfo>,
}

struct Measure {
    start: Instant,
    version: Version,
    metrics: Option<&'static ServerMetrics>,
    access: Option<Seen>,
}

// Generic over the request body `R` (hyper's `Incoming` over TCP,
// `QuicBody` over HTTP/3): each is its own monomorphic copy, so neither
// pays for the other.
impl<H, B, R> Service<Request<R>> for Observed<H>
where
    H: Service<Request<R>, Response = Response<B>, Error = Infallible>,
    B: hyper::body::Body,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ObservedFuture<H::Future>;

    fn call(&self, request: Request<R>) -> Self::Future {
        let measure = if self.metrics.is_none() && self.access.is_none() {
            None
        } else {
            let access = self.access.map(|log| {
                Seen {
                    log,
                    time: SystemTime::now(),
                    method: request.method().clone(),
                    // Shares the request's bytes: no copy.
                    uri: request.uri().clone(),
                    connection: request.extensions().get::<ConnectionInfo>().cloned(),
                }
            });
            Some(Measure {
                start: Instant::now(),
                version: request.version(),
                metrics: self.metrics,
                access,
            })
        };
        ObservedFuture {
            inner: self.inner.call(request),
            measure,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an [`Observed`] handler, observed when it is ready.
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        measure: Option<Measure>,
    }
}

impl<F, B> Future for ObservedFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: hyper::body::Body,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(measure), Ok(response)) = (this.measure.take(), &result) {
            let elapsed = measure.start.elapsed();
            if let Some(metrics) = &measure.metrics {
                metrics.record(measure.version, response.status(), elapsed);
            }
            if let Some(seen) = &measure.access {
                seen.log.log(&access::Record {
                    time: seen.time,
                    client: seen.connection.as_ref().map(|c| c.peer),
                    server_name: seen.connection.as_ref().and_then(|c| c.server_name.as_deref()),
                    protocol: match measure.version {
                        Version::HTTP_2 => "h2",
                        Version::HTTP_3 => "h3",
                        _ => "h1",
                    },
                    method: seen.method.as_str(),
                    target: match (seen.log.query, seen.uri.path_and_query()) {
                        (true, Some(pq)) => pq.as_str(),
                        _ => seen.uri.path(),
                    },
                    status: response.status().as_u16(),
                    bytes: response.body().size_hint().exact(),
                    duration: elapsed,
                });
            }
        }
        Poll::Ready(result)
    }
}
