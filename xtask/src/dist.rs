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
    crate::deps::ensure_apt(crate::deps::STATIC_BUILD_PACKAGES)?;
    let mut build = Command::new("cargo");
    // cc (ring's build) looks for x86_64-linux-musl-gcc, which Debian's musl-tools names
    // musl-gcc.
    let cc = "CC_x86_64_unknown_linux_musl";
    if std::env::var_os(cc).is_none() {
        build.env(cc, "musl-gcc");
    }
    run(build.current_dir(&root).args([
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
    if let Some(interp) = elf_interpreter(&std::fs::read(&bin)?) {
        bail!("{} is not static: it needs {interp}", bin.display());
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
        "xtask: {} ({}, static): replays {packets} packets of {RECORDING}",
        bin.display(),
        String::from_utf8_lossy(&version.stdout).trim(),
    );
    Ok(bin)
}

/// The program interpreter (PT_INTERP) an ELF64 little-endian executable asks for, if any.
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != 3 {
            return None;
        }
        let (off, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
        let path = elf.get(off..off + size)?;
        Some(
            String::from_utf8_lossy(path)
                .trim_end_matches('\0')
                .to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dynamic_executable_names_its_interpreter() {
        let sh = std::fs::read("/bin/sh").expect("/bin/sh");
        let interp = super::elf_interpreter(&sh).expect("/bin/sh is dynamic");
        assert!(interp.contains("ld-linux"), "{interp}");
        assert_eq!(super::elf_interpreter(b"not an ELF"), None);
    }
}
