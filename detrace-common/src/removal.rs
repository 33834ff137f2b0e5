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
    /// [`DropScan`]), 0 when its actions do not drop.
    pub drop_slot: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RemovedStats>() == 32);

/// OVS_ACTION_ATTR_DROP (include/uapi/linux/openvswitch.h `enum ovs_action_attr`).
pub const OVS_ACTION_ATTR_DROP: u16 = 24;

/// Top-level actions after which the packet goes on (sent, recirculated, handed to
/// userspace, or cloned for one of these): `enum ovs_action_attr` OUTPUT 1, USERSPACE 2,
/// SAMPLE 6, RECIRC 7, CLONE 20, CHECK_PKT_LEN 21, DEC_TTL 23 (nested action lists that do).
const SENDS: [u16; 7] = [1, 2, 6, 7, 20, 21, 23];

/// [`SENDS`] as a bit set: bit n set when action type n sends the packet on.
const SENDS_MASK: u64 = {
    let (mut m, mut i) = (0u64, 0);
    while i < SENDS.len() {
        m |= 1 << SENDS[i];
        i += 1;
    }
    m
};

/// Whether a flow's actions drop its packets, seen one top-level action at a time (the
/// removal probe and user space walk the list the same way).
///
/// net/openvswitch/actions.c do_execute_actions: an explicit drop frees the packet with
/// OVS_DROP_EXPLICIT (slot 3) or, with an error code, OVS_DROP_EXPLICIT_WITH_ERROR (4); a list
/// that ends without sending the packet anywhere (empty, or only ct_clear/set/ct...) frees it
/// with OVS_DROP_LAST_ACTION (1). ovs-vswitchd writes an OVN drop as `drop`, after what crossing
/// into a router adds (`ct_clear,drop`).
///
/// An explicit drop is the last action of a list (flow_netlink.c refuses one followed by
/// anything), so only the last action's type and argument are kept, with the set of types seen:
/// each push is then a few unconditional stores, which the eBPF verifier walks once per action
/// (a scan that branched on what it had seen so far made it follow every combination: 70k
/// instructions verified, half a second under TCG).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropScan {
    /// Bit n: an action of type n (types above 63 do not exist: the kernel refuses them).
    seen: u64,
    last_type: u32,
    last_arg: u32,
}

impl DropScan {
    /// One top-level action: its `nla_type` and its first 4 payload bytes (0 when shorter).
    #[inline(always)]
    pub fn push(&mut self, nla_type: u16, arg: u32) {
        let ty = u32::from(nla_type & 0x3fff);
        self.seen |= 1u64 << (ty & 63);
        self.last_type = ty;
        self.last_arg = arg;
    }

    /// The `FlowStats::drop_reasons` slot of the drop these actions make, 0 when they do not
    /// drop.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        if self.seen & SENDS_MASK != 0 {
            0
        } else if self.last_type != u32::from(OVS_ACTION_ATTR_DROP) {
            1
        } else if self.last_arg == 0 {
            3
        } else {
            4
        }
    }
}

/// Drop-reason slots that are a flow's own drop action (see [`DropScan`]; 14 is
/// [`crate::DROP_NO_ACTIONS`], the same on kernels without drop reasons): drops of those
/// reasons are counted as the flow's packets, not from the drop tracepoint.
#[inline(always)]
pub fn is_action_drop_slot(slot: usize) -> bool {
    slot == 1 || slot == 3 || slot == 4 || slot == 14
}

/// The slot a flow's drop is counted in on this kernel: [`DropScan::slot`] as it is where the
/// kernel has OVS drop reasons; on kernels without (`no_drop_reasons`), where an action list
/// that sends the packet nowhere is all a drop can be, [`crate::DROP_NO_ACTIONS`]'s.
#[inline(always)]
pub fn kernel_drop_slot(scan_slot: u32, no_drop_reasons: bool) -> u32 {
    if no_drop_reasons && scan_slot != 0 {
        14
    } else {
        scan_slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_slots_with_and_without_kernel_drop_reasons() {
        let scan = |acts: &[(u16, u32)]| {
            let mut s = DropScan::default();
            for &(t, a) in acts {
                s.push(t, a);
            }
            s.slot()
        };
        // output:2 sends; nothing at all, ct_clear (16) only, an explicit drop, drop with error.
        assert_eq!(scan(&[(1, 2)]), 0);
        assert_eq!(scan(&[]), 1);
        assert_eq!(scan(&[(16, 0)]), 1);
        assert_eq!(scan(&[(16, 0), (OVS_ACTION_ATTR_DROP, 0)]), 3);
        assert_eq!(scan(&[(OVS_ACTION_ATTR_DROP, 7)]), 4);
        // A kernel without drop reasons (6.1) frees them all as consumed: "no actions".
        assert_eq!(kernel_drop_slot(1, true), 14);
        assert_eq!(kernel_drop_slot(0, true), 0);
        assert_eq!(kernel_drop_slot(3, false), 3);
        for slot in [1, 3, 4, 14] {
            assert!(is_action_drop_slot(slot));
        }
        assert!(!is_action_drop_slot(10));
        assert_eq!(crate::drop_reason_slot(crate::DROP_NO_ACTIONS), 14);
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    fn slot(actions: &[(u16, u32)]) -> u32 {
        let mut scan = DropScan::default();
        for &(ty, arg) in actions {
            scan.push(ty, arg);
        }
        scan.slot()
    }

    /// The lists OVS writes: OUTPUT 1, USERSPACE 2, SET 3, SAMPLE 6, RECIRC 7, CT 12,
    /// CT_CLEAR 16, CLONE 20, DROP 24 (NLA_F_NESTED 0x8000 on nested ones).
    #[test]
    fn drop_slots() {
        assert_eq!(slot(&[]), 1, "empty list: last-action drop");
        assert_eq!(slot(&[(OVS_ACTION_ATTR_DROP, 0)]), 3);
        assert_eq!(
            slot(&[(16, 0), (OVS_ACTION_ATTR_DROP, 0)]),
            3,
            "ct_clear,drop"
        );
        assert_eq!(
            slot(&[(OVS_ACTION_ATTR_DROP, 7)]),
            4,
            "drop with an error code"
        );
        assert_eq!(
            slot(&[(3 | 0x8000, 0), (16, 0)]),
            1,
            "set, ct_clear: nothing sends"
        );
        for sends in SENDS {
            assert_eq!(slot(&[(3, 0), (sends, 9)]), 0, "type {sends} sends");
            assert_eq!(
                slot(&[(sends | 0x8000, 0), (12, 0)]),
                0,
                "nested {sends} sends"
            );
        }
        assert_eq!(
            slot(&[(1, 0), (OVS_ACTION_ATTR_DROP, 0)]),
            0,
            "output, then drop"
        );
        assert_eq!(slot(&[(12 | 0x8000, 0), (7, 3)]), 0, "ct, recirc");
    }
}
