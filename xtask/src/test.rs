//! README's test command: `cargo xtask test`.

use std::process::Command;

use crate::util::{is_root, run, workspace_root};

pub fn run_tests(unit_only: bool) -> anyhow::Result<()> {
    crate::deps::all()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["test", "--workspace", "--lib", "--bins"]))?;
    if unit_only {
        return Ok(());
    }
    if !is_root() {
        anyhow::bail!(
            "the host integration tests start OVS/OVN and create network namespaces: run as root \
             (or pass --unit-only)"
        );
    }
    // The integration tests fail (not skip) when the platform should support them.
    run(Command::new("cargo")
        .current_dir(&root)
        .env("DETRACE_REQUIRE_HOST_LAB", "1")
        .args(["test", "--package", "detrace-tests", "--", "--test-threads=1"]))
}

