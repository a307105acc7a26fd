//! The plain-HTTP server: every request is sent to HTTPS, except ACME
//! http-01 challenges, which are answered from a webroot so that
//! `certbot --webroot` renewals work while lunchd owns port 80.
//!
//! The redirect target's host is never copied from the request unchecked:
//! it must be a name the configuration (or the serving certificate) allows,
//! else the configured canonical host is used, else the answer is 400.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;

use crate::tls::{CertificateStore, name_matches};

/// The prefix certbot's `--webroot` mode writes challenge files under.
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// Challenge files larger than this are not served: real ones are ~90 bytes.
const MAX_CHALLENGE_BYTES: u64 = 64 * 1024;

/// Which hosts a redirect may name.
#[derive(Debug, Clone)]
pub enum AllowedHosts {
    /// The DNS names and IP addresses of the certificate being served, as it
    /// is at the time of each request (so a reload takes effect).
    Certificate(Arc<CertificateStore>),
    /// An explicit list (lowercase; `*.example.com` wildcards allowed).
    List(Vec<String>),
}

/// Where redirects go.
#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    /// Hosts the request may name.
    pub allowed: AllowedHosts,
    /// Used when the request names no allowed host; without it such
    /// requests get 400.
    pub canonical: Option<String>,
    /// The port clients reach HTTPS on; 443 is left out of the URL.
    pub https_port: u16,
    /// Directory certbot writes challenges to (`certbot --webroot -w DIR`).
    pub acme_webroot: Option<PathBuf>,
}

/// Why no redirect target could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// The request names no allowed host, and no canonical host is set.
    #[error("unknown host; this server redirects only for its own names")]
    UnknownHost,
    /// The request target is not a path (`*`, or empty).
    #[error("the request target is not a path")]
    BadTarget,
}

/// A [`Redirector`]'s responses: every body is in memory, whole.
type Response = http::Response<Full<Bytes>>;

/// A redirect policy that can be replaced while serving (on reload).
pub type SharedPolicy = Arc<ArcSwap<RedirectPolicy>>;

/// The plain-HTTP server's request handler, a hyper service.
///
/// Every request on port 80 lands here, so it is a plain service rather
/// than an axum `Router`: a redirect is answered without boxing a future,
/// cloning a route or allocating request extensions.
#[derive(Debug, Clone)]
pub struct Redirector {
    policy: SharedPolicy,
}

impl Redirector {
    /// Answers with `policy` as it is at each request.
    pub fn new(policy: SharedPolicy) -> Redirector {
        Redirector { policy }
    }
}

impl<B> hyper::service::Service<Request<B>> for Redirector {
    type Response = Response;
    type Error = Infallible;
    type Future = RedirectFuture;

    fn call(&self, request: Request<B>) -> RedirectFuture {
        let policy = self.policy.load();
        let path = request.uri().path();
        if let (Some(webroot), Some(token)) = (&policy.acme_webroot, path.strip_prefix(ACME_PREFIX)) {
            if matches!(*request.method(), Method::GET | Method::HEAD) {
                let (webroot, token) = (webroot.clone(), token.to_owned());
                return RedirectFuture(Answer::Challenge(Box::pin(async move {
                    serve_challenge(&webroot, &token).await
                })));
            }
        }
        RedirectFuture(Answer::Ready(Some(redirect(&policy, &request))))
    }
}

/// The answer of a [`Redirector`]: ready at once, except for an ACME
/// challenge, which reads a file.
pub struct RedirectFuture(Answer);

enum Answer {
    Ready(Option<Response>),
    Challenge(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl Future for RedirectFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Answer::Ready(response) => Poll::Ready(Ok(response.take().expect("polled after completion"))),
            Answer::Challenge(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

impl std::fmt::Debug for RedirectFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedirectFuture")
    }
}

fn redirect<B>(policy: &RedirectPolicy, request: &Request<B>) -> Response {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
    let path_and_query = request.uri().path_and_query().map_or("", |pq| pq.as_str());
    match redirect_target(policy, host, path_and_query) {
        Ok(location) => {
            // 301 for GET and HEAD, which every client and crawler
            // understands and caches; 308 otherwise so the method and body
            // are kept.
            let status = match *request.method() {
                Method::GET | Method::HEAD => StatusCode::MOVED_PERMANENTLY,
                _ => StatusCode::PERMANENT_REDIRECT,
            };
            // Takes the string's buffer without copying it.
            let location = HeaderValue::try_from(location)
                .unwrap_or_else(|_| unreachable!("redirect targets are built from checked ASCII"));
            let mut response = Response::new(Full::default());
            *response.status_mut() = status;
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// The `https://` URL a request for `host` and `path_and_query` is sent to.
///
/// `host` is the request's authority or Host header, possibly with a port;
/// it is used only if allowed, and then only in its normalised form.
pub fn redirect_target(
    policy: &RedirectPolicy,
    host: Option<&str>,
    path_and_query: &str,
) -> Result<String, RedirectError> {
    if !path_and_query.starts_with('/') || !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RedirectError::BadTarget);
    }
    let host = host
        .and_then(normalise_host)
        .filter(|h| policy.allows(h))
        .or_else(|| policy.canonical.as_deref().map(Cow::Borrowed))
        .ok_or(RedirectError::UnknownHost)?;
    // Normalised IPv6 addresses are the only hosts with a colon.
    let ipv6 = host.contains(':');
    let port = match policy.https_port {
        443 => 0,
        port => 1 + port.checked_ilog10().unwrap_or(0) as usize + 1,
    };
    // Exactly the length, so that the header value takes the buffer as it
    // is, without allocating again.
    let length = "https://".len() + host.len() + 2 * usize::from(ipv6) + port + path_and_query.len();
    let mut url = String::with_capacity(length);
    url.push_str("https://");
    if ipv6 {
        url.push('[');
        url.push_str(&host);
        url.push(']');
    } else {
        url.push_str(&host);
    }
    if port > 0 {
        let _ = write!(url, ":{}", policy.https_port);
    }
    url.push_str(path_and_query);
    debug_assert_eq!(url.len(), length);
    Ok(url)
}

impl RedirectPolicy {
    fn allows(&self, host: &str) -> bool {
        match &self.allowed {
            AllowedHosts::Certificate(store) => store.covers(host),
            AllowedHosts::List(names) => names.iter().any(|name| name_matches(name, host)),
        }
    }
}

/// The host part of a Host header value, lowercase, without port or
/// trailing dot, with IPv6 brackets removed; `None` unless it is a
/// syntactically valid DNS name or IP address. Borrowed from `value` when
/// that is already in normal form, as it is from most clients.
pub fn normalise_host(value: &str) -> Option<Cow<'_, str>> {
    if value.len() > 260 {
        return None;
    }
    let host = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return inside.parse::<Ipv6Addr>().ok().map(|ip| Cow::Owned(ip.to_string()));
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if valid_port(port) => host,
            Some(_) => return None,
            None => value,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    match host.parse::<IpAddr>() {
        // Rust parses IPv4 only in its canonical dotted-decimal form (no
        // leading zeros), so it is already normal.
        Ok(IpAddr::V4(_)) => return Some(host),
        Ok(ip @ IpAddr::V6(_)) => return Some(Cow::Owned(ip.to_string())),
        Err(_) => {}
    }
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    labels_ok.then_some(host)
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

/// Whether `token` can be an ACME http-01 token: base64url characters only
/// (RFC 8555 §8.3), so it can never name another directory.
pub fn valid_acme_token(token: &str) -> bool {
    (1..=255).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `text/plain` answer.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn serve_challenge(webroot: &Path, token: &str) -> Response {
    let not_found = || text(StatusCode::NOT_FOUND, "no such challenge\n");
    if !valid_acme_token(token) {
        return not_found();
    }
    let path = webroot.join(".well-known/acme-challenge").join(token);
    match read_challenge(webroot, &path).await {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), "ACME challenge not served: {e}");
            not_found()
        }
    }
}

/// Reads a challenge file that is a regular file (not a symlink) whose real
/// path lies inside the webroot.
async fn read_challenge(webroot: &Path, path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind};
    let meta = tokio::fs::symlink_metadata(path).await?;
    if !meta.file_type().is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_CHALLENGE_BYTES {
        return Err(Error::new(ErrorKind::InvalidInput, "too large for a challenge"));
    }
    let real = tokio::fs::canonicalize(path).await?;
    let root = tokio::fs::canonicalize(webroot).await?;
    if !real.starts_with(&root) {
        return Err(Error::new(ErrorKind::PermissionDenied, "outside the webroot"));
    }
    tokio::fs::read(&real).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(names: &[&str], canonical: Option<&str>, port: u16) -> RedirectPolicy {
        RedirectPolicy {
            allowed: AllowedHosts::List(names.iter().map(|n| (*n).to_owned()).collect()),
            canonical: canonical.map(str::to_owned),
            https_port: port,
            acme_webroot: None,
        }
    }

    fn check(policy: &RedirectPolicy, host: Option<&str>, target: &str, expected: Result<&str, RedirectError>) {
        let got = redirect_target(policy, host, target);
        assert_eq!(got.as_deref().map_err(Clone::clone), expected, "host {host:?}");
    }

    #[test]
    fn allowed_hosts_are_kept() {
        let p = policy(&["lunch.example.com", "*.example.org", "127.0.0.1", "::1"], None, 443);
        check(
            &p,
            Some("lunch.example.com"),
            "/x?y=1",
            Ok("https://lunch.example.com/x?y=1"),
        );
        check(&p, Some("LUNCH.example.com.:80"), "/", Ok("https://lunch.example.com/"));
        check(&p, Some("a.example.org"), "/", Ok("https://a.example.org/"));
        check(&p, Some("127.0.0.1:8080"), "/", Ok("https://127.0.0.1/"));
        check(&p, Some("[::1]:8080"), "/", Ok("https://[::1]/"));
        let p = policy(&["localhost"], None, 8443);
        check(
            &p,
            Some("localhost:8080"),
            "/a/b?c=d&e",
            Ok("https://localhost:8443/a/b?c=d&e"),
        );
    }

    #[test]
    fn unknown_and_hostile_hosts_fall_back() {
        let strict = policy(&["lunch.example.com"], None, 443);
        let canonical = policy(&["lunch.example.com"], Some("lunch.example.com"), 443);
        for host in [
            None,
            Some(""),
            Some("evil.com"),
            Some("lunch.example.com.evil.com"),
            Some("lunch.example.com@evil.com"),
            Some("user:pass@lunch.example.com"),
            Some("lunch.example.com\r\nSet-Cookie: x=1"),
            Some("lunch.example.com/evil"),
            Some("lunch.example.com:99999"),
            Some("lunch.example.com:80:80"),
            Some("lünch.example.com"),
            Some("[::1"),
            Some("[::1]x"),
        ] {
            check(&strict, host, "/", Err(RedirectError::UnknownHost));
            check(&canonical, host, "/p", Ok("https://lunch.example.com/p"));
        }
        let long = "a".repeat(10_000);
        check(&canonical, Some(&long), "/", Ok("https://lunch.example.com/"));
    }

    #[test]
    fn hosts_are_normalised_without_copying_normal_ones() {
        assert!(matches!(
            normalise_host("127.0.0.1:8080"),
            Some(Cow::Borrowed("127.0.0.1"))
        ));
        assert!(matches!(
            normalise_host("lunch.example.com"),
            Some(Cow::Borrowed("lunch.example.com"))
        ));
        assert_eq!(
            normalise_host("Lunch.Example.COM.").as_deref(),
            Some("lunch.example.com")
        );
        assert_eq!(normalise_host("[0:0::1]:80").as_deref(), Some("::1"));
        // Not an IPv4 address (leading zeros), so only ever a DNS-like name
        // that no certificate or list will allow.
        assert_eq!(normalise_host("127.000.0.1").as_deref(), Some("127.000.0.1"));
        assert!("127.000.0.1".parse::<IpAddr>().is_err());
    }

    #[test]
    fn targets_must_be_paths() {
        let p = policy(&["h"], Some("h"), 443);
        check(&p, Some("h"), "*", Err(RedirectError::BadTarget));
        check(&p, Some("h"), "", Err(RedirectError::BadTarget));
        check(&p, Some("h"), "http://evil.com/", Err(RedirectError::BadTarget));
        check(&p, Some("h"), "/a b", Err(RedirectError::BadTarget));
        check(&p, Some("h"), "//evil.com/", Ok("https://h//evil.com/"));
    }

    /// What the redirector answers to a GET of `target` with Host `host`:
    /// status, headers and body.
    fn answer(policy: RedirectPolicy, host: &str, target: &str) -> (StatusCode, Vec<(String, String)>, String) {
        use http_body_util::BodyExt;
        use hyper::service::Service;
        let redirector = Redirector::new(Arc::new(ArcSwap::from_pointee(policy)));
        let request = Request::get(target).header(header::HOST, host).body(()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = redirector.call(request).await.unwrap();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, headers, String::from_utf8(body.to_vec()).unwrap())
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn answers_carry_exactly_their_headers() {
        assert_eq!(
            answer(policy(&["h"], None, 443), "h", "/x"),
            (
                StatusCode::MOVED_PERMANENTLY,
                headers(&[("location", "https://h/x")]),
                String::new()
            )
        );
        assert_eq!(
            answer(policy(&["h"], None, 443), "evil", "/"),
            (
                StatusCode::BAD_REQUEST,
                headers(&[("content-type", "text/plain; charset=utf-8")]),
                "unknown host; this server redirects only for its own names\n".to_owned()
            )
        );
        let webroot = tempfile::tempdir().unwrap();
        let challenges = webroot.path().join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenges).unwrap();
        std::fs::write(challenges.join("token"), "token.thumbprint").unwrap();
        let with_webroot = || RedirectPolicy {
            acme_webroot: Some(webroot.path().to_owned()),
            ..policy(&["h"], None, 443)
        };
        assert_eq!(
            answer(with_webroot(), "h", "/.well-known/acme-challenge/token"),
            (
                StatusCode::OK,
                headers(&[
                    ("content-type", "application/octet-stream"),
                    ("cache-control", "no-store")
                ]),
                "token.thumbprint".to_owned()
            )
        );
        assert_eq!(
            answer(with_webroot(), "h", "/.well-known/acme-challenge/other"),
            (
                StatusCode::NOT_FOUND,
                headers(&[("content-type", "text/plain; charset=utf-8")]),
                "no such challenge\n".to_owned()
            )
        );
    }

    #[test]
    fn acme_tokens() {
        assert!(valid_acme_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "..", "a/b", "%2e%2e", "a.b", "a\0b", &"a".repeat(256)] {
            assert!(!valid_acme_token(bad), "{bad:?}");
        }
    }
}
