//! `cargo xtask bench`: load tests against lunchd, side by side with nginx.
//!
//! Both servers run on loopback ports of this machine, with the same ECDSA
//! P-256 certificate and TLS 1.3. Each test runs for `--duration` seconds
//! after a short warm-up, alternating between the servers. The number to
//! compare is the server's CPU time per request (utime + stime from
//! /proc/PID/stat, summed over the server's processes): client and server
//! share the cores, so requests per second swing far more between runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

mod h3;
mod idle;
mod instructions;
mod load;
mod procs;
mod servers;

use load::{Outcome, Test};
use lunch_testkit::{Checked, NotifySocket};
use procs::Sampler;
use servers::{Certificate, Feature, Lunchd, Nginx};

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run the same tests against another server, alternating, and print
    /// lunchd/other ratios.
    #[arg(long, value_enum)]
    against: Option<Against>,
    /// Seconds per load test.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,
    /// A short run that checks the benchmark works: 1 s tests, 20 reloads.
    #[arg(long)]
    quick: bool,
    /// Only these tests (repeatable); default: all.
    #[arg(long, value_enum)]
    only: Vec<Test>,
    /// Also run every test against a lunchd with this feature on
    /// (repeatable), alternating with the others, and print its cost
    /// against the default lunchd.
    #[arg(long = "with", value_enum, value_name = "FEATURE")]
    features: Vec<Feature>,
    /// Measure every server this many times per test, in an order that
    /// rotates each round; tables show the median of the rounds, and a
    /// feature's cost is the median of its per-round costs, with their
    /// range.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=20))]
    rounds: u16,
    /// Use this lunchd binary instead of building one with `cargo build
    /// --release`.
    #[arg(long, value_name = "PATH")]
    lunchd: Option<PathBuf>,
    /// Instead of the load tests: hold N idle TLS connections (after one
    /// request each, HTTP/1.1 then HTTP/2) to lunchd and to nginx, and
    /// report the resident memory each costs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=4000))]
    idle: Option<u16>,
    /// Only the HTTP/3 test (xtask's quinn + h3 client), against lunchd's quic socket
    /// and nginx's, both run from the e2e's forky tree (see bench/h3.rs).
    #[arg(long)]
    h3: bool,
    /// Instead of the load tests: count lunchd's user-space instructions
    /// per request under callgrind (valgrind), HTTP/1.1 and HTTP/2 kept
    /// alive and the redirect, for the default lunchd and each `--with`
    /// feature, `--rounds` times; repeatable where CPU time is not, so it
    /// can resolve a feature's cost of a few percent.
    #[arg(long, conflicts_with_all = ["against", "idle", "h3"])]
    instructions: bool,
    /// Where results go [default: target/bench].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Against {
    /// Debian's nginx (package nginx-light).
    Nginx,
}

/// One server's result in one test.
#[derive(Debug, Clone)]
struct Run {
    server: &'static str,
    test: Test,
    /// Counted from 1.
    round: u16,
    url: String,
    outcome: Outcome,
    cpu_seconds: f64,
    wall_seconds: f64,
    peak_rss_kib: u64,
}

impl Run {
    fn us_per_request(&self) -> f64 {
        if self.outcome.requests == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1e6 / self.outcome.requests as f64
    }
}

/// Everything one benchmark measured.
#[derive(Debug, Default)]
struct Report {
    duration: f64,
    rounds: u16,
    runs: Vec<Run>,
    idle_rss_kib: Vec<(&'static str, u64)>,
    start_to_ready_ms: Vec<f64>,
    reload_ms: Vec<f64>,
    reloads_under_load: Option<ReloadsUnderLoad>,
    handshake_check: Option<(usize, usize)>,
    /// Server, path, and the bytes of the response's head and body.
    sizes: Vec<ResponseSize>,
    notes: Vec<String>,
}

type ResponseSize = (&'static str, String, Option<(u64, u64)>);

#[derive(Debug)]
struct ReloadsUnderLoad {
    reloads: usize,
    outcome: Outcome,
    reload_ms: Vec<f64>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let duration = if args.quick { 1.0 } else { args.duration };
    anyhow::ensure!(
        (1.0..=600.0).contains(&duration),
        "--duration must be between 1 and 600 seconds"
    );
    let tests: Vec<Test> = if args.only.is_empty() {
        Test::ALL.to_vec()
    } else {
        Test::ALL.into_iter().filter(|t| args.only.contains(t)).collect()
    };
    if !args.h3 {
        ensure_tools(args.against.is_some() || args.idle.is_some())?;
    }

    let root = crate::project_root();
    let binary = match args.lunchd {
        Some(path) => path,
        None => build_lunchd(&root)?,
    };
    let out = args.out.unwrap_or_else(|| root.join("target/bench"));
    if args.h3 {
        return h3::run(&binary, duration, &out);
    }
    let scratch = out.join("run");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let cert = Certificate::generate(&scratch)?;
    let notify_path = scratch.join("notify.sock");
    let notify =
        NotifySocket::bind(notify_path.clone()).with_context(|| format!("binding {}", notify_path.display()))?;
    let ticks = procs::clock_ticks();

    let mut report = Report {
        duration,
        rounds: args.rounds,
        ..Report::default()
    };
    let lunchd = Lunchd::start(&binary, &cert, &scratch, &notify, None)?;
    report.start_to_ready_ms.push(ms(lunchd.start_to_ready));
    if let Some(n) = args.idle {
        return idle_only(&lunchd, &Nginx::start(&cert, &scratch)?, &cert, usize::from(n), &out);
    }
    if args.instructions {
        drop(lunchd);
        let markdown = instructions::run(
            &binary,
            &cert,
            &scratch,
            &notify,
            &args.features,
            args.rounds,
            args.quick,
        )?;
        println!("{markdown}");
        std::fs::write(out.join("instructions.md"), &markdown)?;
        eprintln!("bench: results in {}", out.join("instructions.md").display());
        return Ok(());
    }
    let variants = args
        .features
        .iter()
        .map(|&feature| {
            Ok((
                feature,
                Lunchd::start(&binary, &cert, &scratch, &notify, Some(feature))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let nginx = match args.against {
        Some(Against::Nginx) => Some(Nginx::start(&cert, &scratch)?),
        None => None,
    };

    // Idle memory, before any load.
    thread::sleep(Duration::from_secs(1));
    report
        .idle_rss_kib
        .push(("lunchd", procs::rss_kib(&procs::family(lunchd.guard.pid()))));
    if let Some(nginx) = &nginx {
        report
            .idle_rss_kib
            .push(("nginx", procs::rss_kib(&procs::family(nginx.guard.pid()))));
    }

    report.sizes.push((
        "lunchd",
        servers::LUNCHD_PATH.to_owned(),
        servers::response_size(&format!("https://127.0.0.1:{}{}", lunchd.https, servers::LUNCHD_PATH)),
    ));
    if let Some(nginx) = &nginx {
        report.sizes.push((
            "nginx",
            servers::NGINX_PATH.to_owned(),
            servers::response_size(&format!("https://127.0.0.1:{}{}", nginx.https, servers::NGINX_PATH)),
        ));
        if tests.contains(&Test::Handshake) {
            let (full, resumed) = nginx.ab_handshakes()?;
            anyhow::ensure!(
                full > 0 && resumed == 0,
                "ab resumed {resumed} of {} TLS sessions; the handshake test needs full handshakes",
                full + resumed
            );
            report.handshake_check = Some((full, resumed));
        }
    }

    for &test in &tests {
        if test == Test::Redirect {
            check_redirect("lunchd", lunchd.http, lunchd.https)?;
            if let Some(nginx) = &nginx {
                check_redirect("nginx", nginx.http, nginx.https)?;
            }
        }
        let mut targets = vec![("lunchd", lunchd.guard.pid(), url(test, lunchd.http, lunchd.https, true))];
        for (feature, variant) in &variants {
            targets.push((
                feature.server(),
                variant.guard.pid(),
                url(test, variant.http, variant.https, true),
            ));
        }
        if let Some(nginx) = &nginx {
            targets.push(("nginx", nginx.guard.pid(), url(test, nginx.http, nginx.https, false)));
        }
        for round in 1..=args.rounds {
            // Each round starts one server later: none is always first
            // after the machine was idle, or always last.
            let mut order = targets.clone();
            order.rotate_left(usize::from(round - 1) % targets.len());
            for (server, pid, url) in order {
                eprintln!(
                    "bench: {server}: {} for {duration} s, round {round}: {url}",
                    test.title()
                );
                // Warm-up: connections, session caches, allocator arenas.
                load::run(test, &url, warm_up(duration), &scratch)
                    .with_context(|| format!("{server}: {} warm-up", test.id()))?;
                let sampler = Sampler::start(pid);
                let outcome =
                    load::run(test, &url, duration, &scratch).with_context(|| format!("{server}: {}", test.id()))?;
                let usage = sampler.finish(ticks);
                let run = Run {
                    server,
                    test,
                    round,
                    url,
                    outcome,
                    cpu_seconds: usage.cpu_seconds,
                    wall_seconds: usage.wall_seconds,
                    peak_rss_kib: usage.peak_rss_kib,
                };
                eprintln!(
                    "bench:   {:.0} req/s, {:.2} µs server CPU per request, peak RSS {:.1} MiB, {} errors",
                    run.outcome.rps,
                    run.us_per_request(),
                    mib(run.peak_rss_kib),
                    run.outcome.errors
                );
                report.runs.push(run);
            }
        }
        if test == Test::Redirect {
            check_redirect("lunchd", lunchd.http, lunchd.https)?;
            if let Some(nginx) = &nginx {
                check_redirect("nginx", nginx.http, nginx.https)?;
            }
        }
    }
    drop(nginx);
    drop(variants);

    // Reloads: idle, then under keep-alive load.
    let reloads = if args.quick { 20 } else { 100 };
    for _ in 0..if args.quick { 5 } else { 20 } {
        report.reload_ms.push(reload(&lunchd, &notify)?);
    }
    // One reload every 100 ms, in a load half as long again: a reload
    // takes milliseconds, tens on a busy machine.
    let seconds = duration.max(reloads as f64 * 0.15 + 1.0);
    report.reloads_under_load = Some(reloads_under_load(&lunchd, &notify, reloads, seconds)?);
    drop(lunchd);

    // More starts, for a steadier start-to-ready figure.
    for _ in 0..if args.quick { 2 } else { 4 } {
        let again = Lunchd::start(&binary, &cert, &scratch, &notify, None)?;
        report.start_to_ready_ms.push(ms(again.start_to_ready));
    }

    report.notes.push(format!(
        "lunchd serves its lightest real route, {} (`ok\\n` with its usual security headers); nginx serves \
         `return 200 \"{}\"`",
        servers::LUNCHD_PATH,
        servers::NGINX_BODY
    ));
    let markdown = report.markdown();
    println!("{markdown}");
    std::fs::write(out.join("results.md"), &markdown)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&report.json())?)?;
    eprintln!("bench: results in {}", out.join("results.{md,json}").display());
    let failed: Vec<String> = report
        .runs
        .iter()
        .filter(|r| r.outcome.errors > 0)
        .map(|r| format!("{} {}: {} errors", r.server, r.test.id(), r.outcome.errors))
        .chain(
            report
                .reloads_under_load
                .iter()
                .filter(|r| r.outcome.errors > 0)
                .map(|r| format!("{} failed requests during reloads", r.outcome.errors)),
        )
        .collect();
    anyhow::ensure!(failed.is_empty(), "requests failed: {}", failed.join("; "));
    Ok(())
}

/// `--idle N`: memory per idle connection, lunchd and nginx alternating.
fn idle_only(lunchd: &Lunchd, nginx: &Nginx, cert: &Certificate, n: usize, out: &Path) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for protocol in idle::Protocol::ALL {
        for (server, pid, port, path) in [
            ("lunchd", lunchd.guard.pid(), lunchd.https, servers::LUNCHD_PATH),
            ("nginx", nginx.guard.pid(), nginx.https, servers::NGINX_PATH),
        ] {
            eprintln!("bench: {server}: {n} idle {} connections", protocol.name());
            let idle = idle::measure(server, pid, port, path, protocol, n, cert)?;
            eprintln!(
                "bench:   {} -> {} KiB resident: {:.1} KiB per connection",
                idle.before_kib,
                idle.after_kib,
                idle.kib_per_connection()
            );
            results.push(idle);
        }
    }
    let mut md = format!(
        "## Memory per idle TLS connection\n\n{n} connections, each after one request, held open; resident \
         memory (VmRSS summed over the server's processes) after minus before, divided by {n}.\n\n\
         | protocol | server | before KiB | after KiB | KiB per connection |\n|---|---|---:|---:|---:|\n"
    );
    for idle in &results {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} |",
            idle.protocol.name(),
            idle.server,
            idle.before_kib,
            idle.after_kib,
            idle.kib_per_connection()
        );
    }
    for protocol in idle::Protocol::ALL {
        let per = |server: &str| {
            results
                .iter()
                .find(|i| i.server == server && i.protocol == protocol)
                .map(idle::Idle::kib_per_connection)
        };
        if let (Some(lunchd), Some(nginx)) = (per("lunchd"), per("nginx")) {
            let _ = writeln!(
                md,
                "\n{}: lunchd / nginx = {:.2} (target at most 0.5)",
                protocol.name(),
                lunchd / nginx
            );
        }
    }
    println!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("idle.md"), &md)?;
    let json: Vec<_> = results
        .iter()
        .map(|i| {
            serde_json::json!({
                "server": i.server,
                "protocol": i.protocol.name(),
                "connections": i.connections,
                "before_kib": i.before_kib,
                "after_kib": i.after_kib,
                "kib_per_connection": i.kib_per_connection(),
            })
        })
        .collect();
    std::fs::write(out.join("idle.json"), serde_json::to_string_pretty(&json)?)?;
    eprintln!("bench: results in {}", out.join("idle.{md,json}").display());
    Ok(())
}

fn warm_up(duration: f64) -> f64 {
    // The tools count whole seconds.
    (duration / 5.0).clamp(1.0, 2.0)
}

fn url(test: Test, http: u16, https: u16, lunchd: bool) -> String {
    let path = if lunchd {
        servers::LUNCHD_PATH
    } else {
        servers::NGINX_PATH
    };
    match test {
        Test::Redirect => format!("http://127.0.0.1:{http}/"),
        _ => format!("https://127.0.0.1:{https}{path}"),
    }
}

fn check_redirect(server: &str, http: u16, https: u16) -> anyhow::Result<()> {
    let (status, location) = servers::redirect_check(http)?;
    let want = format!("https://127.0.0.1:{https}/soup?x=1");
    anyhow::ensure!(
        matches!(status, 301 | 308) && location == want,
        "{server}'s redirect answered {status} to {location:?}; expected 301 or 308 to {want}"
    );
    Ok(())
}

/// SIGHUP to READY=1, in milliseconds.
fn reload(lunchd: &Lunchd, notify: &NotifySocket) -> anyhow::Result<f64> {
    notify.drain();
    let start = Instant::now();
    procs::signal(lunchd.guard.pid(), "HUP")?;
    let ready = servers::ready_at(notify, Duration::from_secs(10)).context("after SIGHUP")?;
    Ok(ms(ready - start))
}

/// `reloads` reloads spread over a keep-alive load of `seconds`.
fn reloads_under_load(
    lunchd: &Lunchd,
    notify: &NotifySocket,
    reloads: usize,
    seconds: f64,
) -> anyhow::Result<ReloadsUnderLoad> {
    let url = url(Test::H1, lunchd.http, lunchd.https, true);
    eprintln!("bench: lunchd: {reloads} reloads during {seconds} s of keep-alive load");
    let scratch = PathBuf::new();
    let load = thread::spawn(move || load::run(Test::H1, &url, seconds, &scratch));
    // Leave the first tenth of the run without reloads, and at least the
    // last quarter.
    thread::sleep(Duration::from_secs_f64(seconds / 10.0));
    let step = Duration::from_secs_f64(seconds * 0.65 / reloads as f64);
    let mut reload_ms = Vec::with_capacity(reloads);
    for done in 0..reloads {
        let began = Instant::now();
        reload_ms.push(reload(lunchd, notify)?);
        anyhow::ensure!(
            !load.is_finished(),
            "the {seconds} s load ended after {} of {reloads} reloads (median {:.1} ms): the machine is too busy",
            done + 1,
            median(&reload_ms)
        );
        thread::sleep(step.saturating_sub(began.elapsed()));
    }
    let outcome = load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    Ok(ReloadsUnderLoad {
        reloads,
        outcome,
        reload_ms,
    })
}

fn ensure_tools(nginx: bool) -> anyhow::Result<()> {
    let mut wanted = lunch_testkit::BENCH_TOOLS.to_vec();
    if nginx {
        wanted.push(("nginx", "nginx-light"));
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(tool, _)| !crate::system::on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::system::apt_install("bench", &missing)
}

fn build_lunchd(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release -p lunchd");
    Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "lunchd"])
        .current_dir(root)
        .run_checked()?;
    Ok(crate::system::target_dir(root).join("release/lunchd"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

impl Report {
    fn of(&self, server: &str, test: Test) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |r| r.server == server && r.test == test)
    }

    /// The median over the rounds of `server`'s CPU per request in `test`,
    /// and of its requests per second.
    fn median(&self, server: &str, test: Test) -> Option<(f64, f64)> {
        let us: Vec<f64> = self.of(server, test).map(Run::us_per_request).collect();
        let rps: Vec<f64> = self.of(server, test).map(|r| r.outcome.rps).collect();
        (!us.is_empty()).then(|| (median(&us), median(&rps)))
    }

    /// `feature`'s cost in `test` against the default lunchd of the same
    /// round: the median over the rounds, the lowest and the highest.
    fn cost(&self, feature: &str, test: Test) -> Option<(f64, f64, f64)> {
        let costs: Vec<f64> = self
            .of(feature, test)
            .filter_map(|with| {
                let base = self.of("lunchd", test).find(|b| b.round == with.round)?;
                Some(with.us_per_request() / base.us_per_request() - 1.0)
            })
            .collect();
        (!costs.is_empty()).then(|| (median(&costs), percentile(&costs, 0.0), percentile(&costs, 1.0)))
    }

    fn peak_rss(&self, server: &str) -> Option<u64> {
        self.runs
            .iter()
            .filter(|r| r.server == server)
            .map(|r| r.peak_rss_kib)
            .max()
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let cpus = thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(
            md,
            "## Results\n\n{cpus} CPUs, client and server on the same cores; {} s per test after a warm-up; \
             127.0.0.1 only; {} round(s), each measuring every server once.\n",
            self.duration, self.rounds
        );
        let _ = writeln!(
            md,
            "| test | server | round | req/s | p50 | p99 | server CPU µs/req | peak RSS MiB | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &self.runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} | {:.1} | {} |",
                run.test.title(),
                run.server,
                run.round,
                run.outcome.rps,
                run.outcome.p50_ms,
                run.outcome.p99_ms,
                run.us_per_request(),
                mib(run.peak_rss_kib),
                run.outcome.errors
            );
        }
        if self.runs.iter().any(|r| r.server == "nginx") {
            let _ = writeln!(
                md,
                "\n### lunchd / nginx\n\n| test | lunchd µs/req | nginx µs/req | ratio | target | req/s ratio |\n|---|---:|---:|---:|---:|---:|"
            );
            for test in Test::ALL {
                let (Some((l_us, l_rps)), Some((n_us, n_rps))) =
                    (self.median("lunchd", test), self.median("nginx", test))
                else {
                    continue;
                };
                let ratio = l_us / n_us;
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {:.2} | **{:.2}×** {} | ≤ {:.1}× | {:.2}× |",
                    test.title(),
                    l_us,
                    n_us,
                    ratio,
                    if ratio <= test.target_ratio() { "✓" } else { "✗" },
                    test.target_ratio(),
                    l_rps / n_rps
                );
            }
        }
        let mut features: Vec<&str> = Vec::new();
        for run in &self.runs {
            if run.server.starts_with("lunchd+") && !features.contains(&run.server) {
                features.push(run.server);
            }
        }
        if !features.is_empty() {
            let _ = writeln!(
                md,
                "\n### What a feature costs (same run)\n\nAgainst the default lunchd of the same round; `twin` \
                 is a second default lunchd, its cost the noise floor.\n\n\
                 | test | feature | lunchd µs/req | with it µs/req | cost | range over rounds |\n|---|---|---:|---:|---:|---:|"
            );
            for test in Test::ALL {
                for &feature in &features {
                    let (Some((base, _)), Some((with, _)), Some((cost, low, high))) = (
                        self.median("lunchd", test),
                        self.median(feature, test),
                        self.cost(feature, test),
                    ) else {
                        continue;
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {:.2} | {:.2} | {:+.1}% | {:+.1}% … {:+.1}% |",
                        test.title(),
                        feature.trim_start_matches("lunchd+"),
                        base,
                        with,
                        cost * 100.0,
                        low * 100.0,
                        high * 100.0
                    );
                }
            }
        }
        let _ = writeln!(md, "\n### Memory (VmRSS summed over the server's processes)\n");
        let _ = writeln!(md, "| server | idle MiB | peak under load MiB |\n|---|---:|---:|");
        for (server, idle) in &self.idle_rss_kib {
            let peak = self
                .peak_rss(server)
                .map_or("–".to_owned(), |p| format!("{:.1}", mib(p)));
            let _ = writeln!(md, "| {server} | {:.1} | {peak} |", mib(*idle));
        }
        let _ = writeln!(md, "\n### lunchd lifecycle\n");
        let _ = writeln!(
            md,
            "- start to READY=1 (from the activating connection): median {:.1} ms over {} starts",
            median(&self.start_to_ready_ms),
            self.start_to_ready_ms.len()
        );
        let _ = writeln!(
            md,
            "- reload, SIGHUP to READY=1, idle: median {:.1} ms, max {:.1} ms over {}",
            median(&self.reload_ms),
            percentile(&self.reload_ms, 1.0),
            self.reload_ms.len()
        );
        if let Some(r) = &self.reloads_under_load {
            let _ = writeln!(
                md,
                "- {} reloads during HTTP/1.1 keep-alive load: {} requests at {:.0} req/s, **{} failed**; \
                 reload median {:.1} ms, max {:.1} ms",
                r.reloads,
                r.outcome.requests,
                r.outcome.rps,
                r.outcome.errors,
                median(&r.reload_ms),
                percentile(&r.reload_ms, 1.0)
            );
        }
        let _ = writeln!(md, "\n### Notes\n");
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        for (server, path, size) in &self.sizes {
            if let Some((head, body)) = size {
                let _ = writeln!(
                    md,
                    "- {server} {path} over HTTP/1.1: {head} bytes of head, {body} bytes of body"
                );
            }
        }
        match self.handshake_check {
            Some((full, resumed)) => {
                let _ = writeln!(
                    md,
                    "- ab handshakes, checked with nginx's `$ssl_session_reused`: {full} full, {resumed} resumed"
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "- ab's full handshakes were not checked in this run (the check needs `--against nginx`)"
                );
            }
        }
        for run in self.runs.iter().filter(|r| r.outcome.tls.is_some()) {
            let _ = writeln!(
                md,
                "- {} {}: {}",
                run.server,
                run.test.id(),
                run.outcome.tls.as_deref().unwrap_or_default()
            );
        }
        md
    }

    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let runs: Vec<_> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "server": r.server,
                    "test": r.test.id(),
                    "round": r.round,
                    "url": r.url,
                    "requests": r.outcome.requests,
                    "requests_per_second": r.outcome.rps,
                    "p50_ms": r.outcome.p50_ms,
                    "p99_ms": r.outcome.p99_ms,
                    "errors": r.outcome.errors,
                    "tls": r.outcome.tls,
                    "server_cpu_seconds": r.cpu_seconds,
                    "wall_seconds": r.wall_seconds,
                    "server_cpu_us_per_request": r.us_per_request(),
                    "peak_rss_kib": r.peak_rss_kib,
                })
            })
            .collect();
        json!({
            "duration_seconds": self.duration,
            "rounds": self.rounds,
            "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
            "runs": runs,
            "idle_rss_kib": self.idle_rss_kib.iter().map(|(s, k)| json!({"server": s, "kib": k})).collect::<Vec<_>>(),
            "start_to_ready_ms": self.start_to_ready_ms,
            "reload_ms": self.reload_ms,
            "reloads_under_load": self.reloads_under_load.as_ref().map(|r| json!({
                "reloads": r.reloads,
                "requests": r.outcome.requests,
                "requests_per_second": r.outcome.rps,
                "failed": r.outcome.errors,
                "reload_ms": r.reload_ms,
            })),
            "ab_handshakes": self.handshake_check.map(|(full, resumed)| json!({"full": full, "resumed": resumed})),
            "notes": self.notes,
        })
    }
}
