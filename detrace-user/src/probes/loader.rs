//! [`Probes`]: loads the embedded eBPF object with this kernel's offsets, attaches its hooks,
//! reads its maps. It owns everything it attached: dropping it (end of scope, error path,
//! unwinding after Ctrl-C was turned into an orderly return) detaches every probe. Should the
//! process die without unwinding, the kernel closes the perf-event and BPF link fds with the
//! process, which detaches them too.
//!
//! The steps live next door: [`super::kernel`] (what the kernel offers), [`super::config`]
//! (options, filter, offsets), [`super::hooks`] (fentry first, kprobe fallback),
//! [`super::maps`] and [`super::ring`] (reading what the probes wrote).

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use aya::{Ebpf, EbpfLoader};
use detrace_common::{
    COUNTER_SLOTS, DROP_REASON_SLOTS, FlowStats, GLOBAL_CONFIG, MAP_EVENTS, MAP_FLOW_STATS,
    RemovedStats, flow_stats_entries,
};

use super::{
    config,
    fentry::Parsed,
    hooks::{self, AttachedHook, Attachment},
    kernel, maps,
    object::EBPF_OBJECT,
    phases::{Phases, timed},
};
pub use super::{
    config::{Filter, ProbeOptions},
    error::ProbeError,
    ring::EventReader,
};

/// One program's cost, from the kernel's BPF run-time statistics.
#[derive(Clone, Debug)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub time: Duration,
}

/// The attached probes. Dropping this detaches all of them.
pub struct Probes {
    // Field order is drop order: the reader (which holds the ring buffer map) may outlive
    // nothing else; the fentry programs (closing them detaches them) go before the Ebpf, which
    // owns the kprobe and tracepoint programs and their links.
    events: Option<EventReader>,
    hooks: Vec<AttachedHook>,
    ebpf: Ebpf,
    /// While open, the kernel times every BPF program run (BPF_ENABLE_STATS).
    cost_stats: Option<OwnedFd>,
    attach_time: Duration,
    phases: Phases,
    /// The kernel has no OVS drop reasons (see `Config::no_drop_reasons`).
    no_drop_reasons: bool,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attach_time", &self.attach_time)
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// aya's loader without aya's parse of the kernel's BTF: `EbpfLoader::new` always parses
/// /sys/kernel/btf/vmlinux (aya 0.14: 0.2-0.8 s under TCG), for CO-RE relocations, which these
/// programs do not have (rustc emits none; the fentry programs, which need the module's BTF, are
/// loaded by [`super::fentry`]). So the loader is made on a thread of its own whose root
/// directory alone is moved (`unshare(CLONE_FS)` gives the thread its own; `chroot`) to
/// /sys/kernel/btf, where no `sys/kernel/btf/vmlinux` exists: aya finds no BTF and loads as with
/// `.btf(None)`. The thread ends there, and its root with it. Where either call is refused,
/// aya parses as before. Returns whether aya parsed.
fn aya_loader() -> (EbpfLoader<'static>, bool) {
    let own_root = std::thread::spawn(|| {
        // SAFETY: plain syscalls on this thread's own fs context (unshare(CLONE_FS) copies it
        // for this thread only, so the chroot affects no other thread); no memory is passed but
        // a NUL-terminated path.
        let moved = unsafe {
            libc::unshare(libc::CLONE_FS) == 0 && libc::chroot(c"/sys/kernel/btf".as_ptr()) == 0
        };
        (EbpfLoader::new(), !moved)
    });
    own_root
        .join()
        .unwrap_or_else(|_| (EbpfLoader::new(), true))
}

impl Probes {
    /// Checks what the kernel offers, loads the programs with this kernel's offsets, attaches
    /// them. On any error, whatever was attached is detached again before returning.
    pub fn attach(opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        let start = Instant::now();
        kernel::check_privileges()?;
        let ring = if opts.events { opts.ring_bytes } else { 4096 };
        if ring < 4096 || !ring.is_power_of_two() {
            return Err(ProbeError::RingSize { bytes: ring });
        }
        let tracefs = kernel::check_tracing()?;
        let mut phases = Phases::new(start);
        phases.mark("checks");
        // Three things at once: our offsets (BTF of vmlinux and the module, tracefs), aya's
        // feature probes (a few dozen bpf() calls, made once per process when the object is
        // loaded) and aya's loader, built without its own parse of the kernel's BTF.
        // The fentry programs' own parse of the object goes along.
        let (loader, cfg) = std::thread::scope(|s| {
            let features = s.spawn(|| timed(aya::features));
            let aya = s.spawn(|| timed(aya_loader));
            let parsed = s.spawn(|| (!opts.kprobes_only).then(|| Parsed::new(EBPF_OBJECT)));
            let cfg = timed(|| config::config(opts, &tracefs));
            let parsed = parsed.join();
            (
                aya.join()
                    .and_then(|l| Ok((l, features.join()?.1, parsed?))),
                cfg,
            )
        });
        let ((cfg, btf), took) = (cfg.0?, cfg.1);
        phases.part("offsets", took);
        let (((mut loader, parsed), took), features, fentry) =
            loader.map_err(|_| ProbeError::LoaderPanic)?;
        phases.part("aya_features", features);
        phases.part(
            if parsed {
                "aya_kernel_btf"
            } else {
                "aya_loader"
            },
            took,
        );
        tracing::debug!(?cfg, "probe configuration");
        phases.mark("offsets+aya");
        let mut ebpf = loader
            .override_global(GLOBAL_CONFIG, &cfg, true)
            .map_max_entries(MAP_EVENTS, ring)
            .map_max_entries(
                MAP_FLOW_STATS,
                // Preallocated: only as large as the counting reads (the probes keep it only
                // when per-packet probes run: flow_stats_kept).
                if opts.per_packet_probes() {
                    flow_stats_entries(cfg.nr_cpus)
                } else {
                    1
                },
            )
            .load(EBPF_OBJECT)
            .map_err(ProbeError::object)?;
        phases.mark("object");
        // Before any program runs: the first packets are already filtered.
        if let Some(addrs) = &opts.filter.addrs {
            maps::set_filter_addrs(&mut ebpf, addrs)?;
        }
        let wanted = hooks::hooks(opts.flow_table(), opts.per_packet_probes());
        let targets = hooks::fentry_targets(wanted, &btf);
        drop(btf);
        let fentry = fentry.map(|p| (p, &targets[..]));
        let hooks = hooks::attach(&mut ebpf, wanted, fentry, &mut phases)?;
        let events = if opts.events {
            Some(maps::take_events(&mut ebpf)?)
        } else {
            None
        };
        let cost_stats = if opts.cost {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .map_err(|source| ProbeError::CostStats { source })?,
            )
        } else {
            None
        };
        Ok(Probes {
            events,
            hooks,
            ebpf,
            cost_stats,
            attach_time: start.elapsed(),
            phases,
            no_drop_reasons: cfg.no_drop_reasons != 0,
        })
    }

    /// Whether this kernel lacks OVS drop reasons (before 6.4): a flow's drop is then counted
    /// with the reason "no actions" (`DROP_NO_ACTIONS`).
    pub fn no_drop_reasons(&self) -> bool {
        self.no_drop_reasons
    }

    /// How each hooked openvswitch function is probed: (function, "fentry" | "kprobe" |
    /// "none": an optional hook that attached neither way).
    pub fn hook_kinds(&self) -> Vec<(&'static str, &'static str)> {
        self.hooks.iter().map(|h| (h.function, h.kind())).collect()
    }

    /// From the start of [`Probes::attach`] to the last probe attached.
    pub fn attach_time(&self) -> Duration {
        self.attach_time
    }

    /// Where the attach time went: checks; offsets (BTF + tracefs) beside aya's loader and
    /// feature probes; object load (maps); the fentry setup (module BTF, relocation) and the
    /// fentry programs' load+verify and attach; the kprobes' and tracepoint's.
    pub fn attach_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases.done
    }

    /// Inside the phases, each parallel thread's own time: the two BTF parses, each program's
    /// load (the kernel's verification) and attach.
    pub fn attach_parts(&self) -> &[(String, Duration)] {
        &self.phases.parallel
    }

    /// Detaches everything (what dropping does) and says how long it took.
    pub fn detach(self) -> Duration {
        let start = Instant::now();
        drop(self);
        start.elapsed()
    }

    /// What each program has cost so far (attached with [`ProbeOptions::cost`]): runs and
    /// the CPU time the kernel measured inside the program (not counting the kprobe or
    /// tracepoint dispatch around it).
    pub fn program_costs(&self) -> Result<Vec<ProgramCost>, ProbeError> {
        if self.cost_stats.is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (name, prog) in self.ebpf.programs() {
            // Programs of the object that were not loaded (a hook's kprobe when its fentry
            // attached) have no info and no cost.
            if prog.fd().is_err() {
                continue;
            }
            let info = prog.info().map_err(|source| ProbeError::Load {
                program: "(program info)",
                source,
            })?;
            out.push(ProgramCost {
                name: name.to_string(),
                runs: info.run_count(),
                time: info.run_time(),
            });
        }
        for h in &self.hooks {
            let Attachment::Fentry(f) = &h.attachment else {
                continue;
            };
            let (runs, time) = f.cost().map_err(|source| ProbeError::CostStats {
                source: aya::sys::SyscallError {
                    call: "bpf_obj_get_info_by_fd",
                    io_error: source,
                },
            })?;
            out.push(ProgramCost {
                name: format!("fentry:{}", h.function),
                runs,
                time,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Per-UFID aggregates, summed over CPUs.
    pub fn flow_stats(&self) -> Result<Vec<([u32; 4], FlowStats)>, ProbeError> {
        maps::flow_stats(&self.ebpf)
    }

    /// The last stats of removed flows by UFID, summed over CPUs (see
    /// [`ProbeOptions::per_packet`]).
    pub fn removed_stats(&self) -> Result<Vec<([u32; 4], RemovedStats)>, ProbeError> {
        maps::removed_stats(&self.ebpf)
    }

    /// Forgets flows whose last counts user space has taken (see [`maps::forget_flows`]).
    pub fn forget_flows(&mut self, ufids: &[[u32; 4]]) -> Result<(), ProbeError> {
        maps::forget_flows(&mut self.ebpf, ufids)
    }

    /// OVS drops counted against no flow, by drop-reason slot, summed over CPUs.
    pub fn other_drops(&self) -> Result<[u64; DROP_REASON_SLOTS], ProbeError> {
        maps::other_drops(&self.ebpf)
    }

    /// `Counter` values, summed over CPUs, indexed by `Counter as usize`.
    pub fn counters(&self) -> Result<[u64; COUNTER_SLOTS as usize], ProbeError> {
        maps::counters(&self.ebpf)
    }

    /// The addresses of the `addrs` filter (a pod's, a namespace's), replaced as a whole.
    pub fn set_filter_addrs(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), ProbeError> {
        maps::set_filter_addrs(&mut self.ebpf, addrs)
    }

    /// The event stream, once; None when the probes were attached without `events`.
    pub fn take_events(&mut self) -> Option<EventReader> {
        self.events.take()
    }
}
