//! What `lab` and `integration-test vm` need on the host, checked first and installed only
//! when missing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    image,
    paths::progress,
    qemu::{check_qemu, qemu_binary},
};
use crate::util::{is_root, run};

/// Packages the host needs to build and boot the image (qemu comes separately, see below).
const HOST_PACKAGES: &[&str] = &[
    "debootstrap",
    "busybox-static",
    "cpio",
    "xz-utils",
    "e2fsprogs",
    "kmod",
    "zstd",
    "debian-archive-keyring",
];

/// What `lab` and `integration-test vm` need on the host. Checks first: a warm machine pays
/// only the checks.
pub fn ensure_host() -> anyhow::Result<()> {
    crate::deps::ensure_apt(HOST_PACKAGES)?;
    ensure_qemu()?;
    // The toolchain's rust-src and bpf-linker, to build detrace with its eBPF programs.
    crate::deps::all()
}

/// qemu-system-x86 comes from bookworm-backports: bookworm's own 7.2 conflicts with the
/// qemu-utils 10.0 (backports) these machines ship. The backports entry exists only for the
/// install and is removed again, so the host's apt sources end as they were.
fn ensure_qemu() -> anyhow::Result<()> {
    if crate::util::runs_ok(qemu_binary(), &["--version"]) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{} is missing: run as root so xtask can install qemu-system-x86 from \
             bookworm-backports",
            qemu_binary()
        );
    }
    progress("installing qemu-system-x86 from bookworm-backports");
    let mirror = image::mirror()?;
    let list = PathBuf::from("/etc/apt/sources.list.d/detrace-lab-backports.list");
    struct RemoveList<'a>(&'a Path);
    impl Drop for RemoveList<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        }
    }
    fs::write(&list, format!("deb {mirror} bookworm-backports main\n"))
        .with_context(|| format!("writing {}", list.display()))?;
    let _cleanup = RemoveList(&list);
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(["-t", "bookworm-backports", "qemu-system-x86"]))
    .context("installing qemu-system-x86 from bookworm-backports")?;
    check_qemu()
}
