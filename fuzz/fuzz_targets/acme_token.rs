//! ACME http-01 tokens: whatever is accepted names exactly one file inside
//! the challenge directory.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use lunch_net::redirect::valid_acme_token;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if !valid_acme_token(token) {
        return;
    }
    let dir = Path::new("/var/lib/letsencrypt/webroot/.well-known/acme-challenge");
    let path = dir.join(token);
    assert_eq!(path.parent(), Some(dir), "{token:?} leaves the challenge directory");
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some(token));
    assert!(matches!(
        Path::new(token).components().collect::<Vec<_>>()[..],
        [Component::Normal(_)]
    ));
    assert!(!token.contains(['/', '\\', '.', '%', '\0']), "{token:?}");
});
