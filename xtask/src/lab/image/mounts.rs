//! debootstrap mounts proc/sys inside its target; nothing may stay mounted, and nothing may be
//! deleted while something is mounted below it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// A scratch build tree: when dropped (error, interrupt or success alike) everything mounted
/// below it is unmounted and the tree is removed, so a failed build leaves nothing behind.
pub struct MountGuard {
    root: PathBuf,
}

impl MountGuard {
    pub fn new(root: &Path) -> Self {
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

pub fn unmount_under(root: &Path) -> anyhow::Result<()> {
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
pub fn safe_remove(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    unmount_under(dir)?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
