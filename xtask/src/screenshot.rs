//! Regenerate the page screenshots in docs/.
//!
//! The browser test (`lunchd/tests/browser.rs`) already loads the page from
//! the real lunchd in headless Chromium and writes screenshots; this runs
//! it with `LUNCHD_SCREENSHOT_DIR` pointing at a scratch directory and copies
//! the results into docs/. The test is never skipped here: without
//! Chromium this fails and says how to install it.

use std::process::Command;

use anyhow::Context;
use lunch_testkit::Checked;

/// Arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print what would run and be written, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// What the test writes, and where each goes in docs/.
const SHOTS: [(&str, &str); 3] = [
    ("desktop.png", "screenshot.png"),
    ("phone.png", "screenshot-phone.png"),
    ("phone-dark.png", "screenshot-phone-dark.png"),
];

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::project_root();
    let scratch = crate::system::target_dir(&root).join("tmp").join("xtask-screenshot");
    let docs = root.join("docs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut test = Command::new(cargo);
    test.current_dir(&root)
        .args(["test", "--package", "lunchd", "--test", "browser", "--", "--exact"])
        .arg("the_page_in_headless_chromium")
        .env("LUNCHD_SCREENSHOT_DIR", &scratch);
    if args.dry_run {
        println!("LUNCHD_SCREENSHOT_DIR={} {test:?}", scratch.display());
        for (from, to) in SHOTS {
            println!("copy {} -> {}", scratch.join(from).display(), docs.join(to).display());
        }
        return Ok(());
    }
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    test.run_checked()
        .context("the browser test failed; its output above says why")?;
    std::fs::create_dir_all(&docs).with_context(|| format!("creating {}", docs.display()))?;
    for (from, to) in SHOTS {
        let (from, to) = (scratch.join(from), docs.join(to));
        std::fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        println!("wrote {}", to.display());
    }
    Ok(())
}
