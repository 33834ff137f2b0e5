//! README's test command: `cargo xtask test`.

use std::process::Command;

use crate::util::{is_root, run, workspace_root};

pub fn run_tests(unit_only: bool) -> anyhow::Result<()> {
    crate::deps::all()?;
    let root = workspace_root();
    // Unit tests (parsers on captured OVS/OVN text, replica, resolver, live pipeline); the eBPF
    // crate targets bpfel-unknown-none and is built by detrace-user/build.rs, never for the host.
    run(Command::new("cargo").current_dir(&root).args([
        "test",
        "--workspace",
        "--exclude",
        "detrace-ebpf",
        "--lib",
        "--bins",
    ]))?;
    // The parsers that read outside input, fuzzed for a small budget on every run.
    crate::fuzz::run_fuzz(&crate::fuzz::FuzzArgs {
        seconds: crate::fuzz::CI_SECONDS,
        targets: Vec::new(),
    })?;
    if unit_only {
        return Ok(());
    }
    // The binary a container image takes: static, and it runs.
    crate::dist::build_static()?;
    if !is_root() {
        anyhow::bail!(
            "the host integration tests start OVS/OVN and create network namespaces: run as root \
             (or pass --unit-only)"
        );
    }
    // The integration tests drive the real binary: build it, and tell them where it is.
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--package",
        "detrace-user",
        "--bin",
        "detrace",
    ]))?;
    // They fail (not skip) when the platform should support them.
    run(Command::new("cargo")
        .current_dir(&root)
        .env("DETRACE_REQUIRE_HOST_LAB", "1")
        .env("DETRACE_BIN", root.join("target/debug/detrace"))
        .args([
            "test",
            "--package",
            "detrace-tests",
            "--",
            "--test-threads=1",
        ]))?;
    // Kernel-level tests in the lab guest (OVS kernel datapath, kprobes, module BTF), on both
    // stacks: trixie (6.12, OVS 3.5, OVN 25.03) and bookworm (6.1, OVS 3.1, OVN 23.03).
    crate::lab::run_vm_tests(
        Vec::new(),
        &[crate::lab::Profile::Trixie, crate::lab::Profile::Bookworm],
    )
}
