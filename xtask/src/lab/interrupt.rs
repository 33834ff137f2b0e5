//! Ctrl-C, SIGTERM and SIGHUP: the handler only raises a flag. Whatever is running when it is
//! raised (the QEMU boot loop, a long build step) polls it, stops its own child by pid or process
//! group, and returns; the Drop guards then clean up (mounts, scratch trees, the share).

use std::{
    fs,
    path::Path,
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler once (later calls do nothing).
pub fn install_signal_handler() -> anyhow::Result<()> {
    static ONCE: OnceLock<()> = OnceLock::new();
    if ONCE.get().is_some() {
        return Ok(());
    }
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C/SIGTERM handler")?;
    let _ = ONCE.set(());
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs a long build step with its output in `log`. The step gets its own process group, so a
/// Ctrl-C/SIGTERM seen by xtask stops it and everything it started (debootstrap's dpkg runs),
/// and the mount guards then clean up.
pub fn run_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
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
        if interrupted() {
            let pgid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on the process group we created for this child (its pid is its
            // pgid and it has not been reaped, so the id cannot have been reused).
            unsafe {
                libc::kill(-pgid, libc::SIGTERM);
            }
            let _ = child.wait();
            bail!("interrupted during {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
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
