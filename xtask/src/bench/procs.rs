//! Processes the benchmark starts, and what it reads about them from /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use lunch_testkit::Checked;

/// A child process that is stopped when dropped: SIGTERM (or the signal
/// given), a grace period, then SIGKILL. Holds on every path out of the
/// benchmark, errors included.
pub(crate) struct Guard {
    name: &'static str,
    child: Option<Child>,
    stop_signal: &'static str,
}

impl Guard {
    pub(crate) fn new(name: &'static str, child: Child) -> Guard {
        Guard {
            name,
            child: Some(child),
            stop_signal: "TERM",
        }
    }

    /// Stops the process with `signal` instead of SIGTERM (nginx: QUIT is a
    /// graceful stop).
    pub(crate) fn stop_with(mut self, signal: &'static str) -> Guard {
        self.stop_signal = signal;
        self
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process still runs.
    pub(crate) fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the process now and waits for it.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(None) = child.try_wait() {
            let _ = signal(child.id(), self.stop_signal);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "bench: {} (pid {}) did not stop in 15 s; killing it",
                self.name,
                child.id()
            );
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `sig` (a name such as `HUP`) to `pid` with kill(1).
pub(crate) fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .run_checked()?;
    Ok(())
}

/// Forwards a child's stderr to `log`, and reports each line that starts
/// with `marker` on the returned channel.
pub(crate) fn watch_lines(
    stream: impl std::io::Read + Send + 'static,
    log: &Path,
    marker: &'static str,
) -> anyhow::Result<std::sync::mpsc::Receiver<String>> {
    use std::io::Write;
    let mut file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if line.starts_with(marker) {
                let _ = tx.send(line.clone());
            }
            let _ = writeln!(file, "{line}");
        }
    });
    Ok(rx)
}

/// The server's processes: `root` and its children (nginx's workers).
pub(crate) fn family(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(stat) = read_stat(pid)
            && stat.ppid == root
        {
            pids.push(pid);
        }
    }
    pids
}

struct Stat {
    ppid: u32,
    ticks: u64,
}

/// Fields of /proc/PID/stat after the command name, which may itself hold
/// spaces and parentheses: ppid is field 4, utime and stime fields 14 and 15.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
    })
}

/// Clock ticks per second of /proc/PID/stat times.
pub(crate) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU time (user + system) of `pids`, in clock ticks.
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| read_stat(p)).map(|s| s.ticks).sum()
}

/// Resident memory of `pids` (VmRSS summed), in KiB.
pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| parse_vmrss(&s))
        .sum()
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the resident memory of a server's processes every 0.5 s while a
/// test runs, and its CPU time at the start and the end.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    pids: Vec<u32>,
    ticks_before: u64,
    started: Instant,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    /// Server CPU time, seconds.
    pub(crate) cpu_seconds: f64,
    /// Highest resident memory sample, KiB.
    pub(crate) peak_rss_kib: u64,
    /// Wall time the sampler ran, seconds.
    pub(crate) wall_seconds: f64,
}

impl Sampler {
    pub(crate) fn start(root: u32) -> Sampler {
        let pids = family(root);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(&pids)));
        let thread = {
            let (stop, peak, pids) = (Arc::clone(&stop), Arc::clone(&peak), pids.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Sleep in short steps so that stopping is prompt.
                    for _ in 0..10 {
                        std::thread::sleep(Duration::from_millis(50));
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    peak.fetch_max(rss_kib(&pids), Ordering::Relaxed);
                }
            })
        };
        Sampler {
            stop,
            peak,
            thread: Some(thread),
            ticks_before: cpu_ticks(&pids),
            pids,
            started: Instant::now(),
        }
    }

    pub(crate) fn finish(mut self, ticks_per_second: u64) -> Usage {
        let ticks = cpu_ticks(&self.pids).saturating_sub(self.ticks_before);
        let wall_seconds = self.started.elapsed().as_secs_f64();
        self.peak.fetch_max(rss_kib(&self.pids), Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Usage {
            cpu_seconds: ticks as f64 / ticks_per_second as f64,
            peak_rss_kib: self.peak.load(Ordering::Relaxed),
            wall_seconds,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        let line = "4242 (a (weird) name) S 17 4242 4242 0 -1 4194560 300 0 0 0 125 37 0 0 20 0 3 0 1 2 3";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.ticks, 162);
    }

    #[test]
    fn vmrss_in_kib() {
        let status = "Name:\tlunchd\nVmPeak:\t  9000 kB\nVmRSS:\t    6012 kB\nRssAnon:\t 2000 kB\n";
        assert_eq!(parse_vmrss(status), Some(6012));
        assert_eq!(parse_vmrss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let me = std::process::id();
        assert!(family(me).contains(&me));
        assert!(rss_kib(&[me]) > 0);
        assert!(read_stat(me).is_some());
    }
}
