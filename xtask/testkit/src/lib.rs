//! What lunchd's integration tests and xtask both need, written once: a
//! certificate authority made for one run ([`TestCa`]), a `NOTIFY_SOCKET`
//! listener as a service manager has one ([`NotifySocket`]), one way to
//! run a command and check how it ended ([`Checked`]), `systemd-analyze`
//! as it can run on any host ([`systemd_analyze`]), and the external tools
//! the suite drives with their Debian packages ([`TOOLS`],
//! [`require_tool`]).
//!
//! Dev-only: nothing that ships depends on it. It lives under `xtask/`
//! because the workspace's top level holds only the product's crates.
//!
//! Functions that only fail on a broken machine (no entropy, no loopback)
//! come in two forms where xtask needs an error to report: `try_*` returns
//! it, the plain form panics with it, as a test wants.

mod ca;
mod cmd;
mod notify;
mod tools;

pub use ca::{Leaf, TestCa, hex};
pub use cmd::{Checked, CmdError, command_line};
pub use notify::{NotNotified, Notified, NotifySocket};
pub use tools::{BENCH_TOOLS, TOOLS, find_tool, free_port, locate_tool, require_tool, systemd_analyze, try_free_port};
