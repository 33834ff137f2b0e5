//! Wire contract between the eBPF probes (detrace-ebpf) and user space (detrace-user).
//!
//! Everything here is `#[repr(C)]` with fixed-width integers and explicit padding: the same bytes
//! are written by BPF programs and read by user space, so no bool/enum/Option crosses the boundary
//! (kinds travel as `u32` and are converted with `TryFrom` on the user side).
#![no_std]

use core::mem::size_of;

mod config;
mod counters;
mod removal;
pub use config::{
    AddrKey, Config, FILTER_ADDRS, FILTER_ADDRS_MAX, FILTER_DST, FILTER_HOST, FILTER_IN_PORT,
    FILTER_PORT, FILTER_PROTO, FILTER_SRC, MAP_FILTER_ADDRS,
};
pub use counters::{COUNTER_SLOTS, COUNTERS, Counter, CounterInfo};
pub use removal::{
    DropScan, OVS_ACTION_ATTR_DROP, RemovedStats, is_action_drop_slot, kernel_drop_slot,
};

/// Ring buffer of [`Event`]s (only filled when per-packet events are asked for: `watch`, `record`).
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU hash of [`FlowKey`] -> [`FlowStats`]: aggregation in the kernel, no event per packet.
pub const MAP_FLOW_STATS: &str = "FLOW_STATS";
/// Per-CPU array of `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the load-time configuration global ([`Config`]).
pub const GLOBAL_CONFIG: &str = "CONFIG";

pub const FLOW_STATS_MAX_ENTRIES: u32 = 16384;

/// Memory [`MAP_FLOW_STATS`] may preallocate, over every CPU.
pub const FLOW_STATS_BUDGET_BYTES: u64 = 64 << 20;

/// [`MAP_FLOW_STATS`]'s entries on a host with `nr_cpus` possible CPUs: as many as
/// [`FLOW_STATS_BUDGET_BYTES`] holds (a value per CPU each), at most
/// [`FLOW_STATS_MAX_ENTRIES`], at least 256 (a full map is counted, `FlowStatsFull`).
pub const fn flow_stats_entries(nr_cpus: u32) -> u32 {
    let per_entry =
        (size_of::<FlowStats>() as u64) * (if nr_cpus == 0 { 1 } else { nr_cpus } as u64);
    let n = FLOW_STATS_BUDGET_BYTES / per_entry;
    if n > FLOW_STATS_MAX_ENTRIES as u64 {
        FLOW_STATS_MAX_ENTRIES
    } else if n < 256 {
        256
    } else {
        n as u32
    }
}
/// Per-CPU hash of [`FlowKey`] -> [`RemovedStats`]: the last stats of every datapath flow freed
/// (or whose stats were cleared) since the probes were attached, by UFID.
pub const MAP_REMOVED_STATS: &str = "REMOVED_STATS";
pub const REMOVED_STATS_MAX_ENTRIES: u32 = 65536;
/// Per-CPU array of `u64`, one slot per [`DROP_REASON_SLOTS`]: OVS drops counted against no
/// flow (the skb was not followed, and the reason is not a flow's drop action).
pub const MAP_OTHER_DROPS: &str = "OTHER_DROPS";

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A datapath pass hit a flow: `ufid` is set.
    Pass = 1,
    /// A pass missed (or a `userspace()` action ran): the packet went to ovs-vswitchd.
    /// `reason` holds the upcall command (OVS_PACKET_CMD_MISS = 1, _ACTION = 2).
    Upcall = 2,
    /// The packet was freed with a drop reason: `reason` holds it (`enum skb_drop_reason`,
    /// OVS's own are 0x30000 + n), `ufid` the last flow it hit.
    Drop = 3,
    /// The packet was sent to a vport: `reason` holds the datapath port number.
    Output = 4,
    /// ovs-vswitchd executes a packet after its upcall (a new skb): `ufid` is the flow it
    /// installed for it, whose actions the packet runs now without a lookup; the fields are the
    /// packet's as it went up. The packet's trip goes on under this skb.
    Execute = 5,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            1 => Self::Pass,
            2 => Self::Upcall,
            3 => Self::Drop,
            4 => Self::Output,
            5 => Self::Execute,
            other => return Err(other),
        })
    }
}

/// The packet's fields as the datapath parsed them (`struct sw_flow_key`), for one pass.
/// Addresses in network order (IPv4 in the first 4 bytes), ports and eth_type in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub eth_type: u16,
    pub proto: u8,
    /// 4, 6, or 0 when not IP.
    pub ip_version: u8,
}
const _: () = assert!(size_of::<PacketKey>() == 40);

/// One per-packet event (ring buffer [`MAP_EVENTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`EventKind`] as u32.
    pub kind: u32,
    pub cpu: u32,
    /// bpf_ktime_get_ns().
    pub ts_ns: u64,
    /// The sk_buff address: the packet's identity across its datapath passes.
    pub skb: u64,
    /// `sw_flow_id.ufid` words, host order (all zero when none).
    pub ufid: [u32; 4],
    pub recirc_id: u32,
    /// Datapath input port number.
    pub in_port: u32,
    /// Drop reason, output port, or upcall command (see [`EventKind`]).
    pub reason: u32,
    /// skb->len.
    pub len: u32,
    /// For Drop/Output/Upcall: nanoseconds since the packet's first pass (0 if unknown).
    pub latency_ns: u64,
    pub key: PacketKey,
    /// [`EVENT_AFTER_UPCALL`] and future marks.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Event>() == 112);

/// [`Event::flags`]: the packet is one ovs-vswitchd executed after its upcall
/// (OVS_PACKET_CMD_EXECUTE), with the actions of the flow it installed for it (`ufid`); no
/// datapath pass of it was seen since.
pub const EVENT_AFTER_UPCALL: u32 = 1 << 0;

/// [`Event::flags`], with [`EVENT_AFTER_UPCALL`], on a drop decided at a flow's install: on a
/// kernel without OVS drop reasons, a flow installed with no actions ends the packet whose
/// miss installed it (ovs-vswitchd executes nothing). The event carries the flow's UFID,
/// recirc_id and input port, and its masked key as `key` (wildcarded fields zero); `skb` is 0.
/// User space joins it to the trip that ended in that miss.
pub const EVENT_AT_INSTALL: u32 = 1 << 1;

/// Packets ovs-vswitchd executed with a flow's actions after the upcall that installed it
/// (hash map [`FlowKey`] -> [`ExecStats`]): the kernel's per-flow counters never see them.
pub const MAP_EXEC_STATS: &str = "EXEC_STATS";

/// [`MAP_EXEC_STATS`] values (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecStats {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-UFID flow identity ([`MAP_FLOW_STATS`] key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub ufid: [u32; 4],
}
const _: () = assert!(size_of::<FlowKey>() == 16);

/// Drop-reason slots per flow: slot n counts OVS's own reason 0x30000 + n (n < 15,
/// net/openvswitch/drop.h); slot 15 counts every other reason (core `enum skb_drop_reason`).
pub const DROP_REASON_SLOTS: usize = 16;
/// Latency histogram: bucket i counts packets whose datapath time t (ns) has
/// floor(log2(t)) == i (bucket 0 also holds t == 0); the last bucket is open-ended.
pub const LATENCY_BUCKETS: usize = 32;
/// OVS drop reasons live in subsystem 3: `SKB_DROP_REASON_SUBSYS_OPENVSWITCH << 16`.
pub const OVS_DROP_REASON_BASE: u32 = 0x30000;
/// Not a kernel reason: on kernels without OVS drop reasons (before 6.4) a packet whose flow's
/// actions send it nowhere is freed as consumed, not dropped; the probes then decide the drop
/// at the flow hit and give it this reason (slot 14, past OVS's own), named "no actions".
pub const DROP_NO_ACTIONS: u32 = OVS_DROP_REASON_BASE + 14;

/// Aggregates for one datapath flow, per CPU ([`MAP_FLOW_STATS`] value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowStats {
    /// Passes that hit this flow.
    pub packets: u64,
    pub bytes: u64,
    /// Packets whose last flow this was and that were dropped.
    pub drops: u64,
    /// Packets whose last flow this was and that were sent to a port.
    pub outputs: u64,
    pub drop_reasons: [u64; DROP_REASON_SLOTS],
    /// Datapath latency of packets that ended after this flow (see [`LATENCY_BUCKETS`]).
    pub latency: [u64; LATENCY_BUCKETS],
    pub latency_sum_ns: u64,
    /// Of `drops`: packets dropped after an upcall, while ovs-vswitchd executed them with the
    /// actions of this flow, installed for them (no flow table lookup: no pass counted).
    pub drops_after_upcall: u64,
}
const _: () = assert!(size_of::<FlowStats>() == 8 * (6 + DROP_REASON_SLOTS + LATENCY_BUCKETS));

impl Default for FlowStats {
    fn default() -> Self {
        Self {
            packets: 0,
            bytes: 0,
            drops: 0,
            outputs: 0,
            drop_reasons: [0; DROP_REASON_SLOTS],
            latency: [0; LATENCY_BUCKETS],
            latency_sum_ns: 0,
            drops_after_upcall: 0,
        }
    }
}

/// The [`FlowStats::latency`] bucket of a datapath time of `ns`: floor(log2(ns)), bucket 0 for
/// ns <= 1, the last bucket open-ended. Used by the probes and by user space alike.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let b = 63 - ns.leading_zeros() as usize;
    if b >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b
    }
}

/// The [`FlowStats::drop_reasons`] slot of a drop reason: net/openvswitch/drop.h, OVS's own
/// reasons are `SKB_DROP_REASON_SUBSYS_OPENVSWITCH << 16 | n` (slot n); the last slot takes
/// every other reason. Used by the probes and by user space alike.
#[inline(always)]
pub fn drop_reason_slot(reason: u32) -> usize {
    let n = reason.wrapping_sub(OVS_DROP_REASON_BASE) as usize;
    if n < DROP_REASON_SLOTS - 1 {
        n
    } else {
        DROP_REASON_SLOTS - 1
    }
}

impl FlowStats {
    /// Every counter of `self` and `other` combined by `f`: the one place that lists the
    /// fields for arithmetic.
    fn zip_with(&self, other: &Self, f: impl Fn(u64, u64) -> u64) -> Self {
        let mut out = Self {
            packets: f(self.packets, other.packets),
            bytes: f(self.bytes, other.bytes),
            drops: f(self.drops, other.drops),
            outputs: f(self.outputs, other.outputs),
            latency_sum_ns: f(self.latency_sum_ns, other.latency_sum_ns),
            drops_after_upcall: f(self.drops_after_upcall, other.drops_after_upcall),
            ..Self::default()
        };
        for (o, (a, b)) in out
            .drop_reasons
            .iter_mut()
            .zip(self.drop_reasons.iter().zip(&other.drop_reasons))
        {
            *o = f(*a, *b);
        }
        for (o, (a, b)) in out
            .latency
            .iter_mut()
            .zip(self.latency.iter().zip(&other.latency))
        {
            *o = f(*a, *b);
        }
        out
    }

    /// Adds `other` into `self` (per-CPU sums, per-object totals).
    pub fn add(&mut self, other: &Self) {
        *self = self.zip_with(other, |a, b| a + b);
    }

    /// `self - other`, saturating (a flow replaced in the kernel restarts its counters).
    pub fn saturating_sub(&self, other: &Self) -> Self {
        self.zip_with(other, u64::saturating_sub)
    }

    /// Each counter's larger value of the two.
    pub fn max(&self, other: &Self) -> Self {
        self.zip_with(other, u64::max)
    }
}

#[cfg(feature = "user")]
mod pod {
    // Each: repr(C), integer fields and arrays only, explicit padding, every bit pattern valid.
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RemovedStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FLOW_STATS is preallocated per CPU: its size follows the host, within the budget.
    #[test]
    fn flow_stats_entries_follow_the_cpus() {
        assert_eq!(flow_stats_entries(2), FLOW_STATS_MAX_ENTRIES);
        assert_eq!(flow_stats_entries(0), FLOW_STATS_MAX_ENTRIES);
        assert_eq!(flow_stats_entries(64), 2427);
        assert_eq!(flow_stats_entries(256), 606);
        assert_eq!(flow_stats_entries(4096), 256);
        for cpus in [1, 2, 8, 16, 64, 256] {
            let bytes = u64::from(flow_stats_entries(cpus)) * 432 * u64::from(cpus);
            assert!(
                bytes <= FLOW_STATS_BUDGET_BYTES,
                "{cpus} CPUs: {bytes} bytes"
            );
        }
    }
}
