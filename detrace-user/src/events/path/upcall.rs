//! The packet ovs-vswitchd sends back after an upcall: a trace that ended in a miss is held
//! for its continuation (see the module doc of [`super`]).

use std::net::IpAddr;

use super::{Open, PacketTrace, Pass, PathAssembler};
use crate::events::{Kind, Packet, PacketEvent, Verdict};

/// How long a trace that ended in a miss upcall waits for its continuation.
pub const HOLD_NS: u64 = 1_000_000_000;

/// OVS_PACKET_CMD_MISS: the packet went to ovs-vswitchd for want of a flow.
pub(super) const CMD_MISS: u32 = 1;

/// What recognises a packet across its upcall: its input port and fields at the miss.
pub(super) type HoldKey = (u32, Packet);

impl PathAssembler {
    /// Keeps a trace that ended in a miss upcall for its continuation.
    pub(super) fn hold(
        &mut self,
        mut t: PacketTrace,
        key: HoldKey,
        miss_recirc: u32,
        verdict: Verdict,
        latency_ns: u64,
        out: &mut Vec<PacketTrace>,
    ) {
        t.verdict = verdict;
        t.latency_ns = latency_ns;
        if self.held_len >= self.max_open {
            self.release_oldest(out);
        }
        self.held_order.push_back((key.clone(), t.ts_ns));
        self.held
            .entry(key)
            .or_default()
            .push_back((t, miss_recirc));
        self.held_len += 1;
    }

    /// The oldest held trace of `key`, if any.
    pub(super) fn take_held(&mut self, key: &HoldKey) -> Option<PacketTrace> {
        let q = self.held.get_mut(key)?;
        let (t, _) = q.pop_front()?;
        if q.is_empty() {
            self.held.remove(key);
        }
        self.held_len -= 1;
        Some(t)
    }

    fn release_oldest(&mut self, out: &mut Vec<PacketTrace>) -> Option<u64> {
        while let Some((key, ts)) = self.held_order.pop_front() {
            // Entries of traces taken by a continuation are stale: skip them.
            let front = self
                .held
                .get(&key)
                .and_then(|q| q.front())
                .map(|t| t.0.ts_ns);
            if front == Some(ts)
                && let Some(t) = self.take_held(&key)
            {
                self.stats.traces += 1;
                out.push(t);
                return Some(ts);
            }
        }
        None
    }

    /// Releases held traces older than [`HOLD_NS`] as they are (their continuation did not
    /// come).
    pub(super) fn release_held_before(&mut self, now_ns: u64, out: &mut Vec<PacketTrace>) {
        while let Some((key, ts)) = self.held_order.front() {
            let live = self
                .held
                .get(key)
                .and_then(|q| q.front())
                .map(|t| t.0.ts_ns)
                == Some(*ts);
            if live && now_ns.saturating_sub(*ts) < HOLD_NS {
                break;
            }
            if live {
                self.release_oldest(out);
            } else {
                self.held_order.pop_front();
            }
        }
    }

    /// Releases every held trace (at the end of a run).
    pub fn release_held(&mut self, out: &mut Vec<PacketTrace>) {
        while self.release_oldest(out).is_some() {}
        self.held.clear();
        self.held_order.clear();
        self.held_len = 0;
    }

    /// Traces waiting for the continuation of their upcall.
    pub fn held_len(&self) -> usize {
        self.held_len
    }

    /// ovs-vswitchd executes a packet after its upcall, as a new skb: its trip up to the
    /// upcall (held, same input port and fields) goes on under this skb, through the flow
    /// installed for it.
    pub(super) fn execute(&mut self, e: &PacketEvent, out: &mut Vec<PacketTrace>) {
        let Some(trace) = self.executed_trip(e, out) else {
            return;
        };
        self.make_room(out);
        self.order.push_back((e.skb, trace.ts_ns));
        self.open.insert(
            e.skb,
            Open {
                trace,
                last_ts: e.ts_ns,
            },
        );
    }

    /// The end of a packet ovs-vswitchd executed after its upcall whose execute event was not
    /// seen, before any datapath pass of it: its trip, through the flow installed for it.
    pub(super) fn after_upcall(
        &mut self,
        e: &PacketEvent,
        verdict: Verdict,
        out: &mut Vec<PacketTrace>,
    ) {
        let Some(mut t) = self.executed_trip(e, out) else {
            return;
        };
        let latency = if t.passes.len() > 1 {
            e.ts_ns.saturating_sub(t.ts_ns)
        } else {
            e.latency_ns
        };
        // Its actions may have recirculated it into another miss: then it goes up again, and
        // its trip goes on after that upcall too.
        if e.kind == Kind::Upcall && e.reason == CMD_MISS {
            self.hold(
                t,
                (e.in_port, e.packet.clone()),
                e.recirc_id,
                verdict,
                latency,
                out,
            );
        } else {
            t.after_upcall = true;
            self.finish(t, verdict, latency, out);
        }
    }

    /// A drop decided at the install of a flow with no actions (a kernel without OVS drop
    /// reasons; `e.at_install`): ovs-vswitchd executes nothing, so the packet whose miss
    /// installed the flow ended with its upcall. Its trip is the oldest held one that missed
    /// at the flow's input port and recirc_id with fields the flow's masked key agrees with;
    /// it ends through the flow. Without one (the packet was filtered out, or went up before
    /// the run) the event is dropped: the kernel counted the drop against the flow already.
    pub(super) fn install_drop(
        &mut self,
        e: &PacketEvent,
        verdict: Verdict,
        out: &mut Vec<PacketTrace>,
    ) {
        let Some(ufid) = e.ufid else {
            self.stats.orphan_ends += 1;
            return;
        };
        // Any of a key's queue may be it (a packet of the same fields may be held from an
        // earlier miss at another recirc_id), not only its front.
        let found = self
            .held
            .iter()
            .flat_map(|(k, q)| {
                q.iter()
                    .enumerate()
                    .map(move |(i, (t, recirc))| (k, i, t.ts_ns, *recirc))
            })
            .filter(|&(k, _, _, recirc)| {
                k.0 == e.in_port && recirc == e.recirc_id && agrees(&e.packet, &k.1)
            })
            .min_by_key(|&(_, _, ts, _)| ts)
            .map(|(k, i, _, _)| (k.clone(), i));
        let Some((key, i)) = found else {
            return;
        };
        let Some(q) = self.held.get_mut(&key) else {
            return;
        };
        let Some((mut t, _)) = q.remove(i) else {
            return;
        };
        if q.is_empty() {
            self.held.remove(&key);
        }
        // Its `held_order` entry goes stale: skipped when it comes up (see release_oldest).
        self.held_len -= 1;
        let packet = key.1;
        t.passes.push(Pass {
            ufid,
            recirc_id: e.recirc_id,
            ts_ns: e.ts_ns,
            packet,
            executed: true,
        });
        t.after_upcall = true;
        let latency = e.ts_ns.saturating_sub(t.ts_ns);
        self.finish(t, verdict, latency, out);
    }

    /// A packet executed by ovs-vswitchd (an execute or an end marked after-upcall): its trip
    /// so far, which is the held trip that went up with the same input port and fields (when
    /// it was seen: it may have been filtered out, lost, or before the run) plus the flow
    /// installed for it. The skb is a new one: a packet still open under its address is an
    /// earlier one that ended unseen.
    fn executed_trip(
        &mut self,
        e: &PacketEvent,
        out: &mut Vec<PacketTrace>,
    ) -> Option<PacketTrace> {
        if let Some(prev) = self.open.remove(&e.skb) {
            self.finish(prev.trace, Verdict::Unknown, 0, out);
            self.stats.unfinished += 1;
            self.trim_order();
        }
        let Some(ufid) = e.ufid else {
            self.stats.orphan_ends += 1;
            return None;
        };
        let pass = Pass {
            ufid,
            recirc_id: e.recirc_id,
            ts_ns: e.ts_ns,
            packet: e.packet.clone(),
            executed: true,
        };
        let held = if self.held.is_empty() {
            None
        } else {
            self.take_held(&(e.in_port, e.packet.clone()))
        };
        Some(match held {
            Some(mut t) => {
                t.passes.push(pass);
                t.verdict = Verdict::Unknown;
                t
            }
            None => PacketTrace {
                ts_ns: e.ts_ns,
                in_port: e.in_port,
                len: e.len,
                packet: e.packet.clone(),
                passes: vec![pass],
                verdict: Verdict::Unknown,
                latency_ns: 0,
                after_upcall: false,
            },
        })
    }
}

/// Whether a flow's masked key (`masked`: each field the packet's ANDed with the flow's mask,
/// which the event does not carry) can be the packet `p`'s: every bit set in a masked field
/// is set in the packet's. Masks are often prefixes (an address matched as a /24), so an
/// equality test would reject the packet that installed the flow.
fn agrees(masked: &Packet, p: &Packet) -> bool {
    fn within(m: &[u8], v: &[u8]) -> bool {
        m.len() == v.len() && m.iter().zip(v).all(|(m, v)| m & v == *m)
    }
    let ip = |m: Option<IpAddr>, v: Option<IpAddr>| match (m, v) {
        (None, _) => true,
        (Some(m), _) if m.is_unspecified() => true,
        (Some(IpAddr::V4(m)), Some(IpAddr::V4(v))) => within(&m.octets(), &v.octets()),
        (Some(IpAddr::V6(m)), Some(IpAddr::V6(v))) => within(&m.octets(), &v.octets()),
        _ => false,
    };
    ip(masked.src, p.src)
        && ip(masked.dst, p.dst)
        && masked.sport & p.sport == masked.sport
        && masked.dport & p.dport == masked.dport
        && masked.proto & p.proto == masked.proto
        && (masked.eth_type == 0 || masked.eth_type == p.eth_type)
}
