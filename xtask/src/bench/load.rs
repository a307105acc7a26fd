//! The load generators (Debian's wrk, h2load and ab) and their output.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use lunch_testkit::Checked;

/// What one load run reported.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Requests completed (ab: connections, one request each).
    pub(crate) requests: u64,
    /// Requests per second, as the tool reports it.
    pub(crate) rps: f64,
    /// Median latency, milliseconds.
    pub(crate) p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub(crate) p99_ms: f64,
    /// Failed requests: socket errors, timeouts, unexpected status codes.
    pub(crate) errors: u64,
    /// Protocol and cipher, where the tool reports it.
    pub(crate) tls: Option<String>,
}

/// The load tests, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Test {
    /// HTTPS HTTP/1.1 keep-alive, wrk -t2 -c64.
    H1,
    /// HTTPS HTTP/2, h2load -t2 -c64 -m10.
    H2,
    /// A full TLS 1.3 handshake per request, ab -c64 without keep-alive.
    Handshake,
    /// The HTTP→HTTPS redirect, wrk -t2 -c64 on the plain port.
    Redirect,
}

impl Test {
    pub(crate) const ALL: [Test; 4] = [Test::H1, Test::H2, Test::Handshake, Test::Redirect];

    pub(crate) fn id(self) -> &'static str {
        match self {
            Test::H1 => "h1",
            Test::H2 => "h2",
            Test::Handshake => "handshake",
            Test::Redirect => "redirect",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Test::H1 => "HTTPS HTTP/1.1 keep-alive (wrk -t2 -c64)",
            Test::H2 => "HTTPS HTTP/2 (h2load -t2 -c64 -m10)",
            Test::Handshake => "full TLS 1.3 handshake per request (ab -c64)",
            Test::Redirect => "HTTP→HTTPS redirect (wrk -t2 -c64)",
        }
    }

    /// The target for lunchd's server CPU per request, as a multiple of
    /// nginx's.
    pub(crate) fn target_ratio(self) -> f64 {
        match self {
            Test::Handshake => 0.8,
            _ => 1.0,
        }
    }
}

/// Runs `test` against `url` for `seconds`; `scratch` holds h2load's
/// per-request log.
pub(crate) fn run(test: Test, url: &str, seconds: f64, scratch: &Path) -> anyhow::Result<Outcome> {
    match test {
        Test::H1 | Test::Redirect => wrk(url, seconds),
        Test::H2 => h2load(url, seconds, scratch),
        Test::Handshake => ab(url, seconds),
    }
}

/// `tool`, for a run of `seconds`, under coreutils' `timeout`: a tool that
/// does not stop (h2load has been seen to run on past its `-D`) is
/// stopped at twice its time plus 30 s, then killed, and the run fails
/// with status 124 (or 137) instead of hanging the benchmark.
fn bounded(tool: &str, seconds: f64) -> Command {
    let mut command = Command::new("timeout");
    command
        .arg("--kill-after=5")
        .arg(format!("{:.0}", seconds.mul_add(2.0, 30.0)))
        .arg(tool);
    command
}

fn wrk(url: &str, seconds: f64) -> anyhow::Result<Outcome> {
    // wrk counts whole seconds.
    let secs = seconds.round().max(1.0) as u64;
    let text = bounded("wrk", seconds)
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", url])
        .read_checked()?;
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

fn h2load(url: &str, seconds: f64, scratch: &Path) -> anyhow::Result<Outcome> {
    let log = scratch.join("h2load-requests.tsv");
    let secs = seconds.round().max(1.0) as u64;
    let text = bounded("h2load", seconds)
        .args([
            "-t2",
            "-c64",
            "-m10",
            "-D",
            &secs.to_string(),
            &format!("--log-file={}", log.display()),
            url,
        ])
        .read_checked()?;
    let mut outcome = parse_h2load(&text).with_context(|| format!("cannot read h2load's output:\n{text}"))?;
    let requests = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let _ = std::fs::remove_file(&log);
    let (p50, p99) = h2load_percentiles(&requests).context("h2load's request log is empty")?;
    outcome.p50_ms = p50;
    outcome.p99_ms = p99;
    Ok(outcome)
}

/// ab makes one connection per request and never offers a session to
/// resume: every connection is a full handshake (checked against nginx's
/// `$ssl_session_reused`).
fn ab(url: &str, seconds: f64) -> anyhow::Result<Outcome> {
    let secs = seconds.round().max(1.0) as u64;
    let text = bounded("ab", seconds)
        .args(["-l", "-r", "-c64", "-t", &secs.to_string(), "-n", "2000000", url])
        .read_checked()?;
    parse_ab(&text).with_context(|| format!("cannot read ab's output:\n{text}"))
}

/// `ab -n N -c C` to `url`, for the handshake check.
pub(crate) fn ab_count(url: &str, n: u32) -> anyhow::Result<Outcome> {
    // A few thousand handshakes take seconds.
    let text = bounded("ab", 60.0)
        .args(["-l", "-c8", "-n", &n.to_string(), url])
        .read_checked()?;
    parse_ab(&text).with_context(|| format!("cannot read ab's output:\n{text}"))
}

/// A latency as wrk prints it (`530.12us`, `2.10ms`, `1.02s`, `1.5m`), in
/// milliseconds.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(text: &str) -> Option<Outcome> {
    let mut outcome = Outcome::default();
    let mut seen = (false, false, false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", d] => {
                outcome.p50_ms = wrk_duration_ms(d)?;
                seen.0 = true;
            }
            ["99%", d] => {
                outcome.p99_ms = wrk_duration_ms(d)?;
                seen.1 = true;
            }
            [n, "requests", "in", ..] => {
                outcome.requests = n.parse().ok()?;
                seen.2 = true;
            }
            ["Requests/sec:", r] => {
                outcome.rps = r.parse().ok()?;
                seen.3 = true;
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                outcome.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => outcome.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    (seen == (true, true, true, true)).then_some(outcome)
}

fn parse_h2load(text: &str) -> Option<Outcome> {
    let mut outcome = Outcome::default();
    let mut seen = (false, false);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 10.00s, 150000.00 req/s, 5.00MB/s
            let rps = rest.split(", ").nth(1)?.strip_suffix(" req/s")?;
            outcome.rps = rps.parse().ok()?;
            seen.0 = true;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // N total, N started, N done, N succeeded, N failed, N errored, N timeout
            for part in rest.split(", ") {
                let (n, what) = part.split_once(' ')?;
                let n: u64 = n.parse().ok()?;
                match what {
                    "succeeded" => {
                        outcome.requests = n;
                        seen.1 = true;
                    }
                    "failed" | "errored" | "timeout" => outcome.errors += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // N 2xx, N 3xx, N 4xx, N 5xx
            for part in rest.split(", ") {
                let (n, class) = part.split_once(' ')?;
                if class != "2xx" {
                    outcome.errors += n.parse::<u64>().ok()?;
                }
            }
        } else if line.starts_with("TLS Protocol: ") || line.starts_with("Cipher: ") {
            let tls = outcome.tls.get_or_insert_with(String::new);
            if !tls.is_empty() {
                tls.push_str(", ");
            }
            tls.push_str(line.split_once(": ").map_or(line, |(_, v)| v));
        }
    }
    (seen == (true, true)).then_some(outcome)
}

/// p50 and p99 from h2load's `--log-file` (start µs, status, duration µs).
fn h2load_percentiles(log: &str) -> Option<(f64, f64)> {
    let mut durations: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let at = |q: f64| durations[((durations.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Some((at(0.50), at(0.99)))
}

fn parse_ab(text: &str) -> Option<Outcome> {
    let mut outcome = Outcome::default();
    let mut seen = (false, false, false, false);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Complete", "requests:", n] => {
                outcome.requests = n.parse().ok()?;
                seen.0 = true;
            }
            ["Failed", "requests:", n, ..] => outcome.errors += n.parse::<u64>().ok()?,
            ["Non-2xx", "responses:", n] => outcome.errors += n.parse::<u64>().ok()?,
            ["Requests", "per", "second:", r, ..] => {
                outcome.rps = r.parse().ok()?;
                seen.1 = true;
            }
            ["50%", ms] => {
                outcome.p50_ms = ms.parse().ok()?;
                seen.2 = true;
            }
            ["99%", ms] => {
                outcome.p99_ms = ms.parse().ok()?;
                seen.3 = true;
            }
            _ => {
                if let Some(tls) = line.strip_prefix("SSL/TLS Protocol:") {
                    outcome.tls = Some(tls.trim().to_owned());
                }
            }
        }
    }
    (seen == (true, true, true, true)).then_some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let text = "Running 10s test @ https://127.0.0.1:8443/healthz
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   681.59us  502.87us  13.41ms   88.20%
    Req/Sec    48.50k     3.12k   55.27k    69.50%
  Latency Distribution
     50%  530.00us
     75%  792.00us
     90%    1.21ms
     99%    2.10ms
  965216 requests in 10.00s, 245.93MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  96507.79
Transfer/sec:     24.59MB
";
        let o = parse_wrk(text).unwrap();
        assert_eq!(o.requests, 965_216);
        assert!((o.rps - 96_507.79).abs() < 1e-6);
        assert!((o.p50_ms - 0.53).abs() < 1e-9);
        assert!((o.p99_ms - 2.1).abs() < 1e-9);
        assert_eq!(o.errors, 7);
        assert!(parse_wrk("Running 10s test\n").is_none());
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(wrk_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(wrk_duration_ms("2m"), Some(120_000.0));
        assert_eq!(wrk_duration_ms("12"), None);
    }

    #[test]
    fn h2load_output() {
        let text = "starting benchmark...
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2

finished in 10.00s, 150123.40 req/s, 5.01MB/s
requests: 1501234 total, 1501874 started, 1501234 done, 1501230 succeeded, 4 failed, 0 errored, 0 timeout
status codes: 1501230 2xx, 0 3xx, 2 4xx, 0 5xx
";
        let o = parse_h2load(text).unwrap();
        assert_eq!(o.requests, 1_501_230);
        assert!((o.rps - 150_123.4).abs() < 1e-6);
        assert_eq!(o.errors, 6);
        assert_eq!(o.tls.as_deref(), Some("TLSv1.3, TLS_AES_256_GCM_SHA384"));
        let log = "1700000000000000\t200\t100\n1700000000000001\t200\t300\n1700000000000002\t200\t200\n";
        assert_eq!(h2load_percentiles(log), Some((0.2, 0.3)));
        assert_eq!(h2load_percentiles(""), None);
    }

    #[test]
    fn ab_output() {
        let text = "Server Software:
Server Hostname:        127.0.0.1
Server Port:            8443
SSL/TLS Protocol:       TLSv1.3,TLS_AES_256_GCM_SHA384,256,256
Server Temp Key:        X25519 253 bits

Complete requests:      14900
Failed requests:        3
   (Connect: 0, Receive: 0, Length: 3, Exceptions: 0)
Non-2xx responses:      2
Requests per second:    1490.12 [#/sec] (mean)
Percentage of the requests served within a certain time (ms)
  50%     42
  66%     44
  99%    100
 100%    200 (longest request)
";
        let o = parse_ab(text).unwrap();
        assert_eq!(o.requests, 14_900);
        assert_eq!(o.errors, 5);
        assert_eq!((o.p50_ms, o.p99_ms), (42.0, 100.0));
        assert_eq!(o.tls.as_deref(), Some("TLSv1.3,TLS_AES_256_GCM_SHA384,256,256"));
    }
}
