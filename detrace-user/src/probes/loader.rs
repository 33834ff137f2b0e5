//! Loads the embedded eBPF object with this kernel's offsets, attaches its programs, reads its
//! maps. [`Probes`] owns everything it attached: dropping it (end of scope, error path, unwinding
//! after Ctrl-C was turned into an orderly return) detaches every probe. Should the process die
//! without unwinding, the kernel closes the perf-event links with the process, which detaches
//! them too.

use std::{
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{KProbe, Program, ProgramError, TracePoint},
};
use detrace_common::{
    COUNTER_SLOTS, Config, Event, FILTER_DST, FILTER_HOST, FILTER_IN_PORT, FILTER_PORT,
    FILTER_PROTO, FILTER_SRC, FlowKey, FlowStats, GLOBAL_CONFIG, MAP_COUNTERS, MAP_EVENTS,
    MAP_FLOW_STATS,
};
use tokio::io::unix::AsyncFd;

use super::{
    EBPF_OBJECT,
    btf::{Btf, BtfError},
    fentry, offsets,
};

const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const BTF_OPENVSWITCH: &str = "/sys/kernel/btf/openvswitch";
const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_OLD: &str = "/sys/kernel/debug/tracing";

/// The datapath hooks, in attach order: one program per way of attaching (fentry first, the
/// kprobe when fentry cannot attach) on one openvswitch function. One probe per datapath pass
/// (`ovs_flow_stats_update`, see detrace-ebpf/src/probes/datapath.rs).
struct Hook {
    function: &'static str,
    fentry: &'static str,
    kprobe: &'static str,
    /// Tracing works without it (it adds something): when it attaches neither way, a warning
    /// says what is missing and the others go on.
    optional: Option<&'static str>,
}

const HOOKS: &[Hook] = &[
    Hook {
        function: "ovs_flow_stats_update",
        fentry: "fentry_flow_stats_update",
        kprobe: "ovs_flow_stats_update",
        optional: None,
    },
    Hook {
        function: "ovs_dp_upcall",
        fentry: "fentry_dp_upcall",
        kprobe: "ovs_dp_upcall",
        optional: None,
    },
    Hook {
        function: "ovs_vport_send",
        fentry: "fentry_vport_send",
        kprobe: "ovs_vport_send",
        optional: None,
    },
    // Once per upcall, never per pass: the packet ovs-vswitchd executes after an upcall is
    // followed as a packet of the flow it installed (detrace-ebpf/src/probes/upcall.rs).
    Hook {
        function: "ovs_flow_tbl_insert",
        fentry: "fentry_flow_tbl_insert",
        kprobe: "ovs_flow_tbl_insert",
        optional: Some(AFTER_UPCALL_MISSING),
    },
    Hook {
        function: "ovs_flow_key_extract_userspace",
        fentry: "fentry_key_extract_userspace",
        kprobe: "ovs_flow_key_extract_userspace",
        optional: Some(AFTER_UPCALL_MISSING),
    },
];

/// What is lost without the upcall hooks.
const AFTER_UPCALL_MISSING: &str = "packets executed by ovs-vswitchd after an upcall (often \
     the first packet of a conversation) are not followed: their drops are not counted";
const TP_PROGRAM: &str = "kfree_skb";

/// How often the event reader looks at the ring buffer when it was not woken: the probes wake
/// it only once a sixteenth of the ring is filled (detrace-ebpf probes/packet.rs `emit`), so
/// this bounds how long a lone event can wait.
const EVENT_POLL: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "tracing the datapath needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN): run detrace \
         as root"
    )]
    NotRoot,
    #[error(
        "the openvswitch kernel module is not loaded (no /sys/module/openvswitch): run \
         `modprobe openvswitch`, or start OVS on its kernel datapath (this does not trace the \
         userspace/DPDK datapath)"
    )]
    NoOvsModule,
    #[error("no BTF at {path}: {hint}")]
    NoBtf { path: PathBuf, hint: &'static str },
    #[error("reading {path}")]
    BtfRead { path: PathBuf, source: io::Error },
    #[error("parsing the kernel's BTF ({path})")]
    BtfParse { path: PathBuf, source: BtfError },
    #[error("this kernel's BTF lacks {what}, which the probes read")]
    BtfMember { what: String, source: BtfError },
    #[error("{what} is {size} bytes on this kernel; the probes read {want}: unsupported layout")]
    Layout { what: String, size: u32, want: u32 },
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed; mount it with \
         `mount -t tracefs nodev {TRACEFS}`"
    )]
    Tracefs { source: io::Error },
    #[error("reading the skb:kfree_skb tracepoint format {path} (is tracefs mounted?)")]
    TracepointFormat { path: PathBuf, source: io::Error },
    #[error("{path} has no field `{field}` (drop reasons need Linux >= 5.17)")]
    TracepointField { path: PathBuf, field: &'static str },
    #[error(
        "this kernel has no kprobes (neither the kprobe PMU nor {TRACEFS}/kprobe_events: \
         CONFIG_KPROBES / CONFIG_KPROBE_EVENTS off?)"
    )]
    NoKprobes,
    #[error(
        "kernel function {symbol} is not in /proc/kallsyms: this openvswitch module does not \
         have it (renamed or inlined in this kernel version?)"
    )]
    SymbolMissing { symbol: &'static str },
    #[error("loading the eBPF object")]
    Object { source: aya::EbpfError },
    #[error("enabling the kernel's BPF run-time statistics (BPF_ENABLE_STATS, Linux >= 5.8)")]
    CostStats { source: aya::sys::SyscallError },
    #[error("a thread loading the probes panicked")]
    LoaderPanic,
    #[error("the embedded eBPF object has no program {name}")]
    NoProgram { name: &'static str },
    #[error("loading eBPF program {program} (rejected by the kernel)")]
    Load {
        program: &'static str,
        source: ProgramError,
    },
    #[error("attaching eBPF program {program} to {target}")]
    Attach {
        program: &'static str,
        target: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("the embedded eBPF object has no map {name}")]
    NoMap { name: &'static str },
    #[error("ring buffer size {bytes}: must be a power of two, at least 4096")]
    RingSize { bytes: u32 },
    #[error("filter: {why}")]
    Filter { why: String },
}

/// One program's cost, from the kernel's BPF run-time statistics.
#[derive(Clone, Debug)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub time: Duration,
}

/// What to trace and how.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Per-packet events through the ring buffer (counting in FLOW_STATS/COUNTERS is always on).
    pub events: bool,
    /// Ring buffer size in bytes (power of two, >= 4096); ignored without `events`.
    pub ring_bytes: u32,
    /// Max events per second per CPU; 0: unlimited.
    pub rate_limit: u32,
    pub filter: Filter,
    /// Have the kernel time every program run ([`Probes::program_costs`]); this costs two
    /// clock reads per run, so it is off unless asked for.
    pub cost: bool,
    /// Hook the datapath with kprobes even where fentry would attach.
    pub kprobes_only: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            events: false,
            ring_bytes: 1 << 20,
            rate_limit: 0,
            filter: Filter::default(),
            cost: false,
            kprobes_only: false,
        }
    }
}

/// Which packets produce events, decided on each packet's first datapath pass (before any NAT)
/// and kept for its later passes. All set fields must match.
#[derive(Default, Clone, Debug)]
pub struct Filter {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// Either address.
    pub host: Option<IpAddr>,
    /// Either port.
    pub port: Option<u16>,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Datapath port number of the first pass.
    pub in_port: Option<u32>,
}

impl Filter {
    fn apply(&self, cfg: &mut Config) -> Result<(), ProbeError> {
        let mut version = None;
        let mut addr = |a: IpAddr| -> Result<[u8; 16], ProbeError> {
            let (v, bytes) = match a {
                IpAddr::V4(a) => {
                    let mut b = [0; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (4u8, b)
                }
                IpAddr::V6(a) => (6u8, a.octets()),
            };
            if version.is_some_and(|old| old != v) {
                return Err(ProbeError::Filter {
                    why: "addresses of both IPv4 and IPv6: no packet can match".into(),
                });
            }
            version = Some(v);
            Ok(bytes)
        };
        if self.src.is_some() && self.host.is_some() {
            return Err(ProbeError::Filter {
                why: "give either a source address or a host address, not both".into(),
            });
        }
        if let Some(a) = self.src {
            cfg.filter_src = addr(a)?;
            cfg.filter_flags |= FILTER_SRC;
        }
        if let Some(a) = self.host {
            cfg.filter_src = addr(a)?;
            cfg.filter_flags |= FILTER_HOST;
        }
        if let Some(a) = self.dst {
            cfg.filter_dst = addr(a)?;
            cfg.filter_flags |= FILTER_DST;
        }
        cfg.filter_ip_version = version.unwrap_or(0);
        if let Some(p) = self.port {
            cfg.filter_port = p;
            cfg.filter_flags |= FILTER_PORT;
        }
        if let Some(p) = self.proto {
            cfg.filter_proto = p;
            cfg.filter_flags |= FILTER_PROTO;
        }
        if let Some(p) = self.in_port {
            cfg.filter_in_port = p;
            cfg.filter_flags |= FILTER_IN_PORT;
        }
        Ok(())
    }
}

/// The attached probes. Dropping this detaches all of them.
pub struct Probes {
    // Field order is drop order: the reader (which holds the ring buffer map) may outlive
    // nothing else; the Ebpf owns the programs and their links.
    events: Option<EventReader>,
    /// The fentry programs, by hooked function; closing them detaches them.
    fentries: Vec<(&'static str, fentry::Attached)>,
    /// How each hooked function is probed: (function, "fentry" | "kprobe").
    hook_kinds: Vec<(&'static str, &'static str)>,
    ebpf: Ebpf,
    /// While open, the kernel times every BPF program run (BPF_ENABLE_STATS).
    cost_stats: Option<std::os::fd::OwnedFd>,
    attach_time: Duration,
    phases: Vec<(&'static str, Duration)>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attach_time", &self.attach_time)
            .field("events", &self.events.is_some())
            .finish()
    }
}

fn read_btf(path: &str, hint: &'static str) -> Result<Vec<u8>, ProbeError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ProbeError::NoBtf {
                path: path.into(),
                hint,
            }
        } else {
            ProbeError::BtfRead {
                path: path.into(),
                source,
            }
        }
    })
}

/// Where tracefs is, mounting it at /sys/kernel/tracing when it is nowhere.
fn tracefs() -> Result<PathBuf, ProbeError> {
    for p in [TRACEFS, TRACEFS_OLD] {
        if Path::new(p).join("events").is_dir() {
            return Ok(p.into());
        }
    }
    let c =
        |s: &str| std::ffi::CString::new(s).map_err(|e| ProbeError::Tracefs { source: e.into() });
    let (src, target, fstype) = (c("nodev")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs {
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(TRACEFS.into())
}

fn kallsyms_has(symbol: &str) -> bool {
    std::fs::read_to_string("/proc/kallsyms").is_ok_and(|text| {
        text.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(symbol))
    })
}

/// Builds the load-time configuration (offsets from BTF and tracefs, filter, rate limit), and
/// finds each hook's function in the module's BTF (its fentry target; None: not there).
pub fn config(
    opts: &ProbeOptions,
    tracefs: &Path,
) -> Result<(Config, Vec<Option<u32>>), ProbeError> {
    let vmlinux = read_btf(
        BTF_VMLINUX,
        "this kernel was built without CONFIG_DEBUG_INFO_BTF",
    )?;
    let module = read_btf(
        BTF_OPENVSWITCH,
        "this kernel has no module BTF (CONFIG_DEBUG_INFO_BTF_MODULES), or openvswitch is not loaded",
    )?;
    let btf = Btf::parse_split(vmlinux, module).map_err(|source| ProbeError::BtfParse {
        path: BTF_OPENVSWITCH.into(),
        source,
    })?;
    let mut cfg = Config::default();
    offsets::from_btf(&btf, &mut cfg)?;
    offsets::from_tracefs(tracefs, &mut cfg)?;
    cfg.events_enabled = u32::from(opts.events);
    cfg.rate_limit = opts.rate_limit;
    opts.filter.apply(&mut cfg)?;
    let funcs = HOOKS
        .iter()
        .map(|h| btf.split_func(h.function).ok().flatten())
        .collect();
    Ok((cfg, funcs))
}

impl Probes {
    /// Checks what the kernel offers, loads the programs with this kernel's offsets, attaches
    /// them. On any error, whatever was attached is detached again before returning.
    pub fn attach(opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        let start = Instant::now();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        if !Path::new("/sys/module/openvswitch").exists() {
            return Err(ProbeError::NoOvsModule);
        }
        let ring = if opts.events { opts.ring_bytes } else { 4096 };
        if ring < 4096 || !ring.is_power_of_two() {
            return Err(ProbeError::RingSize { bytes: ring });
        }
        let tracefs = tracefs()?;
        if !Path::new("/sys/bus/event_source/devices/kprobe").exists()
            && !tracefs.join("kprobe_events").exists()
        {
            return Err(ProbeError::NoKprobes);
        }
        let mut phases = Vec::new();
        let mut mark = {
            let mut last = start;
            move |name: &'static str, phases: &mut Vec<(&'static str, Duration)>| {
                let now = Instant::now();
                phases.push((name, now - last));
                last = now;
            }
        };
        mark("checks", &mut phases);
        // aya's EbpfLoader::new parses the kernel's BTF (for CO-RE, which these programs do not
        // use, but it cannot be skipped); our offsets need a parse of their own (with the
        // module's split BTF). Both run at once: on a 2-CPU guest that hides one of them.
        let (loader, cfg) = std::thread::scope(|s| {
            let aya = s.spawn(EbpfLoader::new);
            let cfg = config(opts, &tracefs);
            (aya.join(), cfg)
        });
        let (cfg, funcs) = cfg?;
        let mut loader = loader.map_err(|_| ProbeError::LoaderPanic)?;
        tracing::debug!(?cfg, "probe configuration");
        mark("offsets+aya_kernel_btf", &mut phases);
        let mut ebpf = loader
            .override_global(GLOBAL_CONFIG, &cfg, true)
            .map_max_entries(MAP_EVENTS, ring)
            .load(EBPF_OBJECT)
            .map_err(|source| ProbeError::Object { source })?;
        mark("object", &mut phases);

        // fentry where it attaches; each hook that cannot gets its kprobe instead.
        let mut fentries = Vec::new();
        let mut kinds: Vec<(&'static str, &'static str)> = Vec::new();
        let mut need_kprobe = Vec::new();
        let setup = if opts.kprobes_only {
            Err("--kprobes asked for".to_string())
        } else {
            fentry::module_btf("openvswitch")
                .map_err(|e| format!("the openvswitch module's BTF object: {e}"))
                .and_then(|btf| Ok((btf, fentry::Relocated::new(EBPF_OBJECT, &ebpf)?)))
        };
        match &setup {
            Ok((btf, code)) => {
                // Loaded (verified) in parallel: the verifier runs in the loading thread.
                let results: Vec<_> = std::thread::scope(|s| {
                    let jobs: Vec<_> = HOOKS
                        .iter()
                        .zip(&funcs)
                        .map(|(h, id)| {
                            s.spawn(move || match id {
                                Some(id) => code.attach(h.fentry, btf, *id),
                                None => Err("not in the module's BTF".to_string()),
                            })
                        })
                        .collect();
                    jobs.into_iter()
                        .map(|j| j.join().unwrap_or_else(|_| Err("panicked".to_string())))
                        .collect()
                });
                for (h, r) in HOOKS.iter().zip(results) {
                    match r {
                        Ok(a) => {
                            fentries.push((h.function, a));
                            kinds.push((h.function, "fentry"));
                        }
                        Err(e) => {
                            tracing::warn!("fentry on {}: {e}; using a kprobe", h.function);
                            need_kprobe.push(h);
                        }
                    }
                }
            }
            Err(e) => {
                if !opts.kprobes_only {
                    tracing::warn!("fentry unavailable ({e}): using kprobes");
                }
                need_kprobe.extend(HOOKS.iter());
            }
        }
        mark("fentry", &mut phases);
        // The kprobes needed and the tracepoint, loaded (verified) in parallel.
        let wanted = |n: &str| {
            need_kprobe
                .iter()
                .map(|h| h.kprobe)
                .chain([TP_PROGRAM])
                .find(|p| *p == n)
        };
        // An optional hook that cannot load or attach is left out with a warning.
        let optional = |name: &str| {
            need_kprobe
                .iter()
                .find(|h| h.kprobe == name)
                .and_then(|h| h.optional)
        };
        let mut left_out: Vec<&'static str> = Vec::new();
        std::thread::scope(|s| -> Result<(), ProbeError> {
            let jobs: Vec<_> = ebpf
                .programs_mut()
                .filter_map(|(name, prog)| wanted(name).map(|name| (name, prog)))
                .map(|(name, prog)| (name, s.spawn(move || load_program(name, prog))))
                .collect();
            for (name, job) in jobs {
                match job.join().map_err(|_| ProbeError::LoaderPanic)? {
                    Ok(()) => {}
                    Err(e) => match optional(name) {
                        Some(missing) => {
                            tracing::warn!("{}; left out: {missing}", error_chain(&e));
                            left_out.push(name);
                        }
                        None => return Err(e),
                    },
                }
            }
            Ok(())
        })?;
        mark("load_verify", &mut phases);
        for h in &need_kprobe {
            let (name, target) = (h.kprobe, h.function);
            if left_out.contains(&name) {
                kinds.push((target, "none"));
                continue;
            }
            let prog: &mut KProbe = ebpf
                .program_mut(name)
                .ok_or(ProbeError::NoProgram { name })?
                .try_into()
                .map_err(|source| ProbeError::Load {
                    program: name,
                    source,
                })?;
            let attached = prog.attach(target, 0).map_err(|source| {
                if !kallsyms_has(target) {
                    ProbeError::SymbolMissing { symbol: target }
                } else {
                    ProbeError::Attach {
                        program: name,
                        target,
                        source,
                    }
                }
            });
            match (attached, h.optional) {
                (Ok(_), _) => kinds.push((target, "kprobe")),
                (Err(e), Some(missing)) => {
                    tracing::warn!("{}; left out: {missing}", error_chain(&e));
                    kinds.push((target, "none"));
                }
                (Err(e), None) => return Err(e),
            }
            mark(target, &mut phases);
        }
        let tp: &mut TracePoint = ebpf
            .program_mut(TP_PROGRAM)
            .ok_or(ProbeError::NoProgram { name: TP_PROGRAM })?
            .try_into()
            .map_err(|source| ProbeError::Load {
                program: TP_PROGRAM,
                source,
            })?;
        tp.attach("skb", "kfree_skb")
            .map_err(|source| ProbeError::Attach {
                program: TP_PROGRAM,
                target: "skb:kfree_skb",
                source,
            })?;
        mark("skb:kfree_skb", &mut phases);

        let events = if opts.events {
            let map = ebpf
                .take_map(MAP_EVENTS)
                .ok_or(ProbeError::NoMap { name: MAP_EVENTS })?;
            let ring = RingBuf::try_from(map).map_err(|source| ProbeError::Map {
                name: MAP_EVENTS,
                source,
            })?;
            Some(EventReader::new(ring))
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
            fentries,
            hook_kinds: kinds,
            ebpf,
            cost_stats,
            attach_time: start.elapsed(),
            phases,
        })
    }

    /// How each hooked openvswitch function is probed: (function, "fentry" | "kprobe" |
    /// "none": an optional hook that attached neither way).
    pub fn hook_kinds(&self) -> &[(&'static str, &'static str)] {
        &self.hook_kinds
    }

    /// From the start of [`Probes::attach`] to the last probe attached.
    pub fn attach_time(&self) -> Duration {
        self.attach_time
    }

    /// Where the attach time went: checks, offsets (BTF + tracefs), aya's own parse of the
    /// kernel BTF, object load (maps), then each program's load+verify and attach.
    pub fn attach_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
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
        for (function, f) in &self.fentries {
            let (runs, time) = f.cost().map_err(|source| ProbeError::CostStats {
                source: aya::sys::SyscallError {
                    call: "bpf_obj_get_info_by_fd",
                    io_error: source,
                },
            })?;
            out.push(ProgramCost {
                name: format!("fentry:{function}"),
                runs,
                time,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Per-UFID aggregates, summed over CPUs.
    pub fn flow_stats(&self) -> Result<Vec<([u32; 4], FlowStats)>, ProbeError> {
        let err = |source| ProbeError::Map {
            name: MAP_FLOW_STATS,
            source,
        };
        let map = self.ebpf.map(MAP_FLOW_STATS).ok_or(ProbeError::NoMap {
            name: MAP_FLOW_STATS,
        })?;
        let map: PerCpuHashMap<&MapData, FlowKey, FlowStats> =
            PerCpuHashMap::try_from(map).map_err(err)?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, per_cpu) = item.map_err(err)?;
            out.push((key.ufid, sum_stats(per_cpu.iter())));
        }
        Ok(out)
    }

    /// `Counter` values, summed over CPUs, indexed by `Counter as usize`.
    pub fn counters(&self) -> Result<[u64; COUNTER_SLOTS as usize], ProbeError> {
        let err = |source| ProbeError::Map {
            name: MAP_COUNTERS,
            source,
        };
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(ProbeError::NoMap { name: MAP_COUNTERS })?;
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(err)?;
        let mut out = [0u64; COUNTER_SLOTS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0).map_err(err)?.iter().sum();
        }
        Ok(out)
    }

    /// The event stream, once; None when the probes were attached without `events`.
    pub fn take_events(&mut self) -> Option<EventReader> {
        self.events.take()
    }
}

/// Loads (the kernel verifies) one of the programs [`Probes::attach`] attaches.
/// An error and its sources, for a warning that goes on without them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn load_program(name: &'static str, prog: &mut Program) -> Result<(), ProbeError> {
    let err = |source| ProbeError::Load {
        program: name,
        source,
    };
    match prog {
        Program::KProbe(p) => p.load().map_err(err),
        Program::TracePoint(p) => p.load().map_err(err),
        _ => Err(err(ProgramError::UnexpectedProgramType)),
    }
}

/// Sums per-CPU FlowStats.
pub fn sum_stats<'a>(per_cpu: impl Iterator<Item = &'a FlowStats>) -> FlowStats {
    let mut t = FlowStats::default();
    for s in per_cpu {
        t.add(s);
    }
    t
}

/// Decodes one ring buffer record, or None (counted in `malformed`) when its size is wrong.
fn decode(bytes: &[u8], malformed: &mut u64) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        *malformed += 1;
        return None;
    }
    // SAFETY: exactly size_of::<Event>() readable bytes; Event is repr(C) with integer fields
    // only, so every bit pattern is a valid Event; read_unaligned makes no alignment assumption
    // about the ring buffer's memory.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

enum Ring {
    /// Not yet registered with tokio's reactor: that needs a runtime, and `attach` is sync.
    Idle(RingBuf<MapData>),
    Ready(AsyncFd<RingBuf<MapData>>),
    /// Only while switching from Idle to Ready (or after that failed).
    Gone,
}

/// Reads [`Event`]s from the EVENTS ring buffer.
pub struct EventReader {
    ring: Ring,
    malformed: u64,
}

impl EventReader {
    fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring: Ring::Idle(ring),
            malformed: 0,
        }
    }

    /// Records whose length was not `size_of::<Event>()` (skipped).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    fn drain(ring: &mut RingBuf<MapData>, malformed: &mut u64, out: &mut Vec<Event>) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item, malformed) {
                out.push(ev);
            }
            n += 1;
        }
        n
    }

    /// Appends what is in the ring buffer now, without waiting; returns the records read.
    pub fn try_read(&mut self, out: &mut Vec<Event>) -> usize {
        let malformed = &mut self.malformed;
        match &mut self.ring {
            Ring::Idle(r) => Self::drain(r, malformed, out),
            Ring::Ready(fd) => Self::drain(fd.get_mut(), malformed, out),
            Ring::Gone => 0,
        }
    }

    /// Waits until the ring buffer has records, then appends everything available to `out`.
    /// Must run inside a tokio runtime with its I/O and time drivers enabled.
    pub async fn read_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        if let Ring::Idle(_) = self.ring {
            let Ring::Idle(r) = std::mem::replace(&mut self.ring, Ring::Gone) else {
                unreachable!("checked just above")
            };
            if tokio::runtime::Handle::try_current().is_err() {
                self.ring = Ring::Idle(r);
                return Err(io::Error::other(
                    "EventReader::read_batch needs a tokio runtime",
                ));
            }
            // SAFETY: the RingBuf owns its map's file descriptor, which stays open and the same
            // for as long as the RingBuf lives, and the AsyncFd owns the RingBuf.
            let fd = unsafe { AsyncFd::register(r) }
                .map_err(|e| io::Error::other(format!("registering the ring buffer: {e}")))?;
            self.ring = Ring::Ready(fd);
        }
        let Ring::Ready(fd) = &mut self.ring else {
            return Err(io::Error::other(
                "the event ring buffer could not be registered",
            ));
        };
        loop {
            if Self::drain(fd.get_mut(), &mut self.malformed, out) > 0 {
                return Ok(());
            }
            // The probes wake us only once a batch is waiting; below that, records are picked
            // up when the poll interval ends.
            let Ok(guard) = tokio::time::timeout(EVENT_POLL, fd.readable_mut()).await else {
                continue;
            };
            let mut guard = guard?;
            if Self::drain(guard.get_inner_mut(), &mut self.malformed, out) > 0 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// The ring buffer's file descriptor (for callers with their own poll loop).
    pub fn raw_fd(&self) -> Option<i32> {
        match &self.ring {
            Ring::Idle(r) => Some(r.as_raw_fd()),
            Ring::Ready(fd) => Some(fd.as_raw_fd()),
            Ring::Gone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn filter_to_config() {
        let mut cfg = Config::default();
        Filter {
            host: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 4))),
            port: Some(9999),
            proto: Some(6),
            ..Filter::default()
        }
        .apply(&mut cfg)
        .expect("valid filter");
        assert_eq!(cfg.filter_flags, FILTER_HOST | FILTER_PORT | FILTER_PROTO);
        assert_eq!(&cfg.filter_src[..4], &[10, 244, 1, 4]);
        assert_eq!(&cfg.filter_src[4..], &[0; 12]);
        assert_eq!(cfg.filter_ip_version, 4);
        assert_eq!((cfg.filter_port, cfg.filter_proto), (9999, 6));
    }

    #[test]
    fn filter_rejects_nonsense() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let both = Filter {
            src: Some(v4),
            dst: Some(v6),
            ..Filter::default()
        };
        assert!(both.apply(&mut Config::default()).is_err());
        let src_host = Filter {
            src: Some(v4),
            host: Some(v4),
            ..Filter::default()
        };
        assert!(src_host.apply(&mut Config::default()).is_err());
    }

    #[test]
    fn decode_checks_the_size() {
        let mut malformed = 0;
        let ev = Event {
            kind: 3,
            reason: 0x30003,
            ..Event::default()
        };
        // SAFETY: Event is repr(C) plain data; viewing it as bytes is sound.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        assert_eq!(decode(bytes, &mut malformed), Some(ev));
        // One byte off the front: unaligned, still decoded by value.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(bytes);
        assert_eq!(decode(&shifted[1..], &mut malformed), Some(ev));
        assert_eq!(decode(&bytes[..50], &mut malformed), None);
        assert_eq!(malformed, 1);
    }
}
