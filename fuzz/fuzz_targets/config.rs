//! The configuration file: TOML syntax, deserialization with error
//! recovery, and validation, exactly as `lunchd` compiles them.
//!
//! lunchd is a binary crate, so its `config` module is compiled into this
//! target by path rather than exposed as a library API that nothing else
//! needs.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports, missing_docs)]
#[path = "../../lunchd/src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(source, Path::new("/etc/lunchd/lunchd.toml")) {
        Ok(config) => {
            // Validation guarantees what the servers rely on.
            let limits = &config.limits;
            assert!(limits.max_connections >= 1);
            assert!(limits.max_header_bytes >= 8192);
            assert!(limits.max_headers >= 8);
            assert!(limits.max_streams >= 1);
            assert!(!limits.header_timeout.is_zero() && !limits.handshake_timeout.is_zero());
            assert!(!config.menu.dishes().is_empty());
            assert!(config.utc_offset_minutes.abs() <= 14 * 60);
            assert_eq!(config.key.is_some(), config.certificate.is_some());
            assert!(config.drain_delay.as_secs() <= 60);
            assert!(config.drain_delay.is_zero() || !config.proxy_from.is_empty());
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without a reason");
            let lines = source.split('\n').count();
            for e in &errors.0 {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                if let Some((line, column)) = e.position {
                    assert!(
                        (1..=lines).contains(&line) && column >= 1,
                        "position out of the file: {e:?}"
                    );
                }
            }
            let _ = errors.to_string();
        }
    }
});
