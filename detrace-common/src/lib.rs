//! Wire contract between the eBPF probes (detrace-ebpf) and user space (detrace-user).
//!
//! Everything here is `#[repr(C)]` with fixed-width integers and explicit padding: the same bytes
//! are written by BPF programs and read by user space, so no bool/enum/Option crosses the boundary.
#![no_std]

/// Name of the per-CPU array map holding [`Counter`] slots.
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Index into [`MAP_COUNTERS`]: what a probe counted.
///
/// Carried as a plain `u32` so the kernel side never builds an enum from untrusted data; the user
/// side converts with `TryFrom`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// `ovs_dp_process_packet` entries: one per datapath pass (recirculations included).
    DatapathPass = 0,
    /// Probe-side errors (failed reads); reported, never silently ignored.
    ProbeError = 1,
}

/// Number of slots in [`MAP_COUNTERS`].
pub const COUNTER_SLOTS: u32 = 2;

impl TryFrom<u32> for CounterKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            0 => Ok(Self::DatapathPass),
            1 => Ok(Self::ProbeError),
            other => Err(other),
        }
    }
}

/// One per-CPU counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 8);

#[cfg(feature = "user")]
// SAFETY: Counter is repr(C), made only of u64, has no padding and every bit pattern is valid.
unsafe impl aya::Pod for Counter {}
