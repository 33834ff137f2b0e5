//! Builds detrace-ebpf for bpfel-unknown-none with aya-build and leaves the object in OUT_DIR,
//! from where `src/probes/object.rs` embeds it into the `detrace` binary.

use std::process::Command;

use anyhow::{Context as _, anyhow};

/// Must match rust-toolchain.toml: bpf-linker is built against this toolchain's libLLVM.
const EBPF_TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linker_ok {
        return Err(anyhow!(
            "bpf-linker is not installed or does not run: the eBPF probes cannot be linked.\n\
             hint: run `cargo xtask deps` (it builds bpf-linker against the pinned toolchain's libLLVM)"
        ));
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    // aya-build watches detrace-ebpf's directory only; the probes also compile detrace-common
    // (map sizes, event and config layouts): a change there must rebuild the object too, or
    // the binary embeds probes that disagree with its own user space.
    for p in &metadata.packages {
        if p.name.as_str() == "detrace-common"
            && let Some(dir) = p.manifest_path.parent()
        {
            println!("cargo:rerun-if-changed={dir}");
        }
    }
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "detrace-ebpf")
        .ok_or_else(|| anyhow!("detrace-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("detrace-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
