//! Per-packet events as user space keeps them: decoded from the kernel's wire format into plain
//! serde data (so everything after collection also works on a recorded file), and assembled
//! into one trace per packet across its datapath passes.

pub mod path;

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use detrace_common::{
    EVENT_AFTER_UPCALL, EVENT_AT_INSTALL, Event, EventKind, OVS_DROP_REASON_BASE,
};
use serde::{Deserialize, Serialize};

use crate::uuid::Uuid;

/// The packet's addresses and ports in one pass (after any NAT of earlier passes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Packet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    #[serde(skip_serializing_if = "is_zero16")]
    pub sport: u16,
    #[serde(skip_serializing_if = "is_zero16")]
    pub dport: u16,
    pub proto: u8,
    pub eth_type: u16,
}

fn is_zero16(v: &u16) -> bool {
    *v == 0
}

impl Packet {
    fn from_wire(k: &detrace_common::PacketKey) -> Self {
        let ip = |b: &[u8; 16]| -> Option<IpAddr> {
            match k.ip_version {
                4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
                6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
                _ => None,
            }
        };
        Self {
            src: ip(&k.src),
            dst: ip(&k.dst),
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            eth_type: k.eth_type,
        }
    }

    pub fn proto_name(&self) -> String {
        match (self.eth_type, self.proto) {
            (0x0806, _) => "arp".into(),
            (_, 1) => "icmp".into(),
            (_, 6) => "tcp".into(),
            (_, 17) => "udp".into(),
            (_, 58) => "icmp6".into(),
            (0x0800 | 0x86dd, p) => format!("ip/{p}"),
            (t, _) => format!("eth/0x{t:04x}"),
        }
    }
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ep = |ip: Option<IpAddr>, port: u16| match (ip, port) {
            (Some(IpAddr::V6(a)), p) if p != 0 => format!("[{a}]:{p}"),
            (Some(a), p) if p != 0 => format!("{a}:{p}"),
            (Some(a), _) => a.to_string(),
            (None, _) => "?".into(),
        };
        write!(
            f,
            "{} {} -> {}",
            self.proto_name(),
            ep(self.src, self.sport),
            ep(self.dst, self.dport)
        )
    }
}

/// How a packet's trip through the datapath ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Output {
        port: u32,
    },
    Drop {
        reason: u32,
        /// Static for the named reasons: a dropped packet allocates nothing for it.
        reason_name: Cow<'static, str>,
    },
    /// Sent to ovs-vswitchd (cmd 1: a miss, 2: a userspace() action).
    Upcall {
        cmd: u32,
    },
    /// No end was seen before the packet was given up on (its end was not probed, or lost).
    Unknown,
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketEvent {
    pub ts_ns: u64,
    pub cpu: u32,
    pub skb: u64,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ufid: Option<Uuid>,
    pub recirc_id: u32,
    pub in_port: u32,
    pub reason: u32,
    pub len: u32,
    pub latency_ns: u64,
    pub packet: Packet,
    /// The packet is one ovs-vswitchd executed after its upcall, with the actions of the flow
    /// it installed for it (`ufid`), and no datapath pass of it was seen since (an end event:
    /// drop, output, upcall). Absent in recordings made before it existed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub after_upcall: bool,
    /// A drop decided at the install of a flow with no actions (kernels without OVS drop
    /// reasons; [`detrace_common::EVENT_AT_INSTALL`]): no skb (0), `packet` is the flow's
    /// masked key (wildcarded fields zero), `len` 0. It ends the trip that missed into it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub at_install: bool,
}

pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

pub(crate) fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pass,
    Upcall,
    Drop,
    Output,
    /// ovs-vswitchd executing the packet after its upcall (see [`EventKind::Execute`]).
    Execute,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of unknown kind {0}")]
    Kind(u32),
    #[error("event record of {got} bytes, expected {want}")]
    Size { got: usize, want: usize },
}

impl PacketEvent {
    pub fn decode(e: &Event) -> Result<Self, DecodeError> {
        let kind = match EventKind::try_from(e.kind).map_err(DecodeError::Kind)? {
            EventKind::Pass => Kind::Pass,
            EventKind::Upcall => Kind::Upcall,
            EventKind::Drop => Kind::Drop,
            EventKind::Output => Kind::Output,
            EventKind::Execute => Kind::Execute,
        };
        let ufid = (e.ufid != [0; 4]).then(|| Uuid::from_words(e.ufid));
        Ok(Self {
            ts_ns: e.ts_ns,
            cpu: e.cpu,
            skb: e.skb,
            kind,
            ufid,
            recirc_id: e.recirc_id,
            in_port: e.in_port,
            reason: e.reason,
            len: e.len,
            latency_ns: e.latency_ns,
            packet: Packet::from_wire(&e.key),
            after_upcall: e.flags & EVENT_AFTER_UPCALL != 0,
            at_install: e.flags & EVENT_AT_INSTALL != 0,
        })
    }

    /// Decodes a raw ring-buffer record: the size is checked and the bytes copied out
    /// (read_unaligned), never reinterpreted in place.
    pub fn decode_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let want = std::mem::size_of::<Event>();
        if b.len() != want {
            return Err(DecodeError::Size { got: b.len(), want });
        }
        // SAFETY: the length is exactly size_of::<Event>(), Event is repr(C) plain integers
        // (every bit pattern valid), and read_unaligned has no alignment requirement.
        let e = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Event>()) };
        Self::decode(&e)
    }
}

/// Names of OVS's drop reasons (net/openvswitch/drop.h, SKB_DROP_REASON_SUBSYS_OPENVSWITCH)
/// and of the core reasons a datapath drop most often carries.
pub fn drop_reason_name(reason: u32) -> String {
    drop_reason(reason).into_owned()
}

/// [`drop_reason_name`], without allocating for the named reasons.
pub fn drop_reason(reason: u32) -> Cow<'static, str> {
    const OVS: [&str; 12] = [
        "OVS_DROP_REASON_0",
        "OVS_DROP_LAST_ACTION",
        "OVS_DROP_ACTION_ERROR",
        "OVS_DROP_EXPLICIT",
        "OVS_DROP_EXPLICIT_WITH_ERROR",
        "OVS_DROP_METER",
        "OVS_DROP_RECURSION_LIMIT",
        "OVS_DROP_DEFERRED_LIMIT",
        "OVS_DROP_FRAG_L2_TOO_LONG",
        "OVS_DROP_FRAG_INVALID_PROTO",
        "OVS_DROP_CONNTRACK",
        "OVS_DROP_IP_TTL",
    ];
    if reason == detrace_common::DROP_NO_ACTIONS {
        // A kernel without OVS drop reasons: the flow's actions sent the packet nowhere.
        return "no actions".into();
    }
    if reason & 0xffff_0000 == OVS_DROP_REASON_BASE {
        return OVS
            .get((reason & 0xffff) as usize)
            .map_or_else(|| format!("OVS_DROP_0x{reason:x}").into(), |s| (*s).into());
    }
    // include/net/dropreason-core.h (Linux 6.12); numbering changes between kernels, so only
    // the stable first entries are named.
    match reason {
        1 => "SKB_DROP_REASON_NOT_SPECIFIED".into(),
        2 => "SKB_DROP_REASON_NO_SOCKET".into(),
        other => format!("skb_drop_reason {other}").into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;

    pub fn wire(kind: EventKind, skb: u64, ts: u64, ufid: [u32; 4], recirc: u32) -> Event {
        let mut key = detrace_common::PacketKey {
            ip_version: 4,
            proto: 6,
            eth_type: 0x0800,
            sport: 4242,
            dport: 80,
            ..Default::default()
        };
        key.src[..4].copy_from_slice(&[10, 244, 1, 4]);
        key.dst[..4].copy_from_slice(&[10, 244, 1, 42]);
        Event {
            kind: kind as u32,
            skb,
            ts_ns: ts,
            ufid,
            recirc_id: recirc,
            in_port: 3,
            len: 74,
            key,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_the_wire_format() {
        let e = wire(
            EventKind::Pass,
            0xffff_8880_0000_1000,
            5,
            [0xafa73c50, 0xee584f65, 0x8cd27fb5, 0xd0271ae4],
            0,
        );
        // SAFETY: Event is repr(C) plain integers; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const Event).cast::<u8>(),
                std::mem::size_of::<Event>(),
            )
        };
        let d = PacketEvent::decode_bytes(bytes).unwrap();
        assert_eq!(d.kind, Kind::Pass);
        assert_eq!(
            d.ufid.unwrap().to_string(),
            "afa73c50-ee58-4f65-8cd2-7fb5d0271ae4"
        );
        assert_eq!(
            d.packet.to_string(),
            "tcp 10.244.1.4:4242 -> 10.244.1.42:80"
        );
        assert_eq!(
            PacketEvent::decode_bytes(&bytes[..50]),
            Err(DecodeError::Size { got: 50, want: 112 })
        );
        let mut bad = e;
        bad.kind = 99;
        assert_eq!(PacketEvent::decode(&bad), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn drop_reason_names() {
        assert_eq!(drop_reason_name(0x30003), "OVS_DROP_EXPLICIT");
        assert_eq!(drop_reason_name(0x3000b), "OVS_DROP_IP_TTL");
        assert_eq!(
            drop_reason_name(detrace_common::DROP_NO_ACTIONS),
            "no actions"
        );
        assert_eq!(drop_reason_name(0x30099), "OVS_DROP_0x30099");
        assert_eq!(drop_reason_name(1), "SKB_DROP_REASON_NOT_SPECIFIED");
        assert_eq!(drop_reason_name(77), "skb_drop_reason 77");
        assert!(matches!(
            drop_reason(0x30003),
            Cow::Borrowed("OVS_DROP_EXPLICIT")
        ));
        assert!(matches!(drop_reason(0x30099), Cow::Owned(_)));
    }
}
