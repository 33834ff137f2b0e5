//! The guest image: a Debian trixie root filesystem (OVS 3.5 / OVN 25.03, the first Debian release
//! whose OVS has `ofproto/detrace`) and trixie's 6.12 kernel (openvswitch.ko, kprobes, module BTF),
//! turned into what QEMU boots: `vmlinuz`, `initrd.img` (busybox + the virtio_blk/ext4 modules the
//! kernel needs to reach its root) and `rootfs.ext4`.
//!
//! Everything lands in the cache (`~/.cache/detrace/lab`, or `$DETRACE_CACHE/lab`):
//! - `rootfs-<key>.tar.zst`: the debootstrapped tree, keyed by suite + package list;
//! - `kernel/linux-image-*.deb`: the kernel package as downloaded;
//! - `image-<key>/`: the bootable image, keyed by the rootfs key, the kernel package, the files
//!   baked into the image and [`BUILDER_VERSION`].
//!
//! Each entry has a checksum manifest written last, so an interrupted build or a damaged file
//! shows up as "does not verify" and is rebuilt rather than booted.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use super::{guest_dir, progress};
use crate::util::{run, workspace_root};

/// Bump when the way the image is assembled changes (the cache key then changes with it).
const BUILDER_VERSION: &str = "detrace-lab-image/1";
const SUITE: &str = "trixie";

/// What the guest needs: OVS/OVN, the netns plumbing and traffic tools, bpftool for poking at
/// the kernel, python3 for the lab's tiny TCP servers, iperf3 for the datapath benchmark.
const ROOTFS_PACKAGES: &[&str] = &[
    "openvswitch-switch",
    "openvswitch-common",
    "ovn-central",
    "ovn-host",
    "ovn-common",
    "python3-openvswitch",
    "python3",
    "iproute2",
    "iputils-ping",
    "ethtool",
    "netcat-openbsd",
    "kmod",
    "procps",
    "tcpdump",
    "bpftool",
    "util-linux",
    "iperf3",
];

/// Kernel subtrees no guest without hardware needs: dropping them keeps the image ~300 MB smaller.
const PRUNED_MODULE_DIRS: &[&str] = &[
    "drivers/gpu",
    "drivers/media",
    "drivers/infiniband",
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/scsi",
    "drivers/staging",
    "drivers/iio",
    "drivers/usb",
    "drivers/hid",
    "drivers/bluetooth",
    "drivers/input",
    "drivers/mtd",
    "drivers/isdn",
    "drivers/video",
    "sound",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
];

/// The root filesystem needs ~1.6 GB while it is assembled next to the tarball and the image.
const MIN_FREE_BYTES: u64 = 4 << 30;

/// A bootable image in the cache.
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

/// The lab's cache root: `$DETRACE_CACHE/lab` when set (benchmarks use it for a cold run), else
/// `~/.cache/detrace/lab`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("DETRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(crate::util::cache_dir)
        .join("lab")
}

/// Where images are assembled (never the cache itself: only finished, verified entries go there).
fn build_dir() -> PathBuf {
    workspace_root().join("target/lab/build")
}

/// Returns a verified cached image, building whatever is missing or does not verify.
pub fn ensure() -> anyhow::Result<Image> {
    let cache = cache_root();
    fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache {}", cache.display()))?;

    let rootfs_key = key(&[SUITE, &ROOTFS_PACKAGES.join(","), BUILDER_VERSION]);
    let kernel_deb = ensure_kernel_deb(&cache)?;
    let baked = baked_files()?;
    let mut parts = vec![
        rootfs_key.clone(),
        file_name(&kernel_deb)?,
        BUILDER_VERSION.to_string(),
    ];
    for (name, content) in &baked {
        parts.push(format!("{name}:{}", hex(&Sha256::digest(content))));
    }
    let image_key = key(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = cache.join(format!("image-{image_key}"));
    let image = Image {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        rootfs: dir.join("rootfs.ext4"),
    };
    if dir.exists() {
        let t = Instant::now();
        match verify_manifest(&dir) {
            Ok(()) => {
                progress(&format!(
                    "image {} (cached, verified in {:.1}s)",
                    dir.display(),
                    t.elapsed().as_secs_f64()
                ));
                return Ok(image);
            }
            Err(e) => {
                progress(&format!(
                    "cached image {} does not verify ({e:#}): rebuilding it",
                    dir.display()
                ));
                fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing the corrupt image {}", dir.display()))?;
            }
        }
    }

    if !crate::util::is_root() {
        bail!(
            "building the lab image needs root (debootstrap creates device nodes and owns files \
             as other users): run `cargo xtask lab` as root once to fill the cache"
        );
    }
    super::ensure_free_space(&cache, MIN_FREE_BYTES)?;
    super::ensure_free_space(&workspace_root().join("target"), MIN_FREE_BYTES)?;
    let tarball = ensure_rootfs_tarball(&cache, &rootfs_key)?;
    let t = Instant::now();
    build_image(&tarball, &kernel_deb, &baked, &dir)?;
    progress(&format!(
        "image built in {:.0}s: {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    ));
    // Old images are dead weight once their key is gone: keep the cache to one image.
    for e in fs::read_dir(&cache)?.filter_map(Result::ok) {
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
    Ok(image)
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

fn ensure_rootfs_tarball(cache: &Path, rootfs_key: &str) -> anyhow::Result<PathBuf> {
    let tarball = cache.join(format!("rootfs-{rootfs_key}.tar.zst"));
    if tarball.exists() {
        match verify_sidecar(&tarball) {
            Ok(()) => return Ok(tarball),
            Err(e) => progress(&format!(
                "cached {} does not verify ({e:#}): rebuilding it",
                tarball.display()
            )),
        }
    }
    let t = Instant::now();
    let root = build_dir().join("debootstrap");
    let _mounts = MountGuard::new(&root);
    safe_remove(&root)?;
    fs::create_dir_all(&root)?;
    let mirror = mirror()?;
    let log = workspace_root().join("target/lab/debootstrap.log");
    progress(&format!(
        "debootstrap {SUITE} with OVS/OVN (~60-90s, log {})",
        log.display()
    ));
    run_logged(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(ROOTFS_PACKAGES.join(","))
            .arg(SUITE)
            .arg(&root)
            .arg(&mirror),
        &log,
    )
    .with_context(|| {
        if super::qemu::interrupted() {
            "interrupted; the partial root filesystem was removed"
        } else {
            "debootstrap failed (network to the Debian mirror? disk space?)"
        }
    })?;
    // debootstrap unmounts on success; on any other path the guard does.
    unmount_under(&root)?;
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/apt/archives",
        "var/lib/apt/lists",
    ] {
        let p = root.join(d);
        if p.exists() {
            fs::remove_dir_all(&p)?;
            fs::create_dir_all(&p)?;
        }
    }
    let tmp = tarball.with_extension("zst.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--zstd", "-cf"])
        .arg(&tmp)
        .arg("."))
    .context("packing the root filesystem")?;
    fs::rename(&tmp, &tarball)?;
    write_sidecar(&tarball)?;
    safe_remove(&root)?;
    progress(&format!(
        "rootfs tarball in {:.0}s: {}",
        t.elapsed().as_secs_f64(),
        tarball.display()
    ));
    Ok(tarball)
}

/// The trixie kernel package, fetched with apt through a private state directory so the host's
/// apt configuration (bookworm) is never touched.
fn ensure_kernel_deb(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join("kernel");
    fs::create_dir_all(&dir)?;
    if let Some(deb) = find_deb(&dir)? {
        match verify_sidecar(&deb) {
            Ok(()) => return Ok(deb),
            Err(e) => {
                progress(&format!(
                    "cached {} does not verify ({e:#}): downloading it again",
                    deb.display()
                ));
                fs::remove_file(&deb)?;
            }
        }
    }
    let t = Instant::now();
    let apt = build_dir().join("apt-trixie");
    // The private apt state (trixie lists, ~70 MB) is needed only for this download.
    let _apt_state = MountGuard::new(&apt);
    fs::create_dir_all(apt.join("lists/partial"))?;
    fs::create_dir_all(apt.join("cache/archives/partial"))?;
    fs::write(
        apt.join("sources.list"),
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {SUITE} main\n",
            mirror()?
        ),
    )?;
    let opts = [
        format!(
            "Dir::Etc::SourceList={}",
            apt.join("sources.list").display()
        ),
        "Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        // The download lands in the cache under $HOME, which apt's _apt user cannot write.
        "APT::Sandbox::User=root".to_string(),
    ];
    let apt_cmd = |prog: &str| {
        let mut c = Command::new(prog);
        for o in &opts {
            c.arg("-o").arg(o);
        }
        c
    };
    progress("downloading the trixie kernel package");
    let out = apt_cmd("apt-get")
        .args(["update", "-q"])
        .output()
        .context("apt-get update (trixie lists)")?;
    if !out.status.success() {
        bail!(
            "apt-get update for the trixie kernel failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = apt_cmd("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("apt-cache depends linux-image-amd64")?;
    let deps = String::from_utf8_lossy(&out.stdout);
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-6"))
        .with_context(|| format!("linux-image-amd64 ({SUITE}) names no kernel package:\n{deps}"))?
        .to_string();
    run(apt_cmd("apt-get")
        .current_dir(&dir)
        .args(["download", "-q", &pkg]))
    .with_context(|| format!("downloading {pkg}"))?;
    let deb = find_deb(&dir)?.with_context(|| format!("{pkg} was not downloaded"))?;
    write_sidecar(&deb)?;
    progress(&format!(
        "kernel {} in {:.0}s",
        file_name(&deb)?,
        t.elapsed().as_secs_f64()
    ));
    Ok(deb)
}

fn find_deb(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    Ok(fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-") && n.ends_with(".deb"))
        }))
}

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
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--zstd", "-xf"])
        .arg(tarball))
    .context("unpacking the rootfs tarball")?;
    run(Command::new("dpkg-deb").arg("-x").arg(kernel_deb).arg(&k))
        .context("unpacking the kernel package")?;
    let kv = single_entry(&k.join("usr/lib/modules"))?;
    let out = tempdir_sibling(dest)?;
    fs::copy(k.join(format!("boot/vmlinuz-{kv}")), out.join("vmlinuz"))
        .context("the kernel package has no /boot/vmlinuz")?;
    // The .deb ships no modules.dep (its postinst makes it): generate it for modprobe below.
    run(Command::new("depmod").arg("-b").arg(k.join("usr")).arg(&kv))?;

    // Modules into the root filesystem, minus hardware the guest does not have.
    let mods = root.join("usr/lib/modules");
    fs::create_dir_all(&mods)?;
    run(Command::new("cp")
        .arg("-a")
        .arg(k.join("usr/lib/modules").join(&kv))
        .arg(&mods))?;
    for d in PRUNED_MODULE_DIRS {
        let p = mods.join(&kv).join("kernel").join(d);
        if p.exists() {
            fs::remove_dir_all(&p)?;
        }
    }
    run(Command::new("depmod").arg("-b").arg(&root).arg(&kv))?;
    fs::create_dir_all(root.join("boot"))?;
    let config = k.join(format!("boot/config-{kv}"));
    if config.exists() {
        fs::copy(&config, root.join(format!("boot/config-{kv}")))?;
    }
    for (name, content) in baked {
        if *name == "init.sh" {
            write_exec(&root.join("sbin/detrace-lab-init"), content)?;
        }
    }
    fs::write(root.join("etc/hostname"), "detrace-lab\n")?;
    fs::create_dir_all(root.join("mnt/host"))?;

    // Sized from the tree plus headroom for OVS/OVN databases and logs written while it runs
    // (writes go to QEMU's snapshot overlay, but the filesystem must have the free blocks).
    let used_mb = du_mb(&root)?;
    let size_mb = used_mb * 13 / 10 + 256;
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", "detrace-lab", "-d"])
        .arg(&root)
        .arg(out.join("rootfs.ext4"))
        .arg(format!("{size_mb}M")))
    .context("mke2fs -d (e2fsprogs >= 1.43 needed)")?;

    // initramfs: busybox and just the modules between the kernel and its root (virtio_blk, ext4).
    for d in ["bin", "proc", "sys", "dev", "newroot", "mod"] {
        fs::create_dir_all(initrd_dir.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox not found (package busybox-static)")?;
    fs::copy(&busybox, initrd_dir.join("bin/busybox"))?;
    let mut order = Vec::new();
    for m in ["virtio_blk", "ext4"] {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(k.join("usr"))
            .args(["-S", &kv, "--show-depends", m])
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
            decompress_module(Path::new(path), &initrd_dir.join("mod").join(&plain))?;
            order.push(plain);
        }
    }
    if order.is_empty() {
        bail!("found no virtio_blk/ext4 modules for the initramfs in {kv}");
    }
    fs::write(initrd_dir.join("mod/order"), order.join("\n") + "\n")?;
    for (name, content) in baked {
        if *name == "initramfs-init" {
            write_exec(&initrd_dir.join("init"), content)?;
        }
    }
    let initrd = fs::File::create(out.join("initrd.img"))?;
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
        .current_dir(&initrd_dir)
        .output()
        .context("find")?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&initrd_dir)
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

    write_manifest(&out, &["vmlinuz", "initrd.img", "rootfs.ext4"])?;
    fs::rename(&out, dest).with_context(|| format!("moving the image into {}", dest.display()))?;
    safe_remove(&build)?;
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

/// A new temp dir next to `dest`, so the finished image moves into place with one rename.
fn tempdir_sibling(dest: &Path) -> anyhow::Result<PathBuf> {
    let tmp = dest.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    Ok(tmp)
}

fn single_entry(dir: &Path) -> anyhow::Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one kernel version in {}, found {names:?}",
            dir.display()
        ),
    }
}

fn du_mb(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").arg("-sm").arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sm printed no size")
}

fn write_exec(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The Debian mirror this machine's apt uses (`$DETRACE_MIRROR` overrides).
fn mirror() -> anyhow::Result<String> {
    if let Ok(m) = std::env::var("DETRACE_MIRROR") {
        return Ok(m);
    }
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(uri) = deb822
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .next()
    {
        return Ok(uri.to_string());
    }
    let legacy = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    legacy
        .lines()
        .filter(|l| l.starts_with("deb "))
        .filter_map(|l| l.split_whitespace().find(|w| w.contains("://")))
        .next()
        .map(str::to_string)
        .context("no Debian mirror found in the apt sources: set DETRACE_MIRROR")
}

pub fn mirror_uri() -> anyhow::Result<String> {
    mirror()
}

/// Runs a long build step with its output in `log`. The step gets its own process group, so a
/// Ctrl-C/SIGTERM seen by xtask stops it and everything it started (debootstrap's dpkg runs),
/// and the mount guards then clean up.
fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    if let Some(p) = log.parent() {
        fs::create_dir_all(p)?;
    }
    let f = fs::File::create(log)?;
    let mut child = cmd
        .stdout(f.try_clone()?)
        .stderr(f)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if super::qemu::interrupted() {
            let pgid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on the process group we created for this child (its pid is its
            // pgid and it has not been reaped, so the id cannot have been reused).
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
            let _ = child.wait();
            bail!("interrupted during {cmd:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{cmd:?} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

// ---- cache keys and checksums

fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())[..16].to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_name(p: &Path) -> anyhow::Result<String> {
    Ok(p.file_name()
        .context("path without a file name")?
        .to_string_lossy()
        .into_owned())
}

/// coreutils' sha256sum rather than the sha2 crate for the big files: xtask is built without
/// optimisation, where sha2 needs ~25 s for the image against sha256sum's ~2 s.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum")
        .arg("--")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!(
            "sha256sum {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

const MANIFEST: &str = "SHA256SUMS";

/// Written after everything else: its presence means the entry was finished.
fn write_manifest(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    let mut text = String::new();
    for n in names {
        text += &format!("{}  {n}\n", sha256_file(&dir.join(n))?);
    }
    fs::write(dir.join(MANIFEST), text)?;
    Ok(())
}

fn verify_manifest(dir: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(dir.join(MANIFEST)).context("no checksum manifest")?;
    let mut n = 0;
    for line in text.lines() {
        let (sum, name) = line.split_once("  ").context("malformed manifest line")?;
        let actual = sha256_file(&dir.join(name))?;
        if actual != sum {
            bail!("{name}: checksum mismatch");
        }
        n += 1;
    }
    if n == 0 {
        bail!("empty checksum manifest");
    }
    Ok(())
}

fn sidecar(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn write_sidecar(p: &Path) -> anyhow::Result<()> {
    fs::write(sidecar(p), sha256_file(p)? + "\n")?;
    Ok(())
}

fn verify_sidecar(p: &Path) -> anyhow::Result<()> {
    let want = fs::read_to_string(sidecar(p)).context("no checksum file")?;
    if want.trim() != sha256_file(p)? {
        bail!("checksum mismatch");
    }
    Ok(())
}

// ---- mounts: debootstrap mounts proc/sys inside its target; nothing may stay mounted, and
// nothing may be deleted while something is mounted below it.

/// A scratch build tree: when dropped (error, interrupt or success alike) everything mounted
/// below it is unmounted and the tree is removed, so a failed build leaves nothing behind.
struct MountGuard {
    root: PathBuf,
}

impl MountGuard {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = safe_remove(&self.root) {
            eprintln!("lab: WARNING: {e:#}");
        }
    }
}

fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes spaces as \040; our build paths have none.
        .map(PathBuf::from)
        .filter(|m| m.starts_with(root))
        .collect()
}

fn unmount_under(root: &Path) -> anyhow::Result<()> {
    // Deepest first; a lazy unmount as the last resort for a busy mount.
    let mut ms = mounts_under(root);
    ms.sort();
    for m in ms.iter().rev() {
        let ok = Command::new("umount")
            .arg(m)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
    let left = mounts_under(root);
    if !left.is_empty() {
        bail!("still mounted under {}: {left:?}", root.display());
    }
    Ok(())
}

/// remove_dir_all would walk into a bind mount of /dev or /sys: refuse while anything is mounted.
fn safe_remove(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(dir)?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
