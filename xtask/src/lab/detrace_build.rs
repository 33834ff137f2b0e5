//! detrace itself, built for the guest while the image is checked or built.

use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use super::paths::{lab_target, progress};
use crate::util::workspace_root;

/// `cargo build --release -p detrace-user`: the binary that runs in the guest (built on
/// bookworm's glibc 2.36, it runs on trixie's newer one). Started in the background so a cold
/// image build and a cold compile overlap; its output goes to target/lab/build-detrace.log.
pub struct DetraceBuild {
    child: Option<std::process::Child>,
    log: PathBuf,
    start: Instant,
}

impl DetraceBuild {
    pub fn start() -> anyhow::Result<Self> {
        let log = lab_target().join("build-detrace.log");
        fs::create_dir_all(lab_target())?;
        let f = fs::File::create(&log)?;
        progress(&format!(
            "building detrace in the background (cargo build --release -p detrace-user, log {})",
            log.display()
        ));
        let child = Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "detrace-user"])
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting cargo build")?;
        Ok(Self {
            child: Some(child),
            log,
            start: Instant::now(),
        })
    }

    pub fn wait(mut self) -> anyhow::Result<PathBuf> {
        let status = self
            .child
            .take()
            .context("build already waited for")?
            .wait()?;
        if !status.success() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "building detrace failed ({status}); end of {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        let bin = workspace_root().join("target/release/detrace");
        if !bin.exists() {
            bail!("cargo built no {}", bin.display());
        }
        progress(&format!(
            "detrace built ({:.0}s after it started)",
            self.start.elapsed().as_secs_f64()
        ));
        Ok(bin)
    }
}

impl Drop for DetraceBuild {
    /// An image build that failed must not leave cargo running behind us.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
