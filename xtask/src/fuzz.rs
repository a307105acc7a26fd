//! Run the fuzz targets in `fuzz/` for a bounded time each.
//!
//! Installs cargo-fuzz when it is missing. The targets need nightly-only
//! compiler flags (sanitizers, coverage instrumentation): a nightly
//! toolchain is used when rustup has one, else the stable compiler with
//! `RUSTC_BOOTSTRAP=1`.
//!
//! Each target starts from the seeds checked in under `fuzz/corpus/NAME`
//! and grows a working corpus under `target/fuzz-corpus/NAME`, so the
//! checked-in seeds stay small. A crash stops nothing else: every target
//! runs, then the command fails naming the crashing inputs (written to
//! `fuzz/artifacts/NAME/`); turn each into a regression test.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use lunch_testkit::Checked;

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// A target to run (repeatable); default: all of them.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Parallel fuzzing processes per target.
    #[arg(long, default_value_t = 1)]
    jobs: u32,
}

/// What one run reported.
#[derive(Debug, Default)]
struct Outcome {
    executions: u64,
    per_second: u64,
    coverage: Option<u64>,
    peak_rss_mb: Option<u64>,
    crash: Option<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::project_root();
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz()?;
    let nightly = has_nightly();
    if !nightly {
        eprintln!("xtask: no nightly toolchain; using the stable compiler with RUSTC_BOOTSTRAP=1");
    }
    let cargo_fuzz = |subcommand: &str| {
        let mut command = Command::new("cargo");
        command.current_dir(&root);
        if nightly {
            command.arg("+nightly");
        } else {
            command.env("RUSTC_BOOTSTRAP", "1");
        }
        command.args(["fuzz", subcommand, "--fuzz-dir"]).arg(&fuzz_dir);
        command
    };

    let listed = cargo_fuzz("list").stderr(Stdio::inherit()).read_checked()?;
    let all: Vec<String> = listed
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let targets = if args.targets.is_empty() {
        all.clone()
    } else {
        for target in &args.targets {
            if !all.contains(target) {
                bail!("no fuzz target named `{target}`; the targets are: {}", all.join(", "));
            }
        }
        args.targets.clone()
    };

    cargo_fuzz("build")
        .arg("-O")
        .run_checked()
        .context("building the fuzz targets failed")?;

    let mut results = Vec::new();
    for target in &targets {
        eprintln!("xtask: fuzzing {target} for {} s", args.time);
        let work = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let seeds = fuzz_dir.join("corpus").join(target);
        let mut command = cargo_fuzz("run");
        command.arg("-O").arg(target).arg(&work);
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        command
            .arg("--")
            .arg(format!("-max_total_time={}", args.time))
            .arg("-print_final_stats=1")
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048");
        if args.jobs > 1 {
            command.arg(format!("-fork={}", args.jobs));
        }
        let output = command
            .stdout(Stdio::inherit())
            .output()
            .with_context(|| format!("running `cargo fuzz run {target}`"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let mut outcome = parse(&log);
        if !output.status.success() && outcome.crash.is_none() {
            outcome.crash = Some(String::from("(no artifact named; see the output above)"));
        }
        if outcome.crash.is_some() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
        results.push((target.clone(), outcome));
    }

    println!(
        "\n{:<18} {:>12} {:>10} {:>8} {:>8}  result",
        "target", "executions", "exec/s", "cov", "rss MB"
    );
    let mut crashes = Vec::new();
    for (target, o) in &results {
        let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        println!(
            "{target:<18} {:>12} {:>10} {:>8} {:>8}  {}",
            o.executions,
            o.per_second,
            show(o.coverage),
            show(o.peak_rss_mb),
            o.crash.as_deref().map_or("ok", |_| "CRASH")
        );
        if let Some(artifact) = &o.crash {
            crashes.push(format!("{target}: {artifact}"));
        }
    }
    if !crashes.is_empty() {
        bail!(
            "crashes found; reproduce with `cargo +nightly fuzz run --fuzz-dir fuzz TARGET ARTIFACT` and add a \
             regression test:\n{}",
            crashes.join("\n")
        );
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .run_checked()?;
    Ok(())
}

fn has_nightly() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("nightly"))
        })
}

/// libFuzzer's final statistics and crash report.
fn parse(log: &str) -> Outcome {
    let stat = |name: &str| {
        log.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
            .next_back()
    };
    let coverage = log
        .lines()
        .filter_map(|l| {
            l.split_once(" cov: ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
        })
        .filter_map(|v| v.parse::<u64>().ok())
        .next_back();
    let crash = log
        .lines()
        .filter_map(|l| l.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned())
        .next_back();
    Outcome {
        executions: stat("stat::number_of_executed_units").unwrap_or(0),
        per_second: stat("stat::average_exec_per_sec").unwrap_or(0),
        coverage,
        peak_rss_mb: stat("stat::peak_rss_mb"),
        crash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_statistics_and_crashes() {
        let log = "#2\tINITED cov: 12 ft: 13 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 140 ft: 300 corp: 20/400b lim: 40 exec/s: 2048 rss: 40Mb\n\
                   Done 173731 runs in 11 second(s)\n\
                   stat::number_of_executed_units: 173731\n\
                   stat::average_exec_per_sec:     15793\n\
                   stat::peak_rss_mb:              181\n";
        let o = parse(log);
        assert_eq!((o.executions, o.per_second), (173_731, 15_793));
        assert_eq!((o.coverage, o.peak_rss_mb), (Some(140), Some(181)));
        assert!(o.crash.is_none());
        let o =
            parse("==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='x/'; Test unit written to x/crash-abc\n");
        assert_eq!(o.crash.as_deref(), Some("x/crash-abc"));
    }
}
