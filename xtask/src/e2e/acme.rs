//! A real ACME CA in the container: pebble (Let's Encrypt's test server,
//! a Debian package), and certbot run with the commands of docs/deploy.md.
//!
//! pebble serves its API over HTTPS with a certificate it does not make
//! itself: [`Pebble::start`] makes a CA and a leaf for 127.0.0.1 for that
//! (the API only; the certificates certbot gets come from pebble's own
//! root, new on every start). It validates http-01 challenges on port 80
//! of the name as `/etc/hosts` resolves it inside the container.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::container::Container;

/// Where pebble's files live inside.
const DIR: &str = "/root/pebble";
/// The CA of pebble's API certificate, for certbot (`REQUESTS_CA_BUNDLE`).
pub(crate) const API_CA: &str = "/root/pebble/api-ca.pem";
/// pebble's ACME directory.
pub(crate) const DIRECTORY: &str = "https://127.0.0.1:14000/dir";
/// How long one certbot run may take.
const CERTBOT_TIMEOUT_SECS: u32 = 180;

/// pebble, running inside as the transient unit `pebble.service`.
pub(crate) struct Pebble {
    /// The root that issues every certificate of this pebble, PEM.
    pub(crate) root_pem: String,
    /// The same, DER.
    pub(crate) root_der: Vec<u8>,
    /// pebble's package version.
    pub(crate) version: String,
}

impl Pebble {
    /// Writes pebble's configuration and API certificate, maps `domain` to
    /// 127.0.0.1 in `/etc/hosts`, starts pebble and waits for its
    /// directory; returns with its issuing root.
    pub(crate) fn start(c: &Container, domain: &str) -> anyhow::Result<Pebble> {
        let root = c.root();
        let dir = root.join(DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        let (ca_pem, cert_pem, key_pem) = api_certificate()?;
        std::fs::write(dir.join("api-ca.pem"), ca_pem)?;
        std::fs::write(dir.join("api.pem"), cert_pem)?;
        std::fs::write(dir.join("api.key"), key_pem)?;
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": "127.0.0.1:14000",
                "managementListenAddress": "127.0.0.1:15000",
                "certificate": format!("{DIR}/api.pem"),
                "privateKey": format!("{DIR}/api.key"),
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        std::fs::write(
            root.join("etc/hosts"),
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t{domain}\n"),
        )?;
        // The host's package when the container boots the host's /usr
        // (its root, and so its dpkg database, is empty).
        let query = ["dpkg-query", "--show", "--showformat=pebble ${Version}", "pebble"];
        let version = c
            .run(&query)
            .ok()
            .or_else(|| {
                let out = std::process::Command::new(query[0]).args(&query[1..]).output().ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .unwrap_or_else(|| "pebble (version unknown)".to_owned());
        // No sleeps before validating, no nonces rejected at random (the
        // default rejects 5%: certbot would retry, or fail a renewal), and
        // no valid authorization reused (the default reuses half of them):
        // every issuance validates the challenge on port 80.
        c.run(&[
            "systemd-run",
            "--unit=pebble",
            "--quiet",
            "-E",
            "PEBBLE_VA_NOSLEEP=1",
            "-E",
            "PEBBLE_WFE_NONCEREJECT=0",
            "-E",
            "PEBBLE_AUTHZREUSE=0",
            "pebble",
            "-config",
            &format!("{DIR}/config.json"),
        ])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = c.output(&["curl", "--silent", "--fail", "--cacert", API_CA, DIRECTORY])?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let journal = c.output(&["journalctl", "--no-pager", "-n", "20", "-u", "pebble.service"])?;
                bail!(
                    "pebble did not answer on {DIRECTORY} within 20 s:\n{}",
                    String::from_utf8_lossy(&journal.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let root_pem = c.run(&[
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            API_CA,
            "https://127.0.0.1:15000/roots/0",
        ])?;
        let root_der = pem_certificates(&root_pem)?
            .into_iter()
            .next()
            .context("pebble's /roots/0 holds no certificate")?;
        Ok(Pebble {
            root_pem,
            root_der,
            version,
        })
    }
}

/// A CA and a leaf for 127.0.0.1 signed by it (PEM: CA, leaf, leaf key),
/// for pebble's API. Python 3.13 (certbot on trixie and forky) verifies
/// strictly: the CA needs keyUsage, the leaf an authority key identifier.
fn api_certificate() -> anyhow::Result<(String, String, String)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "lunchd e2e pebble API CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key).context("making pebble's API CA")?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    leaf.distinguished_name.push(DnType::CommonName, "pebble");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .context("making pebble's API certificate")?;
    Ok((ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem()))
}

/// The certificates in a PEM text, DER.
pub(crate) fn pem_certificates(pem: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()).context("reading PEM certificates"))
        .collect()
}

/// The shell command in docs/deploy.md's code blocks that begins with
/// `prefix`, continuation lines joined and the trailing comment removed,
/// for `domain` instead of `example.com`.
pub(crate) fn docs_command(deploy_md: &str, prefix: &str, domain: &str) -> anyhow::Result<String> {
    let mut in_block = false;
    let mut pending = String::new();
    for line in deploy_md.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            pending.clear();
            continue;
        }
        if !in_block {
            continue;
        }
        // A comment follows two spaces; the sed expressions hold `#` too.
        let code = line.split_once("  #").map_or(line, |(code, _)| code).trim_end();
        if let Some(start) = code.strip_suffix('\\') {
            pending.push_str(start.trim());
            pending.push(' ');
            continue;
        }
        let command = format!("{pending}{}", code.trim());
        pending.clear();
        if command.starts_with(prefix) {
            return Ok(command
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace("example.com", domain));
        }
    }
    bail!("docs/deploy.md has no command beginning with `{prefix}`")
}

/// Runs a certbot command line inside against pebble: `command` as docs
/// give it, plus the test server (and no random sleep before a renewal,
/// which certbot adds when it runs without a terminal). Returns its output.
pub(crate) fn certbot(c: &Container, command: &str) -> anyhow::Result<String> {
    ensure!(command.starts_with("certbot "), "not a certbot command: {command}");
    let full = format!("{command} --server {DIRECTORY} --no-random-sleep-on-renew");
    let out = c
        .command_within(
            CERTBOT_TIMEOUT_SECS,
            &["env", &format!("REQUESTS_CA_BUNDLE={API_CA}"), "sh", "-c", &full],
        )
        .output()
        .context("running certbot in the container")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let log = c
            .output(&["tail", "-n", "30", "/var/log/letsencrypt/letsencrypt.log"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        bail!(
            "`{full}` failed ({}):\n{}\n---- letsencrypt.log\n{log}",
            out.status,
            text.trim()
        );
    }
    Ok(text)
}

/// certbot's version, e.g. `certbot 2.1.0`.
pub(crate) fn certbot_version(c: &Container) -> String {
    c.output(&["certbot", "--version"])
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
            .trim()
            .to_owned()
        })
        .unwrap_or_default()
}

/// The certificate certbot's live directory for `domain` holds now.
pub(crate) struct Live {
    pub(crate) serial: String,
    pub(crate) der: Vec<u8>,
    pub(crate) key_pem: String,
}

/// Reads `/etc/letsencrypt/live/DOMAIN/{cert,privkey}.pem` inside.
pub(crate) fn live(c: &Container, domain: &str) -> anyhow::Result<Live> {
    let dir = Path::new("/etc/letsencrypt/live").join(domain);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("privkey.pem").display().to_string();
    let pem = c.run(&["cat", &cert])?;
    let der = pem_certificates(&pem)?
        .into_iter()
        .next()
        .with_context(|| format!("{cert} holds no certificate"))?;
    let serial = c.run(&["openssl", "x509", "-noout", "-serial", "-in", &cert])?;
    let serial = serial
        .trim()
        .strip_prefix("serial=")
        .with_context(|| format!("openssl printed no serial: {serial:?}"))?
        .to_ascii_lowercase();
    Ok(Live {
        serial,
        der,
        key_pem: c.run(&["cat", &key])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_come_from_the_docs_joined_and_without_comments() {
        let md = "text\n```sh\nls   # not this\ncertbot certonly --standalone -d example.com \\\n    --agree-tos -m you@example.com\n\
                  certbot certonly --webroot -w /w -d example.com   # the switch\n```\ncertbot outside\n";
        assert_eq!(
            docs_command(md, "certbot certonly --standalone", "x.test").unwrap(),
            "certbot certonly --standalone -d x.test --agree-tos -m you@x.test"
        );
        assert_eq!(
            docs_command(md, "certbot certonly --webroot", "x.test").unwrap(),
            "certbot certonly --webroot -w /w -d x.test"
        );
        assert!(docs_command(md, "certbot outside", "x.test").is_err());
    }

    #[test]
    fn the_deploy_docs_hold_the_commands_the_e2e_runs() {
        let md = std::fs::read_to_string(crate::project_root().join("docs/deploy.md")).unwrap();
        for prefix in ["certbot certonly --standalone", "certbot certonly --webroot"] {
            let command = docs_command(&md, prefix, "lunchd.test").unwrap();
            assert!(command.contains("-d lunchd.test"), "{command}");
            assert!(command.contains("--non-interactive"), "{command}");
        }
    }

    #[test]
    fn the_api_certificate_passes_a_strict_verification() {
        let (ca, cert, key) = api_certificate().unwrap();
        assert_eq!(pem_certificates(&ca).unwrap().len(), 1);
        assert!(key.contains("PRIVATE KEY"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
        // What Python 3.13's ssl module asks of a chain by default.
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-verify_ip",
                "127.0.0.1",
                "-CAfile",
            ])
            .arg(dir.path().join("ca.pem"))
            .arg(dir.path().join("cert.pem"))
            .output()
            .expect("openssl (Debian package openssl) must be installed");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
