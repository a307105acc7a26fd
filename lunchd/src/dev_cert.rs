//! The development certificate used when none is configured.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use lunch_net::tls::LoadedCertificate;

/// A fresh self-signed ECDSA P-256 certificate for `localhost`, 127.0.0.1
/// and ::1, valid from now on. It lives only in memory: browsers will warn
/// about it, which is the point.
pub fn generate() -> anyhow::Result<LoadedCertificate> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).context("generating a development certificate")?;
    let key = signing_key.serialize_pem();
    let chain = cert.pem();
    let name = Path::new("(development certificate)");
    LoadedCertificate::from_pem(key.as_bytes(), name, chain.as_bytes(), name, SystemTime::now())
        .context("loading the development certificate")
}
