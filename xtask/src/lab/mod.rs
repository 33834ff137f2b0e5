//! The lab: a QEMU guest with a Debian kernel that has openvswitch, kprobes and module BTF,
//! running real OVS (with `ofproto/detrace`) and OVN on the kernel datapath, a topology modelled
//! on the seed talk and live traffic. `cargo xtask lab` shows detrace on it;
//! `cargo xtask integration-test vm` runs the kernel-level tests in it. See docs/lab.md.
//!
//! host.rs installs what the host needs, image/ builds and caches what QEMU boots (while
//! detrace_build.rs builds detrace), qemu.rs boots it, guest.rs is the share directory
//! contract, interrupt.rs turns Ctrl-C/SIGTERM into a flag every wait loop checks, paths.rs
//! says where things are; xtask/guest/ holds what runs inside.

mod detrace_build;
mod guest;
mod host;
mod image;
mod interrupt;
mod paths;
mod profile;
mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use self::{
    detrace_build::DetraceBuild,
    interrupt::{install_signal_handler, interrupted},
    paths::{guest_dir, lab_target, progress},
    qemu::{End, MARK},
};

pub use self::profile::Profile;

#[derive(clap::Args)]
pub struct LabArgs {
    /// Which guest: trixie (kernel 6.12, OVS 3.5, OVN 25.03) or bookworm (6.1, 3.1, 23.03).
    #[arg(long, value_enum, default_value_t)]
    profile: Profile,
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
    /// The guest(s) to run them in, one after the other (repeatable; default: trixie).
    #[arg(long, value_enum)]
    profile: Vec<Profile>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TestTarget {
    Vm,
}

fn prepare(profile: Profile) -> anyhow::Result<(image::Image, PathBuf)> {
    install_signal_handler()?;
    progress(&format!(
        "profile {}; checking host dependencies",
        profile.name()
    ));
    host::ensure_host()?;
    qemu::check_qemu()?;
    let build = DetraceBuild::start()?;
    let image = image::ensure(profile)?;
    if interrupted() {
        bail!("interrupted");
    }
    let detrace = build.wait()?;
    Ok((image, detrace))
}

pub fn run_lab(args: LabArgs) -> anyhow::Result<()> {
    let (image, detrace) = prepare(args.profile)?;
    let share = guest::Share::new(&detrace)?;
    share.write_config(&[
        ("DURATION", args.duration.to_string()),
        ("INTERVAL", args.interval.max(1).to_string()),
    ])?;
    let console_log = lab_target().join(args.profile.target_name("lab-console", ".log"));
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
            profile: args.profile.name(),
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

/// For the project's test command: the VM tests with the default settings in each of
/// `profiles`, plus `extra` test executables (same contract as `--test-exe`).
pub fn run_vm_tests(extra: Vec<PathBuf>, profiles: &[Profile]) -> anyhow::Result<()> {
    run_integration_test(IntegrationTestArgs {
        target: TestTarget::Vm,
        test_exe: extra,
        test_timeout: 300,
        only: Vec::new(),
        profile: profiles.to_vec(),
    })
}

/// Runs the tests in each profile asked for (trixie by default), every profile even when one
/// fails, and fails at the end naming the profiles that failed.
pub fn run_integration_test(args: IntegrationTestArgs) -> anyhow::Result<()> {
    let TestTarget::Vm = args.target;
    let profiles = if args.profile.is_empty() {
        vec![Profile::default()]
    } else {
        args.profile.clone()
    };
    let mut failed = Vec::new();
    for &p in &profiles {
        if let Err(e) = run_tests_in(p, &args) {
            eprintln!("lab: profile {}: {e:#}", p.name());
            failed.push(p.name());
            if interrupted() {
                break;
            }
        }
    }
    if !failed.is_empty() {
        bail!("VM tests failed in profile(s): {}", failed.join(", "));
    }
    Ok(())
}

fn run_tests_in(profile: Profile, args: &IntegrationTestArgs) -> anyhow::Result<()> {
    let (image, detrace) = prepare(profile)?;
    let share = guest::Share::new(&detrace)?;
    let names = add_tests(&share, args)?;
    share.write_config(&[("TEST_TIMEOUT", args.test_timeout.to_string())])?;
    let console_log = lab_target().join(profile.target_name("vm-test-console", ".log"));
    // Setup ~60 s, then every test may use its full limit.
    let timeout = Duration::from_secs(300 + args.test_timeout * names.len() as u64);
    progress(&format!(
        "running {} VM test(s) in {} (console log {})",
        names.len(),
        profile.name(),
        console_log.display()
    ));
    let end = boot_batch(&image, &share, "test", &console_log, timeout, 2, profile)?;
    let kept = keep_results(&share, &profile.target_name("vm-test-results", ""))?;
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
        "vm-tests ({}): {} passed, {} failed{}",
        profile.name(),
        report.passed.len(),
        report.failed.len(),
        report
            .failed
            .iter()
            .map(|(n, _)| format!(" {n}"))
            .collect::<String>()
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

/// Copies the selected vm-tests (xtask/guest/vm-tests/, filtered by `--only`) and the extra
/// executables into the share; returns the names they run under.
fn add_tests(share: &guest::Share, args: &IntegrationTestArgs) -> anyhow::Result<Vec<String>> {
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
    let mut names = Vec::new();
    for t in found.iter().chain(&args.test_exe) {
        names.push(share.add_test(t)?);
    }
    if names.is_empty() {
        bail!("no VM tests found in {}", vm_tests.display());
    }
    Ok(names)
}

/// `cargo xtask bench`'s datapath part: boots the guest in bench mode (xtask/guest/bench.sh) and
/// returns the per-run lines (`mode rep tcp_bps udp_pps`), the attach/detach lines and the probe
/// cost lines.
pub fn run_vm_bench(
    reps: u32,
    seconds: u32,
    cpus: u32,
    profile: Profile,
) -> anyhow::Result<(String, String, String)> {
    let (image, detrace) = prepare(profile)?;
    let share = guest::Share::new(&detrace)?;
    share.write_config(&[
        ("BENCH_REPS", reps.to_string()),
        ("BENCH_SECONDS", seconds.to_string()),
    ])?;
    let console_log = lab_target().join(profile.target_name("bench-console", ".log"));
    // 7 modes x 2 tests per repetition, plus attach/detach and setup, then 5 cost runs.
    let timeout =
        Duration::from_secs(300 + (u64::from(reps) + 1) * 7 * (2 * u64::from(seconds) + 15));
    progress(&format!(
        "running the datapath benchmark (console log {})",
        console_log.display()
    ));
    let end = boot_batch(
        &image,
        &share,
        "bench",
        &console_log,
        timeout,
        cpus,
        profile,
    )?;
    let results = share.results();
    let runs = fs::read_to_string(results.join("bench.txt")).unwrap_or_default();
    let attach = fs::read_to_string(results.join("attach.txt")).unwrap_or_default();
    let cost = fs::read_to_string(results.join("cost.txt")).unwrap_or_default();
    keep_results(&share, &profile.target_name("bench-results", ""))?;
    finish(end, &console_log)?;
    if !results.join("done").exists() {
        bail!(
            "the guest did not finish the benchmark; see {}",
            console_log.display()
        );
    }
    Ok((runs, attach, cost))
}

/// `cargo xtask bench --soak`: boots the guest in soak mode (xtask/guest/soak.sh) for `seconds`
/// of top and watch under churn; returns where its results were kept (target/lab/soak-results).
pub fn run_vm_soak(seconds: u64, cpus: u32, profile: Profile) -> anyhow::Result<PathBuf> {
    let (image, detrace) = prepare(profile)?;
    let share = guest::Share::new(&detrace)?;
    share.write_config(&[("SOAK_SECONDS", seconds.to_string())])?;
    let console_log = lab_target().join(profile.target_name("soak-console", ".log"));
    // Boot and lab setup take 1-2 minutes under TCG; the ending (detach, closing lines) less.
    let timeout = Duration::from_secs(seconds + 420);
    progress(&format!(
        "running the soak for {seconds} s (console log {})",
        console_log.display()
    ));
    let end = boot_batch(&image, &share, "soak", &console_log, timeout, cpus, profile)?;
    let done = share.results().join("done").exists();
    let kept = keep_results(&share, &profile.target_name("soak-results", ""))?;
    finish(end, &console_log)?;
    if !done {
        bail!(
            "the guest did not finish the soak; see {} and {}",
            console_log.display(),
            kept.display()
        );
    }
    Ok(kept)
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
    profile: Profile,
) -> anyhow::Result<End> {
    // QEMU under TCG has been seen to abort at start (an assertion in its memory map code,
    // before the guest printed anything), and a guest kernel to hang in early boot (CI: RCU
    // stalls on CPU 1, "timer wakeup didn't happen", never reaching userspace). Both are the
    // emulator's failure, not the tests', and nothing of the run has happened yet, so such a
    // start is tried once more (the hung console log kept next to the new one). A failure
    // after the guest's userspace began is reported as it is.
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
                profile: profile.name(),
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
            Ok(End::BootHung) if !guest_spoke && attempt < 2 => {
                let kept = console_log.with_extension("hung.log");
                let _ = fs::rename(console_log, &kept);
                progress(&format!(
                    "the guest kernel hung before userspace (console log kept in {}); \
                     booting it again",
                    kept.display()
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
