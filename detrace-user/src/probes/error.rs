//! What can go wrong attaching the probes: [`ProbeError`] for the whole attach (each says what
//! to run or which kernel option is missing), [`FentryError`] for one hook's fentry program,
//! after which that hook falls back to its kprobe.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};

use super::btf::BtfError;

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
        "tracefs is not mounted at {path} and mounting it failed; mount it with \
         `mount -t tracefs nodev {path}`"
    )]
    Tracefs {
        path: &'static str,
        source: io::Error,
    },
    #[error("reading the skb:kfree_skb tracepoint format {path} (is tracefs mounted?)")]
    TracepointFormat { path: PathBuf, source: io::Error },
    #[error("{path} has no field `{field}` (drop reasons need Linux >= 5.17)")]
    TracepointField { path: PathBuf, field: &'static str },
    #[error(
        "this kernel has no kprobes (neither the kprobe PMU nor {}/kprobe_events: \
         CONFIG_KPROBES / CONFIG_KPROBE_EVENTS off?)",
        tracefs.display()
    )]
    NoKprobes { tracefs: PathBuf },
    #[error(
        "kernel function {symbol} is not in /proc/kallsyms: this openvswitch module does not \
         have it (renamed or inlined in this kernel version?)"
    )]
    SymbolMissing { symbol: &'static str },
    #[error("loading the eBPF object")]
    Object { source: aya::EbpfError },
    #[error(
        "this kernel cannot create a BPF ring buffer (BPF_MAP_TYPE_RINGBUF: Linux >= 5.8, or a \
         vendor kernel that backports it), which detrace's events need"
    )]
    NoRingBuf { source: aya::EbpfError },
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

impl ProbeError {
    /// Loading the object failed: the ring buffer's creation failing with EINVAL means the
    /// kernel does not know the map type (before 5.8); other failures as they are.
    pub fn object(source: aya::EbpfError) -> Self {
        match &source {
            aya::EbpfError::MapError(MapError::CreateError { name, io_error })
                if name == detrace_common::MAP_EVENTS
                    && io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                Self::NoRingBuf { source }
            }
            _ => Self::Object { source },
        }
    }
}

/// Why a hook's fentry program did not attach (the hook then uses its kprobe).
#[derive(Debug, thiserror::Error)]
pub enum FentryError {
    #[error("no BTF object named {name} is loaded")]
    NoModuleBtf { name: &'static str },
    #[error("finding the {name} module's BTF object ({call})")]
    ModuleBtf {
        name: &'static str,
        call: &'static str,
        source: io::Error,
    },
    #[error("parsing the embedded eBPF object")]
    Parse { source: aya_obj::ParseError },
    #[error("map {name}: unexpected type")]
    MapType { name: String },
    #[error("relocating the programs' map references")]
    RelocateMaps {
        source: aya_obj::relocation::EbpfRelocationError,
    },
    #[error("relocating the programs' calls")]
    RelocateCalls {
        source: aya_obj::relocation::EbpfRelocationError,
    },
    #[error("no program {name} in the object")]
    NoProgram { name: &'static str },
    #[error("no code for program {name}")]
    NoCode { name: &'static str },
    #[error("{function} is not in the module's BTF")]
    NotInBtf { function: &'static str },
    #[error("the thread loading it panicked")]
    Panicked,
    /// The verifier's log is read on a second load, for the message: its last lines, and the
    /// first line that reads like a complaint.
    #[error(
        "BPF_PROG_LOAD refused it (again with the verifier's log: {again}, {lines} lines; \
         first complaint: {complaint}; last: {tail})"
    )]
    Load {
        source: io::Error,
        again: String,
        lines: usize,
        complaint: String,
        tail: String,
    },
    #[error("attaching (BPF_RAW_TRACEPOINT_OPEN)")]
    Attach { source: io::Error },
}
