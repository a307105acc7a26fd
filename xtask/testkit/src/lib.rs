//! What lunchd's integration tests and xtask both need, written once: a
//! certificate authority made for one run ([`TestCa`]), a `NOTIFY_SOCKET`
//! listener as a service manager has one ([`NotifySocket`]), one way to
//! run a command and check how it ended ([`Checked`]), `systemd-analyze`
//! as it can run on any host ([`systemd_analyze`]), and the external tools
//! the suite drives with their Debian packages ([`TOOLS`],
//! [`require_tool`]), PROXY v2 headers as a load balancer sends them
//! ([`proxy_v2`]), and HTTP/2 frames written by hand ([`h2`]).
//!
//! Dev-only: nothing that ships depends on it. It lives under `xtask/`
//! because the workspace's top level holds only the product's crates.
//!
//! Functions that only fail on a broken machine (no entropy, no loopback)
//! come in two forms where xtask needs an error to report: `try_*` returns
//! it, the plain form panics with it, as a test wants.

mod ca;
mod cmd;
pub mod h2;
mod notify;
mod proxy;
mod tools;

pub use ca::{Leaf, TestCa, hex};
pub use cmd::{Checked, CmdError, command_line};
pub use notify::{NotNotified, Notified, NotifySocket};
pub use proxy::{proxy_v2, proxy_v2_local};
pub use tools::{BENCH_TOOLS, TOOLS, find_tool, free_port, locate_tool, require_tool, systemd_analyze, try_free_port};

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The `[dependencies]` table of the workspace member `crate_dir`.
    fn dependencies(crate_dir: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let manifest = std::fs::read_to_string(root.join(crate_dir).join("Cargo.toml")).unwrap();
        let table = manifest.split("\n[dependencies]\n").nth(1).unwrap_or_default();
        table.split("\n[").next().unwrap_or_default().to_owned()
    }

    #[test]
    fn nothing_that_ships_depends_on_the_kit() {
        for member in ["lunch-core", "lunch-net", "lunchd"] {
            let dependencies = dependencies(member);
            assert!(!dependencies.contains("lunch-testkit"), "{member}: {dependencies}");
        }
        // The check reads the tables it means to.
        assert!(dependencies("lunchd").contains("lunch-net"));
        assert!(dependencies("xtask").contains("lunch-testkit"));
    }
}
