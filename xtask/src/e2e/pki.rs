//! The test PKI: a CA made for one run and the leaf certificates it issues,
//! laid out as certbot lays out `/etc/letsencrypt`.

use std::fmt::Write as _;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};

/// A certificate authority trusted only by the e2e clients.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub(crate) pem: String,
    /// The CA certificate, DER.
    pub(crate) der: Vec<u8>,
}

/// A leaf certificate issued by a [`TestCa`].
#[derive(Clone)]
pub(crate) struct Leaf {
    /// The private key, PEM (certbot's `privkey.pem`).
    pub(crate) key_pem: String,
    /// The leaf alone (certbot's `cert.pem`).
    pub(crate) cert_pem: String,
    /// Leaf then CA (certbot's `fullchain.pem`).
    pub(crate) chain_pem: String,
    /// The CA alone (certbot's `chain.pem`).
    pub(crate) ca_pem: String,
    /// The leaf, DER, to recognise it in a handshake.
    pub(crate) der: Vec<u8>,
    /// The serial number in lowercase hex, as `openssl x509 -serial` shows it.
    pub(crate) serial: String,
}

impl TestCa {
    pub(crate) fn new() -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "lunchd e2e test CA");
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key).context("making the test CA")?;
        Ok(TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `name`, valid now, with serial number `serial`.
    pub(crate) fn issue(&self, name: &str, serial: u64) -> anyhow::Result<Leaf> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        // A fixed non-zero first byte keeps the DER integer positive and
        // its hex form predictable.
        let mut serial_bytes = vec![0x1a];
        serial_bytes.extend_from_slice(&serial.to_be_bytes());
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("issuing a test certificate")?;
        let mut hex = String::new();
        for b in &serial_bytes {
            let _ = write!(hex, "{b:02x}");
        }
        Ok(Leaf {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            ca_pem: self.pem.clone(),
            der: cert.der().to_vec(),
            serial: hex,
        })
    }
}
