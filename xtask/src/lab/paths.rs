//! Where the lab's files are, and its progress lines.

use std::{path::PathBuf, time::Instant};

use crate::util::workspace_root;

/// The guest-side files (xtask/guest/).
pub fn guest_dir() -> PathBuf {
    workspace_root().join("xtask/guest")
}

/// target/lab: logs, console logs and kept results.
pub fn lab_target() -> PathBuf {
    workspace_root().join("target/lab")
}

/// Progress with the time since xtask started, so every step's cost is visible.
pub fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("lab [{:>6.1}s] {msg}", t.as_secs_f64());
}
