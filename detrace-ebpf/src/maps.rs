//! Maps shared by every probe, the load-time configuration, and the per-packet state.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use detrace_common::{
    AddrKey, COUNTER_SLOTS, Config, Counter, DROP_REASON_SLOTS, ExecStats, FILTER_ADDRS_MAX,
    FLOW_STATS_MAX_ENTRIES, FlowKey, FlowStats, PacketKey, REMOVED_STATS_MAX_ENTRIES, RemovedStats,
};

/// Load-time configuration: struct offsets from BTF, tracepoint offsets, filters, rate limit.
/// User space rewrites it with `EbpfLoader::override_global` before loading; read it only through
/// [`conf!`] (a volatile read), or LLVM would fold the all-zero initial value into the code.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    off_flow_ufid_len: 0,
    off_flow_ufid: 0,
    off_flow_key: 0,
    off_key_recirc_id: 0,
    off_key_in_port: 0,
    off_key_eth_type: 0,
    off_key_ip_proto: 0,
    off_key_ipv4_src: 0,
    off_key_ipv4_dst: 0,
    off_key_ipv6_src: 0,
    off_key_ipv6_dst: 0,
    off_key_tp_src: 0,
    off_key_tp_dst: 0,
    off_skb_len: 0,
    off_skb_data: 0,
    off_skb_head: 0,
    off_skb_network_header: 0,
    off_skb_transport_header: 0,
    off_vport_port_no: 0,
    off_upcall_cmd: 0,
    off_tp_kfree_skbaddr: 0,
    off_tp_kfree_reason: 0,
    events_enabled: 0,
    rate_limit: 0,
    filter_flags: 0,
    filter_src: [0; 16],
    filter_dst: [0; 16],
    filter_port: 0,
    filter_proto: 0,
    filter_ip_version: 0,
    filter_in_port: 0,
    off_flow_stats: 0,
    off_flow_sf_acts: 0,
    off_stats_packet_count: 0,
    off_acts_len: 0,
    off_acts_actions: 0,
    nr_cpus: 0,
    latency_sample: 0,
    matching_only: 0,
    no_drop_reasons: 0,
    flow_table: 0,
    noop: 0,
};

/// Reads one field of [`CONFIG`] the way the loader's rewrite stays visible.
macro_rules! conf {
    ($field:ident) => {
        // SAFETY: CONFIG is a plain static in .rodata; a volatile read of one of its fields is
        // an aligned read of initialised memory.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$field) }
    };
}
pub(crate) use conf;

/// The addresses of `--pod` / `--namespace` (FILTER_ADDRS), updated by user space as pods
/// come and go.
#[map(name = "FILTER_ADDRS")]
pub static FILTER_ADDRS: HashMap<AddrKey, u8> = HashMap::with_max_entries(FILTER_ADDRS_MAX, 0);

/// Per-CPU counters: counting in the kernel costs no event per packet.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Per-packet events; user space sets the size (`ring_bytes`) at load time.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-UFID aggregates, preallocated: on 6.1 inserts into the non-preallocated map failed
/// (2 to 12 per lab run; likely its per-CPU values' atomic per-CPU allocations, which fail
/// while the allocator has no populated pages: not traced), each a lost count. A FlowStats is 432 bytes per
/// CPU, so user space sizes the map to the host ([`detrace_common::flow_stats_entries`]).
#[map(name = "FLOW_STATS")]
pub static FLOW_STATS: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(FLOW_STATS_MAX_ENTRIES, 0);

/// The last stats of removed flows, by UFID (probes/removal.rs). Per CPU: RCU callbacks of
/// two CPUs may free flows of one UFID at once. Not preallocated (65536 entries): no insert
/// failure was seen on 6.1 or 6.12 (flows_removed and the kernel's counts agree in the lab).
#[map(name = "REMOVED_STATS")]
pub static REMOVED_STATS: PerCpuHashMap<FlowKey, RemovedStats> =
    PerCpuHashMap::with_max_entries(REMOVED_STATS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// OVS drops counted against no flow, by drop-reason slot (probes/drop.rs).
#[map(name = "OTHER_DROPS")]
pub static OTHER_DROPS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(DROP_REASON_SLOTS as u32, 0);

/// Packets executed by ovs-vswitchd with a flow's actions after the upcall that installed it,
/// per UFID and CPU. Touched only by the execute hook (process context, once per upcall) and
/// preallocated (16 bytes an entry per CPU): no allocation can fail there and no softirq
/// program contends for its buckets, unlike FLOW_STATS's.
#[map(name = "EXEC_STATS")]
pub static EXEC_STATS: PerCpuHashMap<FlowKey, ExecStats> =
    PerCpuHashMap::with_max_entries(FLOW_STATS_MAX_ENTRIES, 0);

/// An all-zero FlowStats to insert from: a FlowStats does not fit on the 512-byte BPF stack
/// next to everything else.
#[map(name = "ZERO_STATS")]
pub static ZERO_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(1, 0);

/// What the probes remember about a packet between its datapath passes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    /// The skb this slot belongs to (0: free). A slot belongs to one skb at a time.
    pub skb: u64,
    /// The packet's identity in events: the skb address at its first pass (a clone made for a
    /// recirculation inherits its parent's, see probes/datapath.rs).
    pub id: u64,
    /// bpf_ktime_get_ns() at the packet's first pass.
    pub first_ts: u64,
    /// At its latest pass: entries older than [`INFLIGHT_MAX_AGE_NS`] are stale.
    pub last_ts: u64,
    /// The last flow it hit (all zero before its first hit).
    pub ufid: [u32; 4],
    /// 1 when the packet matched the event filter on its first pass.
    pub matched: u32,
    pub in_port: u32,
    /// recirc_id of the latest pass.
    pub recirc_id: u32,
    /// 1 while the packet is one ovs-vswitchd executed after its upcall and no datapath pass
    /// of it was seen since: `ufid` is then the flow installed for it (probes/upcall.rs).
    pub after_upcall: u32,
    /// The packet as its first pass saw it (before NAT): its identity in Drop/Output events.
    pub key: PacketKey,
}

/// Slots of [`INFLIGHT`] per CPU (a power of two).
pub const INFLIGHT_SLOTS: u32 = 256;

/// Packets in the datapath right now, per CPU, in slots chosen by a hash of the skb address.
///
/// Per CPU because a packet's whole datapath journey runs on one CPU: ovs_vport_receive (or
/// the EXECUTE of an upcalled packet, with bottom halves off) runs its passes, recirculations
/// (deferred ones included) and outputs or drop synchronously, and BPF programs of these hooks
/// do not nest on a CPU (see [`crate::probes::packet::scratch_event`]). So the table needs no
/// lock and no allocation, and a lookup is an array
/// index: it used to be a shared LRU hash map, whose insert and delete per packet (bucket and
/// LRU-list locks) were most of the cost of counting.
///
/// Few packets are in flight on a CPU at once (one, plus clones awaiting deferred actions),
/// so 256 slots rarely collide. A packet that leaves by a path without a hook (conntrack
/// keeping it, ...) leaves its slot behind; the next packet hashed there takes it over. Taking
/// over a slot touched less than [`INFLIGHT_MAX_AGE_NS`] ago is counted
/// (`Counter::InflightReplaced`): its packet either left unseen or, rarely, is still in flight
/// and loses its tracking.
#[map(name = "INFLIGHT")]
pub static INFLIGHT: PerCpuArray<Inflight> = PerCpuArray::with_max_entries(INFLIGHT_SLOTS, 0);

/// A datapath pass lasts micro-seconds; an INFLIGHT entry not touched for this long belongs to
/// a packet that left unseen, whose skb address has since been reused.
pub const INFLIGHT_MAX_AGE_NS: u64 = 1_000_000_000;

/// This CPU's INFLIGHT slot for an skb address. skbs are slab objects (256-byte aligned in
/// practice): the multiplicative hash spreads them over the slots.
#[inline(always)]
fn inflight_slot(skb: u64) -> Option<&'static mut Inflight> {
    let i = ((skb >> 6).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u32 & (INFLIGHT_SLOTS - 1);
    let p = INFLIGHT.get_ptr_mut(i)?;
    // SAFETY: this CPU's value of a per-CPU array slot, valid for the program's run; programs
    // of these hooks do not nest on a CPU.
    Some(unsafe { &mut *p })
}

/// The in-flight entry of `skb` on this CPU, if it has one.
#[inline(always)]
pub fn inflight_get(skb: u64) -> Option<&'static mut Inflight> {
    if skb == 0 {
        return None;
    }
    let e = inflight_slot(skb)?;
    if e.skb == skb { Some(e) } else { None }
}

/// The slot a new entry of `skb` goes to, taken from whichever packet held it (counted when
/// that packet was seen less than [`INFLIGHT_MAX_AGE_NS`] before `ts`). The caller fills it
/// and sets `skb` last.
#[inline(always)]
pub fn inflight_claim(skb: u64, ts: u64) -> Option<&'static mut Inflight> {
    let e = inflight_slot(skb)?;
    if e.skb != 0 && e.skb != skb && ts.wrapping_sub(e.last_ts) < INFLIGHT_MAX_AGE_NS {
        bump(Counter::InflightReplaced);
    }
    e.skb = 0;
    Some(e)
}

/// A flow just installed by a thread (probes/upcall.rs): what that thread's next packet
/// execute takes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Put {
    pub ufid: [u32; 4],
    pub recirc_id: u32,
    pub in_port: u32,
    pub ts: u64,
    /// The flow's drop slot on a kernel without drop reasons (`Config::no_drop_reasons`), 0
    /// otherwise or when its actions do not drop.
    pub drop_slot: u32,
    pub _pad: u32,
}

/// Installs not yet taken by an execute, by thread (`bpf_get_current_pid_tgid`). LRU: a thread
/// that installs flows without executing packets (a `dpctl/add-flow`) leaves an entry behind,
/// which ages out of the map and is refused by age anyway ([`PUT_MAX_AGE_NS`]).
#[map(name = "PUTS")]
pub static PUTS: LruHashMap<u64, Put> = LruHashMap::with_max_entries(1024, 0);

/// ovs-vswitchd sends an upcall's put and its execute in one netlink batch
/// (ofproto-dpif-upcall.c handle_upcalls): an install older than this was not followed by its
/// packet's execute.
pub const PUT_MAX_AGE_NS: u64 = 1_000_000_000;

/// The pass running on this CPU: set at each flow hit (`ovs_flow_stats_update`, before the
/// flow's actions run), read by the first pass of a recirculated clone (its parent) and by
/// outputs of clones (an skb the datapath cloned for a non-last output action is not in
/// INFLIGHT).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Current {
    pub skb: u64,
}

#[map(name = "CURRENT")]
pub static CURRENT: PerCpuArray<Current> = PerCpuArray::with_max_entries(1, 0);

/// `--latency-sample`: packets since the last one followed, per CPU (probes/datapath.rs).
#[map(name = "SAMPLE_TICK")]
pub static SAMPLE_TICK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space: an Event and an Inflight are built here, not on the 512-byte stack.
#[map(name = "SCRATCH_EVENT")]
pub static SCRATCH_EVENT: PerCpuArray<detrace_common::Event> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "SCRATCH_INFLIGHT")]
pub static SCRATCH_INFLIGHT: PerCpuArray<Inflight> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU rate-limit window for events.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rate {
    pub window_start: u64,
    pub sent: u64,
}

#[map(name = "RATE")]
pub static RATE: PerCpuArray<Rate> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn bump(kind: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(kind as u32) {
        // SAFETY: the pointer comes from the map lookup for this CPU's slot, which is valid
        // for the duration of the program and not shared with other CPUs.
        unsafe { *slot += 1 };
    }
}
