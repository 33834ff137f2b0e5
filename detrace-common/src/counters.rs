//! The probes' counters: what each slot of [`crate::MAP_COUNTERS`] counts, its wire name and
//! what it means. User space iterates [`COUNTERS`] and never lists the counters again.

/// What a probe counted (index into [`crate::MAP_COUNTERS`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Datapath passes (recirculations included): flow hits plus miss upcalls (every pass
    /// either hits a flow or misses; `ovs_dp_process_packet` itself has no probe).
    Passes = 0,
    /// Flow table hits (`ovs_flow_stats_update`).
    Hits = 1,
    /// Upcalls (`ovs_dp_upcall`), misses and userspace actions alike.
    Upcalls = 2,
    /// Packets that ended in a drop (skb:kfree_skb on a packet seen by the datapath).
    Drops = 3,
    /// Packets sent to a vport (`ovs_vport_send`).
    Outputs = 4,
    /// Events written to the ring buffer.
    EventsSent = 5,
    /// Events lost because the ring buffer was full.
    EventsLost = 6,
    /// Events not sent because of the rate limit.
    EventsRateLimited = 7,
    /// Probe-side errors (failed kernel reads): reported, never silently ignored.
    ProbeErrors = 8,
    /// Per-flow stats not recorded because FLOW_STATS was full.
    FlowStatsFull = 9,
    /// In-flight slots taken over from a packet seen less than a second before (per-CPU
    /// table, slots by skb address): that packet had left by a path without a hook (e.g.
    /// kept by conntrack), or, rarely, was still in flight and lost its tracking.
    InflightReplaced = 10,
    /// Flows installed (`ovs_flow_tbl_insert`, from OVS_FLOW_CMD_NEW): each is remembered for
    /// its thread until that thread's next packet execute.
    FlowInserts = 11,
    /// Packets executed by ovs-vswitchd (OVS_PACKET_CMD_EXECUTE, seen at
    /// `ovs_flow_key_extract_userspace`): an upcalled packet sent back with its actions.
    Executes = 12,
    /// Executes that followed no flow install on their thread (the flow already existed, was
    /// modified rather than created, or its install failed): their packet has no UFID to
    /// count against and is not followed.
    ExecutesWithoutPut = 13,
    /// Drops of executed packets (a subset of `Drops`), counted against the flow installed
    /// for them.
    DropsAfterUpcall = 14,
    /// Datapath flows freed (or their stats cleared) whose last stats were caught
    /// (REMOVED_STATS): once per flow removal, never per packet.
    FlowsRemoved = 15,
    /// Removed flows' stats not recorded because REMOVED_STATS was full.
    RemovedStatsFull = 16,
    /// OVS drops counted against no flow (OTHER_DROPS): conntrack, meters, TTL, errors.
    DropsNoFlow = 17,
    /// Not counted by the probes: user space puts the `--latency-sample` rate here (0: not
    /// sampling), so that every report says how latency was measured.
    LatencySample = 18,
    /// Not counted by the probes: user space puts here the upcalls the datapath lost since
    /// detrace started (`lookups: lost` of `ovs-dpctl show`, read over netlink): packets the
    /// kernel dropped because ovs-vswitchd did not take them.
    DatapathLost = 19,
    /// Not counted by the probes: flows user space retired from its accounts (gone from the
    /// kernel's table for `--retire-after`; their counts stay in the objects' totals).
    FlowsRetired = 20,
    /// Not counted by the probes: flows user space saw change their actions in place (an
    /// ovs-vswitchd revalidator's modify: same UFID): their counts before and after are
    /// attributed apart, each with the explanation of its actions.
    FlowsChanged = 21,
}

/// Every [`Counter`] with its wire name (the key in `detrace probes --attach` JSON, in the
/// LossReport of recordings) and what it counts, in slot order: user space iterates this table
/// and never lists the counters again.
pub const COUNTERS: [CounterInfo; 22] = [
    CounterInfo::new(
        Counter::Passes,
        "passes",
        "datapath passes (flow hits + miss upcalls)",
    ),
    CounterInfo::new(Counter::Hits, "hits", "flow table hits"),
    CounterInfo::new(Counter::Upcalls, "upcalls", "upcalls to ovs-vswitchd"),
    CounterInfo::new(Counter::Drops, "drops", "packets dropped"),
    CounterInfo::new(Counter::Outputs, "outputs", "packets sent to a port"),
    CounterInfo::new(
        Counter::EventsSent,
        "events_sent",
        "events written to the ring buffer",
    ),
    CounterInfo::new(
        Counter::EventsLost,
        "events_lost",
        "events lost: ring buffer full",
    ),
    CounterInfo::new(
        Counter::EventsRateLimited,
        "events_rate_limited",
        "events not sent: over the rate limit",
    ),
    CounterInfo::new(Counter::ProbeErrors, "probe_errors", "failed kernel reads"),
    CounterInfo::new(
        Counter::FlowStatsFull,
        "flow_stats_full",
        "flow updates not counted: FLOW_STATS full",
    ),
    CounterInfo::new(
        Counter::InflightReplaced,
        "inflight_replaced",
        "in-flight slots taken over by a later packet",
    ),
    CounterInfo::new(Counter::FlowInserts, "flow_inserts", "flows installed"),
    CounterInfo::new(
        Counter::Executes,
        "executes",
        "packets executed by ovs-vswitchd",
    ),
    CounterInfo::new(
        Counter::ExecutesWithoutPut,
        "executes_without_put",
        "executes with no flow install before them (not followed)",
    ),
    CounterInfo::new(
        Counter::DropsAfterUpcall,
        "drops_after_upcall",
        "drops of packets executed after their upcall",
    ),
    CounterInfo::new(
        Counter::FlowsRemoved,
        "flows_removed",
        "datapath flows removed, their last stats caught",
    ),
    CounterInfo::new(
        Counter::RemovedStatsFull,
        "removed_stats_full",
        "removed flows not recorded: REMOVED_STATS full",
    ),
    CounterInfo::new(
        Counter::DropsNoFlow,
        "drops_no_flow",
        "OVS drops counted against no flow (not a flow's drop action)",
    ),
    CounterInfo::new(
        Counter::LatencySample,
        "latency_sample",
        "latency measured on 1 packet in this many (0: every packet, or none)",
    ),
    CounterInfo::new(
        Counter::DatapathLost,
        "datapath_upcalls_lost",
        "upcalls the datapath lost while detrace ran (ovs-dpctl show: lookups lost)",
    ),
    CounterInfo::new(
        Counter::FlowsRetired,
        "flows_retired",
        "flows gone from the kernel's table long enough to be forgotten (counts kept in totals)",
    ),
    CounterInfo::new(
        Counter::FlowsChanged,
        "flows_changed",
        "flows whose actions changed in place (counted apart before and after)",
    ),
];

/// Slots of [`crate::MAP_COUNTERS`].
pub const COUNTER_SLOTS: u32 = COUNTERS.len() as u32;

/// One row of [`COUNTERS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterInfo {
    pub counter: Counter,
    /// Wire name (JSON key, recordings).
    pub name: &'static str,
    pub description: &'static str,
}

impl CounterInfo {
    const fn new(counter: Counter, name: &'static str, description: &'static str) -> Self {
        Self {
            counter,
            name,
            description,
        }
    }
}

// Row i of the table is the counter of slot i.
const _: () = {
    let mut i = 0;
    while i < COUNTERS.len() {
        assert!(COUNTERS[i].counter as usize == i);
        i += 1;
    }
};

impl TryFrom<u32> for Counter {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        COUNTERS.get(v as usize).map(|c| c.counter).ok_or(v)
    }
}
