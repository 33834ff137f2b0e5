//! `cargo xtask static`: the static (musl) detrace binary a container image or a node without
//! a Rust toolchain takes, checked by running it: `--version`, and a replay of a recording
//! captured in the lab (no root, no daemons).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    deps::TOOLCHAIN,
    util::{run, workspace_root},
};

pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// A recording made by `detrace record` in the lab (xtask/guest/vm-tests/live-commands.sh).
const RECORDING: &str = "tests/fixtures/lab/record-lab-6.12.jsonl";

/// Builds target/x86_64-unknown-linux-musl/release/detrace and runs it.
pub fn build_static() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed", "--toolchain", TOOLCHAIN])
        .output()
        .context("rustup target list")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        eprintln!("xtask: adding the {MUSL} target to {TOOLCHAIN}");
        run(Command::new("rustup").args(["target", "add", MUSL, "--toolchain", TOOLCHAIN]))?;
    }
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--target",
        MUSL,
        "--package",
        "detrace-user",
        "--bin",
        "detrace",
    ]))?;
    let bin = root.join("target").join(MUSL).join("release/detrace");
    // Static: no program interpreter to load it.
    let file = Command::new("file").arg(&bin).output().context("file(1)")?;
    let what = String::from_utf8_lossy(&file.stdout);
    if !what.contains("statically linked") && !what.contains("static-pie linked") {
        bail!("{} is not static: {what}", bin.display());
    }
    let version = Command::new(&bin).arg("--version").output()?;
    if !version.status.success() {
        bail!("{} --version failed", bin.display());
    }
    let replay = Command::new(&bin)
        .args(["replay", "--format", "json"])
        .arg(root.join(RECORDING))
        .env("OVS_RUNDIR", "/nonexistent")
        .output()?;
    let packets = String::from_utf8_lossy(&replay.stdout).lines().count();
    if !replay.status.success() || packets == 0 {
        bail!(
            "the static binary's replay of {RECORDING}: rc {:?}, {packets} packets\n{}",
            replay.status.code(),
            String::from_utf8_lossy(&replay.stderr)
        );
    }
    eprintln!(
        "xtask: {} ({}): {} replays {packets} packets of {RECORDING}",
        bin.display(),
        String::from_utf8_lossy(&version.stdout).trim(),
        what.split(',')
            .find(|w| w.contains("linked"))
            .unwrap_or_default()
            .trim()
    );
    Ok(bin)
}
