//! `cargo xtask bench --quick` against the debug lunchd: the benchmark's
//! machinery works end to end (socket activation, every load tool, CPU and
//! memory sampling, reloads, the result files). It asserts no speed.
//!
//! Needs wrk, h2load (nghttp2-client) and ab (apache2-utils); the bench
//! installs missing ones with apt-get when run as root.

use std::path::Path;
use std::process::Command;

#[test]
fn quick_bench_measures_every_test_and_writes_results() {
    let xtask = Path::new(env!("CARGO_BIN_EXE_xtask"));
    // `cargo test --workspace` builds lunchd's binary next to xtask's.
    let lunchd = xtask.with_file_name("lunchd");
    assert!(
        lunchd.is_file(),
        "{} is missing; build it with `cargo build -p lunchd` (cargo test --workspace does)",
        lunchd.display()
    );
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(xtask)
        .args(["bench", "--quick", "--lunchd"])
        .arg(&lunchd)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "cargo xtask bench --quick failed: {}\n{}{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
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
    let leftover = Command::new("pgrep").arg("-f").arg(out.path()).output().unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "processes left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
}
