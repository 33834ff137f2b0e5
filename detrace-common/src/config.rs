//! The probes' load-time configuration: struct offsets, filters, modes.

use core::mem::size_of;

/// Filter slots of [`Config::filter_flags`]: which filters are active.
pub const FILTER_SRC: u32 = 1 << 0;
pub const FILTER_DST: u32 = 1 << 1;
/// Either port equals `filter_port`.
pub const FILTER_PORT: u32 = 1 << 2;
pub const FILTER_PROTO: u32 = 1 << 3;
pub const FILTER_IN_PORT: u32 = 1 << 4;
/// Either address equals `filter_src` (with `FILTER_HOST`, `filter_src` is "any address").
pub const FILTER_HOST: u32 = 1 << 5;
/// Either address is in the [`MAP_FILTER_ADDRS`] set (a pod's or a namespace's addresses,
/// kept current by user space while pods come and go).
pub const FILTER_ADDRS: u32 = 1 << 6;

/// The set of addresses of `FILTER_ADDRS` (hash map [`AddrKey`] -> u8).
pub const MAP_FILTER_ADDRS: &str = "FILTER_ADDRS";
/// At most this many addresses in the set.
pub const FILTER_ADDRS_MAX: u32 = 8192;

/// An address of the `FILTER_ADDRS` set, as [`crate::PacketKey`] holds it, with its family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// 4 or 6.
    pub version: u32,
}
const _: () = assert!(size_of::<AddrKey>() == 20);

/// Load-time configuration (global [`crate::GLOBAL_CONFIG`], set with `EbpfLoader::set_global`).
///
/// rustc emits no CO-RE relocations and aya relocates against vmlinux BTF only, while the
/// structs we read live in the openvswitch module: user space reads their offsets from
/// /sys/kernel/btf/openvswitch (split BTF on vmlinux) and passes them here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// offsetof(struct sw_flow, id) + offsetof(struct sw_flow_id, ufid_len / ufid).
    pub off_flow_ufid_len: u32,
    pub off_flow_ufid: u32,
    /// offsetof(struct sw_flow, key): the flow's own (masked) key. Megaflows installed by OVS
    /// always match recirc_id and in_port exactly (ofproto-dpif-xlate.c xlate_wc_init), so the
    /// masked key holds the pass's real recirc_id and in_port.
    pub off_flow_key: u32,
    /// struct sw_flow_key members.
    pub off_key_recirc_id: u32,
    pub off_key_in_port: u32,
    pub off_key_eth_type: u32,
    pub off_key_ip_proto: u32,
    pub off_key_ipv4_src: u32,
    pub off_key_ipv4_dst: u32,
    pub off_key_ipv6_src: u32,
    pub off_key_ipv6_dst: u32,
    pub off_key_tp_src: u32,
    pub off_key_tp_dst: u32,
    /// struct sk_buff.len.
    pub off_skb_len: u32,
    /// struct sk_buff.data: where an executed packet's frame starts (its headers are not
    /// parsed yet when the probe sees it).
    pub off_skb_data: u32,
    /// struct sk_buff.head, .network_header and .transport_header (offsets from head): the
    /// packet's headers, where its real fields are read at each flow hit.
    pub off_skb_head: u32,
    pub off_skb_network_header: u32,
    pub off_skb_transport_header: u32,
    /// struct vport.port_no.
    pub off_vport_port_no: u32,
    /// struct dp_upcall_info.cmd.
    pub off_upcall_cmd: u32,
    /// Offsets in the skb:kfree_skb tracepoint record (from its tracefs format file).
    pub off_tp_kfree_skbaddr: u32,
    pub off_tp_kfree_reason: u32,
    /// 1: write per-packet events to the ring buffer.
    pub events_enabled: u32,
    /// Max events per second per CPU (0: unlimited).
    pub rate_limit: u32,
    pub filter_flags: u32,
    pub filter_src: [u8; 16],
    pub filter_dst: [u8; 16],
    pub filter_port: u16,
    pub filter_proto: u8,
    /// 4 or 6: the family of filter_src/filter_dst.
    pub filter_ip_version: u8,
    pub filter_in_port: u32,
    /// struct sw_flow: rcu (must be 0: the RCU callback gets &flow->rcu), stats (the per-CPU
    /// `struct sw_flow_stats *` array, nr_cpu_ids entries), sf_acts.
    pub off_flow_stats: u32,
    pub off_flow_sf_acts: u32,
    /// struct sw_flow_stats.packet_count (byte_count follows it).
    pub off_stats_packet_count: u32,
    /// struct sw_flow_actions.actions_len and .actions (the first nlattr).
    pub off_acts_len: u32,
    pub off_acts_actions: u32,
    /// Possible CPUs (the length of sw_flow.stats).
    pub nr_cpus: u32,
    /// Follow 1 packet in this many, decided at its first pass (0: every packet). Counts
    /// then come from the kernel's flow table, the probes give latency only.
    pub latency_sample: u32,
    /// 1: follow only the packets that match the event filter (decided at their first pass):
    /// the others cost one early return per hook, and the per-flow counts are of the packets
    /// followed (watch, record).
    pub matching_only: u32,
    /// 1: this kernel has no OVS drop reasons (before 6.4): a packet whose flow's actions send
    /// it nowhere is consumed, not dropped, so the probes decide its drop at the flow hit (and
    /// for an executed packet, from the flow installed for it) with reason
    /// [`crate::DROP_NO_ACTIONS`].
    pub no_drop_reasons: u32,
    /// 1: counts come from the kernel's flow table (user space adds EXEC_STATS and derives a
    /// dropping flow's drops from its actions): the execute and install hooks, which run in
    /// ovs-vswitchd's process context, then write no FLOW_STATS entry (an insert there can
    /// fail on a non-preallocated map, seen on 6.1, and would count nothing anyone reads).
    pub flow_table: u32,
    /// 1: every datapath hook's program returns at once, before reading anything (benchmarks
    /// only: the cost of the hooks themselves, the floor a program at them can reach; nothing
    /// is counted).
    pub noop: u32,
}
const _: () = assert!(size_of::<Config>() == 4 * 25 + 32 + 4 + 4 + 4 * 11);
