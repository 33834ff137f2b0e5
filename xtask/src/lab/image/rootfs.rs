//! The guest's root filesystem: a debootstrapped Debian release (trixie: OVS 3.5 / OVN 25.03, the
//! first Debian release whose OVS has `ofproto/detrace`; bookworm: OVS 3.1 / OVN 23.03), cached
//! as `rootfs-<key>.tar.zst`, then unpacked, given the kernel's modules and the baked files, and
//! made into `rootfs.ext4`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context as _;

use super::{
    cache::{build_dir, verify_sidecar, write_sidecar},
    mounts::{MountGuard, safe_remove, unmount_under},
};
use crate::{
    lab::{
        interrupt::{interrupted, run_logged},
        paths::progress,
    },
    util::{run, workspace_root},
};

/// What the guest needs: OVS/OVN, the netns plumbing and traffic tools, bpftool for poking at
/// the kernel, python3 for the lab's tiny TCP servers, iperf3 for the datapath benchmark. Every
/// one exists under the same name in trixie and bookworm.
pub const ROOTFS_PACKAGES: &[&str] = &[
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

/// Directories whose content the guest never reads: emptied before the tree is packed.
const STRIPPED_DIRS: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
];

/// The cached tarball for `rootfs_key`, debootstrapped when missing or when it does not verify.
pub fn ensure_tarball(cache: &Path, rootfs_key: &str, suite: &str) -> anyhow::Result<PathBuf> {
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
    debootstrap(&root, suite)?;
    // debootstrap unmounts on success; on any other path the guard does.
    unmount_under(&root)?;
    strip(&root)?;
    pack(&root, &tarball)?;
    safe_remove(&root)?;
    progress(&format!(
        "rootfs tarball in {:.0}s: {}",
        t.elapsed().as_secs_f64(),
        tarball.display()
    ));
    Ok(tarball)
}

fn debootstrap(root: &Path, suite: &str) -> anyhow::Result<()> {
    let mirror = mirror()?;
    let log = workspace_root().join("target/lab/debootstrap.log");
    progress(&format!(
        "debootstrap {suite} with OVS/OVN (~60-90s, log {})",
        log.display()
    ));
    run_logged(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include"])
            .arg(ROOTFS_PACKAGES.join(","))
            .arg(suite)
            .arg(root)
            .arg(&mirror),
        &log,
    )
    .with_context(|| {
        if interrupted() {
            "interrupted; the partial root filesystem was removed"
        } else {
            "debootstrap failed (network to the Debian mirror? disk space?)"
        }
    })
}

fn strip(root: &Path) -> anyhow::Result<()> {
    for d in STRIPPED_DIRS {
        let p = root.join(d);
        if p.exists() {
            fs::remove_dir_all(&p)?;
            fs::create_dir_all(&p)?;
        }
    }
    Ok(())
}

fn pack(root: &Path, tarball: &Path) -> anyhow::Result<()> {
    let tmp = tarball.with_extension("zst.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--zstd", "-cf"])
        .arg(&tmp)
        .arg("."))
    .context("packing the root filesystem")?;
    fs::rename(&tmp, tarball)?;
    write_sidecar(tarball)
}

pub fn unpack(tarball: &Path, root: &Path) -> anyhow::Result<()> {
    run(Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--zstd", "-xf"])
        .arg(tarball))
    .context("unpacking the rootfs tarball")
}

/// The guest's PID 1 (init.sh, baked) and the bits of /etc and /mnt it expects.
pub fn configure(root: &Path, baked: &[(&str, Vec<u8>)]) -> anyhow::Result<()> {
    for (name, content) in baked {
        if *name == "init.sh" {
            write_exec(&root.join("sbin/detrace-lab-init"), content)?;
        }
    }
    fs::write(root.join("etc/hostname"), "detrace-lab\n")?;
    fs::create_dir_all(root.join("mnt/host"))?;
    Ok(())
}

/// Sized from the tree plus headroom for OVS/OVN databases and logs written while it runs
/// (writes go to QEMU's snapshot overlay, but the filesystem must have the free blocks).
pub fn make_ext4(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let used_mb = du_mb(root)?;
    let size_mb = used_mb * 13 / 10 + 256;
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", "detrace-lab", "-d"])
        .arg(root)
        .arg(dest)
        .arg(format!("{size_mb}M")))
    .context("mke2fs -d (e2fsprogs >= 1.43 needed)")
}

fn du_mb(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du").arg("-sm").arg(dir).output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sm printed no size")
}

pub fn write_exec(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The Debian mirror this machine's apt uses (`$DETRACE_MIRROR` overrides).
pub fn mirror() -> anyhow::Result<String> {
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
