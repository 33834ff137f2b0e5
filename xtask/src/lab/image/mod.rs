//! The guest image of a profile: a Debian root filesystem (trixie or bookworm) and that release's
//! kernel, turned into what QEMU boots: `vmlinuz`, `initrd.img` (busybox + the virtio_pci/
//! virtio_blk/ext4 modules the kernel needs to reach its root) and `rootfs.ext4`.
//!
//! Everything lands in the profile's cache (`~/.cache/detrace/lab`, or `$DETRACE_CACHE/lab`,
//! for trixie; its `bookworm/` subdirectory for bookworm):
//! - `rootfs-<key>.tar.zst`: the debootstrapped tree, keyed by suite + package list (rootfs.rs);
//! - `kernel/linux-image-*.deb`: the kernel package as downloaded (kernel.rs);
//! - `image-<key>/`: the bootable image, keyed by the rootfs key, the kernel package, the files
//!   baked into the image and [`BUILDER_VERSION`] (this file; the initramfs in initramfs.rs).
//!
//! Each entry has a checksum written last (cache.rs), so an interrupted build or a damaged file
//! shows up as "does not verify" and is rebuilt rather than booted. Scratch trees are removed,
//! and anything mounted in them unmounted, whatever happens (mounts.rs).

mod cache;
mod initramfs;
mod kernel;
mod mounts;
mod rootfs;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use self::{
    cache::{build_dir, cache_root, ensure_free_space, file_name, hex, key},
    mounts::{MountGuard, safe_remove},
    rootfs::ROOTFS_PACKAGES,
};
use crate::{
    lab::{
        paths::{guest_dir, progress},
        profile::Profile,
    },
    util::workspace_root,
};

pub use self::rootfs::mirror;

/// Bump when the way the image is assembled changes (the cache key then changes with it).
const BUILDER_VERSION: &str = "detrace-lab-image/1";

/// The root filesystem needs ~1.6 GB while it is assembled next to the tarball and the image.
const MIN_FREE_BYTES: u64 = 4 << 30;

/// A bootable image in the cache.
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

impl Image {
    fn in_dir(dir: &Path) -> Self {
        Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            rootfs: dir.join("rootfs.ext4"),
        }
    }
}

/// Returns the profile's verified cached image, building whatever is missing or does not verify.
pub fn ensure(profile: Profile) -> anyhow::Result<Image> {
    let cache = profile.cache(cache_root());
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache {}", cache.display()))?;

    let suite = profile.name();
    let rootfs_key = key(&[suite, &ROOTFS_PACKAGES.join(","), BUILDER_VERSION]);
    let kernel_deb = kernel::ensure_deb(&cache, suite)?;
    let baked = baked_files()?;
    let image_key = image_key(&rootfs_key, &kernel_deb, &baked)?;
    let dir = cache.join(format!("image-{image_key}"));
    let image = Image::in_dir(&dir);
    if dir.exists() && cached_ok(&dir)? {
        return Ok(image);
    }

    if !crate::util::is_root() {
        bail!(
            "building the lab image needs root (debootstrap creates device nodes and owns files \
             as other users): run `cargo xtask lab` as root once to fill the cache"
        );
    }
    ensure_free_space(&cache, MIN_FREE_BYTES)?;
    ensure_free_space(&workspace_root().join("target"), MIN_FREE_BYTES)?;
    let tarball = rootfs::ensure_tarball(&cache, &rootfs_key, suite)?;
    let t = Instant::now();
    build_image(&tarball, &kernel_deb, &baked, &dir)?;
    progress(&format!(
        "image built in {:.0}s: {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    ));
    remove_stale(&cache, &dir, &rootfs_key)?;
    Ok(image)
}

/// The rootfs key, the kernel package's file name, the builder version and each baked file's
/// name and SHA-256, in that order (changing the order or the parts changes every key).
fn image_key(
    rootfs_key: &str,
    kernel_deb: &Path,
    baked: &[(&str, Vec<u8>)],
) -> anyhow::Result<String> {
    let mut parts = vec![
        rootfs_key.to_string(),
        file_name(kernel_deb)?,
        BUILDER_VERSION.to_string(),
    ];
    for (name, content) in baked {
        parts.push(format!("{name}:{}", hex(&Sha256::digest(content))));
    }
    Ok(key(&parts.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// True when the cached image verifies; a corrupt one is removed (and false returned).
fn cached_ok(dir: &Path) -> anyhow::Result<bool> {
    let t = Instant::now();
    match cache::verify_manifest(dir) {
        Ok(()) => {
            progress(&format!(
                "image {} (cached, verified in {:.1}s)",
                dir.display(),
                t.elapsed().as_secs_f64()
            ));
            Ok(true)
        }
        Err(e) => {
            progress(&format!(
                "cached image {} does not verify ({e:#}): rebuilding it",
                dir.display()
            ));
            fs::remove_dir_all(dir)
                .with_context(|| format!("removing the corrupt image {}", dir.display()))?;
            Ok(false)
        }
    }
}

/// Old images are dead weight once their key is gone: keep the cache to one image.
fn remove_stale(cache: &Path, dir: &Path, rootfs_key: &str) -> anyhow::Result<()> {
    for e in fs::read_dir(cache)?.filter_map(Result::ok) {
        let n = e.file_name().to_string_lossy().into_owned();
        let stale_image = n.starts_with("image-") && e.path() != dir;
        let stale_rootfs =
            n.starts_with("rootfs-") && !n.starts_with(&format!("rootfs-{rootfs_key}"));
        if stale_image || stale_rootfs {
            progress(&format!("removing stale cache entry {n}"));
            let _ = if e.path().is_dir() {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
        }
    }
    Ok(())
}

/// Files copied into the image (so they are part of its key): the initramfs `/init` and the
/// guest's PID 1. Everything else the guest runs comes over the share at boot, so editing the
/// topology or the tests never rebuilds the image.
fn baked_files() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let g = guest_dir();
    let mut out = Vec::new();
    for name in ["initramfs-init", "init.sh"] {
        let p = g.join(name);
        out.push((
            name,
            fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        ));
    }
    Ok(out)
}

/// Assembles the image in a scratch tree and moves it into `dest` once its manifest is written.
fn build_image(
    tarball: &Path,
    kernel_deb: &Path,
    baked: &[(&str, Vec<u8>)],
    dest: &Path,
) -> anyhow::Result<()> {
    let build = build_dir().join("image");
    let _mounts = MountGuard::new(&build);
    safe_remove(&build)?;
    let (root, k, initrd_dir) = (build.join("root"), build.join("k"), build.join("initrd"));
    for d in [&root, &k, &initrd_dir] {
        fs::create_dir_all(d)?;
    }
    progress("assembling the image: unpacking rootfs and kernel");
    rootfs::unpack(tarball, &root)?;
    let kv = kernel::unpack(kernel_deb, &k)?;
    let out = cache::tempdir_sibling(dest)?;
    kernel::install_vmlinuz(&k, &kv, &out)?;
    kernel::install_modules(&k, &kv, &root)?;
    rootfs::configure(&root, baked)?;
    rootfs::make_ext4(&root, &out.join("rootfs.ext4"))?;
    initramfs::build(&k, &kv, &initrd_dir, baked, &out.join("initrd.img"))?;
    cache::write_manifest(&out, &["vmlinuz", "initrd.img", "rootfs.ext4"])?;
    fs::rename(&out, dest).with_context(|| format!("moving the image into {}", dest.display()))?;
    safe_remove(&build)?;
    Ok(())
}
