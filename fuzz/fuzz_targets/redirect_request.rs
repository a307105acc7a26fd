//! Whole HTTP/1 requests, as raw bytes, to the plain-HTTP server's handler
//! under hyper: every `Location` names an allowed host over https, and no
//! request reads a file outside the ACME webroot.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use lunch_net::redirect::{AllowedHosts, RedirectPolicy, Redirector, SharedPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// In a file next to the webroot; no response may contain it.
const SECRET: &str = "SECRET-OUTSIDE-THE-WEBROOT";
const CHALLENGE: &str = "challenge-response-body";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    policy: SharedPolicy,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("lunchd-fuzz-{}", std::process::id()));
        let webroot = base.join("webroot");
        let challenges = webroot.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenges).unwrap();
        std::fs::write(challenges.join("token"), CHALLENGE).unwrap();
        std::fs::write(base.join("secret"), SECRET).unwrap();
        std::fs::write(webroot.join("secret"), SECRET).unwrap();
        let _ = std::os::unix::fs::symlink(base.join("secret"), challenges.join("link"));
        let policy = RedirectPolicy {
            allowed: AllowedHosts::List(vec!["lunch.example.com".into(), "*.example.org".into(), "::1".into()]),
            canonical: None,
            https_port: 8443,
            acme_webroot: Some(PathBuf::from(&webroot)),
        };
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread().build().unwrap(),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
        }
    })
}

fn allowed(host: &str) -> bool {
    host == "lunch.example.com"
        || host == "[::1]"
        || host
            .strip_suffix(".example.org")
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let service = Redirector::new(Arc::clone(&fixture.policy));
    let response = fixture.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(16 * 1024)
            .serve_connection(TokioIo::new(server), service);
        let serve = async {
            let _ = conn.await;
        };
        let talk = async {
            let (mut reader, mut writer) = tokio::io::split(&mut client);
            let write = async {
                let _ = writer.write_all(data).await;
                let _ = writer.shutdown().await;
            };
            let mut response = Vec::new();
            let read = reader.read_to_end(&mut response);
            let (_, _) = tokio::join!(write, read);
            response
        };
        let ((), response) = tokio::join!(serve, talk);
        response
    });
    let text = String::from_utf8_lossy(&response);
    assert!(!text.contains(SECRET), "a file outside the webroot was served:\n{text}");
    for line in text.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.eq_ignore_ascii_case("location") {
            continue;
        }
        let value = value.trim();
        let rest = value
            .strip_prefix("https://")
            .unwrap_or_else(|| panic!("redirect to {value:?}"));
        let authority = rest.split('/').next().unwrap();
        let host = authority
            .strip_suffix(":8443")
            .unwrap_or_else(|| panic!("redirect to the wrong port: {value:?}"));
        assert!(allowed(host), "redirect to a host not allowed: {value:?}");
    }
});
