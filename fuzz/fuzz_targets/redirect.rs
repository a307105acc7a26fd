//! Host header normalisation and redirect target construction: a redirect
//! only ever names an allowed host or the canonical one, and is always a
//! valid `Location` header.
//!
//! Input: a policy selector byte, then the Host value, a newline, and the
//! request target.
#![no_main]

use std::net::Ipv6Addr;

use http::{HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use lunch_net::redirect::{AllowedHosts, RedirectPolicy, normalise_host, redirect_target};

const ALLOWED: [&str; 5] = ["lunch.example.com", "*.example.org", "127.0.0.1", "::1", "localhost"];

fn policy(selector: u8) -> RedirectPolicy {
    RedirectPolicy {
        allowed: AllowedHosts::List(ALLOWED.iter().map(|s| (*s).to_owned()).collect()),
        canonical: (selector & 1 == 1).then(|| "lunch.example.com".to_owned()),
        https_port: if selector & 2 == 2 { 8443 } else { 443 },
        acme_webroot: None,
    }
}

fn allowed(host: &str) -> bool {
    ALLOWED.iter().any(|pattern| match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => *pattern == host,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (host, target) = text.split_once('\n').unwrap_or((text, "/"));

    if let Some(n) = normalise_host(host) {
        assert!(!n.is_empty() && n.len() <= 253, "{host:?} -> {n:?}");
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b)),
            "{host:?} -> {n:?}"
        );
        if n.contains(':') {
            assert!(n.parse::<Ipv6Addr>().is_ok(), "{host:?} -> {n:?}");
            assert_eq!(normalise_host(&format!("[{n}]")).as_deref(), Some(&*n));
        } else {
            assert_eq!(normalise_host(&n).as_deref(), Some(&*n), "not idempotent");
        }
    }

    let policy = policy(selector);
    let Ok(location) = redirect_target(&policy, Some(host), target) else {
        return;
    };
    assert!(
        HeaderValue::from_str(&location).is_ok(),
        "{location:?} is not a header value"
    );
    let rest = location.strip_prefix("https://").expect("an https URL");
    let slash = rest.find('/').expect("a path");
    let (authority, path) = rest.split_at(slash);
    assert_eq!(path, target, "the path changed in {location:?}");
    assert!(!authority.contains(['@', '/', '\\', '?', '#']), "{location:?}");
    let named = match policy.https_port {
        443 => authority,
        port => authority
            .strip_suffix(&format!(":{port}"))
            .unwrap_or_else(|| panic!("no port in {location:?}")),
    };
    let named = named
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(named);
    assert!(
        allowed(named) || policy.canonical.as_deref() == Some(named),
        "{host:?} led to a redirect to {named:?}"
    );
    // A URL parser finds the same host.
    let origin = format!("https://{authority}/");
    let uri: Uri = origin
        .parse()
        .unwrap_or_else(|e| panic!("{origin:?} is not a URI: {e}"));
    assert_eq!(
        uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']')),
        Some(named)
    );
});
