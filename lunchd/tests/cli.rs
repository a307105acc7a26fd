//! The command line: the embedded default, check-config, help and version.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::LUNCHD;

fn lunchd(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(LUNCHD).args(args).env_remove("RUST_LOG").output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_reports_every_problem_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lunchd.toml");
    std::fs::write(
        &path,
        "[https]\nlisten = \"127.0.0.1:8443\"\nhsts_max_ag = 5\n\n[limits]\nidle_timeout = \"sixty\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = lunchd(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let file = path.display();
    assert!(
        stderr.contains(&format!("{file}:3:1: `https.hsts_max_ag`: unknown field `hsts_max_ag`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:6:16: `limits.idle_timeout`: invalid type: string \"sixty\""
        )),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");

    std::fs::write(
        &path,
        "[picker]\nmode = \"no-repeat\"\n\n[[dish]]\nname = \"Pho\"\ntags = [\"warm\"]\n",
    )
    .unwrap();
    let (code, stdout, stderr) = lunchd(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (1 dishes, no-repeat picks)"), "{stdout}");

    let (code, _, stderr) = lunchd(&["check-config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.toml: cannot read"), "{stderr}");
}

#[test]
fn the_example_configuration_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/lunchd.toml");
    let (code, stdout, stderr) = lunchd(&["check-config", example]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn a_bad_configuration_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lunchd.toml");
    std::fs::write(&path, "[[dish]]\nname = \"\"\n").unwrap();
    let (code, _, stderr) = lunchd(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("lunchd: error: invalid configuration:"), "{stderr}");
    assert!(
        stderr.contains(":2:8: `dish[1].name`: dish 1 has an empty name"),
        "{stderr}"
    );
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = lunchd(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("lunchd {}", env!("CARGO_PKG_VERSION")));
    let (code, stdout, _) = lunchd(&["--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--key", "--certificate", "check-config"] {
        assert!(stdout.contains(flag), "{stdout}");
    }
    let (code, _, stderr) = lunchd(&["--key", "k.pem"]);
    assert_eq!(code, 2, "--key needs --certificate: {stderr}");
}

/// The README's first command: no configuration, no systemd. It binds the
/// fixed development ports 8080 and 8443, so it needs them free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_serves_on_loopback_with_a_development_certificate() {
    let mut child = Command::new(LUNCHD)
        .env_remove("LISTEN_FDS")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let https = support::eventually(Duration::from_secs(10), || async {
        let config = insecure_client_config();
        let tcp = tokio::net::TcpStream::connect("127.0.0.1:8443").await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.ok()
    })
    .await;
    let certificate = https.get_ref().1.peer_certificates().unwrap()[0].clone();
    drop(https);
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).unwrap();
    let san = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .clone();
    assert!(format!("{san:?}").contains("localhost"), "{san:?}");

    let redirect = support::raw_request(8080, b"HEAD /x?y=1 HTTP/1.1\r\nHost: localhost:8080\r\n\r\n");
    assert!(redirect.starts_with("HTTP/1.1 301 "), "{redirect}");
    assert!(
        redirect.contains("location: https://localhost:8443/x?y=1\r\n"),
        "{redirect}"
    );
    let redirect = support::raw_request(8080, b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
    assert!(
        redirect.contains("location: https://127.0.0.1:8443/x?y=1\r\n"),
        "{redirect}"
    );

    // SAFETY: kill(2) on our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let log = log.join().unwrap();
    assert!(log.contains("development certificate"), "{log}");
    assert!(log.contains("https://localhost:8443/"), "{log}");
    assert!(log.contains("http://localhost:8080/"), "{log}");
}

/// The development certificate is self-signed: this client accepts any
/// certificate, as `curl -k` does.
fn insecure_client_config() -> std::sync::Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAnything(std::sync::Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    std::sync::Arc::new(config)
}
