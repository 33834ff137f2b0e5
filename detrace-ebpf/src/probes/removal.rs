//! A datapath flow's last stats, caught once when the flow goes (never per packet), so that
//! counts read from the kernel's flow table (user space dumps it every interval) stay exact
//! across flows deleted between two reads.
//!
//! net/openvswitch/flow_table.c: every flow removed from the table, one by one
//! (ovs_flow_cmd_del -> ovs_flow_tbl_remove, the revalidators' deletes) or all at once
//! (`ovs-dpctl del-flows` -> ovs_flow_tbl_flush -> table_instance_flow_flush), is freed by
//! `ovs_flow_free(flow, true)`, which defers the free to the RCU callback
//! `rcu_free_flow_callback(&flow->rcu)` -> flow_free. That callback runs after every packet that
//! could still see the flow has finished updating its stats: hooked there, the stats read are
//! final. (`ovs_flow_free` itself may be inlined into the flush loop; the callback cannot be,
//! its address is taken.) Flows freed without the RCU deferral never were in the table (error
//! paths of OVS_FLOW_CMD_NEW): they have no packets.
//!
//! `ovs_flow_stats_clear(flow)` (OVS_FLOW_ATTR_CLEAR, e.g. `dpctl/mod-flow --clear`) zeroes a
//! live flow's stats: the same catch, so what it had is kept.
//!
//! The stats are per CPU (`flow->stats[cpu]`, NULL for CPUs that never counted; flow.c
//! ovs_flow_stats_update): summed here over the possible CPUs.

use aya_ebpf::bindings::BPF_NOEXIST;
use detrace_common::{Counter, DropScan, FlowKey, RemovedStats, kernel_drop_slot};

use super::packet::read;
use crate::maps::{REMOVED_STATS, bump, conf};

/// CPUs whose stats are read: sw_flow.stats has nr_cpu_ids entries; beyond this many, the rest
/// are not read (counted as a probe error once per removal).
const MAX_CPUS: u32 = 128;

hook! {
    /// `static void rcu_free_flow_callback(struct rcu_head *rcu)` (flow_table.c): `rcu` is
    /// `&flow->rcu`, at offset 0 of struct sw_flow (the loader checks).
    kprobe rcu_free_flow_callback, fentry fentry_flow_free_rcu on "rcu_free_flow_callback",
    args(flow = 0) => flow_gone
}

hook! {
    /// `void ovs_flow_stats_clear(struct sw_flow *flow)` (flow.c).
    kprobe ovs_flow_stats_clear, fentry fentry_stats_clear on "ovs_flow_stats_clear",
    args(flow = 0) => flow_gone
}

#[inline(always)]
fn flow_gone(flow: u64) -> Result<u32, u32> {
    // ufid_len and the ufid in one read, as at a flow hit (probes/datapath.rs).
    let id: [u32; 6] = read(flow, conf!(off_flow_ufid_len))?;
    if id[0] == 0 {
        return Ok(0);
    }
    let ufid = if conf!(off_flow_ufid) - conf!(off_flow_ufid_len) == 4 {
        [id[1], id[2], id[3], id[4]]
    } else {
        [id[2], id[3], id[4], id[5]]
    };
    let (packets, bytes) = flow_stats(flow)?;
    let drop_slot = flow_drop_slot(flow).unwrap_or(0);
    bump(Counter::FlowsRemoved);
    let key = FlowKey { ufid };
    let s = match REMOVED_STATS.get_ptr_mut(key) {
        Some(s) => s,
        None => {
            let zero = RemovedStats::default();
            // -EEXIST (raced by this UFID on this CPU: impossible, programs do not nest) or a
            // full map.
            if REMOVED_STATS
                .insert(key, zero, u64::from(BPF_NOEXIST))
                .is_err()
            {
                bump(Counter::RemovedStatsFull);
                return Ok(0);
            }
            REMOVED_STATS.get_ptr_mut(key).ok_or(0u32)?
        }
    };
    // SAFETY: this CPU's value of a per-CPU hash entry, valid for the program's run.
    let s = unsafe { &mut *s };
    s.packets += packets;
    s.bytes += bytes;
    s.removals += 1;
    s.drop_slot = drop_slot;
    Ok(0)
}

/// packets and bytes of a flow, summed over its per-CPU stats.
#[inline(always)]
fn flow_stats(flow: u64) -> Result<(u64, u64), u32> {
    let n = conf!(nr_cpus);
    let base = flow + u64::from(conf!(off_flow_stats));
    let off = conf!(off_stats_packet_count);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut cpu = 0u32;
    while cpu < MAX_CPUS && cpu < n {
        let p: u64 = read(base, cpu * 8)?;
        if p != 0 {
            let c: [u64; 2] = read(p, off)?;
            packets += c[0];
            bytes += c[1];
        }
        cpu += 1;
    }
    if n > MAX_CPUS {
        bump(Counter::ProbeErrors);
    }
    Ok((packets, bytes))
}

/// Actions walked at most: OVN's drop flows have one or two (`drop`, `ct_clear,drop`).
const MAX_ACTIONS: u32 = 16;

/// The drop-reason slot of the flow's drop on this kernel (0: its actions do not drop; see
/// [`kernel_drop_slot`]).
#[inline(always)]
pub(super) fn flow_drop_slot(flow: u64) -> Result<u32, u32> {
    Ok(kernel_drop_slot(
        drop_slot(flow)?,
        conf!(no_drop_reasons) != 0,
    ))
}

/// The length of the flow's action list in bytes (0: no actions at all).
#[inline(always)]
pub(super) fn actions_len(flow: u64) -> Result<u32, u32> {
    let acts: u64 = read(flow, conf!(off_flow_sf_acts))?;
    if acts == 0 {
        return Ok(0);
    }
    read(acts, conf!(off_acts_len))
}

/// The drop-reason slot of the flow's drop (0: its actions do not drop), walking its top-level
/// actions as user space does ([`DropScan`]). A list longer than [`MAX_ACTIONS`] does not drop.
#[inline(always)]
fn drop_slot(flow: u64) -> Result<u32, u32> {
    let acts: u64 = read(flow, conf!(off_flow_sf_acts))?;
    if acts == 0 {
        return Ok(0);
    }
    let len: u32 = read(acts, conf!(off_acts_len))?;
    let base = acts + u64::from(conf!(off_acts_actions));
    let mut scan = DropScan::default();
    let (mut off, mut i) = (0u32, 0u32);
    while i < MAX_ACTIONS && off + 4 <= len {
        // struct nlattr { u16 nla_len; u16 nla_type; } and the payload's first 4 bytes (the
        // error code of OVS_ACTION_ATTR_DROP).
        let a: [u8; 8] = read(base, off)?;
        let nla_len = u32::from(u16::from_ne_bytes([a[0], a[1]]));
        if nla_len < 4 {
            return Ok(0);
        }
        let arg = if nla_len >= 8 {
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]])
        } else {
            0
        };
        scan.push(u16::from_ne_bytes([a[2], a[3]]), arg);
        off += (nla_len + 3) & !3;
        i += 1;
    }
    if off < len {
        return Ok(0);
    }
    Ok(scan.slot())
}
