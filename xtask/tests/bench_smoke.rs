//! `cargo xtask bench --quick` against the debug lunchd: the benchmark's
//! machinery works end to end (socket activation, every load tool, CPU and
//! memory sampling, reloads, the result files). It asserts no speed.
//!
//! Needs the bench's tools (`lunch_testkit::BENCH_TOOLS`: wrk, h2load, ab,
//! openssl, curl, systemd-socket-activate, kill, valgrind) and pgrep; it fails,
//! naming the package, where one is missing (`cargo xtask test` installs
//! them).

mod support;

use std::process::Command;

use lunch_testkit::{BENCH_TOOLS, Checked, require_tool};

/// Runs `cargo xtask bench ARGS --lunchd <debug lunchd> --out DIR` and
/// returns DIR.
fn bench_into(args: &[&str]) -> tempfile::TempDir {
    for (tool, package) in BENCH_TOOLS {
        require_tool(tool, package);
    }
    let lunchd = support::lunchd();
    let out = tempfile::tempdir().unwrap();
    Command::new(support::XTASK)
        .arg("bench")
        .args(args)
        .arg("--lunchd")
        .arg(&lunchd)
        .arg("--out")
        .arg(out.path())
        .read_checked()
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// As [`bench_into`], with the parsed results.json.
fn bench(args: &[&str]) -> (tempfile::TempDir, serde_json::Value) {
    let out = bench_into(args);
    let json = serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    (out, json)
}

#[test]
fn quick_bench_measures_every_test_and_writes_results() {
    let (out, json) = bench(&["--quick"]);
    let runs = json["runs"].as_array().unwrap();
    let tests: Vec<&str> = runs.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["h1", "h2", "handshake", "redirect"]);
    for run in runs {
        assert_eq!(run["server"], "lunchd");
        assert!(run["requests"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
        // The server was measured, not the client: it used CPU and memory.
        assert!(run["server_cpu_seconds"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["peak_rss_kib"].as_u64().unwrap() > 0, "{run}");
    }
    let reloads = &json["reloads_under_load"];
    assert_eq!(reloads["reloads"], 20);
    assert_eq!(reloads["failed"], 0);
    assert_eq!(reloads["reload_ms"].as_array().unwrap().len(), 20);
    assert_eq!(json["start_to_ready_ms"].as_array().unwrap().len(), 3);
    let markdown = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(markdown.contains("server CPU µs/req"), "{markdown}");
    // Every process the bench started is gone: lunchd ran with files from
    // the scratch directory on its command line.
    let leftover = Command::new(require_tool("pgrep", "procps"))
        .arg("-f")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}

/// `--with` runs the same test against a lunchd with a feature on, in the
/// same run, and reports what it costs; the feature is really on. With
/// `--rounds`, every server is measured once per round, in an order that
/// rotates.
#[test]
fn quick_bench_compares_lunchd_with_its_features_on() {
    let (out, json) = bench(&[
        "--quick",
        "--only",
        "h1",
        "--with",
        "metrics",
        "--with",
        "access-log",
        "--rounds",
        "2",
    ]);
    let runs = json["runs"].as_array().unwrap();
    let servers: Vec<(&str, u64)> = runs
        .iter()
        .map(|r| (r["server"].as_str().unwrap(), r["round"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        servers,
        [
            ("lunchd", 1),
            ("lunchd+metrics", 1),
            ("lunchd+access-log", 1),
            ("lunchd+metrics", 2),
            ("lunchd+access-log", 2),
            ("lunchd", 2),
        ]
    );
    for run in runs {
        assert_eq!(run["errors"], 0, "{run}");
    }
    let markdown = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(markdown.contains("### What a feature costs"), "{markdown}");
    for feature in ["metrics", "access-log"] {
        assert!(
            markdown.contains(&format!("| HTTPS HTTP/1.1 keep-alive (wrk -t2 -c64) | {feature} |")),
            "{markdown}"
        );
    }
    // The access log has a line for at least every measured request (the
    // warm-ups' come on top), and the default lunchd wrote none.
    let requests: u64 = runs
        .iter()
        .filter(|r| r["server"] == "lunchd+access-log")
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    let log = std::fs::read_to_string(out.path().join("run/lunchd+access-log/access.log")).unwrap();
    assert!(
        log.lines().count() as u64 >= requests,
        "{} lines for {requests} requests",
        log.lines().count()
    );
    assert!(!out.path().join("run/access.log").exists());
}

#[test]
fn instruction_counts_per_request_with_and_without_a_feature() {
    let out = bench_into(&["--instructions", "--quick", "--with", "metrics"]);
    let md = std::fs::read_to_string(out.path().join("instructions.md")).unwrap();
    for test in ["HTTPS HTTP/1.1", "HTTPS HTTP/2", "HTTP→HTTPS redirect"] {
        for server in ["lunchd", "lunchd+metrics"] {
            let row = md
                .lines()
                .find(|l| l.starts_with(&format!("| {test}")) && l.contains(&format!("| {server} |")))
                .unwrap_or_else(|| panic!("no row for {server} in {test}:\n{md}"));
            let count: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
            // A request is thousands of instructions: parsing, TLS, routing.
            assert!(count > 1000.0, "{row}");
        }
    }
}
