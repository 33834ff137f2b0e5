//! After an upcall: the packet ovs-vswitchd sends back (OVS_PACKET_CMD_EXECUTE) is followed as
//! a packet of the flow it installed for it, so that its drop counts against that flow.
//!
//! A packet that misses the flow table ends its kernel pass at `ovs_dp_upcall` (probes/
//! datapath.rs). ovs-vswitchd translates it and, per upcall, sends in one netlink batch from the
//! same handler thread a put of the new flow (when it installs one) and then an execute of the
//! packet with the flow's actions (ofproto/ofproto-dpif-upcall.c handle_upcalls). In the kernel
//! (net/openvswitch/datapath.c):
//! - the put is ovs_flow_cmd_new -> `ovs_flow_tbl_insert(table, flow, mask)`, with the UFID in
//!   `flow->id` and the flow's masked key (exact recirc_id and in_port) in `flow->key`;
//! - the execute is ovs_packet_cmd_execute: a *new* skb with the packet's bytes, its key parsed
//!   from netlink by `ovs_flow_key_extract_userspace(net, attr, skb, key, log)` (called by
//!   nothing else), then ovs_execute_actions on a temporary flow (no lookup, no UFID, no
//!   ovs_flow_stats_update), where the kernel's explicit drop action frees the skb with
//!   OVS_DROP_EXPLICIT.
//!
//! So the install hook remembers, per thread, the UFID just installed ([`crate::maps::PUTS`]);
//! the execute hook takes (and removes) its thread's record and gives the new skb an INFLIGHT
//! entry with that UFID, marked `after_upcall`. From there the usual hooks take over: the drop
//! (skb:kfree_skb) or output counts against the UFID, marked; a recirculation of the executed
//! packet (after ct) is a flow hit that continues the entry as an ordinary pass (the mark is
//! cleared). The executed packet also counts as a packet of the installed flow (EXEC_STATS;
//! the kernel's per-flow counters never see it). An execute whose thread installed nothing just before (the flow existed, was
//! modified, or its install failed) takes no UFID: counted (`ExecutesWithoutPut`), not
//! followed, as before. Both hooks run once per upcall, never per datapath pass.
//!
//! On a kernel without OVS drop reasons (before 6.4; `Config::no_drop_reasons`) an OVN drop is
//! an empty action list, which ends as a consumed skb, not a drop: an executed packet whose
//! installed flow drops is counted as dropped at its execute, and a flow installed with no
//! actions at all (which ovs-vswitchd never executes a packet with) counts the packet that
//! missed into it as dropped at the install, and (when events are on) says so with an event
//! marked [`EVENT_AT_INSTALL`] that user space joins to the trip that ended in that miss.
//!
//! The execute hook runs in the handler thread's process context, before ovs_packet_cmd_execute
//! disables bottom halves for ovs_execute_actions: its INFLIGHT entry is on the CPU it ran on.
//! ovs_nla_copy_actions (a GFP_KERNEL allocation) runs in between; should the thread be
//! migrated there, the packet's end is seen on another CPU, where it has no entry, and is not
//! counted (as before this hook existed).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid};
use detrace_common::{
    Counter, DROP_NO_ACTIONS, EVENT_AFTER_UPCALL, EVENT_AT_INSTALL, EventKind, ExecStats, FlowKey,
    PacketKey,
};

use super::{
    packet::{
        End, count_end, cpu, emit, emit_end, events_enabled, matches, now, read, read_key, read_l4,
        read_pass, scratch_event,
    },
    removal::{actions_len, flow_drop_slot},
};
use crate::maps::{
    CURRENT, Current, EXEC_STATS, PUT_MAX_AGE_NS, PUTS, Put, bump, conf, inflight_claim,
};

hook! {
    /// `int ovs_flow_tbl_insert(struct flow_table *table, struct sw_flow *flow, const struct
    /// sw_flow_mask *mask)` (net/openvswitch/flow_table.c): a flow installed
    /// (OVS_FLOW_CMD_NEW).
    kprobe ovs_flow_tbl_insert, fentry fentry_flow_tbl_insert on "ovs_flow_tbl_insert",
    args(flow = 1) => flow_insert
}

#[inline(always)]
fn flow_insert(flow: u64) -> Result<u32, u32> {
    bump(Counter::FlowInserts);
    let thread = bpf_get_current_pid_tgid();
    // ufid_len and the ufid in one read, as at a flow hit (probes/datapath.rs).
    let id: [u32; 6] = read(flow, conf!(off_flow_ufid_len))?;
    if id[0] == 0 {
        // Installed without a UFID: nothing to count against; an older record of this thread
        // must not be taken by this flow's packet.
        let _ = PUTS.remove(&thread);
        return Ok(0);
    }
    let ufid = if conf!(off_flow_ufid) - conf!(off_flow_ufid_len) == 4 {
        [id[1], id[2], id[3], id[4]]
    } else {
        [id[2], id[3], id[4], id[5]]
    };
    let (recirc_id, in_port) = read_pass(flow + u64::from(conf!(off_flow_key)))?;
    let drop_slot = if conf!(no_drop_reasons) != 0 {
        flow_drop_slot(flow).unwrap_or(0)
    } else {
        0
    };
    if drop_slot != 0 && actions_len(flow)? == 0 {
        // ovs-vswitchd executes no packet whose actions are empty (ofproto-dpif-upcall.c
        // handle_upcalls: an execute only `if (upcall->odp_actions.size)`): the packet whose
        // miss installed this flow ended with its upcall. On a kernel without drop reasons,
        // where an OVN drop is an empty action list, that is its drop, counted here against
        // the flow as an executed one would be (its length is not known here: 0 bytes).
        let _ = PUTS.remove(&thread);
        bump(Counter::Drops);
        bump(Counter::DropsAfterUpcall);
        count_executed(&ufid, 0);
        if conf!(flow_table) == 0 {
            count_end(&ufid, End::Drop(DROP_NO_ACTIONS, true), 0);
        }
        if events_enabled() {
            // Not filtered here (the masked key may lack the fields a filter names): user
            // space joins it to the held trip that went up, which was.
            let ev = scratch_event()?;
            read_key(flow + u64::from(conf!(off_flow_key)), &mut ev.key)?;
            ev.kind = EventKind::Drop as u32;
            ev.cpu = cpu();
            ev.ts_ns = now();
            ev.skb = 0;
            ev.ufid = ufid;
            ev.recirc_id = recirc_id;
            ev.in_port = in_port;
            ev.reason = DROP_NO_ACTIONS;
            ev.len = 0;
            ev.latency_ns = 0;
            ev.flags = EVENT_AFTER_UPCALL | EVENT_AT_INSTALL;
            emit(ev);
        }
        return Ok(0);
    }
    let put = Put {
        ufid,
        recirc_id,
        in_port,
        ts: now(),
        drop_slot,
        _pad: 0,
    };
    if PUTS.insert(&thread, &put, 0).is_err() {
        bump(Counter::ProbeErrors);
    }
    Ok(0)
}

hook! {
    /// `int ovs_flow_key_extract_userspace(struct net *net, const struct nlattr *attr, struct
    /// sk_buff *skb, struct sw_flow_key *key, bool log)` (net/openvswitch/flow.c): called by
    /// ovs_packet_cmd_execute only, on the skb it just built.
    kprobe ovs_flow_key_extract_userspace,
    fentry fentry_key_extract_userspace on "ovs_flow_key_extract_userspace",
    args(skb = 2) => execute
}

#[inline(always)]
fn execute(skb: u64) -> Result<u32, u32> {
    bump(Counter::Executes);
    let thread = bpf_get_current_pid_tgid();
    let ts = now();
    let put = match PUTS.get_ptr(&thread) {
        // SAFETY: a pointer to a map value, valid for the program's run; copied out at once.
        Some(p) => unsafe { *p },
        None => {
            bump(Counter::ExecutesWithoutPut);
            return Ok(0);
        }
    };
    // Taken: an execute without a put of its own must never find this one.
    let _ = PUTS.remove(&thread);
    if ts.wrapping_sub(put.ts) >= PUT_MAX_AGE_NS {
        bump(Counter::ExecutesWithoutPut);
        return Ok(0);
    }
    let e = inflight_claim(skb, ts).ok_or(0u32)?;
    e.id = skb;
    e.first_ts = ts;
    e.last_ts = ts;
    e.ufid = put.ufid;
    e.in_port = put.in_port;
    e.recirc_id = put.recirc_id;
    e.after_upcall = 1;
    e.matched = 0;
    if events_enabled() {
        read_frame_key(skb, &mut e.key)?;
        e.matched = u32::from(matches(&e.key, put.in_port));
    } else {
        e.key = PacketKey::default();
    }
    e.skb = skb;
    // Its actions run next on this CPU: a clone made for a recirculation or an output is its.
    if let Some(c) = CURRENT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
        unsafe { *c = Current { skb } };
    }
    // User space joins this continuation to the trip that ended in the upcall (same input
    // port and fields), so that one packet is one trace.
    let len = read(skb, conf!(off_skb_len)).unwrap_or(0);
    count_executed(&put.ufid, len);
    if events_enabled() && e.matched != 0 {
        emit_end(EventKind::Execute, e, ts, 0, len, 0)?;
    }
    if put.drop_slot != 0 {
        // A kernel without drop reasons consumes it at the end of its actions, which send it
        // nowhere (see datapath.rs drop_at_hit): its drop is decided here.
        e.skb = 0;
        bump(Counter::Drops);
        bump(Counter::DropsAfterUpcall);
        if conf!(flow_table) == 0 {
            count_end(&put.ufid, End::Drop(DROP_NO_ACTIONS, true), 0);
        }
        if events_enabled() && e.matched != 0 {
            emit_end(EventKind::Drop, e, ts, DROP_NO_ACTIONS, len, 0)?;
        }
    }
    Ok(0)
}

/// The executed packet is one of its flow's packets (user space adds EXEC_STATS to the
/// flow's counters): so that a burst's first packet, which installed the flow, is counted.
#[inline(always)]
fn count_executed(ufid: &[u32; 4], len: u32) {
    let key = FlowKey { ufid: *ufid };
    if EXEC_STATS.get_ptr_mut(&key).is_none()
        && EXEC_STATS
            .insert(&key, &ExecStats::default(), u64::from(BPF_NOEXIST))
            .is_err()
        && EXEC_STATS.get_ptr_mut(&key).is_none()
    {
        bump(Counter::FlowStatsFull);
        return;
    }
    let Some(s) = EXEC_STATS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: this CPU's value of a per-CPU hash entry, valid for the program's run; the
    // program does not nest with itself on a CPU.
    let s = unsafe { &mut *s };
    s.packets += 1;
    s.bytes += u64::from(len);
}

/// The packet's fields from the frame itself: the executed skb holds the packet's bytes from
/// `skb->data` on, but its headers are not parsed yet (key_extract runs inside the hooked
/// function). Ethernet with at most one VLAN tag; IPv6 extension headers: no ports.
#[inline(always)]
fn read_frame_key(skb: u64, k: &mut PacketKey) -> Result<(), u32> {
    *k = PacketKey::default();
    let data: u64 = read(skb, conf!(off_skb_data))?;
    // Destination, source, EtherType, and what follows if that is an 802.1Q/802.1ad tag. The
    // skb has tailroom (a frame is at least ETH_HLEN, datapath.c packet_policy).
    let eth: [u8; 18] = read(data, 0)?;
    let (mut eth_type, mut nh) = (u16::from_be_bytes([eth[12], eth[13]]), 14u32);
    if eth_type == 0x8100 || eth_type == 0x88a8 {
        eth_type = u16::from_be_bytes([eth[16], eth[17]]);
        nh = 18;
    }
    k.eth_type = eth_type;
    let th = match eth_type {
        0x0800 => {
            let h: [u8; 20] = read(data, nh)?;
            k.ip_version = 4;
            k.proto = h[9];
            k.src[..4].copy_from_slice(&h[12..16]);
            k.dst[..4].copy_from_slice(&h[16..20]);
            // A fragment other than the first has no transport header.
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return Ok(());
            }
            nh + u32::from(h[0] & 0x0f) * 4
        }
        0x86dd => {
            let h: [u8; 40] = read(data, nh)?;
            k.ip_version = 6;
            k.src.copy_from_slice(&h[8..24]);
            k.dst.copy_from_slice(&h[24..40]);
            k.proto = h[6];
            nh + 40
        }
        _ => return Ok(()),
    };
    read_l4(data, th, k)
}
