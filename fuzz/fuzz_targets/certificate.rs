//! Key and certificate chain loading: PEM armour, DER detection, encrypted
//! keys, X.509 parsing and validity checks never panic, and every refusal
//! names the file.
//!
//! Input: the key file, a NUL byte, the chain file.
#![no_main]

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use lunch_net::tls::LoadedCertificate;

fuzz_target!(|data: &[u8]| {
    let (key, chain) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    // A fixed clock keeps the seeds valid: 2027-05-22.
    let now = UNIX_EPOCH + Duration::from_secs(1_811_000_000);
    let key_path = Path::new("/run/credentials/lunchd.service/key.pem");
    let chain_path = Path::new("/run/credentials/lunchd.service/fullchain.pem");
    match LoadedCertificate::from_pem(key, key_path, chain, chain_path, now) {
        Ok(loaded) => {
            let info = loaded.info();
            assert!(info.not_before <= info.not_after);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("/run/credentials/lunchd.service/"), "{message}");
        }
    }
});
