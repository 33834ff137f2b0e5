//! The skb:kfree_skb tracepoint: a packet the datapath was handling is freed with a drop reason
//! (`enum skb_drop_reason`; OVS's own are 0x30000 + n, net/openvswitch/drop.h).
//!
//! The tracepoint fires for every drop on the host: only skbs in INFLIGHT (on this CPU) count.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use detrace_common::{
    Counter, EventKind, OVS_DROP_REASON_BASE, drop_reason_slot, is_action_drop_slot,
};

use super::packet::{
    End, count_end, emit_end, events_enabled, flow_stats_kept, has_ufid, now, read,
};
use crate::maps::{INFLIGHT_MAX_AGE_NS, OTHER_DROPS, bump, conf, inflight_get};

/// SKB_CONSUMED (include/net/dropreason-core.h): not a drop (6.12 routes it to
/// skb:consume_skb anyway; kept for safety across kernels).
const SKB_CONSUMED: u32 = 1;

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    if conf!(noop) != 0 {
        return 0;
    }
    match try_kfree_skb(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_kfree_skb(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: offsets from the tracepoint's format file, within the record; read_at uses
    // bpf_probe_read_kernel.
    let off_skb = conf!(off_tp_kfree_skbaddr) as usize;
    let off_reason = conf!(off_tp_kfree_reason) as usize;
    let skb: u64 = unsafe { ctx.read_at(off_skb) }.map_err(|_| {
        bump(Counter::ProbeErrors);
        0u32
    })?;
    let Some(e) = inflight_get(skb) else {
        return other_drop(ctx, off_reason);
    };
    // The slot is free from now on; its other fields stay readable in this run.
    e.skb = 0;
    let e = &*e;
    // SAFETY: as above.
    let reason: u32 = unsafe { ctx.read_at(off_reason) }.map_err(|_| {
        bump(Counter::ProbeErrors);
        0u32
    })?;
    let ts = now();
    if reason == SKB_CONSUMED || ts.wrapping_sub(e.last_ts) >= INFLIGHT_MAX_AGE_NS {
        return Ok(0);
    }
    bump(Counter::Drops);
    // An executed packet (probes/upcall.rs) counts against the flow installed for it.
    let after_upcall = e.after_upcall != 0;
    if after_upcall {
        bump(Counter::DropsAfterUpcall);
    }
    let latency = ts.wrapping_sub(e.first_ts);
    if has_ufid(&e.ufid) && flow_stats_kept() {
        count_end(&e.ufid, End::Drop(reason, after_upcall), latency);
    }
    if events_enabled() && e.matched != 0 {
        let len = read(skb, conf!(off_skb_len)).unwrap_or(0);
        emit_end(EventKind::Drop, e, ts, reason, len, latency)?;
    }
    Ok(0)
}

/// A drop of a packet the probes do not follow (always so when `top` and `drops` count from the
/// kernel's flow table, without per-packet probes): an OVS drop reason that is not a flow's
/// own drop action (those are counted as the flow's packets) is counted by reason, against no
/// flow. Other reasons are the rest of the host's drops: not ours.
#[inline(always)]
fn other_drop(ctx: &TracePointContext, off_reason: usize) -> Result<u32, u32> {
    // SAFETY: as in try_kfree_skb.
    let reason: u32 = unsafe { ctx.read_at(off_reason) }.map_err(|_| {
        bump(Counter::ProbeErrors);
        0u32
    })?;
    if reason & 0xffff_0000 != OVS_DROP_REASON_BASE {
        return Ok(0);
    }
    let slot = drop_reason_slot(reason);
    if is_action_drop_slot(slot) {
        return Ok(0);
    }
    bump(Counter::DropsNoFlow);
    if let Some(c) = OTHER_DROPS.get_ptr_mut(slot as u32) {
        // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run.
        unsafe { *c += 1 };
    }
    Ok(0)
}
