//! Boots the lab image under QEMU (TCG: nested KVM is not available on the machines this runs
//! on) with no network device, the host share over virtio-9p, and the serial console copied to a
//! log file. The QEMU we start is the only process we ever signal, by its pid, on a timeout,
//! Ctrl-C, SIGTERM (see interrupt.rs) or any error path (the guard's Drop).

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    image::Image,
    interrupt::{install_signal_handler, interrupted},
};

/// Lines the guest prints to tell the host where it is (see xtask/guest/init.sh).
pub const MARK: &str = "DETRACE-GUEST ";

pub struct Boot<'a> {
    pub image: &'a Image,
    pub share: &'a Path,
    /// `detrace.mode=` on the kernel command line: which script of the share the guest runs.
    pub mode: &'a str,
    pub console_log: PathBuf,
    /// Serial console on the terminal (stdin included) instead of piped through us.
    pub interactive: bool,
    /// Until the guest's userspace reports: catches a kernel or initramfs that hangs.
    pub boot_timeout: Duration,
    /// For the whole run.
    pub timeout: Duration,
    /// Virtual CPUs (each one a host thread under TCG).
    pub cpus: u32,
    /// `detrace.profile=` on the kernel command line: the guest's scripts adapt to it.
    pub profile: &'a str,
}

#[derive(Debug)]
pub enum End {
    /// QEMU exited by itself (the guest powered off).
    Exited(ExitStatus),
    TimedOut,
    BootHung,
    Interrupted,
}

/// Kills the QEMU we started (SIGTERM, then SIGKILL) unless it has already exited.
struct QemuGuard {
    child: Child,
}

impl QemuGuard {
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet, so it cannot have been
        // reused by another process. SIGTERM lets QEMU restore the terminal it may have set raw.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn qemu_binary() -> &'static str {
    "qemu-system-x86_64"
}

/// Boots, feeds every console line (with the time since start) to `on_line`, and returns how
/// the run ended. The console log is kept whatever happens.
pub fn boot(spec: &Boot, on_line: impl FnMut(Duration, &str)) -> anyhow::Result<End> {
    install_signal_handler()?;
    if let Some(p) = spec.console_log.parent() {
        fs::create_dir_all(p)?;
    }
    let cmd = command(spec);
    if spec.interactive {
        boot_interactive(cmd, spec)
    } else {
        boot_piped(cmd, spec, on_line)
    }
}

/// The QEMU command line common to both ways of running it (the serial console comes after).
fn command(spec: &Boot) -> Command {
    let mut cmd = Command::new(qemu_binary());
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "3072"])
        .arg("-smp")
        .arg(spec.cpus.to_string())
        .args(["-display", "none", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&spec.image.kernel)
        .arg("-initrd")
        .arg(&spec.image.initrd)
        // snapshot=on: writes go to a throw-away overlay, the cached image is never modified.
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,snapshot=on",
            spec.image.rootfs.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=host0,security_model=none,id=host0",
            spec.share.display()
        ))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 root=/dev/vda rw panic=-1 loglevel=4 detrace.mode={} detrace.profile={}",
            spec.mode, spec.profile
        ));
    cmd
}

/// QEMU owns the terminal: Ctrl-C goes to the guest (signal=off), the log is QEMU's.
fn boot_interactive(mut cmd: Command, spec: &Boot) -> anyhow::Result<End> {
    let start = Instant::now();
    cmd.arg("-chardev")
        .arg(format!(
            "stdio,id=con0,signal=off,logfile={}",
            spec.console_log.display()
        ))
        .args(["-serial", "chardev:con0", "-monitor", "none"]);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu_binary()))?;
    let mut guard = QemuGuard { child };
    loop {
        if let Some(status) = guard.child.try_wait()? {
            return Ok(End::Exited(status));
        }
        if interrupted() {
            guard.stop();
            return Ok(End::Interrupted);
        }
        if start.elapsed() > spec.timeout {
            guard.stop();
            return Ok(End::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The console piped through us: copied to the log, fed to `on_line`, watched for the guest's
/// first progress line (the boot timeout) and for the end.
fn boot_piped(
    mut cmd: Command,
    spec: &Boot,
    mut on_line: impl FnMut(Duration, &str),
) -> anyhow::Result<End> {
    let start = Instant::now();
    cmd.args(["-serial", "stdio", "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Its own process group: a Ctrl-C on the terminal reaches only us, and we stop QEMU by pid.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu_binary()))?;
    let mut guard = QemuGuard { child };
    let stdout = guard.child.stdout.take().context("qemu stdout")?;
    let rx = console_lines(stdout);
    let mut log = fs::File::create(&spec.console_log)
        .with_context(|| format!("creating {}", spec.console_log.display()))?;
    let mut userspace = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if line.contains(MARK) {
                    userspace = true;
                }
                on_line(start.elapsed(), &line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = guard.child.wait()?;
                return Ok(End::Exited(status));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if interrupted() {
            guard.stop();
            return Ok(End::Interrupted);
        }
        if !userspace && start.elapsed() > spec.boot_timeout {
            guard.stop();
            return Ok(End::BootHung);
        }
        if start.elapsed() > spec.timeout {
            guard.stop();
            return Ok(End::TimedOut);
        }
    }
}

/// The console's lines, read on a thread so the caller can wait on them with a timeout.
fn console_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Fails with a hint when QEMU is not there (deps install it; this catches a skipped install).
pub fn check_qemu() -> anyhow::Result<()> {
    if !crate::util::runs_ok(qemu_binary(), &["--version"]) {
        bail!(
            "{} not found or not runnable: `cargo xtask lab` installs it as root \
             (package qemu-system-x86 from bookworm-backports)",
            qemu_binary()
        );
    }
    Ok(())
}
