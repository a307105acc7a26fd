//! What xtask's integration tests share.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};

/// The xtask binary under test.
pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// The debug lunchd that `cargo test --workspace` builds next to xtask.
pub fn lunchd() -> PathBuf {
    let lunchd = Path::new(XTASK).with_file_name("lunchd");
    assert!(
        lunchd.is_file(),
        "{} is missing; build it with `cargo build -p lunchd` (cargo test --workspace does)",
        lunchd.display()
    );
    lunchd
}
