//! A certificate authority made for one run, and the leaf certificates it
//! issues, in the files certbot lays out.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};

/// A certificate authority trusted only by the clients of one test run.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: Vec<u8>,
}

/// A leaf certificate issued by a [`TestCa`].
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The private key, PEM (certbot's `privkey.pem`).
    pub key_pem: String,
    /// The leaf alone (certbot's `cert.pem`).
    pub cert_pem: String,
    /// Leaf then CA (certbot's `fullchain.pem`).
    pub chain_pem: String,
    /// The CA alone (certbot's `chain.pem`).
    pub ca_pem: String,
    /// The leaf, DER, to recognise it in a handshake.
    pub der: Vec<u8>,
    /// The serial number in lowercase hex, as lunchd logs it and
    /// `openssl x509 -serial` shows it.
    pub serial: String,
}

impl TestCa {
    /// A new CA. Panics where [`TestCa::try_new`] fails.
    #[track_caller]
    pub fn new() -> TestCa {
        match TestCa::try_new() {
            Ok(ca) => ca,
            Err(e) => panic!("cannot make the test CA: {e}"),
        }
    }

    /// A new CA, or rcgen's error (which only a broken crypto provider
    /// gives).
    pub fn try_new() -> Result<TestCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "lunchd test CA");
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf for `names` (the first is also its common name) with serial
    /// number `serial`, valid now.
    #[track_caller]
    pub fn issue(&self, names: &[&str], serial: u64) -> Leaf {
        self.issue_with(names, serial, |_| {})
    }

    /// [`TestCa::issue`] with `adjust` applied to the leaf's parameters
    /// (dates, extensions). Panics where [`TestCa::try_issue_with`] fails.
    #[track_caller]
    pub fn issue_with(&self, names: &[&str], serial: u64, adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
        match self.try_issue_with(names, serial, adjust) {
            Ok(leaf) => leaf,
            Err(e) => panic!("cannot issue a test certificate for {names:?}: {e}"),
        }
    }

    /// [`TestCa::issue_with`], returning rcgen's error (for an invalid
    /// name, say).
    pub fn try_issue_with(
        &self,
        names: &[&str],
        serial: u64,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<Leaf, rcgen::Error> {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let serial_bytes = serial_bytes(serial);
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            ca_pem: self.pem.clone(),
            der: cert.der().to_vec(),
            serial: hex(&serial_bytes),
        })
    }

    /// A rustls client configuration that trusts only this CA and offers
    /// `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.der.clone().into())
            .expect("the test CA is a valid trust anchor");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

/// A positive, minimally encoded DER serial whose hex form is predictable:
/// a fixed non-zero first byte, then `serial`.
fn serial_bytes(serial: u64) -> Vec<u8> {
    let mut bytes = vec![0x1a];
    bytes.extend_from_slice(&serial.to_be_bytes());
    bytes
}

/// `bytes` in lowercase hex, as serial numbers are shown.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    #[test]
    fn a_leaf_chains_to_its_ca_and_carries_its_serial() {
        let ca = TestCa::new();
        let leaf = ca.issue(&["lunch.test", "localhost"], 7);
        assert_eq!(leaf.serial, "1a0000000000000007");
        let chain: Vec<_> = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), leaf.der.as_slice());
        assert_eq!(chain[1].as_ref(), ca.der.as_slice());
        assert_eq!(leaf.chain_pem, format!("{}{}", leaf.cert_pem, leaf.ca_pem));
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        // The CA is a usable trust anchor.
        ca.client_config(&[b"h2"]);
    }

    #[test]
    fn an_invalid_name_is_an_error() {
        let ca = TestCa::new();
        assert!(ca.try_issue_with(&["lünch.test"], 1, |_| {}).is_err());
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0a, 0xff]), "000aff");
    }
}
