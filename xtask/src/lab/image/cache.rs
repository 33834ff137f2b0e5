//! The cache's layout, keys and checksums. Every entry has a checksum written last (a manifest
//! in an image directory, a `.sha256` sidecar next to a file) and verified on use, so an
//! interrupted build or a damaged file shows up as "does not verify" and is rebuilt.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use crate::util::workspace_root;

/// The lab's cache root: `$DETRACE_CACHE/lab` when set (benchmarks use it for a cold run), else
/// `~/.cache/detrace/lab`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("DETRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(crate::util::cache_dir)
        .join("lab")
}

/// Where images are assembled (never the cache itself: only finished, verified entries go there).
pub fn build_dir() -> PathBuf {
    workspace_root().join("target/lab/build")
}

/// A new temp dir next to `dest`, so the finished image moves into place with one rename.
pub fn tempdir_sibling(dest: &Path) -> anyhow::Result<PathBuf> {
    let tmp = dest.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    Ok(tmp)
}

/// Fails with the numbers when the filesystem holding `path` has less than `need` bytes free.
pub fn ensure_free_space(path: &Path, need: u64) -> anyhow::Result<()> {
    fs::create_dir_all(path)?;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("path with a NUL byte")?;
    // SAFETY: statvfs is plain old data, fully written by a successful statvfs(3) call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < need {
        bail!(
            "not enough disk space for the lab image: {} has {} MiB free, {} MiB needed",
            path.display(),
            free >> 20,
            need >> 20
        );
    }
    Ok(())
}

// ---- cache keys and checksums

pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())[..16].to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn file_name(p: &Path) -> anyhow::Result<String> {
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
pub fn write_manifest(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    let mut text = String::new();
    for n in names {
        text += &format!("{}  {n}\n", sha256_file(&dir.join(n))?);
    }
    fs::write(dir.join(MANIFEST), text)?;
    Ok(())
}

pub fn verify_manifest(dir: &Path) -> anyhow::Result<()> {
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

pub fn write_sidecar(p: &Path) -> anyhow::Result<()> {
    fs::write(sidecar(p), sha256_file(p)? + "\n")?;
    Ok(())
}

pub fn verify_sidecar(p: &Path) -> anyhow::Result<()> {
    let want = fs::read_to_string(sidecar(p)).context("no checksum file")?;
    if want.trim() != sha256_file(p)? {
        bail!("checksum mismatch");
    }
    Ok(())
}
