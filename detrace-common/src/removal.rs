//! The flow-removal probe's wire types: counting from the kernel's flow table, the last stats
//! of every flow removed (detrace-ebpf/src/probes/removal.rs), and how a flow's actions drop.

use core::mem::size_of;

/// The last stats of a datapath flow, caught when it is freed (`MAP_REMOVED_STATS` value, per
/// CPU; summed over every flow of that UFID removed since the probes were attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovedStats {
    pub packets: u64,
    pub bytes: u64,
    /// Flows of this UFID freed or cleared: user space sees that one went during its dump.
    pub removals: u64,
    /// The `FlowStats::drop_reasons` slot of the drop the flow's actions make (see
    /// [`drop_action_slot`]), 0 when its actions do not drop.
    pub drop_slot: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RemovedStats>() == 32);

/// OVS_ACTION_ATTR_DROP (include/uapi/linux/openvswitch.h `enum ovs_action_attr`).
pub const OVS_ACTION_ATTR_DROP: u16 = 24;

/// The drop a flow's actions make, as a `FlowStats::drop_reasons` slot (0: they do not
/// drop), from the length of its action list and its first action's type and (for
/// OVS_ACTION_ATTR_DROP) error code. net/openvswitch/actions.c do_execute_actions: an empty list
/// frees the packet with OVS_DROP_LAST_ACTION (slot 1), an explicit drop with OVS_DROP_EXPLICIT
/// (3) or, with an error code, OVS_DROP_EXPLICIT_WITH_ERROR (4). ovs-vswitchd writes a drop as
/// that single action (odp-util.c, `drop` in dpctl/dump-flows). Used by the removal probe and
/// by user space alike.
#[inline(always)]
pub fn drop_action_slot(actions_len: u32, first_type: u16, first_arg: u32) -> u32 {
    if actions_len == 0 {
        1
    } else if first_type & 0x3fff == OVS_ACTION_ATTR_DROP {
        if first_arg == 0 { 3 } else { 4 }
    } else {
        0
    }
}

/// Drop-reason slots that are a flow's own drop action (see [`drop_action_slot`]): drops of
/// those reasons are counted as the flow's packets, not from the drop tracepoint.
#[inline(always)]
pub fn is_action_drop_slot(slot: usize) -> bool {
    slot == 1 || slot == 3 || slot == 4
}
