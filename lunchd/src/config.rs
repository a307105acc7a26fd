//! The configuration file, in two stages: [`raw`] mirrors the TOML exactly
//! (unknown keys are errors), then [`Config::from_raw`] checks meaning and
//! builds the typed configuration the daemon runs with.
//!
//! Every problem is reported, not just the first, each with the file, the
//! key, and the line and column. The positions come from toml itself: its
//! parser's for syntax errors, its deserializer's for unknown keys and wrong
//! types (the key is the path serde was at), and the [`Spanned`] values of
//! [`raw`] for everything [`Config::from_raw`] refuses; a missing key points
//! at the table it belongs in.
//!
//! `[limits]` is described once, in [`LIMITS`]: the keys serde accepts,
//! their ranges, and (by tests) their part of docs/configuration.md and of
//! deploy/lunchd.toml.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lunch_core::{DishSpec, Menu, Mode};
use lunch_net::Limits;
use lunch_net::proxy::Trusted;
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Where lunchd looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/lunchd/lunchd.toml";

/// What a limit's number counts, for its documentation and its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Whole seconds.
    Seconds,
    /// Connections, bytes, fields or streams: the key's name says which.
    Count,
}

impl Unit {
    /// The type column of docs/configuration.md.
    #[cfg_attr(not(test), allow(dead_code, reason = "the docs test reads it"))]
    pub fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "seconds",
            Unit::Count => "integer",
        }
    }

    /// What follows a range in messages: `1 to 30 seconds`.
    fn suffix(self) -> &'static str {
        match self {
            Unit::Seconds => " seconds",
            Unit::Count => "",
        }
    }
}

/// One key of `[limits]`: what validation accepts and what the docs and the
/// example file say about it.
#[derive(Debug)]
pub struct LimitSpec {
    /// The key in `[limits]`.
    pub key: &'static str,
    /// What the number counts.
    pub unit: Unit,
    /// The smallest value accepted.
    pub min: u64,
    /// The largest value accepted.
    pub max: u64,
    /// What it bounds, without a final period.
    #[cfg_attr(not(test), allow(dead_code, reason = "the docs test reads it"))]
    pub doc: &'static str,
    /// The value in [`Limits`].
    #[cfg_attr(not(test), allow(dead_code, reason = "the docs test reads it"))]
    get: fn(&Limits) -> u64,
    /// Sets the value in [`Limits`], once it is in range.
    set: fn(&mut Limits, u64),
}

impl LimitSpec {
    /// The value when the key is absent: lunch-net's default.
    #[cfg_attr(not(test), allow(dead_code, reason = "the docs test reads it"))]
    pub fn default_value(&self) -> u64 {
        (self.get)(&Limits::default())
    }
}

/// Every key of `[limits]`, in the order the docs list them.
pub const LIMITS: &[LimitSpec] = &[
    LimitSpec {
        key: "handshake_timeout",
        unit: Unit::Seconds,
        min: 1,
        max: 30,
        doc: "From accept to a finished TLS handshake",
        get: |l| l.handshake_timeout.as_secs(),
        set: |l, v| l.handshake_timeout = Duration::from_secs(v),
    },
    LimitSpec {
        key: "header_timeout",
        unit: Unit::Seconds,
        min: 1,
        max: 30,
        doc: "To receive an HTTP/1 request's headers, counted from the start of the connection or the end \
              of the previous response: the slowloris bound, and how long a kept-alive HTTP/1 connection \
              waits for its next request",
        get: |l| l.header_timeout.as_secs(),
        set: |l, v| l.header_timeout = Duration::from_secs(v),
    },
    LimitSpec {
        key: "idle_timeout",
        unit: Unit::Seconds,
        min: 1,
        max: 3600,
        doc: "A connection without a byte read or written is closed, and so is one whose writes have been \
              blocked that long (a client that sends but does not read)",
        get: |l| l.idle_timeout.as_secs(),
        set: |l, v| l.idle_timeout = Duration::from_secs(v),
    },
    LimitSpec {
        key: "drain_timeout",
        unit: Unit::Seconds,
        min: 1,
        max: 600,
        doc: "At shutdown, in-flight requests get this long to finish",
        get: |l| l.drain_timeout.as_secs(),
        set: |l, v| l.drain_timeout = Duration::from_secs(v),
    },
    LimitSpec {
        key: "max_connections",
        unit: Unit::Count,
        min: 1,
        max: 1_000_000,
        doc: "Open connections per server; further clients wait in the kernel's listen queue",
        get: |l| l.max_connections as u64,
        set: |l, v| l.max_connections = v as usize,
    },
    LimitSpec {
        key: "max_connections_per_client",
        unit: Unit::Count,
        min: 1,
        max: 1_000_000,
        doc: "Open connections per client address and server; a client's further connections are closed \
              at once, before any TLS work, and counted. The default leaves room for an office of people \
              behind one NAT address (see docs/security.md); above `max_connections` it has no effect",
        get: |l| l.max_connections_per_client as u64,
        set: |l, v| l.max_connections_per_client = v as usize,
    },
    LimitSpec {
        key: "client_ipv6_prefix",
        unit: Unit::Count,
        min: 16,
        max: 128,
        doc: "Leading bits of an IPv6 address that make one client for `max_connections_per_client`: a \
              host usually has a whole /64 to pick addresses from",
        get: |l| u64::from(l.client_ipv6_prefix),
        // In range, so at most 128.
        set: |l, v| l.client_ipv6_prefix = v as u8,
    },
    LimitSpec {
        key: "max_header_bytes",
        unit: Unit::Count,
        min: 8192,
        max: 1024 * 1024,
        doc: "Bytes of a request head (HTTP/1) or header list (HTTP/2); larger requests get 431",
        get: |l| l.max_header_bytes as u64,
        set: |l, v| l.max_header_bytes = v as usize,
    },
    LimitSpec {
        key: "max_headers",
        unit: Unit::Count,
        min: 8,
        max: 1000,
        doc: "Header fields per HTTP/1 request",
        get: |l| l.max_headers as u64,
        set: |l, v| l.max_headers = v as usize,
    },
    LimitSpec {
        key: "max_streams",
        unit: Unit::Count,
        min: 1,
        max: 10_000,
        doc: "Concurrent streams per HTTP/2 connection",
        get: |l| u64::from(l.max_streams),
        // In range, so at most 10 000.
        set: |l, v| l.max_streams = v as u32,
    },
];

/// The keys of [`LIMITS`], for serde's "unknown field" message.
const LIMIT_KEYS: [&str; LIMITS.len()] = {
    let mut keys = [""; LIMITS.len()];
    let mut i = 0;
    while i < keys.len() {
        keys[i] = LIMITS[i].key;
        i += 1;
    }
    keys
};

/// The TOML as written: every key optional, unknown keys refused. Values
/// that [`Config::from_raw`] may refuse are [`Spanned`], and so is the
/// `[https]` table, for the keys it may miss.
pub mod raw {
    use serde::Deserialize;
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
    use toml::Spanned;

    use super::{LIMIT_KEYS, LIMITS, LimitSpec};

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        #[serde(default)]
        pub picker: Picker,
        pub dish: Option<Spanned<Vec<Spanned<Dish>>>>,
        #[serde(default)]
        pub http: Http,
        pub https: Option<Spanned<Https>>,
        #[serde(default)]
        pub limits: Limits,
        #[serde(default)]
        pub log: Log,
        pub proxy: Option<Spanned<Proxy>>,
    }

    /// `[proxy]`: the load balancers that send PROXY v2 headers. `from`
    /// is required, which [`Config::from_raw`] checks so that the error
    /// can point at this table.
    ///
    /// [`Config::from_raw`]: super::Config::from_raw
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Proxy {
        pub from: Option<Spanned<Vec<Spanned<String>>>>,
        pub drain_delay: Option<Spanned<u64>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Picker {
        pub mode: Option<Spanned<String>>,
        pub team: Option<String>,
        pub utc_offset: Option<Spanned<String>>,
    }

    /// One `[[dish]]`; `name` is required, which [`Config::from_raw`]
    /// checks so that the error can point at this table.
    ///
    /// [`Config::from_raw`]: super::Config::from_raw
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dish {
        pub name: Option<Spanned<String>>,
        pub weight: Option<Spanned<f64>>,
        pub tags: Option<Spanned<Vec<String>>>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Http {
        pub redirect: Option<bool>,
        pub listen: Option<Spanned<String>>,
        pub https_port: Option<Spanned<u16>>,
        pub canonical_host: Option<Spanned<String>>,
        pub allowed_hosts: Option<Vec<Spanned<String>>>,
        pub acme_webroot: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Https {
        pub listen: Option<Spanned<String>>,
        pub key: Option<String>,
        pub certificate: Option<String>,
        pub hsts_max_age: Option<u64>,
    }

    /// `[limits]`: the values given, each with its key in [`LIMITS`].
    /// Unknown keys are refused as `deny_unknown_fields` refuses them.
    #[derive(Debug, Default)]
    pub struct Limits(pub Vec<(&'static LimitSpec, Spanned<u64>)>);

    impl<'de> Deserialize<'de> for Limits {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Limits, D::Error> {
            deserializer.deserialize_struct("Limits", &LIMIT_KEYS, Table)
        }
    }

    struct Table;

    impl<'de> Visitor<'de> for Table {
        type Value = Limits;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // As serde derives it for a struct, like the other tables.
            f.write_str("struct Limits")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Limits, A::Error> {
            let mut values = Vec::new();
            while let Some(spec) = map.next_key_seed(Key)? {
                values.push((spec, map.next_value()?));
            }
            Ok(Limits(values))
        }
    }

    /// A key of `[limits]`, as the spec of that key.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = &'static LimitSpec;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<&'static LimitSpec, D::Error> {
            deserializer.deserialize_identifier(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = &'static LimitSpec;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key of [limits]")
        }

        fn visit_str<E: de::Error>(self, key: &str) -> Result<&'static LimitSpec, E> {
            LIMITS
                .iter()
                .find(|spec| spec.key == key)
                .ok_or_else(|| E::unknown_field(key, &LIMIT_KEYS))
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub level: Option<Spanned<String>>,
        pub access: Option<bool>,
        pub access_query: Option<bool>,
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The menu.
    pub menu: Menu,
    /// How random picks are made.
    pub mode: Mode,
    /// Salt of the daily pick: teams sharing it share the dish of the day.
    pub team: String,
    /// Offset from UTC of the team's day, in minutes.
    pub utc_offset_minutes: i32,
    /// Whether to run the redirect server on the `http` socket.
    pub redirect: bool,
    /// Address bound for HTTP when not socket-activated.
    pub http_listen: SocketAddr,
    /// The HTTPS port redirects name; default: the `https` socket's port.
    pub https_port: Option<u16>,
    /// Host redirects use when the request names no allowed host.
    pub canonical_host: Option<String>,
    /// Hosts redirects may name; default: the certificate's names.
    pub allowed_hosts: Option<Vec<String>>,
    /// Directory of ACME http-01 challenges (certbot `--webroot -w`).
    pub acme_webroot: Option<PathBuf>,
    /// Address bound for HTTPS when not socket-activated.
    pub https_listen: SocketAddr,
    /// The private key file; `None` with no certificate means a development
    /// certificate.
    pub key: Option<PathBuf>,
    /// The certificate chain file.
    pub certificate: Option<PathBuf>,
    /// HSTS max-age in seconds; 0 sends no HSTS header.
    pub hsts_max_age: u64,
    /// Timeouts and size limits.
    pub limits: Limits,
    /// Log filter (`RUST_LOG` syntax).
    pub log_level: String,
    /// Whether to write the access log (`[log] access`).
    pub access_log: bool,
    /// Whether access log lines keep the query string.
    pub access_query: bool,
    /// The load balancers whose connections start with a PROXY v2 header
    /// (`[proxy] from`); empty when `[proxy]` is absent.
    pub proxy_from: Trusted,
    /// How long `/healthz` fails at stop before the servers stop accepting
    /// (`[proxy] drain_delay`); zero when `[proxy]` is absent.
    pub drain_delay: Duration,
}

impl Default for Config {
    fn default() -> Config {
        let raw = raw::Config::default();
        let mut errors = Vec::new();
        let config = Config::from_raw(raw, None, &mut |_, _, _| errors.push(()));
        debug_assert!(errors.is_empty());
        config
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The dotted key, e.g. `dish[2].weight`; empty for syntax errors.
    pub key: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, and how to fix it where known.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
    let error = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            key: String::new(),
            position: None,
            message,
        }])
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_CONFIG_BYTES => {
            return Err(error(format!(
                "the file is {} bytes; a configuration is at most {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(error(format!("cannot read: {e}"))),
    }
    let source = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
    parse(&source, path)
}

/// Validates `source`, which `path` names in errors.
pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let at = |key: String, span: Option<Range<usize>>, message: String| ConfigError {
        file: path.to_owned(),
        key,
        position: span.map(|s| line_column(source, s.start)),
        message,
    };
    let (mut table, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        return Err(ConfigErrors(
            syntax
                .into_iter()
                .map(|e| at(String::new(), e.span(), first_line(e.message())))
                .collect(),
        ));
    }
    let mut errors = Vec::new();
    // Deserialization stops at the first problem; remove the key it is
    // about and try again to find the others.
    let raw = loop {
        let deserializer = toml::de::Deserializer::from(table.clone());
        match serde_path_to_error::deserialize::<_, raw::Config>(deserializer) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let steps = steps(e.path());
                let e = e.into_inner();
                errors.push(at(dotted(&steps), e.span(), first_line(e.message())));
                if !remove(table.get_mut(), &steps) || errors.len() >= 100 {
                    break None;
                }
            }
        }
    };
    let Some(raw) = raw else {
        return Err(ConfigErrors(errors));
    };
    // Semantic checks run on what deserialized, adding to any errors above.
    let config = Config::from_raw(raw, Some(path), &mut |key, span, message| {
        errors.push(at(key.to_owned(), Some(span), message));
    });
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One step of a path into the TOML tree.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// The keys and indices of the path serde was at when it failed.
fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|segment| match segment {
            // `Spanned<T>` deserializes as a map of its span and value, under
            // private keys that are not the file's.
            Segment::Map { key } if key.starts_with("$__serde_spanned_private") => None,
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            _ => None,
        })
        .collect()
}

/// `http.allowed_hosts[2]`, `dish[1].weight`: indices count from 1.
fn dotted(steps: &[Step]) -> String {
    let mut dotted = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                dotted.push_str(key);
            }
            Step::Index(i) => dotted.push_str(&format!("[{}]", i + 1)),
        }
    }
    dotted
}

/// Removes the last key on `path` (with the array it may be) from `table`;
/// false when there is no key to remove, such as for a problem with the
/// whole file.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    match path {
        [Step::Key(key), rest @ ..] if rest.iter().all(|s| matches!(s, Step::Index(_))) => {
            table.remove(key.as_str()).is_some()
        }
        [Step::Key(key), rest @ ..] => table
            .get_mut(key.as_str())
            .is_some_and(|value| remove_in(value.get_mut(), rest)),
        _ => false,
    }
}

fn remove_in(value: &mut DeValue<'_>, path: &[Step]) -> bool {
    match (value, path) {
        (DeValue::Table(table), _) => remove(table, path),
        (DeValue::Array(items), [Step::Index(i), rest @ ..]) => {
            items.get_mut(*i).is_some_and(|item| remove_in(item.get_mut(), rest))
        }
        _ => false,
    }
}

impl Config {
    /// Checks meaning and fills in defaults. Problems go to `report` as
    /// `(dotted key, span in the source, message)`; the returned value is
    /// then only partly meaningful.
    pub fn from_raw(
        raw: raw::Config,
        source: Option<&Path>,
        report: &mut dyn FnMut(&str, Range<usize>, String),
    ) -> Config {
        let menu = match raw.dish {
            None => Menu::builtin(),
            Some(dishes) => menu(dishes, report),
        };
        let mode = raw.picker.mode.map_or(Mode::default(), |mode| {
            mode.get_ref().parse().unwrap_or_else(|e: lunch_core::UnknownMode| {
                report("picker.mode", mode.span(), e.to_string());
                Mode::default()
            })
        });
        let utc_offset_minutes = raw.picker.utc_offset.map_or(0, |offset| {
            parse_utc_offset(offset.get_ref()).unwrap_or_else(|| {
                report(
                    "picker.utc_offset",
                    offset.span(),
                    "expected an offset such as \"+01:00\" or \"-05:30\", between -14:00 and +14:00".into(),
                );
                0
            })
        });
        let mut address = |key: &str, value: Option<Spanned<String>>, default: &str| {
            let default = || {
                default
                    .parse()
                    .unwrap_or_else(|_| unreachable!("default addresses are valid"))
            };
            value.map_or_else(default, |text| {
                text.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                    report(
                        key,
                        text.span(),
                        format!(
                            "`{}` is not an address with a port, such as \"127.0.0.1:8443\" or \"[::]:443\"",
                            text.get_ref()
                        ),
                    );
                    default()
                })
            })
        };
        let (https_span, https) = match raw.https {
            Some(https) => (https.span(), https.into_inner()),
            None => (0..0, raw::Https::default()),
        };
        let http_listen = address("http.listen", raw.http.listen, "127.0.0.1:8080");
        let https_listen = address("https.listen", https.listen, "127.0.0.1:8443");
        let canonical_host = raw
            .http
            .canonical_host
            .and_then(|host| match host_name(host.get_ref()) {
                Some(h) => Some(h),
                None => {
                    report(
                        "http.canonical_host",
                        host.span(),
                        format!("`{}` is not a host name or IP address (without a port)", host.get_ref()),
                    );
                    None
                }
            });
        let allowed_hosts = raw.http.allowed_hosts.map(|hosts| {
            hosts
                .into_iter()
                .enumerate()
                .filter_map(|(i, host)| {
                    let text = host.get_ref();
                    let plain = text.strip_prefix("*.").unwrap_or(text);
                    match host_name(plain) {
                        Some(h) => Some(if text.starts_with("*.") { format!("*.{h}") } else { h }),
                        None => {
                            report(
                                &format!("http.allowed_hosts[{}]", i + 1),
                                host.span(),
                                format!("`{text}` is not a host name, wildcard or IP address"),
                            );
                            None
                        }
                    }
                })
                .collect()
        });
        let relative = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            match source.and_then(Path::parent) {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p,
            }
        };
        let key = https.key.map(relative);
        let certificate = https.certificate.map(relative);
        if key.is_some() != certificate.is_some() {
            let missing = if key.is_none() {
                "https.key"
            } else {
                "https.certificate"
            };
            report(
                missing,
                https_span,
                "set both `key` and `certificate`, or neither for a development certificate".into(),
            );
        }
        if let Some(port) = raw.http.https_port.as_ref().filter(|p| *p.get_ref() == 0) {
            report(
                "http.https_port",
                port.span(),
                format!("{} is not a port", port.get_ref()),
            );
        }
        let mut limits = Limits::default();
        for spec in LIMITS {
            let Some((_, value)) = raw.limits.0.iter().find(|(given, _)| given.key == spec.key) else {
                continue;
            };
            let v = *value.get_ref();
            if (spec.min..=spec.max).contains(&v) {
                (spec.set)(&mut limits, v);
            } else {
                report(
                    &format!("limits.{}", spec.key),
                    value.span(),
                    format!(
                        "{v} is out of range; use {} to {}{}",
                        spec.min,
                        spec.max,
                        spec.unit.suffix()
                    ),
                );
            }
        }
        let (proxy_from, drain_delay) = raw.proxy.map_or((Trusted::default(), Duration::ZERO), |proxy| {
            proxy_config(proxy, report)
        });
        let log_level = match raw.log.level {
            None => "info".to_owned(),
            Some(level) => {
                if tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err() {
                    report(
                        "log.level",
                        level.span(),
                        format!(
                            "`{}` is not a log filter; use error, warn, info, debug or trace",
                            level.get_ref()
                        ),
                    );
                }
                level.into_inner()
            }
        };
        Config {
            menu,
            mode,
            team: raw.picker.team.unwrap_or_default(),
            utc_offset_minutes,
            redirect: raw.http.redirect.unwrap_or(true),
            http_listen,
            https_port: raw.http.https_port.map(Spanned::into_inner),
            canonical_host,
            allowed_hosts,
            acme_webroot: raw.http.acme_webroot.map(relative),
            https_listen,
            key,
            certificate,
            hsts_max_age: https.hsts_max_age.unwrap_or(31_536_000),
            limits,
            log_level,
            access_log: raw.log.access.unwrap_or(false),
            access_query: raw.log.access_query.unwrap_or(false),
            proxy_from,
            drain_delay,
        }
    }
}

/// The default of `[proxy] drain_delay`, in seconds: what HAProxy's
/// checks in docs/scale-out.md need to take a node out (`inter 500ms
/// fall 2`: two failed checks, a second and a check's time), three times
/// over: with 2 s a restarted node sometimes stayed in the rotation in
/// the cluster run on a busy machine, whose checks fell behind.
pub const DRAIN_DELAY_DEFAULT: u64 = 3;
/// The largest `[proxy] drain_delay`, in seconds.
pub const DRAIN_DELAY_MAX: u64 = 60;

/// `[proxy]`: the networks of `from`, each entry checked on its own so
/// that every bad one is reported at its place, and the drain delay.
fn proxy_config(proxy: Spanned<raw::Proxy>, report: &mut dyn FnMut(&str, Range<usize>, String)) -> (Trusted, Duration) {
    let table = proxy.span();
    let proxy = proxy.into_inner();
    let drain_delay = match proxy.drain_delay {
        None => DRAIN_DELAY_DEFAULT,
        Some(delay) if *delay.get_ref() <= DRAIN_DELAY_MAX => *delay.get_ref(),
        Some(delay) => {
            report(
                "proxy.drain_delay",
                delay.span(),
                format!(
                    "{} is out of range; use 0 to {DRAIN_DELAY_MAX} seconds",
                    delay.get_ref()
                ),
            );
            DRAIN_DELAY_DEFAULT
        }
    };
    (proxy_from(proxy.from, table, report), Duration::from_secs(drain_delay))
}

fn proxy_from(
    from: Option<Spanned<Vec<Spanned<String>>>>,
    table: Range<usize>,
    report: &mut dyn FnMut(&str, Range<usize>, String),
) -> Trusted {
    let Some(from) = from else {
        report(
            "proxy.from",
            table,
            "missing field `from`; list the load balancers' addresses, such as [\"10.0.0.1/32\"], or remove [proxy] \
             when clients connect directly"
                .into(),
        );
        return Trusted::default();
    };
    let (list, entries) = (from.span(), from.into_inner());
    if entries.is_empty() {
        report(
            "proxy.from",
            list,
            "an empty list trusts no load balancer and would refuse every connection; list the balancers' \
             addresses, or remove [proxy] when clients connect directly"
                .into(),
        );
        return Trusted::default();
    }
    let mut good = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match Trusted::parse(&[entry.get_ref()]) {
            Ok(_) => good.push(entry.get_ref().as_str()),
            Err(e) => report(&format!("proxy.from[{}]", i + 1), entry.span(), e.to_string()),
        }
    }
    Trusted::parse(&good).unwrap_or_else(|_| unreachable!("every entry parsed on its own"))
}

/// The menu of the `[[dish]]` tables, or the built-in one after reporting
/// why not.
fn menu(dishes: Spanned<Vec<Spanned<raw::Dish>>>, report: &mut dyn FnMut(&str, Range<usize>, String)) -> Menu {
    let all = dishes.span();
    let dishes = dishes.into_inner();
    let mut specs = Vec::with_capacity(dishes.len());
    for (i, dish) in dishes.iter().enumerate() {
        let Some(name) = &dish.get_ref().name else {
            report(
                &format!("dish[{}].name", i + 1),
                dish.span(),
                "missing field `name`; every dish needs one".into(),
            );
            continue;
        };
        let dish = dish.get_ref();
        specs.push(DishSpec {
            name: name.get_ref().clone(),
            weight: dish.weight.as_ref().map(|w| *w.get_ref()),
            tags: dish.tags.as_ref().map(|t| t.get_ref().clone()).unwrap_or_default(),
        });
    }
    if specs.len() < dishes.len() {
        // The dishes' numbers in the menu's errors would not be the file's.
        return Menu::builtin();
    }
    Menu::new(specs).unwrap_or_else(|errors| {
        for e in errors {
            let (key, span) = match (e.index().and_then(|i| Some((i, dishes.get(i)?))), e.field()) {
                (Some((i, dish)), Some(field)) => {
                    let d = dish.get_ref();
                    let span = match field {
                        "name" => d.name.as_ref().map(Spanned::span),
                        "weight" => d.weight.as_ref().map(Spanned::span),
                        "tags" => d.tags.as_ref().map(Spanned::span),
                        _ => None,
                    };
                    (format!("dish[{}].{field}", i + 1), span.unwrap_or_else(|| dish.span()))
                }
                _ => ("dish".to_owned(), all.clone()),
            };
            report(&key, span, e.to_string());
        }
        Menu::builtin()
    })
}

/// A configured host name or IP address, normalised as the redirect
/// server compares them; `None` for anything else, such as a name with a
/// port.
fn host_name(text: &str) -> Option<String> {
    lunch_net::redirect::normalise_host(text)
        .filter(|_| !text.contains(':') || text.starts_with('['))
        .map(Cow::into_owned)
}

/// `+HH:MM` or `-HH:MM` (or `Z`) to minutes.
fn parse_utc_offset(text: &str) -> Option<i32> {
    if text == "Z" {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= 14 * 60).then_some(sign * minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(source: &str, expected: &[&str]) {
        let errors = parse(source, Path::new("/etc/lunchd/lunchd.toml")).expect_err("should be refused");
        let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn empty_file_is_the_default() {
        let config = parse("", Path::new("x.toml")).unwrap();
        assert_eq!(config.menu, Menu::builtin());
        assert_eq!(config.https_listen, "127.0.0.1:8443".parse().unwrap());
        assert!(config.redirect);
    }

    #[test]
    fn typo_and_wrong_type_are_both_reported() {
        check(
            "[https]\nlisten = \"127.0.0.1:8443\"\nhsts_max_ag = 5\n\n[limits]\nidle_timeout = \"sixty\"\n",
            &[
                "/etc/lunchd/lunchd.toml:3:1: `https.hsts_max_ag`: unknown field `hsts_max_ag`, expected one of `listen`, `key`, `certificate`, `hsts_max_age`",
                "/etc/lunchd/lunchd.toml:6:16: `limits.idle_timeout`: invalid type: string \"sixty\", expected u64",
            ],
        );
    }

    #[test]
    fn syntax_errors() {
        let errors = parse("[http\nx = 1\n", Path::new("a.toml")).unwrap_err();
        assert!(errors.0[0].to_string().starts_with("a.toml:1:"), "{errors}");
    }

    #[test]
    fn semantic_errors_point_at_keys() {
        check(
            "[picker]\nmode = \"random\"\nutc_offset = \"+25:00\"\n\n[[dish]]\nname = \"Soup\"\n\n[[dish]]\nname = \"soup\"\nweight = -1.0\n\n[http]\nlisten = \"localhost\"\n",
            &[
                "/etc/lunchd/lunchd.toml:9:8: `dish[2].name`: dish 2 `soup` duplicates dish 1; names must be unique",
                "/etc/lunchd/lunchd.toml:10:10: `dish[2].weight`: dish 2 `soup` has weight -1; weights must be finite and greater than 0",
                "/etc/lunchd/lunchd.toml:2:8: `picker.mode`: unknown picker mode `random`; expected one of `uniform`, `weighted`, `no-repeat`",
                "/etc/lunchd/lunchd.toml:3:14: `picker.utc_offset`: expected an offset such as \"+01:00\" or \"-05:30\", between -14:00 and +14:00",
                "/etc/lunchd/lunchd.toml:13:10: `http.listen`: `localhost` is not an address with a port, such as \"127.0.0.1:8443\" or \"[::]:443\"",
            ],
        );
    }

    #[test]
    fn key_without_certificate() {
        check(
            "[https]\nkey = \"k.pem\"\n",
            &[
                "/etc/lunchd/lunchd.toml:1:1: `https.certificate`: set both `key` and `certificate`, or neither for a development certificate",
            ],
        );
    }

    /// One case of each kind of problem, each error with its file, line,
    /// column and key.
    #[test]
    fn every_problem_has_a_position_and_a_key() {
        let cases: &[(&str, &[&str])] = &[
            // An unknown key, at the key.
            (
                "[http]\nredirect = true\nredirekt = false\n",
                &[
                    "/etc/lunchd/lunchd.toml:3:1: `http.redirekt`: unknown field `redirekt`, expected one of `redirect`, `listen`, `https_port`, `canonical_host`, `allowed_hosts`, `acme_webroot`",
                ],
            ),
            (
                "zzz = 1\n",
                &[
                    "/etc/lunchd/lunchd.toml:1:1: `zzz`: unknown field `zzz`, expected one of `picker`, `dish`, `http`, `https`, `limits`, `log`, `proxy`",
                ],
            ),
            (
                "[limits]\nmax_conections = 5\n",
                &[
                    "/etc/lunchd/lunchd.toml:2:1: `limits.max_conections`: unknown field `max_conections`, expected one of `handshake_timeout`, `header_timeout`, `idle_timeout`, `drain_timeout`, `max_connections`, `max_connections_per_client`, `client_ipv6_prefix`, `max_header_bytes`, `max_headers`, `max_streams`",
                ],
            ),
            // A wrong type, at the value; each of several in one table.
            (
                "[http]\nhttps_port = \"443\"\n",
                &["/etc/lunchd/lunchd.toml:2:14: `http.https_port`: invalid type: string \"443\", expected u16"],
            ),
            (
                "[[dish]]\nname = \"Soup\"\ntags = [\"warm\", 3]\nweight = \"heavy\"\nspicy = true\n",
                &[
                    "/etc/lunchd/lunchd.toml:5:1: `dish[1].spicy`: unknown field `spicy`, expected one of `name`, `weight`, `tags`",
                    "/etc/lunchd/lunchd.toml:3:17: `dish[1].tags[2]`: invalid type: integer `3`, expected a string",
                    "/etc/lunchd/lunchd.toml:4:10: `dish[1].weight`: invalid type: string \"heavy\", expected f64",
                ],
            ),
            (
                "limits = 5\n",
                &["/etc/lunchd/lunchd.toml:1:10: `limits`: invalid type: integer `5`, expected struct Limits"],
            ),
            // A limit out of range, at the value.
            (
                "[limits]\nmax_streams = 0\nidle_timeout = 3601\n",
                &[
                    "/etc/lunchd/lunchd.toml:3:16: `limits.idle_timeout`: 3601 is out of range; use 1 to 3600 seconds",
                    "/etc/lunchd/lunchd.toml:2:15: `limits.max_streams`: 0 is out of range; use 1 to 10000",
                ],
            ),
            (
                "[limits]\nidle_timeout = -5\n",
                &["/etc/lunchd/lunchd.toml:2:16: `limits.idle_timeout`: invalid value: integer `-5`, expected u64"],
            ),
            // A missing key, at the table it belongs in.
            (
                "[[dish]]\nname = \"Soup\"\n\n[[dish]]\nweight = 2.0\n",
                &["/etc/lunchd/lunchd.toml:4:1: `dish[2].name`: missing field `name`; every dish needs one"],
            ),
            (
                "dish = [{ name = \"Soup\" }, { weight = 2.0 }]\n",
                &["/etc/lunchd/lunchd.toml:1:28: `dish[2].name`: missing field `name`; every dish needs one"],
            ),
            (
                "[picker]\nteam = \"a\"\n\n[https]\ncertificate = \"c.pem\"\n",
                &[
                    "/etc/lunchd/lunchd.toml:4:1: `https.key`: set both `key` and `certificate`, or neither for a development certificate",
                ],
            ),
            (
                "https.key = \"k.pem\"\n",
                &[
                    "/etc/lunchd/lunchd.toml:1:1: `https.certificate`: set both `key` and `certificate`, or neither for a development certificate",
                ],
            ),
            // A bad host name, at the value or the element.
            (
                "[http]\nallowed_hosts = [\"lunch.example.com\", \"bad host\"]\ncanonical_host = \"example.com:443\"\n",
                &[
                    "/etc/lunchd/lunchd.toml:3:18: `http.canonical_host`: `example.com:443` is not a host name or IP address (without a port)",
                    "/etc/lunchd/lunchd.toml:2:39: `http.allowed_hosts[2]`: `bad host` is not a host name, wildcard or IP address",
                ],
            ),
            // [proxy]: each bad network at its element, a missing or empty
            // list at its table or value.
            (
                "[proxy]\nfrom = [\"10.77.0.1/32\", \"10.77.0.0/33\", \"haproxy\"]\n",
                &[
                    "/etc/lunchd/lunchd.toml:2:25: `proxy.from[2]`: `10.77.0.0/33` is not an address or a network (ADDR/PREFIX, e.g. 10.0.0.1/32 or fd00::/64)",
                    "/etc/lunchd/lunchd.toml:2:41: `proxy.from[3]`: `haproxy` is not an address or a network (ADDR/PREFIX, e.g. 10.0.0.1/32 or fd00::/64)",
                ],
            ),
            (
                "[log]\nlevel = \"info\"\n\n[proxy]\n",
                &[
                    "/etc/lunchd/lunchd.toml:4:1: `proxy.from`: missing field `from`; list the load balancers' addresses, such as [\"10.0.0.1/32\"], or remove [proxy] when clients connect directly",
                ],
            ),
            (
                "[proxy]\nfrom = [\"10.77.0.1\"]\ndrain_delay = 61\n",
                &["/etc/lunchd/lunchd.toml:3:15: `proxy.drain_delay`: 61 is out of range; use 0 to 60 seconds"],
            ),
            (
                "[proxy]\nfrom = []\n",
                &[
                    "/etc/lunchd/lunchd.toml:2:8: `proxy.from`: an empty list trusts no load balancer and would refuse every connection; list the balancers' addresses, or remove [proxy] when clients connect directly",
                ],
            ),
            (
                "[proxy]\nfrom = \"10.77.0.1\"\n",
                // Then missing, as a dish's `name` of the wrong type is.
                &[
                    "/etc/lunchd/lunchd.toml:2:8: `proxy.from`: invalid type: string \"10.77.0.1\", expected a sequence",
                    "/etc/lunchd/lunchd.toml:1:1: `proxy.from`: missing field `from`; list the load balancers' addresses, such as [\"10.0.0.1/32\"], or remove [proxy] when clients connect directly",
                ],
            ),
            // A syntax error has a position but no key.
            ("a = 1\na = 2\n", &["/etc/lunchd/lunchd.toml:2:1: duplicate key"]),
        ];
        for (source, expected) in cases {
            check(source, expected);
        }
    }

    #[test]
    fn proxy_lists_the_balancers_and_is_off_without_it() {
        assert!(parse("", Path::new("x.toml")).unwrap().proxy_from.is_empty());
        let config = parse("[proxy]\nfrom = [\"10.77.0.1\", \"fd00::/64\"]\n", Path::new("x.toml")).unwrap();
        assert_eq!(config.proxy_from.to_string(), "10.77.0.1/32, fd00::/64");
        assert!(config.proxy_from.contains("fd00::5".parse().unwrap()));
        assert!(!config.proxy_from.contains("10.77.0.2".parse().unwrap()));
        assert_eq!(config.drain_delay, Duration::from_secs(DRAIN_DELAY_DEFAULT));
        assert_eq!(parse("", Path::new("x.toml")).unwrap().drain_delay, Duration::ZERO);
        let config = parse(
            "[proxy]\nfrom = [\"10.77.0.1\"]\ndrain_delay = 0\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(config.drain_delay, Duration::ZERO);
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let config = parse(
            "[https]\nkey = \"k.pem\"\ncertificate = \"/abs/c.pem\"\n",
            Path::new("/etc/lunchd/lunchd.toml"),
        )
        .unwrap();
        assert_eq!(config.key.unwrap(), Path::new("/etc/lunchd/k.pem"));
        assert_eq!(config.certificate.unwrap(), Path::new("/abs/c.pem"));
    }

    #[test]
    fn utc_offsets() {
        assert_eq!(parse_utc_offset("+01:00"), Some(60));
        assert_eq!(parse_utc_offset("-05:30"), Some(-330));
        assert_eq!(parse_utc_offset("Z"), Some(0));
        assert_eq!(parse_utc_offset("+14:01"), None);
        assert_eq!(parse_utc_offset("1:00"), None);
        // Signs inside the fields are not a second sign.
        assert_eq!(parse_utc_offset("+-1:00"), None);
        assert_eq!(parse_utc_offset("++1:00"), None);
        assert_eq!(parse_utc_offset("+01:+5"), None);
    }

    /// The keys serde accepts in `section`, read from its "unknown field"
    /// message, so this list cannot fall behind the structs.
    fn keys_of(section: &str) -> Vec<String> {
        let source = format!("{section}\nzzz_unknown = 1\n");
        let errors = parse(&source, Path::new("x.toml")).unwrap_err();
        let message = &errors.0[0].message;
        let expected = message
            .split_once("expected one of ")
            .or_else(|| message.split_once("expected "))
            .map_or(message.as_str(), |(_, rest)| rest);
        // serde says "`a` or `b`" of two keys, "one of `a`, `b`, `c`" of more.
        expected
            .split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn every_key_is_documented() {
        let docs = include_str!("../../docs/configuration.md");
        let example = include_str!("../../deploy/lunchd.toml");
        assert_eq!(keys_of("[limits]"), LIMIT_KEYS, "serde accepts the keys of LIMITS");
        for section in [
            "",
            "[picker]",
            "[[dish]]\nname = \"x\"",
            "[http]",
            "[https]",
            "[limits]",
            "[log]",
            "[proxy]",
        ] {
            let keys = match section {
                "[limits]" => LIMITS.iter().map(|spec| spec.key.to_owned()).collect(),
                _ => keys_of(section),
            };
            assert!(
                !keys.is_empty() && keys.iter().all(|k| !k.contains(' ')),
                "{section}: {keys:?}"
            );
            for key in keys {
                if section.is_empty() {
                    assert!(
                        docs.contains(&format!("## `[{key}]`"))
                            || docs.contains(&format!("## `[[{key}]]`"))
                            || docs.contains(&format!("## `[{key}]`:")),
                        "section {key} undocumented"
                    );
                    continue;
                }
                assert!(
                    docs.contains(&format!("| `{key}` |")),
                    "{section} {key} missing in docs/configuration.md"
                );
                assert!(
                    example.contains(&format!("{key} =")),
                    "{section} {key} missing in deploy/lunchd.toml"
                );
            }
        }
    }

    /// docs/deploy.md's step 3 uncomments `acme_webroot` in the installed
    /// example with sed, and xtask's e2e reads the path back from the file
    /// as it is, so it must stay one absolute path at the start of a line.
    #[test]
    fn the_example_acme_webroot_uncommented_is_valid() {
        let example = include_str!("../../deploy/lunchd.toml");
        let edited = example.replace("\n#acme_webroot = ", "\nacme_webroot = ");
        assert_ne!(edited, example, "deploy/lunchd.toml has no `#acme_webroot = ` line");
        let config = parse(&edited, Path::new("/etc/lunchd/lunchd.toml")).unwrap();
        assert!(config.acme_webroot.is_some_and(|p| p.is_absolute()));
    }

    #[test]
    fn limits_match_lunch_net() {
        let mut limits = Limits::default();
        for spec in LIMITS {
            assert!((spec.min..=spec.max).contains(&spec.default_value()), "{}", spec.key);
            // Each key sets its own field, and only that one.
            let before = format!("{limits:?}");
            (spec.set)(&mut limits, spec.max);
            assert_eq!((spec.get)(&limits), spec.max, "{}", spec.key);
            assert_ne!(format!("{limits:?}"), before, "{}", spec.key);
            (spec.set)(&mut limits, spec.default_value());
            assert_eq!(format!("{limits:?}"), before, "{}", spec.key);
        }
    }

    const GENERATED: &str = "<!-- generated from LIMITS in lunchd/src/config.rs by its tests: edit it there -->\n";
    const END_OF_GENERATED: &str = "<!-- end of the generated part -->\n";

    /// The `[limits]` table of docs/configuration.md.
    fn limits_markdown() -> String {
        let mut table = String::from("| key | type | default | range | meaning |\n|---|---|---|---|---|\n");
        for spec in LIMITS {
            table.push_str(&format!(
                "| `{}` | {} | `{}` | {}–{} | {}. |\n",
                spec.key,
                spec.unit.name(),
                spec.default_value(),
                spec.min,
                spec.max,
                spec.doc
            ));
        }
        table
    }

    /// The `[limits]` section of deploy/lunchd.toml.
    fn limits_example() -> String {
        let mut section = String::from("[limits]\n");
        for spec in LIMITS {
            // The range is one word: it is not broken across lines.
            let range = format!("({} to {}{}).", spec.min, spec.max, spec.unit.suffix());
            let mut line = String::from("#");
            for word in spec.doc.split(' ').chain([range.as_str()]) {
                if line.len() + 1 + word.len() > 76 {
                    section.push_str(&line);
                    section.push('\n');
                    line = String::from("#");
                }
                line.push(' ');
                line.push_str(word);
            }
            section.push_str(&line);
            section.push_str(&format!("\n#{} = {}\n", spec.key, spec.default_value()));
        }
        section
    }

    /// Replaces `from..to` of the file at `path` (relative to the workspace)
    /// with `generated`, and fails if that changed the file, so that a
    /// stale file is both reported and fixed (rust-analyzer's
    /// `ensure_file_contents`).
    fn ensure_generated(path: &str, from: &str, to: &str, generated: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        let old = std::fs::read_to_string(&path).unwrap();
        let start = old
            .find(from)
            .unwrap_or_else(|| panic!("{} has no {from:?}", path.display()))
            + from.len();
        let end = start
            + old[start..]
                .find(to)
                .unwrap_or_else(|| panic!("{} has no {to:?} after {from:?}", path.display()));
        let new = format!("{}{generated}{}", &old[..start], &old[end..]);
        if new != old {
            std::fs::write(&path, new).unwrap();
            panic!(
                "{} was not what LIMITS says and has been regenerated; check and commit it",
                path.display()
            );
        }
    }

    #[test]
    fn the_docs_limits_table_is_generated() {
        ensure_generated("docs/configuration.md", GENERATED, END_OF_GENERATED, &limits_markdown());
    }

    #[test]
    fn the_example_limits_section_is_generated() {
        // The section runs to the blank line before the next one.
        let generated = limits_example();
        let body = generated.strip_prefix("[limits]\n").unwrap_or(&generated);
        ensure_generated("deploy/lunchd.toml", "\n[limits]\n", "\n\n", body.trim_end());
    }
}
