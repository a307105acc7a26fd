//! The HTML page: one self-contained document, no scripts, no external
//! assets.

use std::fmt::Write;

use lunch_core::{Date, Dish, Menu};

/// What the page shows.
pub(super) struct Page<'a> {
    pub(super) pick: Option<&'a Dish>,
    pub(super) tag: Option<&'a str>,
    pub(super) daily: Option<&'a Dish>,
    pub(super) date: Date,
    pub(super) menu: &'a Menu,
    pub(super) error: Option<&'a str>,
}

/// Escapes text for HTML content and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:0 auto;padding:1.5rem;\
color:#1b1b1b;background:#fdfcf8;line-height:1.5}h1{font-size:1rem;font-weight:600;color:#555;margin:0}\
.pick{font-size:clamp(2.5rem,12vw,4.5rem);font-weight:800;margin:.5rem 0 1rem;line-height:1.1}\
a{color:#0b5394}nav a{display:inline-block;margin:.2rem .4rem .2rem 0;padding:.2rem .6rem;border:1px solid #0b5394;\
border-radius:1rem;text-decoration:none}nav a[aria-current]{background:#0b5394;color:#fff}\
.again{display:inline-block;font-size:1.2rem;padding:.5rem 1rem;background:#0b5394;color:#fff;border-radius:.4rem;\
text-decoration:none}section{margin-top:2rem}ul{padding-left:1.2rem}.error{color:#a40000;font-weight:600}";

/// Renders the page.
pub(super) fn render(page: &Page<'_>) -> String {
    let mut html = String::with_capacity(4096);
    let tag_query = page.tag.map(|t| format!("?tag={}", escape(t))).unwrap_or_default();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body><main>",
        title = page
            .pick
            .map_or("Lunch".to_owned(), |d| format!("Lunch: {}", escape(d.name()))),
    );
    match (page.pick, page.error) {
        (_, Some(error)) => {
            let _ = write!(
                html,
                "<h1>No lunch found</h1><p class=\"error\" role=\"alert\">{}</p>",
                escape(error)
            );
        }
        (Some(dish), None) => {
            let _ = write!(
                html,
                "<h1>Today you could have</h1><p class=\"pick\">{}</p>",
                escape(dish.name())
            );
            let _ = write!(html, "<p><a class=\"again\" href=\"/{tag_query}\">Pick again</a></p>");
        }
        (None, None) => {}
    }
    if let Some(daily) = page.daily {
        let _ = write!(
            html,
            "<section aria-labelledby=\"team\"><h2 id=\"team\">The team's lunch for {date}</h2>\
             <p><a href=\"/today\"><strong>{name}</strong></a>: the same answer for everyone today.</p></section>",
            date = page.date,
            name = escape(daily.name()),
        );
    }
    let tags = page.menu.tags();
    if !tags.is_empty() {
        html.push_str("<section aria-labelledby=\"filters\"><h2 id=\"filters\">Filter</h2><nav aria-label=\"Tags\">");
        let current = |t: Option<&str>| if page.tag == t { " aria-current=\"page\"" } else { "" };
        let _ = write!(html, "<a href=\"/\"{}>any</a>", current(None));
        for tag in tags {
            let _ = write!(
                html,
                "<a href=\"/?tag={t}\"{c}>{t}</a>",
                t = escape(tag),
                c = current(Some(tag))
            );
        }
        html.push_str("</nav></section>");
    }
    html.push_str("<section aria-labelledby=\"menu\"><h2 id=\"menu\">The menu</h2><ul>");
    for dish in page.menu.dishes() {
        let _ = write!(html, "<li>{}", escape(dish.name()));
        if !dish.tags().is_empty() {
            let _ = write!(html, " <small>({})</small>", escape(&dish.tags().join(", ")));
        }
        html.push_str("</li>");
    }
    html.push_str("</ul></section></main></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<b>"Fish & 'Chips'"</b>"#),
            "&lt;b&gt;&quot;Fish &amp; &#39;Chips&#39;&quot;&lt;/b&gt;"
        );
    }

    #[test]
    fn dish_names_are_escaped_in_the_page() {
        let menu = Menu::new(vec![lunch_core::DishSpec::new("<script>alert(1)</script>", &[])]).unwrap();
        let page = Page {
            pick: Some(&menu.dishes()[0]),
            tag: None,
            daily: Some(&menu.dishes()[0]),
            date: Date::from_ymd(2026, 1, 1).unwrap(),
            menu: &menu,
            error: None,
        };
        let html = render(&page);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
