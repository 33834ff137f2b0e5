//! `ovs_vport_send` (net/openvswitch/vport.c): the packet leaves the datapath through a port.

use detrace_common::{Counter, EventKind};

use super::packet::{End, count_end, emit_end, events_enabled, has_ufid, now, read};
use crate::maps::{CURRENT, INFLIGHT_MAX_AGE_NS, bump, conf, inflight_get};

hook! {
    /// `void ovs_vport_send(struct vport *vport, struct sk_buff *skb, u8 mac_proto)`.
    kprobe ovs_vport_send, fentry fentry_vport_send on "ovs_vport_send",
    args(vport = 0, skb = 1) => vport_send
}

#[inline(always)]
fn vport_send(vport: u64, skb: u64) -> Result<u32, u32> {
    bump(Counter::Outputs);
    let (e, last) = match inflight_get(skb) {
        Some(e) => (e, true),
        None => {
            let slot = CURRENT.get_ptr(0).ok_or(0u32)?;
            // SAFETY: this CPU's slot of a per-CPU array.
            let Some(e) = inflight_get(unsafe { (*slot).skb }) else {
                return Ok(0);
            };
            (e, false)
        }
    };
    if last {
        // The slot is free from now on; its other fields stay readable in this run.
        e.skb = 0;
    }
    let e = &*e;
    let ts = now();
    if ts.wrapping_sub(e.last_ts) >= INFLIGHT_MAX_AGE_NS {
        // A stale entry of a packet that left unseen.
        return Ok(0);
    }
    let latency = ts.wrapping_sub(e.first_ts);
    if has_ufid(&e.ufid) {
        count_end(&e.ufid, End::Output, latency);
    }
    if events_enabled() && e.matched != 0 {
        // struct vport.port_no is a u16 (checked by the loader).
        let port: u16 = read(vport, conf!(off_vport_port_no))?;
        let len: u32 = read(skb, conf!(off_skb_len))?;
        emit_end(EventKind::Output, e, ts, u32::from(port), len, latency)?;
    }
    Ok(0)
}
