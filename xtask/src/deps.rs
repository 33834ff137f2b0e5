//! Installs what the project needs on a fresh machine of this kind (Debian bookworm, root,
//! registries only). Each step checks first, so a warm machine pays only the checks.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{is_root, run, runs_ok};

/// Must match rust-toolchain.toml.
pub const TOOLCHAIN: &str = "1.95.0";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fuzz driver of `cargo xtask fuzz` (libFuzzer through libfuzzer-sys).
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Debian packages for the host integration tests: real OVS 3.1 / OVN 23.03 (userspace datapath),
/// netns plumbing, and ovn-detrace (in ovn-common, needs python3-openvswitch) to compare against.
pub const HOST_TEST_PACKAGES: &[&str] = &[
    "openvswitch-switch",
    "openvswitch-common",
    "ovn-central",
    "ovn-host",
    "ovn-common",
    "python3-openvswitch",
    "iproute2",
    "ethtool",
    "netcat-openbsd",
    "iputils-ping",
];

/// For `cargo xtask static`: musl-gcc, the C compiler for the musl target that ring (rustls's
/// crypto, for ssl databases) builds its C and assembly with.
pub const STATIC_BUILD_PACKAGES: &[&str] = &["musl-tools"];

pub fn all() -> anyhow::Result<()> {
    ensure_apt(HOST_TEST_PACKAGES)?;
    ensure_apt(STATIC_BUILD_PACKAGES)?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs the Debian packages that are missing (apt-get update once, only when needed).
pub fn ensure_apt(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}\nhint: run as root, or `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
    .context("apt-get install")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output();
    let have_src = matches!(&sysroot, Ok(o) if o.status.success()
        && PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir());
    if have_src {
        return Ok(());
    }
    eprintln!("xtask: installing toolchain {TOOLCHAIN} with rust-src");
    run(Command::new("rustup").args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"]))?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))
}

/// bpf-linker must be built against the libLLVM inside the pinned toolchain: a plain
/// `cargo install bpf-linker` here finds Debian's LLVM 14 and fails. We point its build at a
/// directory of symlinks to the toolchain's libLLVM (that directory becomes its RUNPATH).
fn ensure_bpf_linker() -> anyhow::Result<()> {
    if runs_ok("bpf-linker", &["--version"]) {
        return Ok(());
    }
    let out = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .context("rustup run rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let vv = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "-vV"])
        .output()
        .context("rustc -vV")?;
    let vv = String::from_utf8_lossy(&vv.stdout).into_owned();
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV reports no LLVM version")?
        .to_string();
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .context("reading the toolchain's lib directory")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the pinned toolchain ships no libLLVM.so.*")?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let shim = PathBuf::from(home).join(format!(".local/share/bpf-linker-llvm/{TOOLCHAIN}"));
    std::fs::create_dir_all(shim.join("lib"))?;
    for name in [
        "libLLVM.so".to_string(),
        lib.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("libLLVM.so")
            .to_string(),
    ] {
        let link = shim.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (~1 min)");
    run(Command::new("rustup")
        .args(["run", TOOLCHAIN, "cargo", "install", "--locked"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &shim))?;
    if !runs_ok("bpf-linker", &["--version"]) {
        bail!("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// cargo-fuzz, pinned and --locked, into ~/.cargo/bin (kept there between runs, like bpf-linker).
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!(" {CARGO_FUZZ_VERSION}"))
        });
    if have {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (~1 min)");
    run(Command::new("rustup")
        .args(["run", TOOLCHAIN, "cargo", "install", "--locked"])
        .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}")))
}
