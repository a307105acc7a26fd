//! The lunch application served over HTTPS: the page, the JSON API and the
//! health check.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lunch_core::{Date, Dish, Picker, SplitMix64};
use serde::Deserialize;

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

/// The HTTPS router.
pub fn router(lunch: SharedLunch) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/today", get(today))
        .route("/api/lunch", get(api_lunch))
        .route("/api/today", get(api_today))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(lunch)
        .layer(axum::middleware::map_response(security_headers))
}

#[derive(Debug, Deserialize)]
struct TagQuery {
    tag: Option<String>,
}

impl TagQuery {
    fn tag(&self) -> Option<&str> {
        self.tag.as_deref().filter(|t| !t.is_empty())
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
    let local = now + i64::from(offset_minutes) * 60;
    let date = Date::from_days_since_epoch(local.div_euclid(86_400));
    let left = 86_400 - local.rem_euclid(86_400);
    (date, left as u64)
}

async fn index(State(lunch): State<SharedLunch>, Query(query): Query<TagQuery>) -> Response {
    let lunch = lunch.load();
    let (date, _) = local_today(lunch.utc_offset_minutes);
    let daily = lunch.picker.daily(date, None).ok();
    match pick(&lunch.picker, query.tag()) {
        Ok(dish) => {
            let html = page::render(&page::Page {
                pick: Some(dish),
                tag: query.tag(),
                daily,
                date,
                menu: lunch.picker.menu(),
                error: None,
            });
            ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
        }
        Err(e) => {
            let html = page::render(&page::Page {
                pick: None,
                tag: query.tag(),
                daily,
                date,
                menu: lunch.picker.menu(),
                error: Some(&e.to_string()),
            });
            (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
        }
    }
}

struct Html(String);

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], self.0).into_response()
    }
}

async fn today(State(lunch): State<SharedLunch>, Query(query): Query<TagQuery>, headers: HeaderMap) -> Response {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json") && !accept.contains("text/html"));
    daily_response(&lunch, query.tag(), &headers, wants_json)
}

async fn api_today(State(lunch): State<SharedLunch>, Query(query): Query<TagQuery>, headers: HeaderMap) -> Response {
    daily_response(&lunch, query.tag(), &headers, true)
}

fn daily_response(lunch: &SharedLunch, tag: Option<&str>, headers: &HeaderMap, json: bool) -> Response {
    let lunch = lunch.load();
    let (date, seconds_left) = local_today(lunch.utc_offset_minutes);
    let dish = match lunch.picker.daily(date, tag) {
        Ok(dish) => dish,
        Err(e) if json => return json_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => {
            let html = page::render(&page::Page {
                pick: None,
                tag,
                daily: None,
                date,
                menu: lunch.picker.menu(),
                error: Some(&e.to_string()),
            });
            return (StatusCode::NOT_FOUND, Html(html)).into_response();
        }
    };
    // The answer changes only at the team's midnight (or on a reload that
    // changes the menu, which changes the ETag).
    let etag = format!(
        "\"{:016x}\"",
        lunch_core::stable_hash(&[
            &date.to_string(),
            dish.name(),
            tag.unwrap_or(""),
            if json { "j" } else { "h" }
        ])
    );
    let cache = format!("public, max-age={seconds_left}");
    let headers_out = [
        (
            header::ETAG,
            HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("no-cache")),
        ),
        (header::VARY, HeaderValue::from_static("Accept")),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers_out).into_response();
    }
    if json {
        let body = serde_json::json!({
            "lunch": dish.name(),
            "tags": dish.tags(),
            "date": date.to_string(),
            "tag": tag,
        });
        (headers_out, axum::Json(body)).into_response()
    } else {
        let html = page::render(&page::Page {
            pick: Some(dish),
            tag,
            daily: Some(dish),
            date,
            menu: lunch.picker.menu(),
            error: None,
        });
        (headers_out, Html(html)).into_response()
    }
}

async fn api_lunch(State(lunch): State<SharedLunch>, Query(query): Query<TagQuery>) -> Response {
    let lunch = lunch.load();
    match pick(&lunch.picker, query.tag()) {
        Ok(dish) => {
            let body = serde_json::json!({
                "lunch": dish.name(),
                "tags": dish.tags(),
                "mode": lunch.picker.mode().to_string(),
                "tag": query.tag(),
            });
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
        }
        Err(e) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "ok\n",
    )
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found\n",
    )
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use lunch_core::{Menu, Mode};
    use tower::ServiceExt;

    fn app() -> Router {
        let lunch = Lunch {
            picker: Picker::new(Menu::builtin(), Mode::Weighted, "test"),
            utc_offset_minutes: 0,
        };
        router(Arc::new(ArcSwap::from_pointee(lunch)))
    }

    async fn get(uri: &str, accept: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::get(uri);
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = app().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8(body.to_vec()).unwrap())
    }

    const MENU: [&str; 5] = ["Sandwich", "Soup", "Salad", "Burger", "Sushi"];

    #[tokio::test]
    async fn api_lunch_answers_a_menu_item() {
        let (status, headers, body) = get("/api/lunch", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(MENU.contains(&json["lunch"].as_str().unwrap()), "{json}");
    }

    #[tokio::test]
    async fn tag_filter_and_unknown_tag() {
        for _ in 0..20 {
            let (_, _, body) = get("/api/lunch?tag=vegetarian", None).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(["Soup", "Salad"].contains(&json["lunch"].as_str().unwrap()));
        }
        let (status, _, body) = get("/api/lunch?tag=dessert", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, r#"{"error":"no dish on the menu is tagged `dessert`"}"#);
    }

    #[tokio::test]
    async fn today_by_accept_header_and_etag() {
        let (status, headers, body) = get("/today", Some("application/json")).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (_, _, again) = get("/api/today", None).await;
        let again: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(json["lunch"], again["lunch"]);
        let (_, html_headers, html) = get("/today", Some("text/html")).await;
        assert!(
            html_headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(html.contains(json["lunch"].as_str().unwrap()));
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let request = Request::get("/api/today")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    }

    #[tokio::test]
    async fn page_and_errors() {
        let (status, headers, body) = get("/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(MENU.iter().any(|d| body.contains(d)));
        assert_eq!(get("/nope", None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            get("/healthz", None).await,
            (StatusCode::OK, get("/healthz", None).await.1, "ok\n".into())
        );
        let post = Request::post("/api/lunch").body(Body::empty()).unwrap();
        assert_eq!(
            app().oneshot(post).await.unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let head = Request::head("/api/lunch").body(Body::empty()).unwrap();
        let response = app().oneshot(head).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
