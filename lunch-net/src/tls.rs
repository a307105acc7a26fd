//! The serving certificate: loaded from PEM, checked, and swapped atomically
//! on reload.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

/// Certificate and key files larger than this are refused: a real chain is a
/// few KiB, and a mistaken path should not be read into memory whole.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Where the key and the certificate chain are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The leaf certificate followed by its intermediates, PEM
    /// (`fullchain.pem` in Let's Encrypt terms).
    pub chain: PathBuf,
}

/// A certificate or key that cannot be served, and why.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than any certificate or key.
    #[error("{} is {size} bytes; a key or certificate chain is at most {MAX_PEM_BYTES} bytes, is this the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is empty.
    #[error("{} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Binary DER instead of PEM.
    #[error(
        "{} looks like binary DER, not PEM; convert it with `openssl {kind} -inform der -in FILE -out FILE.pem`",
        path.display()
    )]
    Der {
        /// The file.
        path: PathBuf,
        /// `x509` or `pkey`, for the hint.
        kind: &'static str,
    },
    /// No PEM block of the wanted kind.
    #[error("{} has no {what} PEM block (-----BEGIN {label}-----)", path.display())]
    NoPem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// The PEM label expected.
        label: &'static str,
    },
    /// A key protected by a passphrase.
    #[error(
        "{} is an encrypted private key; lunchd needs it unencrypted (systemd's LoadCredential= and file \
         permissions protect it); decrypt it with `openssl pkey -in FILE -out FILE.plain`",
        path.display()
    )]
    Encrypted {
        /// The file.
        path: PathBuf,
    },
    /// A PEM block that does not decode.
    #[error("{} is not valid PEM: {message}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key of a type or curve rustls cannot sign with.
    #[error("{} holds a key lunchd cannot use: {message}", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// rustls' message.
        message: String,
    },
    /// A leaf certificate that does not parse as X.509.
    #[error("{}: the first certificate is not valid X.509: {message}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The key does not belong to the leaf certificate.
    #[error(
        "the private key in {} does not match the certificate in {}; were the files of two different \
         certificates combined?",
        key.display(),
        chain.display()
    )]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The chain file.
        chain: PathBuf,
    },
    /// The leaf certificate has expired.
    #[error("the certificate in {} expired on {}; renew it", path.display(), Utc(*not_after))]
    Expired {
        /// The chain file.
        path: PathBuf,
        /// When it expired.
        not_after: SystemTime,
    },
    /// The leaf certificate is not valid yet.
    #[error("the certificate in {} is not valid before {}; is the clock right?", path.display(), Utc(*not_before))]
    NotYetValid {
        /// The chain file.
        path: PathBuf,
        /// When it becomes valid.
        not_before: SystemTime,
    },
}

/// What a person wants to know about the serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject, e.g. `CN=lunch.example.com`.
    pub subject: String,
    /// The DNS names and IP addresses it covers, lowercase.
    pub names: Vec<String>,
    /// The serial number, hex.
    pub serial: String,
    /// Start of validity (whole seconds, as certificates give it).
    pub not_before: SystemTime,
    /// End of validity (whole seconds, as certificates give it).
    pub not_after: SystemTime,
    /// Where it was loaded from.
    pub source: String,
}

impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (serial {}, for {}, expires {})",
            self.subject,
            self.serial,
            self.names.join(" "),
            Utc(self.not_after)
        )
    }
}

/// A key and chain ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    key: Arc<CertifiedKey>,
    info: CertificateInfo,
}

impl LoadedCertificate {
    /// Reads and checks `files` at time `now`.
    pub fn load(files: &CertificateFiles, now: SystemTime) -> Result<LoadedCertificate, CertificateError> {
        let key = read_limited(&files.key)?;
        let chain = read_limited(&files.chain)?;
        LoadedCertificate::from_pem(&key, &files.key, &chain, &files.chain, now)
    }

    /// Checks PEM data already in memory. The paths only name the data in
    /// errors.
    pub fn from_pem(
        key_pem: &[u8],
        key_path: &Path,
        chain_pem: &[u8],
        chain_path: &Path,
        now: SystemTime,
    ) -> Result<LoadedCertificate, CertificateError> {
        let chain = parse_chain(chain_pem, chain_path)?;
        let key = parse_key(key_pem, key_path)?;
        let provider = provider();
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| CertificateError::UnsupportedKey {
                    path: key_path.to_owned(),
                    message: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(CertificateError::KeyMismatch {
                    key: key_path.to_owned(),
                    chain: chain_path.to_owned(),
                });
            }
            // The provider cannot derive this key's public half; nothing to compare.
            Err(_) => {}
        }
        let mut info = describe(&certified.cert[0], chain_path)?;
        info.source = chain_path.display().to_string();
        // Validity is given in whole seconds, and its last second counts
        // as valid throughout.
        let now = unix_seconds(now);
        if now > unix_seconds(info.not_after) {
            return Err(CertificateError::Expired {
                path: chain_path.to_owned(),
                not_after: info.not_after,
            });
        }
        if now < unix_seconds(info.not_before) {
            return Err(CertificateError::NotYetValid {
                path: chain_path.to_owned(),
                not_before: info.not_before,
            });
        }
        Ok(LoadedCertificate {
            key: Arc::new(certified),
            info,
        })
    }

    /// What is being served.
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }
}

/// The certificate being served, replaceable while serving.
///
/// Handshakes read the current certificate once, at the start; a swap
/// affects only handshakes that start after it. Connections already
/// established keep going untouched.
#[derive(Debug)]
pub struct CertificateStore {
    current: ArcSwap<LoadedCertificate>,
}

impl CertificateStore {
    /// A store serving `initial`.
    pub fn new(initial: LoadedCertificate) -> Arc<CertificateStore> {
        Arc::new(CertificateStore {
            current: ArcSwap::from_pointee(initial),
        })
    }

    /// Serves `next` from the next handshake on.
    pub fn replace(&self, next: LoadedCertificate) {
        self.current.store(Arc::new(next));
    }

    /// Loads `files` and, only if they are fully valid, serves them from the
    /// next handshake on. On error the current certificate stays.
    pub fn reload(&self, files: &CertificateFiles) -> Result<CertificateInfo, CertificateError> {
        let next = LoadedCertificate::load(files, SystemTime::now())?;
        let info = next.info.clone();
        self.replace(next);
        Ok(info)
    }

    /// The current certificate's details.
    pub fn info(&self) -> CertificateInfo {
        self.current.load().info.clone()
    }

    /// Whether `host` (lowercase, no port, IPv6 without brackets) is covered by
    /// the current certificate, wildcards included.
    pub fn covers(&self, host: &str) -> bool {
        self.current.load().info.covers(host)
    }
}

impl CertificateInfo {
    /// Whether `host` (lowercase, no port, IPv6 without brackets) is one of
    /// the certificate's names, wildcards included.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|name| name_matches(name, host))
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().key))
    }
}

/// The rustls configuration of the TLS server: TLS 1.3 and 1.2, ALPN `h2`
/// and `http/1.1`, session resumption by tickets and by a session cache, the
/// certificate from `store`.
pub fn server_config(store: Arc<CertificateStore>) -> Arc<ServerConfig> {
    let provider = Arc::new(provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .unwrap_or_else(|_| unreachable!("the aws-lc-rs provider supports TLS 1.2 and 1.3"))
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => tracing::warn!("TLS session tickets disabled: {e}"),
    }
    config.ignore_client_order = true;
    Arc::new(config)
}

/// aws-lc-rs with AES-128-GCM preferred over AES-256-GCM (the server's
/// order decides, see `ignore_client_order`): both are strong, and AES-128
/// takes 10 rounds per block instead of 14, which shows in the CPU time of
/// every record (about 5% per request for small responses).
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes_128_gcm(suite.suite()));
    provider
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite::*;
    matches!(
        suite,
        TLS13_AES_128_GCM_SHA256 | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn read_limited(path: &Path) -> Result<Vec<u8>, CertificateError> {
    use std::io::Read;
    let read_err = |source| CertificateError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_PEM_BYTES {
        return Err(CertificateError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut data).map_err(read_err)?;
    if data.len() as u64 > MAX_PEM_BYTES {
        return Err(CertificateError::TooLarge {
            path: path.to_owned(),
            size: data.len() as u64,
        });
    }
    Ok(data)
}

fn precheck(data: &[u8], path: &Path, kind: &'static str) -> Result<(), CertificateError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(CertificateError::Empty { path: path.to_owned() });
    }
    // DER starts with an ASN.1 SEQUENCE tag and holds no PEM armour.
    if data[0] == 0x30 && !contains(data, b"-----BEGIN") {
        return Err(CertificateError::Der {
            path: path.to_owned(),
            kind,
        });
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn bad_pem(path: &Path, e: pem::Error) -> CertificateError {
    // The parser shows labels and lines as lists of byte values; this
    // message ends up in `systemctl status`.
    let message = match &e {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("the {label} block has no `-----END {label}-----` line; the file is cut short")
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        _ => e.to_string(),
    };
    CertificateError::BadPem {
        path: path.to_owned(),
        message,
    }
}

fn parse_chain(data: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    precheck(data, path, "x509")?;
    let chain = CertificateDer::pem_slice_iter(data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if chain.is_empty() {
        return Err(CertificateError::NoPem {
            path: path.to_owned(),
            what: "certificate",
            label: "CERTIFICATE",
        });
    }
    Ok(chain)
}

fn parse_key(data: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, CertificateError> {
    precheck(data, path, "pkey")?;
    if contains(data, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(data, b"Proc-Type: 4,ENCRYPTED") {
        return Err(CertificateError::Encrypted { path: path.to_owned() });
    }
    PrivateKeyDer::from_pem_slice(data).map_err(|e| match e {
        pem::Error::NoItemsFound => CertificateError::NoPem {
            path: path.to_owned(),
            what: "private key",
            label: "PRIVATE KEY",
        },
        e => bad_pem(path, e),
    })
}

fn describe(leaf: &CertificateDer<'_>, path: &Path) -> Result<CertificateInfo, CertificateError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let bad = |message: String| CertificateError::BadCertificate {
        path: path.to_owned(),
        message,
    };
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.trim_end_matches('.').to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertificateInfo {
        subject: cert.subject().to_string(),
        names,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_before: system_time(cert.validity().not_before.timestamp()),
        not_after: system_time(cert.validity().not_after.timestamp()),
        source: String::new(),
    })
}

/// Whether certificate name `pattern` covers `host`: exact, or a
/// `*.example.com` wildcard covering exactly one more label.
pub(crate) fn name_matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == suffix,
            None => false,
        }
    } else {
        pattern == host
    }
}

/// Seconds since the epoch, negative before it; whole seconds, rounded down,
/// as certificate validity is checked and shown.
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            if before.subsec_nanos() > 0 { -secs - 1 } else { -secs }
        }
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    if unix_seconds >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// Shows a time as `YYYY-MM-DD HH:MM:SS UTC`, through x509-parser's
/// calendar (the one that read the certificate's dates).
struct Utc(SystemTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = unix_seconds(self.0);
        match x509_parser::time::ASN1Time::from_timestamp(secs) {
            Ok(time) => {
                let t = time.to_datetime();
                write!(
                    f,
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                )
            }
            // Beyond the years 9999 either way; no certificate says so.
            Err(_) => write!(f, "{secs} s after 1970-01-01 00:00:00 UTC"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "lunch.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("example.com", "example.com"));
        assert!(!name_matches("example.com", "example.co"));
    }

    #[test]
    fn a_cut_short_pem_file_is_named_in_words() {
        let e = parse_chain(
            b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n",
            Path::new("fullchain.pem"),
        )
        .expect_err("a truncated chain must be refused");
        assert_eq!(
            e.to_string(),
            "fullchain.pem is not valid PEM: the CERTIFICATE block has no `-----END CERTIFICATE-----` line; \
             the file is cut short"
        );
    }

    #[test]
    fn aes_128_gcm_is_preferred_and_no_suite_is_lost() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut default: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let first_tls13 = suites.iter().find(|s| format!("{s:?}").starts_with("TLS13_"));
        assert_eq!(first_tls13, Some(&rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        let first_tls12 = suites.iter().find(|s| format!("{s:?}").starts_with("TLS_ECDHE_ECDSA"));
        assert_eq!(
            first_tls12,
            Some(&rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        );
        let mut sorted = suites.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        default.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, default);
    }

    #[test]
    fn utc_formatting() {
        let utc = |secs| Utc(system_time(secs)).to_string();
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_824_000 + 3661), "2026-11-28 01:01:01 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn seconds_round_down_on_both_sides_of_the_epoch() {
        for secs in [-86_401, -1, 0, 1, 1_795_824_000] {
            assert_eq!(unix_seconds(system_time(secs)), secs);
            assert_eq!(unix_seconds(system_time(secs) + Duration::from_millis(500)), secs);
        }
    }
}
