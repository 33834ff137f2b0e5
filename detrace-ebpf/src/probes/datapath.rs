//! Hooks in net/openvswitch/datapath.c and flow.c: each datapath pass, each flow hit, each
//! upcall.
//!
//! Per-packet state lives in INFLIGHT, keyed by skb address:
//! - a pass with recirc_id == 0 is a packet entering the datapath from a vport: a new entry
//!   (replacing a stale one whose skb address was reused);
//! - a pass with recirc_id != 0 continues the entry of its skb;
//! - a recirculation that is not the action list's last action runs on a *clone* of the skb
//!   (actions.c clone_execute -> skb_clone, then a nested ovs_dp_process_packet): its skb is
//!   not in INFLIGHT. The pass that is running on this CPU (CURRENT, still the parent's at that
//!   point) is its parent, so the clone inherits the parent's identity, first timestamp, filter
//!   decision and first-pass key. Without a live parent (the packet came back from an upcall
//!   through OVS_PACKET_CMD_EXECUTE, or probes were attached mid-flight) the clone starts afresh.
//!
//! Without per-packet events (`top`, `drops`' counting) `ovs_dp_process_packet` is not attached
//! at all: one probe per pass instead of two. `ovs_flow_stats_update` then keeps INFLIGHT and
//! CURRENT itself, reading recirc_id and in_port from the hit flow's own masked key (OVS
//! megaflows always match both exactly), and counts the passes (a pass is a hit or a miss; the
//! misses are counted by `ovs_dp_upcall`). Only events need the pass entry: the packet's real
//! fields (the masked key has only what the megaflow matches) for the filter and the events.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use detrace_common::{Counter, EventKind};

use super::packet::{
    Fail, count_hit, cpu, emit, events_enabled, filter_key, matches, now, read, read_key,
    read_pass, scratch_event,
};
use crate::maps::{CURRENT, Current, INFLIGHT, INFLIGHT_MAX_AGE_NS, SCRATCH_INFLIGHT, bump, conf};

/// OVS_PACKET_CMD_MISS (include/uapi/linux/openvswitch.h): the packet is consumed after it is
/// queued to ovs-vswitchd (datapath.c ovs_dp_process_packet), so its datapath journey ends here.
const OVS_PACKET_CMD_MISS: u8 = 1;

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> Result<u64, Fail> {
    match ctx.arg::<u64>(n) {
        Some(v) if v != 0 => Ok(v),
        _ => {
            bump(Counter::ProbeErrors);
            Err(0)
        }
    }
}

/// `void ovs_dp_process_packet(struct sk_buff *skb, struct sw_flow_key *key)`: entered once per
/// datapath pass, so a recirculating packet enters it once per recirculation.
#[kprobe]
pub fn ovs_dp_process_packet(ctx: ProbeContext) -> u32 {
    match try_process_packet(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_process_packet(ctx: &ProbeContext) -> Result<u32, u32> {
    bump(Counter::Passes);
    let skb = arg(ctx, 0)?;
    let key = arg(ctx, 1)?;
    let ts = now();
    let (recirc_id, in_port) = read_pass(key)?;
    let slot = CURRENT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
    let slot = unsafe { &mut *slot };
    let parent = slot.skb;
    *slot = Current { skb, key };

    if recirc_id != 0 {
        if let Some(e) = INFLIGHT.get_ptr_mut(skb) {
            // SAFETY: a pointer into an INFLIGHT value, valid for the program's run.
            let e = unsafe { &mut *e };
            if ts.wrapping_sub(e.last_ts) < INFLIGHT_MAX_AGE_NS {
                e.last_ts = ts;
                e.recirc_id = recirc_id;
                return Ok(0);
            }
        }
        // A clone's first pass: inherit from the pass running on this CPU.
        if parent != 0 && parent != skb {
            if let Some(p) = INFLIGHT.get_ptr(parent) {
                let e = SCRATCH_INFLIGHT.get_ptr_mut(0).ok_or(0u32)?;
                // SAFETY: p points into an INFLIGHT value and e to this CPU's scratch slot,
                // both valid for the program's run; copied before the insert below.
                let e = unsafe {
                    *e = *p;
                    &mut *e
                };
                if ts.wrapping_sub(e.last_ts) < INFLIGHT_MAX_AGE_NS {
                    e.last_ts = ts;
                    e.recirc_id = recirc_id;
                    let _ = INFLIGHT.insert(skb, &*e, 0);
                    return Ok(0);
                }
            }
        }
    }
    let e = SCRATCH_INFLIGHT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's scratch slot, valid for the program's run.
    let e = unsafe { &mut *e };
    e.id = skb;
    e.first_ts = ts;
    e.last_ts = ts;
    e.ufid = [0; 4];
    e.matched = 0;
    e.in_port = in_port;
    e.recirc_id = recirc_id;
    e.key = Default::default();
    if events_enabled() {
        // Decided once, on the first pass: later passes may see NAT-rewritten addresses.
        // Only the fields the filter looks at are read first (most packets fail it); the whole
        // key only for a packet that passes it.
        if filter_key(key, in_port)? {
            read_key(key, &mut e.key)?;
            e.matched = 1;
        }
    }
    // An LRU map makes room by itself; an error here is a kernel allocation failure.
    if INFLIGHT.insert(skb, &*e, 0).is_err() {
        bump(Counter::ProbeErrors);
    }
    Ok(0)
}

/// `void ovs_flow_stats_update(struct sw_flow *flow, __be16 tcp_flags, const struct sk_buff
/// *skb)`: called by ovs_dp_process_packet right after a flow table hit.
#[kprobe]
pub fn ovs_flow_stats_update(ctx: ProbeContext) -> u32 {
    match try_flow_stats_update(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_flow_stats_update(ctx: &ProbeContext) -> Result<u32, u32> {
    bump(Counter::Hits);
    let events = events_enabled();
    if !events {
        bump(Counter::Passes);
    }
    let flow = arg(ctx, 0)?;
    let skb = arg(ctx, 2)?;
    // struct sw_flow_id: ufid_len == 0 means the union holds the unmasked key pointer instead
    // (a flow installed without a UFID).
    let ufid_len: u32 = read(flow, conf!(off_flow_ufid_len))?;
    if !events {
        let ufid = if ufid_len == 0 {
            [0; 4]
        } else {
            let ufid: [u32; 4] = read(flow, conf!(off_flow_ufid))?;
            let len: u32 = read(skb, conf!(off_skb_len))?;
            count_hit(&ufid, len);
            ufid
        };
        return track_pass(flow, skb, ufid);
    }
    if ufid_len == 0 {
        return Ok(0);
    }
    let ufid: [u32; 4] = read(flow, conf!(off_flow_ufid))?;
    let len: u32 = read(skb, conf!(off_skb_len))?;
    count_hit(&ufid, len);

    let Some(e) = INFLIGHT.get_ptr_mut(skb) else {
        return Ok(0);
    };
    // SAFETY: a pointer into an INFLIGHT value, valid for the program's run.
    let e = unsafe { &mut *e };
    e.ufid = ufid;
    if !events_enabled() || e.matched == 0 {
        return Ok(0);
    }
    // The key of this pass, from the slot ovs_dp_process_packet set for this skb.
    let slot = CURRENT.get_ptr(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot of a per-CPU array.
    let slot = unsafe { *slot };
    let ts = now();
    let ev = scratch_event()?;
    ev.kind = EventKind::Pass as u32;
    ev.cpu = cpu();
    ev.ts_ns = ts;
    ev.skb = e.id;
    ev.ufid = ufid;
    ev.reason = 0;
    ev.len = len;
    ev.latency_ns = ts.wrapping_sub(e.first_ts);
    if slot.skb == skb && slot.key != 0 {
        let (recirc_id, in_port) = read_pass(slot.key)?;
        ev.recirc_id = recirc_id;
        ev.in_port = in_port;
        read_key(slot.key, &mut ev.key)?;
    } else {
        ev.recirc_id = e.recirc_id;
        ev.in_port = e.in_port;
        ev.key = e.key;
    }
    emit(ev);
    Ok(0)
}

/// Without events: the in-flight bookkeeping `ovs_dp_process_packet` does with them, done at
/// the flow hit from the flow's masked key (recirc_id and in_port are matched exactly), so that
/// outputs, drops and latency still find the packet's first timestamp and last flow.
#[inline(always)]
fn track_pass(flow: u64, skb: u64, ufid: [u32; 4]) -> Result<u32, u32> {
    let (recirc_id, in_port) = read_pass(flow + u64::from(conf!(off_flow_key)))?;
    let ts = now();
    let slot = CURRENT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
    let slot = unsafe { &mut *slot };
    let parent = slot.skb;
    // No key pointer here (and none needed without events).
    *slot = Current { skb, key: 0 };

    if recirc_id != 0 {
        if let Some(e) = INFLIGHT.get_ptr_mut(skb) {
            // SAFETY: a pointer into an INFLIGHT value, valid for the program's run.
            let e = unsafe { &mut *e };
            if ts.wrapping_sub(e.last_ts) < INFLIGHT_MAX_AGE_NS {
                e.last_ts = ts;
                e.recirc_id = recirc_id;
                e.ufid = ufid;
                return Ok(0);
            }
        }
        // A clone's first pass: inherit from the pass running on this CPU (see the module doc).
        if parent != 0 && parent != skb {
            if let Some(p) = INFLIGHT.get_ptr(parent) {
                let e = SCRATCH_INFLIGHT.get_ptr_mut(0).ok_or(0u32)?;
                // SAFETY: p points into an INFLIGHT value and e to this CPU's scratch slot,
                // both valid for the program's run; copied before the insert below.
                let e = unsafe {
                    *e = *p;
                    &mut *e
                };
                if ts.wrapping_sub(e.last_ts) < INFLIGHT_MAX_AGE_NS {
                    e.last_ts = ts;
                    e.recirc_id = recirc_id;
                    e.ufid = ufid;
                    let _ = INFLIGHT.insert(skb, &*e, 0);
                    return Ok(0);
                }
            }
        }
    }
    let e = SCRATCH_INFLIGHT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's scratch slot, valid for the program's run.
    let e = unsafe { &mut *e };
    e.id = skb;
    e.first_ts = ts;
    e.last_ts = ts;
    e.ufid = ufid;
    e.matched = 0;
    e.in_port = in_port;
    e.recirc_id = recirc_id;
    e.key = Default::default();
    // An LRU map makes room by itself; an error here is a kernel allocation failure.
    if INFLIGHT.insert(skb, &*e, 0).is_err() {
        bump(Counter::ProbeErrors);
    }
    Ok(0)
}

/// `int ovs_dp_upcall(struct datapath *dp, struct sk_buff *skb, const struct sw_flow_key *key,
/// const struct dp_upcall_info *upcall_info, uint32_t cutlen)`: a miss, or a userspace() action.
#[kprobe]
pub fn ovs_dp_upcall(ctx: ProbeContext) -> u32 {
    match try_upcall(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_upcall(ctx: &ProbeContext) -> Result<u32, u32> {
    bump(Counter::Upcalls);
    let skb = arg(ctx, 1)?;
    let key = arg(ctx, 2)?;
    let info = arg(ctx, 3)?;
    let cmd: u8 = read(info, conf!(off_upcall_cmd))?;
    let ts = now();
    let entry = INFLIGHT.get_ptr(skb);
    if events_enabled() {
        let (recirc_id, in_port) = read_pass(key)?;
        let ev = scratch_event()?;
        read_key(key, &mut ev.key)?;
        let (matched, id, first_ts, ufid) = match entry {
            // SAFETY: a pointer into an INFLIGHT value, valid for the program's run.
            Some(p) => unsafe { ((*p).matched != 0, (*p).id, (*p).first_ts, (*p).ufid) },
            None => (matches(&ev.key, in_port), skb, ts, [0; 4]),
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
            emit(ev);
        }
    }
    if cmd == OVS_PACKET_CMD_MISS {
        if !events_enabled() {
            // A miss is a pass that hit nothing: without the pass-entry probe, count it here
            // (MISS upcalls come from ovs_dp_process_packet only).
            bump(Counter::Passes);
        }
        if entry.is_some() {
            let _ = INFLIGHT.remove(skb);
        }
    }
    Ok(0)
}
