//! The profile's kernel (trixie's 6.12 or bookworm's 6.1: openvswitch.ko, kprobes, module BTF):
//! the package, fetched with apt through a private state directory and cached as
//! `kernel/linux-image-*.deb`, then unpacked into `vmlinuz` and the root filesystem's modules.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{
    cache::{build_dir, file_name, verify_sidecar, write_sidecar},
    mounts::MountGuard,
    rootfs::mirror,
};
use crate::{lab::paths::progress, util::run};

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

/// The kernel package of `suite`, fetched with apt through a private state directory so the
/// host's apt configuration is never touched.
pub fn ensure_deb(cache: &Path, suite: &str) -> anyhow::Result<PathBuf> {
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
    let apt = build_dir().join(format!("apt-{suite}"));
    // The private apt state (the suite's lists, ~70 MB) is needed only for this download.
    let _apt_state = MountGuard::new(&apt);
    let apt = PrivateApt::new(&apt, suite)?;
    progress(&format!("downloading the {suite} kernel package"));
    let pkg = apt.kernel_package()?;
    run(apt
        .command("apt-get")
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

/// apt with its sources, lists and cache under one directory of ours.
struct PrivateApt {
    opts: Vec<String>,
    suite: String,
}

impl PrivateApt {
    fn new(apt: &Path, suite: &str) -> anyhow::Result<Self> {
        fs::create_dir_all(apt.join("lists/partial"))?;
        fs::create_dir_all(apt.join("cache/archives/partial"))?;
        fs::write(
            apt.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} {suite} main\n",
                mirror()?
            ),
        )?;
        let opts = vec![
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
        Ok(Self {
            opts,
            suite: suite.to_string(),
        })
    }

    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        for o in &self.opts {
            c.arg("-o").arg(o);
        }
        c
    }

    /// Updates the lists and names the package linux-image-amd64 depends on.
    fn kernel_package(&self) -> anyhow::Result<String> {
        let out = self
            .command("apt-get")
            .args(["update", "-q"])
            .output()
            .with_context(|| format!("apt-get update ({} lists)", self.suite))?;
        if !out.status.success() {
            bail!(
                "apt-get update for the {} kernel failed:\n{}",
                self.suite,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = self
            .command("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .context("apt-cache depends linux-image-amd64")?;
        let deps = String::from_utf8_lossy(&out.stdout);
        Ok(deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-6"))
            .with_context(|| {
                format!(
                    "linux-image-amd64 ({}) names no kernel package:\n{deps}",
                    self.suite
                )
            })?
            .to_string())
    }
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

/// Unpacks the package into `k` and returns the kernel version (its one modules directory).
/// Packages before the /usr merge (bookworm's) keep their modules under /lib/modules: they are
/// moved to usr/lib/modules, where everything after (depmod -b, modprobe -d) looks.
pub fn unpack(deb: &Path, k: &Path) -> anyhow::Result<String> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(k))
        .context("unpacking the kernel package")?;
    let (old, merged) = (k.join("lib/modules"), k.join("usr/lib/modules"));
    if old.is_dir() && !merged.exists() {
        fs::create_dir_all(k.join("usr/lib"))?;
        fs::rename(&old, &merged).context("moving lib/modules to usr/lib/modules")?;
    }
    single_entry(&merged)
}

/// `vmlinuz` into the image, and the modules.dep the .deb does not ship (its postinst makes
/// it) for the initramfs' modprobe.
pub fn install_vmlinuz(k: &Path, kv: &str, out: &Path) -> anyhow::Result<()> {
    fs::copy(k.join(format!("boot/vmlinuz-{kv}")), out.join("vmlinuz"))
        .context("the kernel package has no /boot/vmlinuz")?;
    run(Command::new("depmod").arg("-b").arg(k.join("usr")).arg(kv))
}

/// Modules into the root filesystem, minus hardware the guest does not have, and the config.
pub fn install_modules(k: &Path, kv: &str, root: &Path) -> anyhow::Result<()> {
    let mods = root.join("usr/lib/modules");
    fs::create_dir_all(&mods)?;
    run(Command::new("cp")
        .arg("-a")
        .arg(k.join("usr/lib/modules").join(kv))
        .arg(&mods))?;
    for d in PRUNED_MODULE_DIRS {
        let p = mods.join(kv).join("kernel").join(d);
        if p.exists() {
            fs::remove_dir_all(&p)?;
        }
    }
    run(Command::new("depmod").arg("-b").arg(root).arg(kv))?;
    fs::create_dir_all(root.join("boot"))?;
    let config = k.join(format!("boot/config-{kv}"));
    if config.exists() {
        fs::copy(&config, root.join(format!("boot/config-{kv}")))?;
    }
    Ok(())
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
