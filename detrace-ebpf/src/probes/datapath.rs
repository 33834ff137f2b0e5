//! Hooks in net/openvswitch/datapath.c and flow.c: each flow hit (one per datapath pass that
//! finds a flow), each upcall.
//!
//! One probe per pass: `ovs_flow_stats_update(flow, tcp_flags, skb)`, called by
//! ovs_dp_process_packet right after the flow table hit, has the flow (UFID, and its own masked
//! key, whose recirc_id and in_port are exact: OVS megaflows always match both,
//! ofproto-dpif-xlate.c xlate_wc_init) and the skb, whose headers give the packet's real fields
//! (key_extract set its network and transport headers; actions such as ct(nat) rewrite packet
//! and key together). A pass that misses is seen by `ovs_dp_upcall`. So Passes = hits + miss
//! upcalls, and `ovs_dp_process_packet` itself needs no probe (it used to have one: two probes
//! per pass).
//!
//! Per-packet state lives in INFLIGHT (per CPU, slots by skb address, see maps.rs):
//! - a pass with recirc_id == 0 is a packet entering the datapath from a vport: a new entry
//!   (replacing a stale one whose skb address was reused);
//! - a pass with recirc_id != 0 continues the entry of its skb;
//! - a recirculation that is not the action list's last action runs on a *clone* of the skb
//!   (actions.c clone_execute -> skb_clone, then a nested ovs_dp_process_packet): its skb is
//!   not in INFLIGHT. The pass that is running on this CPU (CURRENT, set at the parent's flow
//!   hit, before its actions ran) is its parent, so the clone inherits the parent's identity, first timestamp, filter
//!   decision and first-pass key. Without a live parent (the packet came back from an upcall
//!   through OVS_PACKET_CMD_EXECUTE, or probes were attached mid-flight) the clone starts afresh.

use detrace_common::{Counter, DROP_NO_ACTIONS, EventKind, PacketKey};

use super::{
    packet::{
        End, copy_inflight, count_end, count_hit, cpu, emit, emit_end, events_enabled, matches,
        now, read, read_key, read_pass, read_skb_key, scratch_event, upcall_flags,
    },
    removal::flow_drop_slot,
};
use crate::maps::{
    CURRENT, Current, INFLIGHT_MAX_AGE_NS, Inflight, SAMPLE_TICK, bump, conf, inflight_claim,
    inflight_get,
};

/// OVS_PACKET_CMD_MISS (include/uapi/linux/openvswitch.h): the packet is consumed after it is
/// queued to ovs-vswitchd (datapath.c ovs_dp_process_packet), so its datapath journey ends here.
const OVS_PACKET_CMD_MISS: u8 = 1;

hook! {
    /// `void ovs_flow_stats_update(struct sw_flow *flow, __be16 tcp_flags, const struct sk_buff
    /// *skb)`: called by ovs_dp_process_packet right after a flow table hit, once per pass that
    /// hits.
    kprobe ovs_flow_stats_update, fentry fentry_flow_stats_update on "ovs_flow_stats_update",
    args(flow = 0, skb = 2) => flow_hit
}

#[inline(always)]
fn flow_hit(flow: u64, skb: u64) -> Result<u32, u32> {
    let sample = conf!(latency_sample);
    if (sample != 0 || conf!(matching_only) != 0) && !followed(flow, skb, sample)? {
        return Ok(0);
    }
    bump(Counter::Hits);
    // A pass is a hit or a miss; misses are counted by ovs_dp_upcall.
    bump(Counter::Passes);
    // struct sw_flow_id: ufid_len == 0 means the union holds the unmasked key pointer instead
    // (a flow installed without a UFID): the packet is still followed, nothing is counted.
    // ufid_len and the ufid in one read: the ufid follows 4 or 8 bytes later (the loader
    // checks).
    let id: [u32; 6] = read(flow, conf!(off_flow_ufid_len))?;
    let ufid_len = id[0];
    let (ufid, len) = if ufid_len == 0 {
        ([0; 4], 0)
    } else {
        let ufid = if conf!(off_flow_ufid) - conf!(off_flow_ufid_len) == 4 {
            [id[1], id[2], id[3], id[4]]
        } else {
            [id[2], id[3], id[4], id[5]]
        };
        let len: u32 = read(skb, conf!(off_skb_len))?;
        // Sampling: the packets are counted by the kernel's flow table, not here.
        if sample == 0 {
            count_hit(&ufid, len);
        }
        (ufid, len)
    };
    let flow_key = flow + u64::from(conf!(off_flow_key));
    let (recirc_id, in_port) = read_pass(flow_key)?;
    let ts = now();
    let pass = track_pass(skb, flow_key, ufid, recirc_id, in_port, ts)?;
    if events_enabled() && pass.matched && ufid_len != 0 {
        pass_event(skb, flow_key, &pass, ufid, recirc_id, in_port, ts, len)?;
    }
    if conf!(no_drop_reasons) != 0 && ufid_len != 0 {
        drop_at_hit(flow, skb, &ufid, ts)?;
    }
    Ok(0)
}

/// The event of a pass that hit `ufid`.
#[inline(always)]
#[allow(clippy::too_many_arguments, reason = "the fields of one event")]
fn pass_event(
    skb: u64,
    flow_key: u64,
    pass: &Pass,
    ufid: [u32; 4],
    recirc_id: u32,
    in_port: u32,
    ts: u64,
    len: u32,
) -> Result<(), u32> {
    let ev = scratch_event()?;
    // This pass's fields (a later pass may see NAT-rewritten addresses); a packet's first
    // pass has just read them into its in-flight entry.
    match pass.first_key {
        Some(k) => ev.key = *k,
        None => read_skb_key(skb, flow_key, &mut ev.key)?,
    }
    ev.kind = EventKind::Pass as u32;
    ev.cpu = cpu();
    ev.ts_ns = ts;
    ev.skb = pass.id;
    ev.ufid = ufid;
    ev.recirc_id = recirc_id;
    ev.in_port = in_port;
    ev.reason = 0;
    ev.len = len;
    ev.latency_ns = ts.wrapping_sub(pass.first_ts);
    ev.flags = 0;
    emit(ev);
    Ok(())
}

/// On a kernel without OVS drop reasons (`Config::no_drop_reasons`), a packet whose flow's
/// actions send it nowhere is freed by consume_skb at the end of its actions: no drop for
/// skb:kfree_skb to see. Its drop is decided here, at the hit of such a flow (the removal
/// probe's walk of the actions), with reason [`DROP_NO_ACTIONS`]; its in-flight entry ends.
#[inline(always)]
fn drop_at_hit(flow: u64, skb: u64, ufid: &[u32; 4], ts: u64) -> Result<(), u32> {
    if flow_drop_slot(flow)? == 0 {
        return Ok(());
    }
    let Some(e) = inflight_get(skb) else {
        return Ok(());
    };
    e.skb = 0;
    let e = &*e;
    bump(Counter::Drops);
    let latency = ts.wrapping_sub(e.first_ts);
    count_end(ufid, End::Drop(DROP_NO_ACTIONS, false), latency);
    if events_enabled() && e.matched != 0 {
        let len = read(skb, conf!(off_skb_len)).unwrap_or(0);
        emit_end(EventKind::Drop, e, ts, DROP_NO_ACTIONS, len, latency)?;
    }
    Ok(())
}

/// Whether this pass's packet is followed, when not every packet is (`Config::latency_sample`,
/// `Config::matching_only`): decided at the packet's first pass (recirc_id 0), by a per-CPU
/// counter (1 in `latency_sample`) and, with `matching_only`, the event filter on the packet's
/// headers. A later pass is followed when its packet is (its INFLIGHT entry, or for a clone its
/// parent's, the pass running on this CPU); a packet not followed leaves no entry and clears
/// CURRENT, so that each of its later passes and its output cost one lookup that misses.
#[inline(always)]
fn followed(flow: u64, skb: u64, sample: u32) -> Result<bool, u32> {
    let flow_key = flow + u64::from(conf!(off_flow_key));
    let (recirc_id, in_port) = read_pass(flow_key)?;
    let current = CURRENT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
    let current = unsafe { &mut *current };
    if recirc_id != 0 {
        return Ok(inflight_get(skb).is_some() || inflight_get(current.skb).is_some());
    }
    let mut follow = true;
    if sample > 1 {
        let tick = SAMPLE_TICK.get_ptr_mut(0).ok_or(0u32)?;
        // SAFETY: as above.
        let tick = unsafe { &mut *tick };
        *tick += 1;
        follow = *tick >= sample;
        if follow {
            *tick = 0;
        }
    }
    if follow && conf!(matching_only) != 0 {
        let ev = scratch_event()?;
        read_skb_key(skb, flow_key, &mut ev.key)?;
        follow = matches(&ev.key, in_port);
    }
    if !follow {
        current.skb = 0;
    }
    Ok(follow)
}

/// What an event for this pass needs from the packet's INFLIGHT entry.
struct Pass {
    id: u64,
    first_ts: u64,
    matched: bool,
    /// On a packet's first pass with events on: the fields just read from its headers.
    first_key: Option<&'static PacketKey>,
}

/// A later pass of a packet whose in-flight entry is `e` (its own, or its parent's copied to a
/// clone): the entry moves on to this pass.
#[inline(always)]
fn continue_pass(e: &mut Inflight, ufid: [u32; 4], recirc_id: u32, ts: u64) -> Pass {
    e.last_ts = ts;
    e.recirc_id = recirc_id;
    e.ufid = ufid;
    // A pass of an executed packet (after its ct(), recirc()) is an ordinary in-kernel pass.
    e.after_upcall = 0;
    Pass {
        id: e.id,
        first_ts: e.first_ts,
        matched: e.matched != 0,
        first_key: None,
    }
}

/// The in-flight bookkeeping of one pass that hit `ufid` (see the module doc): continues the
/// skb's entry, or a clone inherits its parent's, or a packet starts (its filter decision and
/// first-pass key taken now, before any NAT).
#[inline(always)]
fn track_pass(
    skb: u64,
    flow_key: u64,
    ufid: [u32; 4],
    recirc_id: u32,
    in_port: u32,
    ts: u64,
) -> Result<Pass, u32> {
    let slot = CURRENT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
    let slot = unsafe { &mut *slot };
    let parent = slot.skb;
    *slot = Current { skb };

    if recirc_id != 0 {
        if let Some(e) = inflight_get(skb) {
            if ts.wrapping_sub(e.last_ts) < INFLIGHT_MAX_AGE_NS {
                return Ok(continue_pass(e, ufid, recirc_id, ts));
            }
        }
        // A clone's first pass: inherit from the pass running on this CPU.
        if parent != skb {
            if let Some(p) = inflight_get(parent) {
                if ts.wrapping_sub(p.last_ts) < INFLIGHT_MAX_AGE_NS {
                    // Copied first: the clone's slot may be the parent's own.
                    let p = copy_inflight(p)?;
                    let e = inflight_claim(skb, ts).ok_or(0u32)?;
                    *e = *p;
                    e.skb = skb;
                    return Ok(continue_pass(e, ufid, recirc_id, ts));
                }
            }
        }
    }
    let e = inflight_claim(skb, ts).ok_or(0u32)?;
    e.id = skb;
    e.first_ts = ts;
    e.last_ts = ts;
    e.ufid = ufid;
    e.matched = 0;
    e.in_port = in_port;
    e.recirc_id = recirc_id;
    e.after_upcall = 0;
    let events = events_enabled();
    if events {
        // Decided once, on the first pass: later passes may see NAT-rewritten addresses.
        read_skb_key(skb, flow_key, &mut e.key)?;
        e.matched = u32::from(matches(&e.key, in_port));
    } else {
        e.key = Default::default();
    }
    e.skb = skb;
    let e = &*e;
    Ok(Pass {
        id: skb,
        first_ts: ts,
        matched: e.matched != 0,
        first_key: events.then_some(&e.key),
    })
}

hook! {
    /// `int ovs_dp_upcall(struct datapath *dp, struct sk_buff *skb, const struct sw_flow_key
    /// *key, const struct dp_upcall_info *upcall_info, uint32_t cutlen)`: a miss, or a
    /// userspace() action.
    kprobe ovs_dp_upcall, fentry fentry_dp_upcall on "ovs_dp_upcall",
    args(skb = 1, key = 2, info = 3) => upcall
}

#[inline(always)]
fn upcall(skb: u64, key: u64, info: u64) -> Result<u32, u32> {
    bump(Counter::Upcalls);
    let cmd: u8 = read(info, conf!(off_upcall_cmd))?;
    let ts = now();
    let mut entry = inflight_get(skb);
    if events_enabled() {
        let (recirc_id, in_port) = read_pass(key)?;
        let ev = scratch_event()?;
        read_key(key, &mut ev.key)?;
        let (matched, id, first_ts, ufid, flags) = match &entry {
            Some(e) => (e.matched != 0, e.id, e.first_ts, e.ufid, upcall_flags(e)),
            None => (matches(&ev.key, in_port), skb, ts, [0; 4], 0),
        };
        if matched {
            ev.kind = EventKind::Upcall as u32;
            ev.cpu = cpu();
            ev.ts_ns = ts;
            ev.skb = id;
            // The flow hit before this pass, if any (a miss after a recirculation).
            ev.ufid = ufid;
            ev.recirc_id = recirc_id;
            ev.in_port = in_port;
            ev.reason = u32::from(cmd);
            ev.len = read(skb, conf!(off_skb_len))?;
            ev.latency_ns = ts.wrapping_sub(first_ts);
            ev.flags = flags;
            emit(ev);
        }
    }
    if cmd == OVS_PACKET_CMD_MISS {
        // A miss is a pass that hit no flow (MISS upcalls come from ovs_dp_process_packet only).
        bump(Counter::Passes);
        if let Some(e) = entry.as_mut() {
            e.skb = 0;
        }
    }
    Ok(0)
}
