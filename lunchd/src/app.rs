//! The lunch application served over HTTPS: the page, the JSON API and the
//! health check.
//!
//! The JSON API is documented in `docs/api.md`; a test keeps the examples
//! there honest about field names.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lunch_core::{Date, Dish, Picker, SplitMix64};
use serde::Serialize;
use tower::util::MapResponse;

mod page;

/// What a reload replaces: the picker and the team's day boundary.
#[derive(Debug)]
pub struct Lunch {
    /// The picker over the configured menu.
    pub picker: Picker,
    /// Offset of the team's time zone from UTC, in minutes.
    pub utc_offset_minutes: i32,
}

/// Shared, reloadable application state.
pub type SharedLunch = Arc<ArcSwap<Lunch>>;

/// What `/healthz` says: `ok`, or 503 once the process, behind a load
/// balancer, starts to stop, so that the balancer's health check takes the
/// node out of rotation while it still serves (docs/scale-out.md).
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    /// From now on `/healthz` answers 503.
    pub fn stopping(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_stopping(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The Content-Security-Policy of every response: nothing may load but the
/// page's own inline style, pinned by the SHA-256 of `page::STYLE` (a test
/// recomputes it), and its `data:` icon; no script runs, no form posts, no
/// framing.
const CSP: &str = concat!(
    "default-src 'none'; style-src 'sha256-",
    "ZAO7KeVX+6Uf/s6pZk4jRDUlVO62wDyv4sAGWcRtBhA=",
    "'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
);

/// The HTTPS application: the routes, with the security headers (and
/// `Strict-Transport-Security: max-age=<hsts_max_age>` unless it is 0) on
/// every response; `/healthz` as `health` says.
///
/// The headers are added by one function around the whole router, not by
/// `Router::layer`, which wraps every route on its own and so costs a boxed
/// service clone and a boxed future per request for each layer.
pub fn app(
    lunch: SharedLunch,
    hsts_max_age: u64,
    health: Health,
) -> MapResponse<Router, impl FnOnce(Response) -> Response + Clone> {
    let hsts = (hsts_max_age > 0).then(|| {
        HeaderValue::from_str(&format!("max-age={hsts_max_age}"))
            .unwrap_or_else(|_| unreachable!("digits are a valid header value"))
    });
    MapResponse::new(router(lunch, health), move |mut response: Response| {
        security_headers(response.headers_mut(), hsts.as_ref());
        response
    })
}

fn router(lunch: SharedLunch, health: Health) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/today", get(today))
        .route("/api/lunch", get(api_lunch))
        .route("/api/today", get(api_today))
        .route("/healthz", get(move || healthz(health.is_stopping())))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(lunch)
}

/// The `?tag=` filter. `STRICT` (the JSON API) also refuses parameters it
/// does not know, so a typo is an error rather than an unfiltered answer;
/// the page ignores them (links get tracking parameters appended).
struct TagFilter<const STRICT: bool>(Option<String>);

/// A query string that cannot be honoured, and why.
#[derive(Debug)]
struct BadQuery(String);

impl IntoResponse for BadQuery {
    fn into_response(self) -> Response {
        json_error(StatusCode::BAD_REQUEST, &self.0)
    }
}

impl<S: Send + Sync, const STRICT: bool> FromRequestParts<S> for TagFilter<STRICT> {
    type Rejection = BadQuery;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, BadQuery> {
        parse_tag(parts.uri.query(), STRICT).map(TagFilter)
    }
}

/// The tag in `query`; an empty `tag=` means no filter. Allocates only for
/// a tag that is present.
fn parse_tag(query: Option<&str>, strict: bool) -> Result<Option<String>, BadQuery> {
    let Some(query) = query else {
        return Ok(None);
    };
    let mut tag = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "tag" if tag.is_some() => {
                return Err(BadQuery(
                    "the query parameter `tag` is given more than once; give at most one tag".to_owned(),
                ));
            }
            "tag" => tag = Some(value),
            _ if strict => {
                let key: String = key.chars().take(64).collect();
                return Err(BadQuery(format!(
                    "unknown query parameter `{key}`; the only parameter is `tag`"
                )));
            }
            _ => {}
        }
    }
    Ok(tag.filter(|t| !t.is_empty()).map(|t| t.into_owned()))
}

/// The request headers that shape a daily answer, without copying the
/// whole header map.
struct Conditional {
    /// `Accept` prefers JSON over HTML.
    wants_json: bool,
    if_none_match: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Conditional {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let wants_json = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("application/json") && !accept.contains("text/html"));
        Ok(Conditional {
            wants_json,
            if_none_match: parts.headers.get(header::IF_NONE_MATCH).cloned(),
        })
    }
}

thread_local! {
    static RNG: RefCell<SplitMix64> = RefCell::new(SplitMix64::new(
        std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()),
    ));
}

fn pick<'a>(picker: &'a Picker, tag: Option<&str>) -> Result<&'a Dish, lunch_core::PickError> {
    RNG.with(|rng| picker.pick(tag, &mut *rng.borrow_mut()))
}

/// Today in the team's time zone, and the seconds until its midnight.
fn local_today(offset_minutes: i32) -> (Date, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    day_of(now, offset_minutes)
}

/// The team's date at `unix_seconds`, and the seconds left until its
/// midnight (1 to 86 400).
fn day_of(unix_seconds: i64, offset_minutes: i32) -> (Date, u64) {
    let local = unix_seconds + i64::from(offset_minutes) * 60;
    let date = Date::from_days_since_epoch(local.div_euclid(86_400));
    let left = 86_400 - local.rem_euclid(86_400);
    (date, left as u64)
}

const NO_STORE: (header::HeaderName, HeaderValue) = (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));

/// An HTML document.
struct Html(String);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// The page for a problem: the status, a headline and the reason, with
/// the filters and the menu so the visitor can go on.
fn problem_page(lunch: &Lunch, path: &'static str, status: StatusCode, title: &str, message: &str) -> Response {
    let (date, _) = local_today(lunch.utc_offset_minutes);
    let html = page::render(&page::Page {
        view: page::View::Problem { title, message },
        path,
        tag: None,
        daily: None,
        date,
        menu: lunch.picker.menu(),
    });
    (status, [NO_STORE], Html(html)).into_response()
}

/// `GET /`: a random pick, the team's pick, the filters and the menu.
async fn index(State(lunch): State<SharedLunch>, filter: Result<TagFilter<false>, BadQuery>) -> Response {
    let lunch = lunch.load();
    let tag = match filter {
        Ok(TagFilter(tag)) => tag,
        Err(BadQuery(message)) => {
            return problem_page(
                &lunch,
                "/",
                StatusCode::BAD_REQUEST,
                "That query makes no sense",
                &message,
            );
        }
    };
    let tag = tag.as_deref();
    match pick(&lunch.picker, tag) {
        Ok(dish) => {
            let (date, _) = local_today(lunch.utc_offset_minutes);
            let html = page::render(&page::Page {
                view: page::View::Random(dish),
                path: "/",
                tag,
                daily: lunch.picker.daily(date, None).ok(),
                date,
                menu: lunch.picker.menu(),
            });
            ([NO_STORE], Html(html)).into_response()
        }
        Err(e) => problem_page(&lunch, "/", StatusCode::NOT_FOUND, "No dish matches", &e.to_string()),
    }
}

/// `GET /today`: the team's pick, as HTML or JSON by `Accept`.
async fn today(
    State(lunch): State<SharedLunch>,
    filter: Result<TagFilter<false>, BadQuery>,
    conditional: Conditional,
) -> Response {
    let json = conditional.wants_json;
    match filter {
        Ok(TagFilter(tag)) => daily_response(&lunch.load(), tag.as_deref(), &conditional, json),
        Err(BadQuery(message)) if json => json_error(StatusCode::BAD_REQUEST, &message),
        Err(BadQuery(message)) => problem_page(
            &lunch.load(),
            "/today",
            StatusCode::BAD_REQUEST,
            "That query makes no sense",
            &message,
        ),
    }
}

/// `GET /api/today`: the team's pick as JSON.
async fn api_today(
    State(lunch): State<SharedLunch>,
    filter: Result<TagFilter<true>, BadQuery>,
    conditional: Conditional,
) -> Response {
    match filter {
        Ok(TagFilter(tag)) => daily_response(&lunch.load(), tag.as_deref(), &conditional, true),
        Err(BadQuery(message)) => json_error(StatusCode::BAD_REQUEST, &message),
    }
}

/// The body of `/api/today` (and `/today` as JSON).
#[derive(Serialize)]
struct TodayBody<'a> {
    lunch: &'a str,
    tags: &'a [String],
    date: String,
    tag: Option<&'a str>,
}

/// The body of `/api/lunch`.
#[derive(Serialize)]
struct LunchBody<'a> {
    lunch: &'a str,
    tags: &'a [String],
    mode: &'static str,
    tag: Option<&'a str>,
}

/// The daily pick. It changes only at the team's midnight or when a reload
/// changes the menu, so it may be cached until midnight; the ETag is a hash
/// of the body itself and therefore changes with anything the body shows.
fn daily_response(lunch: &Lunch, tag: Option<&str>, conditional: &Conditional, json: bool) -> Response {
    let (date, seconds_left) = local_today(lunch.utc_offset_minutes);
    let dish = match lunch.picker.daily(date, tag) {
        Ok(dish) => dish,
        Err(e) if json => return json_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => {
            return problem_page(
                lunch,
                "/today",
                StatusCode::NOT_FOUND,
                "No dish matches",
                &e.to_string(),
            );
        }
    };
    let (content_type, body) = if json {
        let body = TodayBody {
            lunch: dish.name(),
            tags: dish.tags(),
            date: date.to_string(),
            tag,
        };
        let body = serde_json::to_string(&body).unwrap_or_else(|_| unreachable!("strings always serialize"));
        ("application/json", body)
    } else {
        let html = page::render(&page::Page {
            view: page::View::Daily(dish),
            path: "/today",
            tag,
            daily: Some(dish),
            date,
            menu: lunch.picker.menu(),
        });
        ("text/html; charset=utf-8", html)
    };
    let etag = format!("\"{:016x}\"", lunch_core::stable_hash(&[content_type, &body]));
    let cache = format!("public, max-age={seconds_left}");
    let headers = [
        (
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or_else(|_| unreachable!("hex is a valid header")),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_str(&cache).unwrap_or_else(|_| unreachable!("digits are a valid header")),
        ),
        (header::VARY, HeaderValue::from_static("Accept")),
    ];
    if conditional
        .if_none_match
        .as_ref()
        .is_some_and(|v| etag_matches(v, &etag))
    {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (
        headers,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// `If-None-Match` against our (strong) tag, with the weak comparison RFC
/// 9110 asks for.
fn etag_matches(if_none_match: &HeaderValue, etag: &str) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag)
}

/// `GET /api/lunch`: a random pick as JSON.
async fn api_lunch(State(lunch): State<SharedLunch>, filter: Result<TagFilter<true>, BadQuery>) -> Response {
    let tag = match filter {
        Ok(TagFilter(tag)) => tag,
        Err(BadQuery(message)) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let lunch = lunch.load();
    match pick(&lunch.picker, tag.as_deref()) {
        Ok(dish) => {
            let body = LunchBody {
                lunch: dish.name(),
                tags: dish.tags(),
                mode: mode_name(lunch.picker.mode()),
                tag: tag.as_deref(),
            };
            ([NO_STORE], axum::Json(body)).into_response()
        }
        Err(e) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

fn mode_name(mode: lunch_core::Mode) -> &'static str {
    match mode {
        lunch_core::Mode::Uniform => "uniform",
        lunch_core::Mode::Weighted => "weighted",
        lunch_core::Mode::NoRepeat => "no-repeat",
    }
}

/// The error shape of the JSON API: `{"error": "..."}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, [NO_STORE], axum::Json(ErrorBody { error: message })).into_response()
}

/// `GET /healthz`: the process answers, and is not stopping. Static, so
/// it allocates nothing.
async fn healthz(stopping: bool) -> impl IntoResponse {
    let (status, body) = match stopping {
        false => (StatusCode::OK, "ok\n"),
        true => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
    };
    (
        status,
        [
            NO_STORE,
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        ],
        body,
    )
}

fn is_api(uri: &Uri) -> bool {
    uri.path().starts_with("/api/")
}

async fn not_found(uri: Uri) -> Response {
    if is_api(&uri) {
        return json_error(
            StatusCode::NOT_FOUND,
            "no such endpoint; the API has /api/lunch and /api/today",
        );
    }
    (StatusCode::NOT_FOUND, [NO_STORE], Html(page::not_found().to_owned())).into_response()
}

/// A known path asked with a method other than GET or HEAD. axum adds the
/// `Allow` header.
async fn method_not_allowed(uri: Uri) -> Response {
    if is_api(&uri) {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET or HEAD");
    }
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            NO_STORE,
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        ],
        "method not allowed; use GET or HEAD\n",
    )
        .into_response()
}

/// Adds the security headers, and HSTS if given.
fn security_headers(headers: &mut HeaderMap, hsts: Option<&HeaderValue>) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if let Some(hsts) = hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use base64::Engine;
    use http_body_util::BodyExt;
    use lunch_core::{DishSpec, Menu, Mode};
    use std::convert::Infallible;
    use tower::ServiceExt;

    fn app_with(menu: Menu) -> impl tower::Service<Request<Body>, Response = Response, Error = Infallible> {
        let lunch = Lunch {
            picker: Picker::new(menu, Mode::Weighted, "test"),
            utc_offset_minutes: 0,
        };
        super::app(Arc::new(ArcSwap::from_pointee(lunch)), 31_536_000, Health::default())
    }

    fn app() -> impl tower::Service<Request<Body>, Response = Response, Error = Infallible> {
        app_with(Menu::builtin())
    }

    async fn send(
        app: impl tower::Service<Request<Body>, Response = Response, Error = Infallible>,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn hsts_is_sent_unless_its_max_age_is_0() {
        let lunch = || {
            Arc::new(ArcSwap::from_pointee(Lunch {
                picker: Picker::new(Menu::builtin(), Mode::Weighted, "test"),
                utc_offset_minutes: 0,
            }))
        };
        let (_, headers, _) = send(super::app(lunch(), 600, Health::default()), Method::GET, "/nope", &[]).await;
        assert_eq!(headers[header::STRICT_TRANSPORT_SECURITY], "max-age=600");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let (_, headers, _) = send(super::app(lunch(), 0, Health::default()), Method::GET, "/healthz", &[]).await;
        assert!(!headers.contains_key(header::STRICT_TRANSPORT_SECURITY), "{headers:?}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }

    async fn get(uri: &str, accept: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
        send(app(), Method::GET, uri, &headers).await
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    const MENU: [&str; 5] = ["Sandwich", "Soup", "Salad", "Burger", "Sushi"];

    #[tokio::test]
    async fn api_lunch_answers_a_menu_item() {
        let (status, headers, body) = get("/api/lunch", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let json = json(&body);
        assert!(MENU.contains(&json["lunch"].as_str().unwrap()), "{json}");
        assert_eq!(json["mode"], "weighted");
        assert!(json["tags"].is_array());
        assert!(json["tag"].is_null());
    }

    #[tokio::test]
    async fn tag_filter_and_unknown_tag() {
        for _ in 0..20 {
            let (_, _, body) = get("/api/lunch?tag=vegetarian", None).await;
            let json = json(&body);
            assert!(["Soup", "Salad"].contains(&json["lunch"].as_str().unwrap()));
            assert_eq!(json["tag"], "vegetarian");
        }
        let (status, headers, body) = get("/api/lunch?tag=dessert", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body, r#"{"error":"no dish on the menu is tagged `dessert`"}"#);
        let (status, _, body) = get("/api/today?tag=dessert", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, r#"{"error":"no dish on the menu is tagged `dessert`"}"#);
        // An empty tag is no filter.
        assert_eq!(get("/api/lunch?tag=", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_queries_are_json_400s_on_the_api() {
        for (uri, message) in [
            (
                "/api/lunch?tag=warm&tag=quick",
                "the query parameter `tag` is given more than once; give at most one tag",
            ),
            (
                "/api/today?tga=warm",
                "unknown query parameter `tga`; the only parameter is `tag`",
            ),
            (
                "/api/lunch?%3Cb%3E",
                "unknown query parameter `<b>`; the only parameter is `tag`",
            ),
        ] {
            let (status, headers, body) = get(uri, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{uri}");
            assert_eq!(json(&body)["error"], message, "{uri}");
        }
        // The page ignores unknown parameters but not a doubled tag.
        assert_eq!(get("/?utm_source=mail", None).await.0, StatusCode::OK);
        let (status, headers, body) = get("/?tag=a&tag=b", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert!(body.contains("given more than once"));
        let (status, _, body) = get("/today?tag=a&tag=b", Some("application/json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(json(&body)["error"].as_str().unwrap().contains("more than once"));
    }

    #[tokio::test]
    async fn today_by_accept_header_and_etag() {
        let (status, headers, body) = get("/today", Some("application/json")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::VARY], "Accept");
        let today = json(&body);
        let (date, _) = local_today(0);
        assert_eq!(today["date"], date.to_string());
        let (_, api_headers, again) = get("/api/today", None).await;
        assert_eq!(json(&again), today);
        assert_eq!(api_headers[header::ETAG], headers[header::ETAG]);

        let (_, html_headers, html) = get("/today", Some("text/html,application/xhtml+xml,*/*;q=0.8")).await;
        assert!(
            html_headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_ne!(
            html_headers[header::ETAG],
            headers[header::ETAG],
            "one tag per representation"
        );
        assert!(html.contains(&format!(
            "<span class=\"pick\">{}</span>",
            today["lunch"].as_str().unwrap()
        )));

        // Cacheable until the team's midnight, and revalidated with the tag.
        let cache = headers[header::CACHE_CONTROL].to_str().unwrap();
        let max_age: u64 = cache.strip_prefix("public, max-age=").unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&max_age), "{cache}");
        let etag = headers[header::ETAG].to_str().unwrap();
        for if_none_match in [
            etag.to_owned(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".into(),
        ] {
            let (status, headers, body) =
                send(app(), Method::GET, "/api/today", &[("if-none-match", &if_none_match)]).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{if_none_match}");
            assert_eq!(body, "");
            assert_eq!(headers[header::ETAG], etag);
            assert!(headers.contains_key(header::CACHE_CONTROL));
            assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        }
        let (status, _, _) = send(app(), Method::GET, "/api/today", &[("if-none-match", "\"stale\"")]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn etag_follows_the_menu() {
        let one = Menu::new(vec![DishSpec::new("Soup", &[])]).unwrap();
        let two = Menu::new(vec![DishSpec::new("Soup", &[]), DishSpec::new("Pho", &["x"])]).unwrap();
        let (_, a, _) = send(app_with(one), Method::GET, "/today", &[]).await;
        let (_, b, body) = send(app_with(two), Method::GET, "/today", &[]).await;
        // Whatever the pick, the page lists the menu, so the tag must differ.
        assert!(body.contains("Pho"));
        assert_ne!(a[header::ETAG], b[header::ETAG]);
    }

    #[test]
    fn day_boundaries_follow_the_team_offset() {
        // 2026-11-28T23:30:00Z
        let t = Date::from_ymd(2026, 11, 28).unwrap().days_since_epoch() * 86_400 + 23 * 3600 + 1800;
        assert_eq!(day_of(t, 0), (Date::from_ymd(2026, 11, 28).unwrap(), 1800));
        assert_eq!(day_of(t, 60), (Date::from_ymd(2026, 11, 29).unwrap(), 86_400 - 1800));
        assert_eq!(
            day_of(t, -300),
            (Date::from_ymd(2026, 11, 28).unwrap(), 1800 + 300 * 60)
        );
    }

    #[tokio::test]
    async fn page_shows_pick_team_pick_filters_and_menu() {
        let (status, headers, body) = get("/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            MENU.iter()
                .any(|d| body.contains(&format!("<span class=\"pick\">{d}</span>")))
        );
        assert!(body.contains("Today's team pick"));
        assert!(body.contains("<a href=\"/?tag=vegetarian\">vegetarian</a>"));
        assert!(body.contains("href=\"/\">Pick again</a>"));

        let (status, _, body) = get("/?tag=fish", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<span class=\"pick\">Sushi</span>"));
        assert!(body.contains("href=\"/?tag=fish\">Pick again</a>"));

        let (status, headers, body) = get("/?tag=%3Cscript%3E", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(!body.contains("<script>"));
        assert!(body.contains("tagged `&lt;script&gt;`"));
    }

    #[tokio::test]
    async fn hostile_dish_names_are_escaped() {
        let menu = Menu::new(vec![DishSpec::new(
            "Fish & \"Chips\" <img src=x onerror=alert(1)>",
            &["a-b"],
        )])
        .unwrap();
        for uri in ["/", "/today", "/?tag=a-b"] {
            let (status, _, body) = send(app_with(Menu::clone(&menu)), Method::GET, uri, &[]).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert!(!body.contains("<img"), "{uri}: {body}");
            assert!(body.contains("Fish &amp; &quot;Chips&quot; &lt;img src=x onerror=alert(1)&gt;"));
        }
        let (_, _, body) = send(app_with(menu), Method::GET, "/api/lunch", &[]).await;
        assert_eq!(json(&body)["lunch"], "Fish & \"Chips\" <img src=x onerror=alert(1)>");
    }

    #[tokio::test]
    async fn security_headers_on_every_response() {
        let cases: [(Method, &str, StatusCode); 9] = [
            (Method::GET, "/", StatusCode::OK),
            (Method::GET, "/today", StatusCode::OK),
            (Method::GET, "/api/lunch", StatusCode::OK),
            (Method::GET, "/healthz", StatusCode::OK),
            (Method::HEAD, "/api/today", StatusCode::OK),
            (Method::GET, "/nope", StatusCode::NOT_FOUND),
            (Method::GET, "/api/lunch?tag=dessert", StatusCode::NOT_FOUND),
            (Method::POST, "/", StatusCode::METHOD_NOT_ALLOWED),
            (Method::DELETE, "/api/lunch", StatusCode::METHOD_NOT_ALLOWED),
        ];
        for (method, uri, expected) in cases {
            let (status, headers, _) = send(app(), method.clone(), uri, &[]).await;
            assert_eq!(status, expected, "{method} {uri}");
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP, "{method} {uri}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{method} {uri}");
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer", "{method} {uri}");
            assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{method} {uri}");
        }
    }

    #[tokio::test]
    async fn methods_and_unknown_paths() {
        let (status, headers, body) = send(app(), Method::POST, "/api/lunch", &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET,HEAD");
        assert_eq!(json(&body)["error"], "method not allowed; use GET or HEAD");
        let (status, headers, _) = send(app(), Method::PUT, "/", &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET,HEAD");

        let (status, headers, body) = send(app(), Method::GET, "/api/nope", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert!(json(&body)["error"].as_str().unwrap().starts_with("no such endpoint"));
        let (status, headers, body) = send(app(), Method::GET, "/nope", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert!(body.contains("<h1>Not found</h1>"));

        let (status, headers, body) = send(app(), Method::HEAD, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert_eq!(body, "");
        let (status, _, body) = send(app(), Method::GET, "/healthz", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn healthz_fails_once_the_process_stops_and_the_rest_is_served() {
        let lunch = Arc::new(ArcSwap::from_pointee(Lunch {
            picker: Picker::new(Menu::builtin(), Mode::Weighted, "test"),
            utc_offset_minutes: 0,
        }));
        let health = Health::default();
        let app = super::app(lunch, 0, health.clone());
        let (status, _, _) = send(app.clone(), Method::GET, "/healthz", &[]).await;
        assert_eq!(status, StatusCode::OK);
        health.stopping();
        let (status, headers, body) = send(app.clone(), Method::GET, "/healthz", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"));
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let (status, _, _) = send(app, Method::GET, "/api/today", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn the_csp_pins_the_hash_of_the_inline_style() {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, page::STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let expected = format!("style-src 'sha256-{hash}';");
        assert!(CSP.contains(&expected), "page::STYLE changed: put {expected} in CSP");
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("script-src"));
    }

    #[test]
    fn the_api_document_matches_the_fields() {
        let doc = include_str!("../../docs/api.md");
        for field in ["`lunch`", "`tags`", "`mode`", "`tag`", "`date`", "`error`"] {
            assert!(doc.contains(field), "docs/api.md does not describe {field}");
        }
        for route in ["/api/lunch", "/api/today", "/today", "/healthz"] {
            assert!(doc.contains(route), "docs/api.md does not describe {route}");
        }
    }
}
