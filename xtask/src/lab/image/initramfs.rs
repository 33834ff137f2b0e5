//! The initramfs: busybox, the baked `/init` (xtask/guest/initramfs-init) and just the modules
//! between the kernel and its root (virtio_blk, ext4: the Debian kernels have them as modules;
//! virtio_pci too in bookworm's 6.1, built in in trixie's 6.12, where modprobe says "builtin").

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::rootfs::write_exec;

/// Fills `dir` and packs it into `dest` (a gzipped newc cpio). `k` is the unpacked kernel
/// package, `kv` its version.
pub fn build(
    k: &Path,
    kv: &str,
    dir: &Path,
    baked: &[(&str, Vec<u8>)],
    dest: &Path,
) -> anyhow::Result<()> {
    for d in ["bin", "proc", "sys", "dev", "newroot", "mod"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox not found (package busybox-static)")?;
    fs::copy(&busybox, dir.join("bin/busybox"))?;
    let mut order = Vec::new();
    // virtio_pci first: virtio_blk finds no device before the PCI transport is there.
    for m in ["virtio_pci", "virtio_blk", "ext4"] {
        add_module(k, kv, m, dir, &mut order)?;
    }
    if order.is_empty() {
        bail!("found no virtio_blk/ext4 modules for the initramfs in {kv}");
    }
    fs::write(dir.join("mod/order"), order.join("\n") + "\n")?;
    for (name, content) in baked {
        if *name == "initramfs-init" {
            write_exec(&dir.join("init"), content)?;
        }
    }
    pack(dir, dest)
}

/// Copies module `m` and what it depends on into `dir/mod`, decompressed, appending each new
/// one to `order` in load order.
fn add_module(
    k: &Path,
    kv: &str,
    m: &str,
    dir: &Path,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(k.join("usr"))
        .args(["-S", kv, "--show-depends", m])
        .output()
        .context("modprobe --show-depends (package kmod)")?;
    if !out.status.success() {
        bail!(
            "modprobe --show-depends {m} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "insmod /path/x.ko.xz" (built-in modules print "builtin x": nothing to load)
        let Some(path) = line.strip_prefix("insmod ").map(|l| l.trim()) else {
            continue;
        };
        let path = path.split_whitespace().next().unwrap_or(path);
        let base = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .context("module path without a name")?;
        let plain = base
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        if order.contains(&plain) {
            continue;
        }
        decompress_module(Path::new(path), &dir.join("mod").join(&plain))?;
        order.push(plain);
    }
    Ok(())
}

fn decompress_module(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        Some(t) => {
            let out = Command::new(t)
                .arg("-dc")
                .arg(src)
                .output()
                .with_context(|| format!("{t} (package xz-utils/zstd)"))?;
            if !out.status.success() {
                bail!("{t} -dc {} failed", src.display());
            }
            fs::write(dst, out.stdout)?;
        }
        None => {
            fs::copy(src, dst)?;
        }
    }
    Ok(())
}

/// `find . | cpio -o -H newc | gzip -1 > dest`, run from inside `dir`.
fn pack(dir: &Path, dest: &Path) -> anyhow::Result<()> {
    let initrd = fs::File::create(dest)?;
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(initrd)
        .spawn()
        .context("gzip")?;
    let gz_in = gzip.stdin.take().context("gzip stdin")?;
    // `find .` from inside the tree gives cpio the relative names the kernel expects.
    let files = Command::new("find")
        .arg(".")
        .current_dir(dir)
        .output()
        .context("find")?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(gz_in)
        .spawn()
        .context("cpio (package cpio)")?;
    cpio.stdin
        .take()
        .context("cpio stdin")?
        .write_all(&files.stdout)?;
    if !cpio.wait()?.success() || !gzip.wait()?.success() {
        bail!("packing the initramfs failed");
    }
    Ok(())
}
