//! The lab: a QEMU guest with a Debian kernel that has openvswitch, kprobes and module BTF,
//! running real OVS (with `ofproto/detrace`) and OVN on the kernel datapath, a topology modelled
//! on the seed talk and live traffic. `cargo xtask lab` shows detrace on it;
//! `cargo xtask integration-test vm` runs the kernel-level tests in it. See docs/lab.md.
//!
//! image.rs builds and caches what QEMU boots, qemu.rs boots it, guest.rs is the share
//! directory contract, xtask/guest/ holds what runs inside.

mod guest;
mod image;
mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{is_root, run, workspace_root};
use qemu::{End, MARK};

#[derive(clap::Args)]
pub struct LabArgs {
    /// How long to keep showing detrace's output once the topology is up, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds between two `detrace explain --all` runs.
    #[arg(long, default_value_t = 20)]
    interval: u64,
    /// Open an interactive shell in the guest (topology and traffic up) instead; `exit` powers
    /// the guest off. Ctrl-C goes to the guest shell.
    #[arg(long)]
    shell: bool,
}

#[derive(clap::Args)]
pub struct IntegrationTestArgs {
    /// Where the tests run; only `vm` (the lab guest) exists.
    #[arg(value_enum)]
    target: TestTarget,
    /// An extra test executable to run in the guest (repeatable), on top of xtask/guest/vm-tests/.
    #[arg(long = "test-exe")]
    test_exe: Vec<PathBuf>,
    /// Limit for each test inside the guest, in seconds.
    #[arg(long, default_value_t = 300)]
    test_timeout: u64,
    /// Run only the vm-tests whose file name contains this (repeatable; default: all).
    #[arg(long)]
    only: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TestTarget {
    Vm,
}

/// The guest-side files (xtask/guest/).
pub fn guest_dir() -> PathBuf {
    workspace_root().join("xtask/guest")
}

fn lab_target() -> PathBuf {
    workspace_root().join("target/lab")
}

/// Progress with the time since xtask started, so every step's cost is visible.
pub fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("lab [{:>6.1}s] {msg}", t.as_secs_f64());
}

/// Packages the host needs to build and boot the image (qemu comes separately, see below).
const HOST_PACKAGES: &[&str] = &[
    "debootstrap",
    "busybox-static",
    "cpio",
    "xz-utils",
    "e2fsprogs",
    "kmod",
    "zstd",
    "debian-archive-keyring",
];

/// What `lab` and `integration-test vm` need on the host. Checks first: a warm machine pays
/// only the checks.
fn ensure_host() -> anyhow::Result<()> {
    crate::deps::ensure_apt(HOST_PACKAGES)?;
    ensure_qemu()?;
    // The toolchain's rust-src and bpf-linker, to build detrace with its eBPF programs.
    crate::deps::all()
}

/// qemu-system-x86 comes from bookworm-backports: bookworm's own 7.2 conflicts with the
/// qemu-utils 10.0 (backports) these machines ship. The backports entry exists only for the
/// install and is removed again, so the host's apt sources end as they were.
fn ensure_qemu() -> anyhow::Result<()> {
    if crate::util::runs_ok(qemu::qemu_binary(), &["--version"]) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{} is missing: run as root so xtask can install qemu-system-x86 from \
             bookworm-backports",
            qemu::qemu_binary()
        );
    }
    progress("installing qemu-system-x86 from bookworm-backports");
    let mirror = image::mirror_uri()?;
    let list = PathBuf::from("/etc/apt/sources.list.d/detrace-lab-backports.list");
    struct RemoveList<'a>(&'a Path);
    impl Drop for RemoveList<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        }
    }
    fs::write(&list, format!("deb {mirror} bookworm-backports main\n"))
        .with_context(|| format!("writing {}", list.display()))?;
    let _cleanup = RemoveList(&list);
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(["-t", "bookworm-backports", "qemu-system-x86"]))
    .context("installing qemu-system-x86 from bookworm-backports")?;
    qemu::check_qemu()
}

/// `cargo build --release -p detrace-user`: the binary that runs in the guest (built on
/// bookworm's glibc 2.36, it runs on trixie's newer one). Started in the background so a cold
/// image build and a cold compile overlap; its output goes to target/lab/build-detrace.log.
struct DetraceBuild {
    child: Option<std::process::Child>,
    log: PathBuf,
    start: Instant,
}

impl DetraceBuild {
    fn start() -> anyhow::Result<Self> {
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

    fn wait(mut self) -> anyhow::Result<PathBuf> {
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

fn prepare() -> anyhow::Result<(image::Image, PathBuf)> {
    qemu::install_signal_handler()?;
    progress("checking host dependencies");
    ensure_host()?;
    qemu::check_qemu()?;
    let build = DetraceBuild::start()?;
    let image = image::ensure()?;
    if qemu::interrupted() {
        bail!("interrupted");
    }
    let detrace = build.wait()?;
    Ok((image, detrace))
}

pub fn run_lab(args: LabArgs) -> anyhow::Result<()> {
    let (image, detrace) = prepare()?;
    let share = guest::Share::new(&detrace)?;
    share.write_config(&[
        ("DURATION", args.duration.to_string()),
        ("INTERVAL", args.interval.max(1).to_string()),
    ])?;
    let console_log = lab_target().join("lab-console.log");
    let (mode, timeout) = if args.shell {
        // A person is at the shell: a long but still bounded session.
        ("shell", Duration::from_secs(4 * 3600))
    } else {
        // Boot + OVS/OVN + topology take ~40 s under TCG; the margin covers a slow machine.
        ("lab", Duration::from_secs(args.duration + 300))
    };
    progress(&format!(
        "booting the guest (mode {mode}, console log {})",
        console_log.display()
    ));
    if args.shell {
        eprintln!("lab: the topology comes up first (~40 s); type `exit` to power the guest off");
    }
    let mut first_explain = None;
    let mut last_rc = None;
    let end = qemu::boot(
        &qemu::Boot {
            image: &image,
            share: &share.dir,
            mode,
            console_log: console_log.clone(),
            interactive: args.shell,
            boot_timeout: Duration::from_secs(120),
            timeout,
            cpus: 2,
        },
        |_, line| {
            if let Some(m) = line.split(MARK).nth(1) {
                if m.starts_with("explain-begin") && first_explain.is_none() {
                    first_explain = Some(());
                    progress("first `detrace explain --all` output follows");
                }
                if let Some(rc) = m.strip_prefix("explain-end rc=") {
                    last_rc = rc.split_whitespace().next().map(str::to_string);
                }
                if !m.starts_with("explain") {
                    progress(&format!("guest: {m}"));
                }
                return;
            }
            println!("{line}");
        },
    )?;
    finish(end, &console_log)?;
    if !args.shell {
        if first_explain.is_none() {
            bail!(
                "the guest never ran detrace; console log: {}",
                console_log.display()
            );
        }
        progress(&format!(
            "done; last `detrace explain --all` exit code: {}",
            last_rc.as_deref().unwrap_or("?")
        ));
    }
    Ok(())
}

fn finish(end: End, console_log: &Path) -> anyhow::Result<()> {
    match end {
        End::Exited(status) if status.success() => Ok(()),
        End::Exited(status) => bail!(
            "QEMU exited with {status}; console log: {}",
            console_log.display()
        ),
        End::Interrupted => bail!(
            "interrupted: QEMU stopped; console log: {}",
            console_log.display()
        ),
        End::BootHung => bail!(
            "the guest did not reach userspace within 120 s (kernel or initramfs hang); \
             console log: {}",
            console_log.display()
        ),
        End::TimedOut => bail!(
            "the guest did not finish in time and was stopped; console log: {}",
            console_log.display()
        ),
    }
}

/// For the project's test command: the VM tests with the default settings plus `extra`
/// test executables (same contract as `--test-exe`).
pub fn run_vm_tests(extra: Vec<PathBuf>) -> anyhow::Result<()> {
    run_integration_test(IntegrationTestArgs {
        target: TestTarget::Vm,
        test_exe: extra,
        test_timeout: 300,
        only: Vec::new(),
    })
}

pub fn run_integration_test(args: IntegrationTestArgs) -> anyhow::Result<()> {
    let TestTarget::Vm = args.target;
    let (image, detrace) = prepare()?;
    let share = guest::Share::new(&detrace)?;
    let mut names = Vec::new();
    let vm_tests = guest_dir().join("vm-tests");
    let mut found: Vec<PathBuf> = fs::read_dir(&vm_tests)
        .with_context(|| format!("reading {}", vm_tests.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()))
        })
        .collect();
    found.sort();
    for t in found.iter().chain(&args.test_exe) {
        names.push(share.add_test(t)?);
    }
    if names.is_empty() {
        bail!("no VM tests found in {}", vm_tests.display());
    }
    share.write_config(&[("TEST_TIMEOUT", args.test_timeout.to_string())])?;
    let console_log = lab_target().join("vm-test-console.log");
    // Setup ~60 s, then every test may use its full limit.
    let timeout = Duration::from_secs(300 + args.test_timeout * names.len() as u64);
    progress(&format!(
        "running {} VM test(s) (console log {})",
        names.len(),
        console_log.display()
    ));
    let end = boot_batch(&image, &share, "test", &console_log, timeout, 2)?;
    let kept = keep_results(&share, "vm-test-results")?;
    let report = guest::collect(&kept, &names);
    for (n, why) in &report.failed {
        eprintln!("\n===== FAILED {n}: {why}; its log ({}):", kept.display());
        match fs::read_to_string(kept.join(format!("{n}.log"))) {
            Ok(text) => eprintln!("{text}"),
            Err(_) => eprintln!("(no log)"),
        }
    }
    // The plain closing line CI reads.
    println!(
        "vm-tests: {} passed, {} failed",
        report.passed.len(),
        report.failed.len()
    );
    finish(end, &console_log)?;
    if !report.done {
        bail!(
            "the guest never reported that the tests finished; console log: {}",
            console_log.display()
        );
    }
    if !report.failed.is_empty() {
        bail!(
            "{} VM test(s) failed; logs in {}, console log {}",
            report.failed.len(),
            kept.display(),
            console_log.display()
        );
    }
    Ok(())
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

/// `cargo xtask bench`'s datapath part: boots the guest in bench mode (xtask/guest/bench.sh) and
/// returns the per-run lines (`mode rep tcp_bps udp_pps`), the attach/detach lines and the probe
/// cost lines.
pub fn run_vm_bench(
    reps: u32,
    seconds: u32,
    cpus: u32,
) -> anyhow::Result<(String, String, String)> {
    let (image, detrace) = prepare()?;
    let share = guest::Share::new(&detrace)?;
    share.write_config(&[
        ("BENCH_REPS", reps.to_string()),
        ("BENCH_SECONDS", seconds.to_string()),
    ])?;
    let console_log = lab_target().join("bench-console.log");
    // 5 modes x 2 tests per repetition, plus attach/detach and setup, then 5 cost runs.
    let timeout =
        Duration::from_secs(300 + (u64::from(reps) + 1) * 5 * (2 * u64::from(seconds) + 15));
    progress(&format!(
        "running the datapath benchmark (console log {})",
        console_log.display()
    ));
    let end = boot_batch(&image, &share, "bench", &console_log, timeout, cpus)?;
    let results = share.results();
    let runs = fs::read_to_string(results.join("bench.txt")).unwrap_or_default();
    let attach = fs::read_to_string(results.join("attach.txt")).unwrap_or_default();
    let cost = fs::read_to_string(results.join("cost.txt")).unwrap_or_default();
    keep_results(&share, "bench-results")?;
    finish(end, &console_log)?;
    if !results.join("done").exists() {
        bail!(
            "the guest did not finish the benchmark; see {}",
            console_log.display()
        );
    }
    Ok((runs, attach, cost))
}

/// Boots the guest in a non-interactive mode, guest progress lines shown as progress and the
/// rest of the console echoed.
fn boot_batch(
    image: &image::Image,
    share: &guest::Share,
    mode: &str,
    console_log: &Path,
    timeout: Duration,
    cpus: u32,
) -> anyhow::Result<End> {
    // QEMU under TCG has been seen to abort at start (an assertion in its memory map code,
    // before the guest printed anything): that is QEMU's failure, not the tests', so such a
    // start is tried once more. A failure after the guest began is reported as it is.
    let mut attempt = 1;
    loop {
        let mut guest_spoke = false;
        let result = qemu::boot(
            &qemu::Boot {
                image,
                share: &share.dir,
                mode,
                console_log: console_log.to_path_buf(),
                interactive: false,
                boot_timeout: Duration::from_secs(120),
                timeout,
                cpus,
            },
            |_, line| match line.split(MARK).nth(1) {
                Some(m) => {
                    guest_spoke = true;
                    progress(&format!("guest: {m}"))
                }
                None => println!("{line}"),
            },
        );
        match result {
            Err(e) if !guest_spoke && attempt < 2 => {
                progress(&format!(
                    "QEMU failed before the guest started ({e}); starting it again"
                ));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Copies the share's results to target/lab/<name>, kept after the share is removed.
fn keep_results(share: &guest::Share, name: &str) -> anyhow::Result<PathBuf> {
    let kept = lab_target().join(name);
    let _ = fs::remove_dir_all(&kept);
    fs::create_dir_all(&kept)?;
    for e in fs::read_dir(share.results())?.filter_map(Result::ok) {
        let _ = fs::copy(e.path(), kept.join(e.file_name()));
    }
    Ok(kept)
}
