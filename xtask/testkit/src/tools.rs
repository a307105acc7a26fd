//! The external programs the test suite drives, where to find them, and
//! `systemd-analyze` as it can run on any host.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use crate::cmd::{Checked, CmdError};

/// Every external program `cargo test --workspace` drives, with the Debian
/// package that has it. `cargo xtask test` installs the packages of those
/// missing; [`require_tool`] accepts only programs listed here, so the two
/// cannot drift apart.
pub const TOOLS: &[(&str, &str)] = &[
    ("systemd-socket-activate", "systemd"),
    ("systemd-analyze", "systemd"),
    ("systemctl", "systemd"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("chromium", "chromium"),
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("ab", "apache2-utils"),
    ("pgrep", "procps"),
    ("kill", "procps"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("promtool", "prometheus"),
    ("valgrind", "valgrind"),
    ("callgrind_control", "valgrind"),
];

/// What `cargo xtask bench` drives (nginx aside, for `--against nginx`),
/// all of them in [`TOOLS`] too.
pub const BENCH_TOOLS: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("ab", "apache2-utils"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("systemd-socket-activate", "systemd"),
    ("kill", "procps"),
    ("valgrind", "valgrind"),
    ("callgrind_control", "valgrind"),
];

/// Where `command` is: on the PATH, or in the sbin directories a non-root
/// PATH may lack.
pub fn find_tool(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

/// The message for a missing `command` of Debian package `package`.
pub(crate) fn missing_tool_message(command: &str, package: &str) -> String {
    format!("`{command}` not found: install the Debian package `{package}` (cargo xtask test installs it)")
}

/// `command`'s path, or the message that names its package. `command` must
/// be one of [`TOOLS`], with `package`.
pub fn locate_tool(command: &str, package: &str) -> Result<PathBuf, String> {
    assert!(
        TOOLS.contains(&(command, package)),
        "({command:?}, {package:?}) is not in lunch_testkit::TOOLS; add it there so `cargo xtask test` installs it"
    );
    find_tool(command).ok_or_else(|| missing_tool_message(command, package))
}

/// `command`'s path. Panics, naming the Debian package to install, when it
/// is missing: a test that needs a tool fails without it, never skips.
/// `command` must be one of [`TOOLS`], with `package`.
#[track_caller]
pub fn require_tool(command: &str, package: &str) -> PathBuf {
    match locate_tool(command, package) {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

/// A loopback port that was free a moment ago. Panics where
/// [`try_free_port`] fails.
#[track_caller]
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("cannot find a free loopback port: {e}"),
    }
}

/// A loopback port that was free a moment ago, or why none could be had.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `systemd-analyze ARGS` and returns its output however it exited.
///
/// As root it runs in a private mount namespace with a tmpfs on
/// /run/systemd: systemd 252's analyzer touches
/// /run/systemd/systemd-units-load, which must not appear on a host (or
/// container) whose PID 1 is not systemd.
pub fn systemd_analyze<S: AsRef<OsStr>>(args: &[S]) -> Result<Output, CmdError> {
    let mut command = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd || exit 1; fi; exec \"$0\" \"$@\"")
            .arg("systemd-analyze");
        c
    } else {
        Command::new("systemd-analyze")
    };
    command.args(args).output_checked()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_on_the_path_and_not_one_that_is_not() {
        let sh = find_tool("sh").expect("sh is on the PATH");
        assert!(sh.ends_with("sh") && sh.is_file(), "{}", sh.display());
        assert_eq!(find_tool("lunchd-test-no-such-tool"), None);
    }

    #[test]
    fn every_tool_is_listed_once() {
        for (i, (tool, _)) in TOOLS.iter().enumerate() {
            assert!(!TOOLS[..i].iter().any(|(t, _)| t == tool), "{tool} is listed twice");
        }
    }

    #[test]
    fn the_bench_tools_are_tools_of_the_suite() {
        for tool in BENCH_TOOLS {
            assert!(TOOLS.contains(tool), "{tool:?}");
        }
    }

    #[test]
    #[should_panic(expected = "is not in lunch_testkit::TOOLS")]
    fn a_tool_not_in_the_list_is_refused() {
        require_tool("sh", "dash");
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        assert_eq!(
            missing_tool_message("wrk", "wrk"),
            "`wrk` not found: install the Debian package `wrk` (cargo xtask test installs it)"
        );
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
