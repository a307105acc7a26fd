//! The configuration file, in two stages: [`raw`] mirrors the TOML exactly
//! (unknown keys are errors), then [`Config::from_raw`] checks meaning and
//! builds the typed configuration the daemon runs with.
//!
//! Every problem is reported, not just the first, each with the file, the
//! key, and the line and column.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lunch_core::{DishSpec, Menu, Mode};
use lunch_net::Limits;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

/// Where lunchd looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/lunchd/lunchd.toml";

/// The TOML as written: every key optional except where noted, unknown keys
/// refused.
pub mod raw {
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        #[serde(default)]
        pub picker: Picker,
        pub dish: Option<Vec<Dish>>,
        #[serde(default)]
        pub http: Http,
        #[serde(default)]
        pub https: Https,
        #[serde(default)]
        pub limits: Limits,
        #[serde(default)]
        pub log: Log,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Picker {
        pub mode: Option<String>,
        pub team: Option<String>,
        pub utc_offset: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dish {
        pub name: String,
        pub weight: Option<f64>,
        #[serde(default)]
        pub tags: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Http {
        pub redirect: Option<bool>,
        pub listen: Option<String>,
        pub https_port: Option<u16>,
        pub canonical_host: Option<String>,
        pub allowed_hosts: Option<Vec<String>>,
        pub acme_webroot: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Https {
        pub listen: Option<String>,
        pub key: Option<String>,
        pub certificate: Option<String>,
        pub hsts_max_age: Option<u64>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub handshake_timeout: Option<u64>,
        pub header_timeout: Option<u64>,
        pub idle_timeout: Option<u64>,
        pub drain_timeout: Option<u64>,
        pub max_connections: Option<usize>,
        pub max_header_bytes: Option<usize>,
        pub max_headers: Option<usize>,
        pub max_streams: Option<u32>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub level: Option<String>,
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
}

impl Default for Config {
    fn default() -> Config {
        let raw = raw::Config::default();
        let mut errors = Vec::new();
        let config = Config::from_raw(raw, None, &mut |_, _| errors.push(()));
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
    let spans = table.clone();
    let mut errors = Vec::new();
    // Deserialization stops at the first problem; remove the offending entry
    // and try again to find the others.
    let raw = loop {
        match raw::Config::deserialize(toml::de::Deserializer::from(table.clone())) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let span = e.span();
                let (key, removed) = match &span {
                    Some(span) => remove_at(table.get_mut(), span),
                    None => (String::new(), false),
                };
                errors.push(at(key, span, first_line(e.message())));
                if !removed || errors.len() >= 100 {
                    break None;
                }
            }
        }
    };
    let Some(raw) = raw else {
        return Err(ConfigErrors(errors));
    };
    // Semantic checks run on what deserialized, adding to any errors above.
    let config = Config::from_raw(raw, Some(path), &mut |key, message| {
        errors.push(at(key.to_owned(), span_of(spans.get_ref(), key), message));
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
enum Step {
    Key(String),
    Index(usize),
}

/// Removes the innermost table entry whose key or value contains `span`,
/// returning its dotted path. Tables opened by a `[header]` span only the
/// header, so the whole tree is searched, not just enclosing spans.
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>) -> (String, bool) {
    let Some(path) = find(table, span) else {
        return (String::new(), false);
    };
    let mut dotted = String::new();
    for step in &path {
        match step {
            Step::Key(k) if dotted.is_empty() => dotted.push_str(k),
            Step::Key(k) => {
                dotted.push('.');
                dotted.push_str(k);
            }
            Step::Index(i) => dotted.push_str(&format!("[{}]", i + 1)),
        }
    }
    (dotted, remove_path(table, &path))
}

fn find(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<Step>> {
    let contains = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    for (key, value) in table.iter() {
        let deeper = match value.get_ref() {
            DeValue::Table(inner) => find(inner, span).map(|rest| (None, rest)),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| match item.get_ref() {
                DeValue::Table(inner) => find(inner, span).map(|rest| (Some(i), rest)),
                _ => None,
            }),
            _ => None,
        };
        if let Some((index, rest)) = deeper {
            let mut path = vec![Step::Key(key.get_ref().to_string())];
            path.extend(index.map(Step::Index));
            path.extend(rest);
            return Some(path);
        }
        if contains(key.span()) || contains(value.span()) {
            let mut path = vec![Step::Key(key.get_ref().to_string())];
            if let DeValue::Array(items) = value.get_ref() {
                if let Some(i) = items.iter().position(|item| contains(item.span())) {
                    path.push(Step::Index(i));
                }
            }
            return Some(path);
        }
    }
    None
}

fn remove_path(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    let Some(Step::Key(key)) = path.first() else {
        return false;
    };
    match &path[1..] {
        [] | [Step::Index(_)] => table.remove(key.as_str()).is_some(),
        [Step::Index(i), rest @ ..] => match table.get_mut(key.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Array(items)) => match items.get_mut(*i).map(|v| v.get_mut()) {
                Some(DeValue::Table(inner)) => remove_path(inner, rest),
                _ => false,
            },
            _ => false,
        },
        rest => match table.get_mut(key.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(inner)) => remove_path(inner, rest),
            _ => false,
        },
    }
}

/// The span of dotted `key` (as produced by [`Config::from_raw`]: `a.b`,
/// `dish[2].weight`) in `table`, or of its nearest existing parent.
fn span_of(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let mut current = table;
    let mut best = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let value = current.get(name)?;
        best = Some(value.span());
        let value = match (index, value.get_ref()) {
            (Some(i), DeValue::Array(items)) => {
                let item = items.get(i.checked_sub(1)?)?;
                best = Some(item.span());
                item
            }
            _ => value,
        };
        match value.get_ref() {
            DeValue::Table(inner) => current = inner,
            _ => break,
        }
    }
    best
}

impl Config {
    /// Checks meaning and fills in defaults. Problems go to `report` as
    /// `(dotted key, message)`; the returned value is then only partly
    /// meaningful.
    pub fn from_raw(raw: raw::Config, source: Option<&Path>, report: &mut dyn FnMut(&str, String)) -> Config {
        let menu = match raw.dish {
            None => Menu::builtin(),
            Some(dishes) => {
                let specs = dishes
                    .into_iter()
                    .map(|d| DishSpec {
                        name: d.name,
                        weight: d.weight,
                        tags: d.tags,
                    })
                    .collect();
                Menu::new(specs).unwrap_or_else(|errors| {
                    for e in errors {
                        let key = match (e.index(), e.field()) {
                            (Some(i), Some(field)) => format!("dish[{}].{field}", i + 1),
                            _ => "dish".to_owned(),
                        };
                        report(&key, e.to_string());
                    }
                    Menu::builtin()
                })
            }
        };
        let mode = raw
            .picker
            .mode
            .as_deref()
            .map_or(Ok(Mode::default()), str::parse)
            .unwrap_or_else(|e| {
                report("picker.mode", e.to_string());
                Mode::default()
            });
        let utc_offset_minutes = raw
            .picker
            .utc_offset
            .as_deref()
            .map_or(Some(0), parse_utc_offset)
            .unwrap_or_else(|| {
                report(
                    "picker.utc_offset",
                    "expected an offset such as \"+01:00\" or \"-05:30\", between -14:00 and +14:00".into(),
                );
                0
            });
        let mut address = |key: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_owned());
            text.parse::<SocketAddr>().unwrap_or_else(|_| {
                report(
                    key,
                    format!("`{text}` is not an address with a port, such as \"127.0.0.1:8443\" or \"[::]:443\""),
                );
                default
                    .parse()
                    .unwrap_or_else(|_| unreachable!("default addresses are valid"))
            })
        };
        let http_listen = address("http.listen", raw.http.listen, "127.0.0.1:8080");
        let https_listen = address("https.listen", raw.https.listen, "127.0.0.1:8443");
        let canonical_host = raw.http.canonical_host.and_then(|host| match host_name(&host) {
            Some(h) => Some(h),
            None => {
                report(
                    "http.canonical_host",
                    format!("`{host}` is not a host name or IP address (without a port)"),
                );
                None
            }
        });
        let allowed_hosts = raw.http.allowed_hosts.map(|hosts| {
            hosts
                .into_iter()
                .enumerate()
                .filter_map(|(i, host)| {
                    let plain = host.strip_prefix("*.").unwrap_or(&host);
                    match host_name(plain) {
                        Some(h) => Some(if host.starts_with("*.") { format!("*.{h}") } else { h }),
                        None => {
                            report(
                                &format!("http.allowed_hosts[{}]", i + 1),
                                format!("`{host}` is not a host name, wildcard or IP address"),
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
        let key = raw.https.key.map(relative);
        let certificate = raw.https.certificate.map(relative);
        if key.is_some() != certificate.is_some() {
            let missing = if key.is_none() {
                "https.key"
            } else {
                "https.certificate"
            };
            report(
                missing,
                "set both `key` and `certificate`, or neither for a development certificate".into(),
            );
        }
        if let Some(port) = raw.http.https_port.filter(|p| *p == 0) {
            report("http.https_port", format!("{port} is not a port"));
        }
        let defaults = Limits::default();
        let l = raw.limits;
        let mut secs = |key: &str, value: Option<u64>, default: Duration, max: u64| match value {
            None => default,
            Some(v) if (1..=max).contains(&v) => Duration::from_secs(v),
            Some(v) => {
                report(key, format!("{v} is out of range; use 1 to {max} seconds"));
                default
            }
        };
        let handshake_timeout = secs(
            "limits.handshake_timeout",
            l.handshake_timeout,
            defaults.handshake_timeout,
            30,
        );
        let header_timeout = secs("limits.header_timeout", l.header_timeout, defaults.header_timeout, 30);
        let idle_timeout = secs("limits.idle_timeout", l.idle_timeout, defaults.idle_timeout, 3600);
        let drain_timeout = secs("limits.drain_timeout", l.drain_timeout, defaults.drain_timeout, 600);
        let mut count = |key: &str, value: Option<usize>, default: usize, min: usize, max: usize| match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                report(key, format!("{v} is out of range; use {min} to {max}"));
                default
            }
        };
        let limits = Limits {
            handshake_timeout,
            header_timeout,
            idle_timeout,
            drain_timeout,
            max_connections: count(
                "limits.max_connections",
                l.max_connections,
                defaults.max_connections,
                1,
                1_000_000,
            ),
            max_header_bytes: count(
                "limits.max_header_bytes",
                l.max_header_bytes,
                defaults.max_header_bytes,
                8192,
                1024 * 1024,
            ),
            max_headers: count("limits.max_headers", l.max_headers, defaults.max_headers, 8, 1000),
            max_streams: count(
                "limits.max_streams",
                l.max_streams.map(|v| v as usize),
                defaults.max_streams as usize,
                1,
                10_000,
            ) as u32,
        };
        let log_level = raw.log.level.unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            report(
                "log.level",
                format!("`{log_level}` is not a log filter; use error, warn, info, debug or trace"),
            );
        }
        Config {
            menu,
            mode,
            team: raw.picker.team.unwrap_or_default(),
            utc_offset_minutes,
            redirect: raw.http.redirect.unwrap_or(true),
            http_listen,
            https_port: raw.http.https_port,
            canonical_host,
            allowed_hosts,
            acme_webroot: raw.http.acme_webroot.map(relative),
            https_listen,
            key,
            certificate,
            hsts_max_age: raw.https.hsts_max_age.unwrap_or(31_536_000),
            limits,
            log_level,
            access_log: raw.log.access.unwrap_or(false),
            access_query: raw.log.access_query.unwrap_or(false),
        }
    }
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
                "/etc/lunchd/lunchd.toml: `https.certificate`: set both `key` and `certificate`, or neither for a development certificate",
            ],
        );
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
        expected.split(", ").map(|k| k.trim_matches('`').to_owned()).collect()
    }

    #[test]
    fn every_key_is_documented() {
        let docs = include_str!("../../docs/configuration.md");
        let example = include_str!("../../deploy/lunchd.toml");
        for section in [
            "",
            "[picker]",
            "[[dish]]\nname = \"x\"",
            "[http]",
            "[https]",
            "[limits]",
            "[log]",
        ] {
            let keys = keys_of(section);
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
}
