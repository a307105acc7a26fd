//! Loading keys and certificates as real tools write them: every key
//! encoding and type a user may have, and every mistake a user may make.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use lunch_net::tls::{CertificateError, CertificateFiles, CertificateStore, LoadedCertificate};

fn openssl(args: &[&str]) {
    let output = Command::new(lunch_testkit::require_tool("openssl", "openssl"))
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key of `algorithm` (`RSA`, `EC`, `ED25519`) and a self-signed
/// certificate for `lunch.test`, written by openssl into `dir`.
fn openssl_pair(dir: &Path, algorithm: &str, traditional: bool) -> CertificateFiles {
    let key = dir.join(format!("{algorithm}-{traditional}.key"));
    let chain = dir.join(format!("{algorithm}-{traditional}.pem"));
    let mut genpkey = vec!["genpkey", "-algorithm", algorithm, "-out", key.to_str().unwrap()];
    match algorithm {
        "EC" => genpkey.extend(["-pkeyopt", "ec_paramgen_curve:P-256"]),
        "RSA" => genpkey.extend(["-pkeyopt", "rsa_keygen_bits:2048"]),
        _ => {}
    }
    openssl(&genpkey);
    openssl(&[
        "req",
        "-x509",
        "-key",
        key.to_str().unwrap(),
        "-out",
        chain.to_str().unwrap(),
        "-days",
        "2",
        "-subj",
        "/CN=lunch.test",
        "-addext",
        "subjectAltName=DNS:lunch.test,DNS:*.lunch.test,IP:127.0.0.1",
    ]);
    if traditional {
        // PKCS#1 for RSA, SEC1 for EC: the "BEGIN RSA/EC PRIVATE KEY" forms.
        let traditional = key.with_extension("traditional");
        openssl(&[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-out",
            traditional.to_str().unwrap(),
            "-traditional",
        ]);
        std::fs::rename(&traditional, &key).unwrap();
    }
    CertificateFiles { key, chain }
}

fn load(files: &CertificateFiles) -> Result<LoadedCertificate, CertificateError> {
    LoadedCertificate::load(files, SystemTime::now())
}

fn check_error(files: &CertificateFiles, expected: &str) {
    let message = load(files).expect_err("should be refused").to_string();
    assert!(message.contains(expected), "{message:?} should contain {expected:?}");
}

#[test]
fn every_key_type_and_encoding_loads() {
    let dir = tempfile::tempdir().unwrap();
    for (algorithm, traditional, marker) in [
        ("EC", false, "BEGIN PRIVATE KEY"),
        ("EC", true, "BEGIN EC PRIVATE KEY"),
        ("RSA", false, "BEGIN PRIVATE KEY"),
        ("RSA", true, "BEGIN RSA PRIVATE KEY"),
        ("ED25519", false, "BEGIN PRIVATE KEY"),
    ] {
        let files = openssl_pair(dir.path(), algorithm, traditional);
        let key = std::fs::read_to_string(&files.key).unwrap();
        assert!(key.contains(marker), "{algorithm} {traditional}: {key}");
        let loaded = load(&files).unwrap_or_else(|e| panic!("{algorithm} traditional={traditional}: {e}"));
        let info = loaded.info();
        assert_eq!(info.subject, "CN=lunch.test");
        assert_eq!(info.names, ["lunch.test", "*.lunch.test", "127.0.0.1"]);
        assert!(!info.serial.is_empty());
    }
}

#[test]
fn mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = openssl_pair(dir.path(), "EC", false);
    let other = openssl_pair(dir.path(), "RSA", false);
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    let mismatch = CertificateFiles {
        key: other.key.clone(),
        chain: good.chain.clone(),
    };
    check_error(&mismatch, "does not match the certificate in");

    std::fs::write(path("empty.pem"), "\n").unwrap();
    check_error(
        &CertificateFiles {
            key: good.key.clone(),
            chain: path("empty.pem"),
        },
        "empty.pem is empty",
    );
    check_error(
        &CertificateFiles {
            key: path("empty.pem"),
            chain: good.chain.clone(),
        },
        "empty.pem is empty",
    );

    let missing = CertificateFiles {
        key: path("nope.key"),
        chain: good.chain.clone(),
    };
    check_error(&missing, "cannot read");
    check_error(&missing, "nope.key");

    openssl(&[
        "x509",
        "-in",
        good.chain.to_str().unwrap(),
        "-outform",
        "der",
        "-out",
        path("cert.der").to_str().unwrap(),
    ]);
    check_error(
        &CertificateFiles {
            key: good.key.clone(),
            chain: path("cert.der"),
        },
        "cert.der looks like binary DER",
    );
    openssl(&[
        "pkey",
        "-in",
        good.key.to_str().unwrap(),
        "-outform",
        "der",
        "-out",
        path("key.der").to_str().unwrap(),
    ]);
    check_error(
        &CertificateFiles {
            key: path("key.der"),
            chain: good.chain.clone(),
        },
        "key.der looks like binary DER",
    );

    openssl(&[
        "pkey",
        "-in",
        good.key.to_str().unwrap(),
        "-out",
        path("enc.key").to_str().unwrap(),
        "-aes256",
        "-passout",
        "pass:secret",
    ]);
    check_error(
        &CertificateFiles {
            key: path("enc.key"),
            chain: good.chain.clone(),
        },
        "is an encrypted private key",
    );

    // The files swapped: a certificate where the key belongs and vice versa.
    check_error(
        &CertificateFiles {
            key: good.chain.clone(),
            chain: good.key.clone(),
        },
        "has no certificate PEM block",
    );

    std::fs::write(path("big.pem"), vec![b'A'; 10 * 1024 * 1024]).unwrap();
    check_error(
        &CertificateFiles {
            key: good.key.clone(),
            chain: path("big.pem"),
        },
        "is 10485760 bytes",
    );
}

fn rcgen_pair(dir: &Path, name: &str, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> CertificateFiles {
    let mut params = rcgen::CertificateParams::new(vec!["lunch.test".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = CertificateFiles {
        key: dir.join(format!("{name}.key")),
        chain: dir.join(format!("{name}.pem")),
    };
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.chain, cert.pem()).unwrap();
    files
}

#[test]
fn validity_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let expired = rcgen_pair(dir.path(), "expired", (2020, 1, 1), (2021, 1, 1));
    check_error(&expired, "expired on 2021-01-01 00:00:00 UTC; renew it");
    let future = rcgen_pair(dir.path(), "future", (2999, 1, 1), (3000, 1, 1));
    check_error(&future, "is not valid before 2999-01-01 00:00:00 UTC");
}

#[test]
fn reload_swaps_only_valid_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let first = openssl_pair(dir.path(), "EC", false);
    let store = CertificateStore::new(load(&first).unwrap());
    let before = store.info();

    let second = openssl_pair(dir.path(), "RSA", false);
    let after = store.reload(&second).unwrap();
    assert_ne!(after.serial, before.serial);
    assert_eq!(store.info(), after);

    let broken = CertificateFiles {
        key: first.key.clone(),
        chain: second.chain.clone(),
    };
    assert!(store.reload(&broken).is_err());
    assert_eq!(store.info(), after, "a failed reload must keep the current certificate");
    assert!(store.covers("lunch.test"));
    assert!(store.covers("www.lunch.test"));
    assert!(store.covers("127.0.0.1"));
    assert!(!store.covers("evil.test"));
}
