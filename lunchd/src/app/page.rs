//! The HTML page: one self-contained document with its style inline, no
//! scripts and no external assets, so the Content-Security-Policy can
//! forbid everything else.
//!
//! Every piece of dynamic text (dish names and tags come from the
//! operator's configuration, the requested tag from the URL) goes through
//! [`write_escaped`] or [`encode_query_value`].

use std::fmt::Write;

use lunch_core::{Date, Dish, Menu};

/// The page's only style sheet. Its SHA-256 is pinned in the
/// Content-Security-Policy (`app::CSP`); a unit test keeps the two in step.
///
/// Colours meet WCAG AA (4.5:1) for normal text in both schemes.
pub(super) const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#fbf7f2;--fg:#201a17;--muted:#5d534c;--card:#fff;--line:#e4d8cc;\
--accent:#9a3412;--on-accent:#fff}\
@media (prefers-color-scheme:dark){:root{--bg:#16120f;--fg:#f4ede7;--muted:#b9aea6;--card:#221c18;\
--line:#3d322b;--accent:#fdba74;--on-accent:#1c1410}}\
*{box-sizing:border-box}\
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}\
body{margin:0;background:var(--bg);color:var(--fg);\
font:1rem/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Noto Sans\",sans-serif}\
.wrap{max-width:44rem;margin:0 auto;padding:0 1rem}\
header{border-bottom:1px solid var(--line)}\
header .wrap{display:flex;flex-wrap:wrap;align-items:center;justify-content:space-between;gap:.25rem 1rem;\
padding-top:.75rem;padding-bottom:.75rem}\
.brand{font-weight:800;font-size:1.1rem;color:var(--fg);text-decoration:none}\
header ul{display:flex;gap:1rem;list-style:none;margin:0;padding:0}\
a{color:var(--accent);text-underline-offset:.15em}\
a:focus-visible{outline:3px solid var(--accent);outline-offset:3px;border-radius:.25rem}\
a[aria-current]{font-weight:700}\
main{padding-bottom:2rem}\
.hero{padding:2.5rem 0 2rem}\
h1{margin:0;font-size:1rem}\
.eyebrow{display:block;font-size:1.05rem;font-weight:600;color:var(--muted)}\
.pick{display:block;margin:.25rem 0 .5rem;font-size:clamp(2.75rem,12vw,5rem);font-weight:800;line-height:1.05;\
letter-spacing:-.02em;overflow-wrap:anywhere}\
.note{margin:0 0 1.5rem;color:var(--muted)}\
.error{font-size:clamp(1.75rem,7vw,2.5rem)}\
.button{display:inline-block;padding:.8rem 1.4rem;border-radius:.6rem;background:var(--accent);\
color:var(--on-accent);font-weight:700;font-size:1.1rem;text-decoration:none}\
.button:hover{text-decoration:underline}\
.card{margin:0 0 1.25rem;padding:1rem 1.25rem;background:var(--card);border:1px solid var(--line);\
border-radius:.75rem}\
h2{margin:0 0 .5rem;font-size:1.1rem}\
.card p{margin:0}\
.team{font-size:1.4rem;font-weight:700;overflow-wrap:anywhere}\
.chips{display:flex;flex-wrap:wrap;gap:.5rem;list-style:none;margin:0;padding:0}\
.chips a{display:inline-flex;align-items:center;min-height:2.75rem;padding:0 1rem;border:1px solid var(--accent);\
border-radius:999px;text-decoration:none}\
.chips a[aria-current]{background:var(--accent);color:var(--on-accent)}\
.menu{list-style:none;margin:0;padding:0}\
.menu li{display:flex;flex-wrap:wrap;justify-content:space-between;gap:0 1rem;padding:.6rem 0;\
border-top:1px solid var(--line);overflow-wrap:anywhere}\
.menu li:first-child{border-top:0}\
.menu .tags{color:var(--muted);font-size:.9rem}\
.menu .picked{font-weight:700}\
footer{border-top:1px solid var(--line);color:var(--muted);font-size:.9rem}\
footer .wrap{padding-top:1rem;padding-bottom:1.5rem}\
footer p{margin:0}";

/// What the big type says.
pub(super) enum View<'a> {
    /// A random pick, answered by `GET /`.
    Random(&'a Dish),
    /// The team's pick of the day, answered by `GET /today`.
    Daily(&'a Dish),
    /// Nothing to show: the status line and why.
    Problem {
        /// A short headline, e.g. "No dish matches".
        title: &'a str,
        /// The reason, e.g. the picker's error.
        message: &'a str,
    },
}

/// What the page shows.
pub(super) struct Page<'a> {
    /// The main answer.
    pub(super) view: View<'a>,
    /// The path the page was asked for, `/` or `/today`: filters and "pick
    /// again" stay on it.
    pub(super) path: &'static str,
    /// The tag the picks are filtered by, if any.
    pub(super) tag: Option<&'a str>,
    /// The team's pick of the day, shown beside a random pick.
    pub(super) daily: Option<&'a Dish>,
    /// The team's today.
    pub(super) date: Date,
    /// The whole menu.
    pub(super) menu: &'a Menu,
}

/// Writes `text` escaped for HTML content and double-quoted attribute
/// values.
fn write_escaped(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            _ => "&#39;",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// `text` escaped for HTML content and attribute values.
#[cfg(test)]
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    write_escaped(&mut out, text);
    out
}

/// Writes `value` percent-encoded for a query string (everything but
/// unreserved characters), so a tag can never break out of its URL.
fn encode_query_value(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Writes `path` with `?tag=` when `tag` is given, as an attribute value.
fn write_href(out: &mut String, path: &str, tag: Option<&str>) {
    out.push_str(path);
    if let Some(tag) = tag {
        out.push_str("?tag=");
        encode_query_value(out, tag);
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// `<time datetime="2026-11-28">Saturday 28 November</time>`.
fn write_date(out: &mut String, date: Date) {
    let weekday = WEEKDAYS[date.days_since_epoch().rem_euclid(7) as usize];
    let month = MONTHS[(date.month() as usize).saturating_sub(1) % 12];
    let _ = write!(
        out,
        "<time datetime=\"{date}\">{weekday} {day} {month}</time>",
        day = date.day()
    );
}

/// Renders the page.
pub(super) fn render(page: &Page<'_>) -> String {
    let mut html = String::with_capacity(4096 + 128 * page.menu.dishes().len());
    html.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\"><title>",
    );
    match page.view {
        View::Random(dish) | View::Daily(dish) => {
            write_escaped(&mut html, dish.name());
            html.push_str(" · Lunch");
        }
        View::Problem { title, .. } => {
            write_escaped(&mut html, title);
            html.push_str(" · Lunch");
        }
    }
    html.push_str(
        "</title><link rel=\"icon\" href=\"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' \
         viewBox='0 0 100 100'%3E%3Ctext y='.9em' font-size='90'%3E%F0%9F%A5%AA%3C/text%3E%3C/svg%3E\"><style>",
    );
    html.push_str(STYLE);
    html.push_str("</style></head><body>");

    // Site header: the two ways to ask.
    let (random_current, daily_current) = match (page.path, &page.view) {
        ("/today", _) => ("", " aria-current=\"page\""),
        _ => (" aria-current=\"page\"", ""),
    };
    let _ = write!(
        html,
        "<header><div class=\"wrap\"><a class=\"brand\" href=\"/\">Lunch</a><nav aria-label=\"Site\"><ul>\
         <li><a href=\"/\"{random_current}>Surprise me</a></li>\
         <li><a href=\"/today\"{daily_current}>Team pick</a></li></ul></nav></div></header>"
    );

    html.push_str("<main class=\"wrap\"><section class=\"hero\" aria-labelledby=\"answer\">");
    let picked = match page.view {
        View::Random(dish) => {
            html.push_str("<h1 id=\"answer\"><span class=\"eyebrow\">");
            match page.tag {
                Some(tag) => {
                    html.push_str("Something ");
                    write_escaped(&mut html, tag);
                    html.push_str("? How about");
                }
                None => html.push_str("How about"),
            }
            html.push_str("</span> <span class=\"pick\">");
            write_escaped(&mut html, dish.name());
            html.push_str("</span></h1><p class=\"note\">A fresh random pick on every visit.</p>");
            html.push_str("<a class=\"button\" href=\"");
            write_href(&mut html, "/", page.tag);
            html.push_str("\">Pick again</a>");
            Some(dish)
        }
        View::Daily(dish) => {
            html.push_str("<h1 id=\"answer\"><span class=\"eyebrow\">The team's lunch");
            if let Some(tag) = page.tag {
                html.push_str(" (");
                write_escaped(&mut html, tag);
                html.push(')');
            }
            html.push_str(" for ");
            write_date(&mut html, page.date);
            html.push_str("</span> <span class=\"pick\">");
            write_escaped(&mut html, dish.name());
            html.push_str(
                "</span></h1><p class=\"note\">The same answer for everyone on the team, all day.</p>\
                 <a class=\"button\" href=\"",
            );
            write_href(&mut html, "/", page.tag);
            html.push_str("\">Surprise me instead</a>");
            Some(dish)
        }
        View::Problem { title, message } => {
            html.push_str("<h1 id=\"answer\" class=\"error\">");
            write_escaped(&mut html, title);
            html.push_str("</h1><p class=\"note\" role=\"alert\">");
            write_escaped(&mut html, message);
            html.push_str("</p><a class=\"button\" href=\"");
            html.push_str(page.path);
            html.push_str("\">Show every dish</a>");
            None
        }
    };
    html.push_str("</section>");

    if let (View::Random(_), Some(daily)) = (&page.view, page.daily) {
        html.push_str("<section class=\"card\" aria-labelledby=\"team\"><h2 id=\"team\">Today's team pick</h2><p>");
        html.push_str("<a class=\"team\" href=\"/today\">");
        write_escaped(&mut html, daily.name());
        html.push_str("</a></p><p class=\"note\">Everyone gets this one on ");
        write_date(&mut html, page.date);
        html.push_str(".</p></section>");
    }

    let tags = page.menu.tags();
    if !tags.is_empty() {
        html.push_str(
            "<nav class=\"card\" aria-labelledby=\"filter\"><h2 id=\"filter\">Filter by tag</h2><ul class=\"chips\">",
        );
        // "true", not "page": the header already marks the current page.
        let current = |t: Option<&str>| if page.tag == t { " aria-current=\"true\"" } else { "" };
        let _ = write!(html, "<li><a href=\"{}\"{}>any</a></li>", page.path, current(None));
        for tag in tags {
            html.push_str("<li><a href=\"");
            write_href(&mut html, page.path, Some(tag));
            html.push('"');
            html.push_str(current(Some(tag)));
            html.push('>');
            write_escaped(&mut html, tag);
            html.push_str("</a></li>");
        }
        html.push_str("</ul></nav>");
    }

    html.push_str("<section class=\"card\" aria-labelledby=\"menu\"><h2 id=\"menu\">The menu</h2><ul class=\"menu\">");
    for dish in page.menu.dishes() {
        let is_picked = picked.is_some_and(|p| std::ptr::eq(p, dish));
        html.push_str(if is_picked {
            "<li class=\"picked\"><span>"
        } else {
            "<li><span>"
        });
        write_escaped(&mut html, dish.name());
        if is_picked {
            html.push_str(" <span class=\"tags\">(picked)</span>");
        }
        html.push_str("</span>");
        if !dish.tags().is_empty() {
            html.push_str("<span class=\"tags\">");
            for (i, tag) in dish.tags().iter().enumerate() {
                if i > 0 {
                    html.push_str(", ");
                }
                write_escaped(&mut html, tag);
            }
            html.push_str("</span>");
        }
        html.push_str("</li>");
    }
    html.push_str("</ul></section></main>");

    html.push_str(
        "<footer><div class=\"wrap\"><p>Also as JSON: <a href=\"/api/lunch\">/api/lunch</a> and \
         <a href=\"/api/today\">/api/today</a>.</p></div></footer></body></html>\n",
    );
    html
}

/// A small page for paths that do not exist.
pub(super) fn not_found() -> &'static str {
    concat!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">",
        "<title>Not found · Lunch</title></head><body><main><h1>Not found</h1>",
        "<p>There is no such page. <a href=\"/\">Pick a lunch</a>.</p></main></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunch_core::DishSpec;

    fn render_with<'m>(menu: &'m Menu, view: impl FnOnce(&'m Dish) -> View<'m>, tag: Option<&str>) -> String {
        let dish = &menu.dishes()[0];
        render(&Page {
            view: view(dish),
            path: "/",
            tag,
            daily: Some(dish),
            date: Date::from_ymd(2026, 11, 28).unwrap(),
            menu,
        })
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<b>"Fish & 'Chips'"</b>"#),
            "&lt;b&gt;&quot;Fish &amp; &#39;Chips&#39;&quot;&lt;/b&gt;"
        );
        assert_eq!(escape("Crème brûlée"), "Crème brûlée");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        let mut out = String::new();
        write_href(&mut out, "/", Some("a b&c\"<é"));
        assert_eq!(out, "/?tag=a%20b%26c%22%3C%C3%A9");
    }

    #[test]
    fn dish_names_are_escaped_in_the_page() {
        let menu = Menu::new(vec![DishSpec::new("<script>alert(1)</script>", &["x"])]).unwrap();
        let html = render_with(&menu, View::Random, None);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn problem_text_is_escaped() {
        let menu = Menu::builtin();
        let html = render_with(
            &menu,
            |_| View::Problem {
                title: "No dish matches",
                message: "no dish on the menu is tagged `<img src=x>`",
            },
            Some("<img src=x>"),
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("tagged `&lt;img src=x&gt;`"));
    }

    #[test]
    fn shows_pick_filters_menu_and_team_pick() {
        let menu = Menu::builtin();
        let html = render_with(&menu, View::Random, Some("quick"));
        assert!(html.starts_with("<!doctype html><html lang=\"en\">"));
        assert!(html.contains("<span class=\"pick\">Sandwich</span>"));
        assert!(html.contains("<a class=\"button\" href=\"/?tag=quick\">Pick again</a>"));
        assert!(html.contains("<a href=\"/?tag=quick\" aria-current=\"true\">quick</a>"));
        assert!(html.contains("<a href=\"/?tag=vegetarian\">vegetarian</a>"));
        assert!(html.contains("Today's team pick"));
        assert!(html.contains("<time datetime=\"2026-11-28\">Saturday 28 November</time>"));
        for dish in menu.dishes() {
            assert!(html.contains(dish.name()));
        }
        assert!(!html.contains("<script"));
        assert_eq!(html.matches("<main").count(), 1);
    }

    #[test]
    fn weekdays() {
        let check = |(y, m, d), expected: &str| {
            let mut out = String::new();
            write_date(&mut out, Date::from_ymd(y, m, d).unwrap());
            assert!(out.contains(expected), "{out}");
        };
        check((1970, 1, 1), "Thursday 1 January");
        check((2000, 2, 29), "Tuesday 29 February");
        check((2026, 12, 31), "Thursday 31 December");
    }
}
