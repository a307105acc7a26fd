//! `cargo xtask test`: the whole test suite on a fresh machine.
//!
//! Installs the Debian packages the tests drive (as root; otherwise it
//! prints the `apt-get install` line and stops), runs `cargo test
//! --workspace`, then, as root, the end-to-end run under a real systemd
//! (`cargo xtask e2e`, three generations) and the cluster run behind
//! HAProxy (`cargo xtask e2e --cluster`, under a minute once the release
//! build exists). The pure crates need none of this: `cargo test -p
//! lunch-core` runs anywhere.

use std::ffi::OsString;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::system::{is_root, on_path};

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Skip the end-to-end run (which needs root) even when root.
    #[arg(long)]
    no_e2e: bool,
    /// Passed on to `cargo test`, e.g. a test name filter.
    #[arg(last = true, value_name = "CARGO TEST ARGS")]
    cargo_args: Vec<OsString>,
}

/// The programs `cargo test --workspace` drives, and the Debian package
/// of each: the list the tests' `require_tool` checks against.
const SUITE_TOOLS: &[(&str, &str)] = lunch_testkit::TOOLS;

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    install(&missing_packages(SUITE_TOOLS))?;

    let t = Instant::now();
    println!("test: cargo test --workspace --locked");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["test", "--workspace", "--locked"])
        .args(&args.cargo_args)
        .current_dir(crate::project_root())
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("cargo test --workspace failed ({status})");
    }
    println!("test: cargo test passed in {:.0} s", t.elapsed().as_secs_f64());

    if args.no_e2e {
        println!("test: the e2e run was left out (--no-e2e)");
    } else if !is_root() {
        println!(
            "test: the e2e run was not started: it boots a container and needs root; \
             run `sudo cargo xtask test` or `sudo cargo xtask e2e`"
        );
    } else {
        for (what, args) in [("e2e", &["e2e"][..]), ("cluster run", &["e2e", "--cluster"][..])] {
            let t = Instant::now();
            println!("test: cargo xtask {}", args.join(" "));
            // Through cargo, not this process's own executable: `cargo
            // test` has just rebuilt the xtask binary, so the file this
            // process runs from is gone.
            let status = Command::new(&cargo)
                .args(["run", "--quiet", "--locked", "--package", "xtask", "--"])
                .args(args)
                .current_dir(crate::project_root())
                .status()
                .with_context(|| format!("running cargo xtask {}", args.join(" ")))?;
            if !status.success() {
                bail!("cargo xtask {} failed ({status})", args.join(" "));
            }
            println!("test: the {what} passed in {:.0} s", t.elapsed().as_secs_f64());
        }
    }
    println!("test: everything passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The packages of the tools in `tools` that are not installed, each once.
fn missing_packages(tools: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut missing: Vec<&str> = Vec::new();
    for &(tool, package) in tools {
        if !on_path(tool) && !missing.contains(&package) {
            missing.push(package);
        }
    }
    missing
}

/// Installs `packages` with apt-get as root; otherwise says how and fails.
fn install(packages: &[&str]) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let line = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    if !is_root() {
        bail!("the tests need Debian packages that are not installed; as root, run:\n    {line}");
    }
    if on_path("apt-get") {
        // A fresh machine may have no package lists yet.
        let status = Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get update")?;
        if !status.success() {
            bail!("apt-get update failed ({status}); the tests need: {line}");
        }
    }
    crate::system::apt_install("test", packages)?;
    let still = missing_packages(SUITE_TOOLS);
    if !still.is_empty() {
        bail!("after installing, still missing the tools of {}", still.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_named_once_for_all_its_missing_tools() {
        let tools = [
            ("lunchd-test-no-such-tool-a", "pkg-a"),
            ("lunchd-test-no-such-tool-b", "pkg-a"),
            ("sh", "dash"),
            ("lunchd-test-no-such-tool-c", "pkg-c"),
        ];
        assert_eq!(missing_packages(&tools), ["pkg-a", "pkg-c"]);
    }
}
