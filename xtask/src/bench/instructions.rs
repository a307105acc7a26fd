//! `--instructions`: what a request costs lunchd in user-space
//! instructions, counted by callgrind, for the default lunchd and for one
//! with each `--with` feature. CPU time per request moves by several
//! percent from run to run on a shared machine (the `twin` shows how
//! much); instruction counts repeat to a few percent whatever else runs,
//! so they resolve a feature's cost of a few percent (docs/performance.md).
//!
//! Each lunchd runs under `valgrind --tool=callgrind` inside
//! `systemd-socket-activate`, as the other tests run it. For each test the
//! load runs once to warm up; then the counters are zeroed, a load of
//! `small` requests runs and the counters are dumped, and the same with
//! `large`. The difference over `large - small` requests is the cost of a
//! request without the connections' handshakes.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use lunch_testkit::{Checked, NotifySocket};

use super::load::Test;
use super::servers::{Certificate, Feature, Lunchd};

/// The tests counted: those on kept-alive connections, where a request's
/// own work is what is measured.
const TESTS: [Test; 3] = [Test::H1, Test::H2, Test::Redirect];

/// One server's instructions per request in one test, one per round.
struct Counted {
    server: &'static str,
    test: Test,
    per_request: Vec<f64>,
}

/// Runs the counts and returns the markdown report.
pub(crate) fn run(
    binary: &Path,
    cert: &Certificate,
    scratch: &Path,
    notify: &NotifySocket,
    features: &[Feature],
    rounds: u16,
    quick: bool,
) -> anyhow::Result<String> {
    let (small, large) = if quick { (200, 1000) } else { (3000, 15000) };
    let servers: Vec<Option<Feature>> = std::iter::once(None)
        .chain(features.iter().copied().map(Some))
        .collect();
    let mut counted: Vec<Counted> = Vec::new();
    for round in 1..=rounds {
        // Alternating: each round measures every server once.
        for &feature in &servers {
            let server = feature.map_or("lunchd", Feature::server);
            let base = scratch.join(format!("callgrind-{round}"));
            let dir = match feature {
                Some(feature) => base.join(feature.server()),
                None => base.clone(),
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let wrapper = vec![
                "valgrind".to_owned(),
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}", dir.join("callgrind.out.%p").display()),
            ];
            let lunchd = Lunchd::start_under(binary, cert, &base, notify, feature, &wrapper)
                .with_context(|| format!("starting {server} under callgrind (Debian package valgrind)"))?;
            let pid = lunchd.guard.pid();
            for test in TESTS {
                let url = super::url(test, lunchd.http, lunchd.https, true);
                load(test, &url, small)?;
                let mut totals = [0u64; 2];
                for (total, n) in totals.iter_mut().zip([small, large]) {
                    callgrind_control(pid, "-z")?;
                    load(test, &url, n)?;
                    let tag = format!("{}-{n}", test.id());
                    callgrind_control(pid, &format!("--dump={tag}"))?;
                    *total = dumped(&dir, pid, &tag)?;
                }
                let per_request = totals[1].saturating_sub(totals[0]) as f64 / (large - small) as f64;
                eprintln!(
                    "bench: {server}: {}, round {round}: {per_request:.0} instructions per request",
                    test.id()
                );
                match counted.iter_mut().find(|c| c.server == server && c.test == test) {
                    Some(c) => c.per_request.push(per_request),
                    None => counted.push(Counted {
                        server,
                        test,
                        per_request: vec![per_request],
                    }),
                }
            }
            drop(lunchd);
        }
    }
    Ok(markdown(&counted, small, large))
}

/// `small` and `large` requests' worth of `test` on four connections.
fn load(test: Test, url: &str, n: u32) -> anyhow::Result<()> {
    let n = n.to_string();
    let mut command = match test {
        Test::H2 => {
            let mut c = Command::new("h2load");
            c.args(["-n", &n, "-c", "4", "-m", "10", url]);
            c
        }
        _ => {
            let mut c = Command::new("ab");
            c.args(["-k", "-n", &n, "-c", "4", url]);
            c
        }
    };
    let output = command.read_checked()?;
    let complete = match test {
        Test::H2 => output.contains(&format!("{n} succeeded, 0 failed")),
        _ => output.contains(&format!("Complete requests:      {n}")) && output.contains("Failed requests:        0"),
    };
    anyhow::ensure!(complete, "not every request of {url} succeeded:\n{output}");
    Ok(())
}

fn callgrind_control(pid: u32, action: &str) -> anyhow::Result<()> {
    Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .read_checked()?;
    Ok(())
}

/// The instructions in the dump of `pid` named `tag`.
fn dumped(dir: &Path, pid: u32, tag: &str) -> anyhow::Result<u64> {
    let prefix = format!("callgrind.out.{pid}.");
    let trigger = format!("desc: Trigger: Client Request: {tag}");
    let alternative = format!("desc: Trigger: dump {tag}");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.starts_with(&prefix) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        if !text.lines().any(|l| l == trigger || l == alternative) {
            continue;
        }
        let total = text
            .lines()
            .find_map(|l| l.strip_prefix("totals: ").or_else(|| l.strip_prefix("summary: ")))
            .with_context(|| format!("no totals in {}", path.display()))?;
        return total
            .trim()
            .parse()
            .with_context(|| format!("reading the totals of {}", path.display()));
    }
    anyhow::bail!("callgrind wrote no dump named {tag} in {}", dir.display())
}

fn markdown(counted: &[Counted], small: u32, large: u32) -> String {
    let mut md = String::from("## Instructions per request (callgrind)\n\n");
    md.push_str(&format!(
        "User-space instructions of lunchd per request: (runs of {large} minus {small} requests, on 4 \
         kept-alive connections) / {}; one figure per round. A feature's cost is against the default lunchd, \
         median over rounds.\n\n",
        large - small
    ));
    md.push_str("| test | server | instructions per request | cost |\n|---|---|---|---:|\n");
    for test in TESTS {
        let base = counted
            .iter()
            .find(|c| c.server == "lunchd" && c.test == test)
            .map(|c| super::median(&c.per_request));
        for c in counted.iter().filter(|c| c.test == test) {
            let each: Vec<String> = c.per_request.iter().map(|v| format!("{v:.0}")).collect();
            let cost = match base {
                Some(base) if c.server != "lunchd" && base > 0.0 => {
                    format!("{:+.1}%", (super::median(&c.per_request) / base - 1.0) * 100.0)
                }
                _ => String::new(),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {cost} |\n",
                title(test),
                c.server,
                each.join(", ")
            ));
        }
    }
    md
}

/// The test as this run loads it.
fn title(test: Test) -> &'static str {
    match test {
        Test::H1 => "HTTPS HTTP/1.1 keep-alive (ab -k -c4)",
        Test::H2 => "HTTPS HTTP/2 (h2load -c4 -m10)",
        Test::Handshake => "full TLS 1.3 handshake (not counted)",
        Test::Redirect => "HTTP→HTTPS redirect (ab -k -c4)",
    }
}
