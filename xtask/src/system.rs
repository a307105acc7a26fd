//! Facts about the machine the tasks run on, and installing what they need
//! from Debian.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use lunch_testkit::Checked;

/// Whether the process runs as root.
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `tool` is on the PATH, or in the sbin directories a non-root
/// PATH may lack.
pub(crate) fn on_path(tool: &str) -> bool {
    lunch_testkit::find_tool(tool).is_some()
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, or `target/` under the
/// workspace `root`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// `apt-get install` of `packages`, non-interactive; `task` names the caller
/// in the progress line.
pub(crate) fn apt_install(task: &str, packages: &[&str]) -> anyhow::Result<()> {
    anyhow::ensure!(
        on_path("apt-get"),
        "{} missing and there is no apt-get; install the equivalent of Debian's {} by hand",
        if packages.len() == 1 {
            "a package is"
        } else {
            "packages are"
        },
        packages.join(" ")
    );
    eprintln!("{task}: installing {}", packages.join(" "));
    Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run_checked()
        .with_context(|| {
            format!(
                "cannot install {}; install them with `apt-get install {}` (as root)",
                packages.join(" "),
                packages.join(" ")
            )
        })?;
    Ok(())
}
