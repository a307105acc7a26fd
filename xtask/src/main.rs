//! `cargo xtask`: lunchd's development and deployment tasks, one module
//! per subcommand.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod e2e;
mod fuzz;
mod install;
mod screenshot;
mod system;
mod test;

/// lunchd's development tasks.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install lunchd's binary, units and example configuration.
    InstallUnits(install::InstallArgs),
    /// Remove what install-units installed.
    UninstallUnits(install::UninstallArgs),
    /// The whole deployment under a real systemd in a container.
    E2e(e2e::Args),
    /// Load tests against lunchd, side by side with nginx.
    Bench(bench::Args),
    /// Run the fuzz targets for a bounded time.
    Fuzz(fuzz::Args),
    /// Regenerate the page screenshot in docs/.
    Screenshot(screenshot::Args),
    /// The whole test suite: installs what it needs, then `cargo test
    /// --workspace` and, as root, the e2e run.
    Test(test::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::InstallUnits(args) => install::install(args),
        Task::UninstallUnits(args) => install::uninstall(args),
        Task::E2e(args) => e2e::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Screenshot(args) => screenshot::run(args),
        Task::Test(args) => test::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
