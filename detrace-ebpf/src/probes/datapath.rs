//! Hooks on the datapath's per-pass entry point (net/openvswitch/datapath.c).

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use detrace_common::Counter;

use crate::maps::bump;

/// `void ovs_dp_process_packet(struct sk_buff *skb, struct sw_flow_key *key)`: entered once per
/// datapath pass, so a recirculating packet enters it once per recirculation.
#[kprobe]
pub fn ovs_dp_process_packet(ctx: ProbeContext) -> u32 {
    match try_process_packet(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_process_packet(_ctx: &ProbeContext) -> Result<u32, u32> {
    bump(Counter::Passes);
    Ok(0)
}
