//! The host side of the guest contract: the share directory that QEMU exports over virtio-9p.
//!
//! Layout (guest path /mnt/host):
//! - `detrace`: the binary under test;
//! - `guest/`: the scripts the guest runs (xtask/guest/, minus what is baked into the image);
//! - `guest/config.env`: settings for this run (duration, interval, timeouts);
//! - `tests/`: executables for `integration-test vm`; each is run with cwd=/mnt/host,
//!   DETRACE_BIN=/mnt/host/detrace, DETRACE_VM=1, output to `results/<name>.log`, exit code to
//!   `results/<name>.rc`; `results/done` is written when all have run.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::paths::guest_dir;

/// A temp directory shared with the guest, removed when dropped.
pub struct Share {
    pub dir: PathBuf,
}

impl Share {
    pub fn new(detrace: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("detrace-lab-share.{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("guest"))?;
        fs::create_dir_all(dir.join("tests"))?;
        fs::create_dir_all(dir.join("results"))?;
        let share = Self { dir };
        copy_exec(detrace, &share.dir.join("detrace"))?;
        let src = guest_dir();
        for e in fs::read_dir(&src)
            .with_context(|| format!("reading {}", src.display()))?
            .filter_map(Result::ok)
        {
            if e.path().is_file() {
                fs::copy(e.path(), share.dir.join("guest").join(e.file_name()))?;
            }
        }
        Ok(share)
    }

    pub fn write_config(&self, vars: &[(&str, String)]) -> anyhow::Result<()> {
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fs::write(self.dir.join("guest/config.env"), text)?;
        Ok(())
    }

    /// Copies a test executable into `tests/`; returns the name it runs under.
    pub fn add_test(&self, exe: &Path) -> anyhow::Result<String> {
        let name = exe
            .file_name()
            .context("test path without a file name")?
            .to_string_lossy()
            .into_owned();
        let dst = self.dir.join("tests").join(&name);
        if dst.exists() {
            bail!("two tests named {name}");
        }
        copy_exec(exe, &dst)?;
        Ok(name)
    }

    pub fn results(&self) -> PathBuf {
        self.dir.join("results")
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("lab: WARNING: removing {}: {e}", self.dir.display());
        }
    }
}

fn copy_exec(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// What the guest reported for the tests.
pub struct TestReport {
    pub passed: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub done: bool,
}

pub fn collect(results: &Path, names: &[String]) -> TestReport {
    let mut report = TestReport {
        passed: Vec::new(),
        failed: Vec::new(),
        done: results.join("done").exists(),
    };
    for n in names {
        match fs::read_to_string(results.join(format!("{n}.rc"))) {
            Ok(rc) if rc.trim() == "0" => report.passed.push(n.clone()),
            Ok(rc) => report
                .failed
                .push((n.clone(), format!("exit code {}", rc.trim()))),
            Err(_) => report
                .failed
                .push((n.clone(), "never ran (no exit code)".to_string())),
        }
    }
    report
}
