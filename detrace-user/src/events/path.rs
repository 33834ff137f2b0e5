//! Path assembly: a packet's passes through the datapath (one per recirculation) joined into
//! one trace, keyed by its sk_buff, and closed by its end (output, drop, upcall).
//!
//! A packet that misses goes to ovs-vswitchd, which executes it again as a new sk_buff: its
//! trip goes on under another identity. A trace that ends in a miss upcall is held (up to
//! [`HOLD_NS`]) for that continuation, recognised by its input port and fields: the executed
//! packet's end (marked after-upcall) or its next datapath pass (a recirculation of an skb not
//! seen before). The two halves become one trace, marked `after_upcall`, so that one packet
//! is shown once. A held trace whose continuation does not come (the packet was consumed,
//! or its events were filtered or lost) is released as it was.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Kind, Packet, PacketEvent, Verdict, drop_reason};
use crate::{FastMap, uuid::Uuid};

/// One datapath pass: the flow it hit and the packet as that pass saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pass {
    pub ufid: Uuid,
    pub recirc_id: u32,
    pub ts_ns: u64,
    pub packet: Packet,
    /// Not a flow hit: ovs-vswitchd executed the packet after its upcall with the actions of
    /// the flow it installed for it (this UFID), with no flow table lookup.
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub executed: bool,
}

/// A packet's whole trip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketTrace {
    pub ts_ns: u64,
    pub in_port: u32,
    pub len: u32,
    /// The packet as it entered (first pass).
    pub packet: Packet,
    pub passes: Vec<Pass>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Datapath time from the first pass to the end, as measured in the kernel.
    pub latency_ns: u64,
    /// The packet's end was decided by ovs-vswitchd executing it after its upcall: its last
    /// pass is the flow installed for it (`executed`), whose actions it ran without a flow
    /// table lookup (it counts for that flow's fate, not its packets). Earlier passes, when
    /// seen, are the packet's trip up to its upcall.
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub after_upcall: bool,
}

impl PacketTrace {
    /// The last flow the packet hit: the one its fate is attributed to.
    pub fn last_ufid(&self) -> Option<Uuid> {
        self.passes.last().map(|p| p.ufid)
    }
}

/// What the assembler had to give up on, reported next to the traces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssemblyStats {
    pub events: u64,
    pub traces: u64,
    /// Packets closed without an end event (timed out or their skb reused).
    pub unfinished: u64,
    /// Packets dropped from the table because it was full.
    pub evicted: u64,
    /// End events for packets whose passes were never seen (filtered out or lost).
    pub orphan_ends: u64,
}

/// How long a trace that ended in a miss upcall waits for its continuation.
pub const HOLD_NS: u64 = 1_000_000_000;

/// OVS_PACKET_CMD_MISS: the packet went to ovs-vswitchd for want of a flow.
const CMD_MISS: u32 = 1;

/// What recognises a packet across its upcall: its input port and fields at the miss.
type HoldKey = (u32, Packet);

/// Passes a packet's trace has room for from its first: a first pass and two recirculations
/// (conntrack, then NAT or a load balancer) without growing.
const PASSES_RESERVED: usize = 3;

struct Open {
    trace: PacketTrace,
    last_ts: u64,
}

/// Joins events into traces. Bounded: at most `max_open` packets in progress.
pub struct PathAssembler {
    open: FastMap<u64, Open>,
    order: VecDeque<(u64, u64)>,
    max_open: usize,
    timeout_ns: u64,
    pub stats: AssemblyStats,
    /// Traces ended by a miss upcall, waiting for their continuation (FIFO per key: packets
    /// of one flow come back in the order they went up).
    held: FastMap<HoldKey, VecDeque<PacketTrace>>,
    /// Held keys in the order they were held, with the time: for release.
    held_order: VecDeque<(HoldKey, u64)>,
    held_len: usize,
}

impl PathAssembler {
    pub fn new(max_open: usize, timeout_ns: u64) -> Self {
        Self {
            open: FastMap::default(),
            order: VecDeque::new(),
            max_open: max_open.max(1),
            timeout_ns,
            stats: AssemblyStats::default(),
            held: FastMap::default(),
            held_order: VecDeque::new(),
            held_len: 0,
        }
    }

    /// Keeps a trace that ended in a miss upcall for its continuation.
    fn hold(
        &mut self,
        mut t: PacketTrace,
        key: HoldKey,
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
        self.held.entry(key).or_default().push_back(t);
        self.held_len += 1;
    }

    /// The oldest held trace of `key`, if any.
    fn take_held(&mut self, key: &HoldKey) -> Option<PacketTrace> {
        let q = self.held.get_mut(key)?;
        let t = q.pop_front()?;
        if q.is_empty() {
            self.held.remove(key);
        }
        self.held_len -= 1;
        Some(t)
    }

    fn release_oldest(&mut self, out: &mut Vec<PacketTrace>) -> Option<u64> {
        while let Some((key, ts)) = self.held_order.pop_front() {
            // Entries of traces taken by a continuation are stale: skip them.
            let front = self.held.get(&key).and_then(|q| q.front()).map(|t| t.ts_ns);
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
    fn release_held_before(&mut self, now_ns: u64, out: &mut Vec<PacketTrace>) {
        while let Some((key, ts)) = self.held_order.front() {
            let live = self.held.get(key).and_then(|q| q.front()).map(|t| t.ts_ns) == Some(*ts);
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

    /// Feeds one event; finished traces are appended to `out`.
    pub fn push(&mut self, e: &PacketEvent, out: &mut Vec<PacketTrace>) {
        self.stats.events += 1;
        match e.kind {
            Kind::Pass => {
                let Some(ufid) = e.ufid else { return };
                // A first pass (recirc_id 0) on an skb we still hold means the earlier packet in
                // that buffer ended unseen: close it as unfinished.
                if e.recirc_id == 0
                    && let Some(prev) = self.open.remove(&e.skb)
                {
                    self.finish(prev.trace, Verdict::Unknown, 0, out);
                    self.stats.unfinished += 1;
                    self.trim_order();
                }
                let pass = Pass {
                    ufid,
                    recirc_id: e.recirc_id,
                    ts_ns: e.ts_ns,
                    packet: e.packet.clone(),
                    executed: false,
                };
                match self.open.get_mut(&e.skb) {
                    Some(o) => {
                        o.trace.passes.push(pass);
                        o.last_ts = e.ts_ns;
                    }
                    None => {
                        self.make_room(out);
                        // A recirculation of an skb never seen: ovs-vswitchd executing a packet
                        // after its upcall, whose actions recirculated it.
                        if e.recirc_id != 0
                            && !self.held.is_empty()
                            && let Some(mut t) = self.take_held(&(e.in_port, e.packet.clone()))
                        {
                            // Its end, when it comes, is a kernel pass's doing.
                            t.passes.push(pass);
                            t.verdict = Verdict::Unknown;
                            self.open.insert(
                                e.skb,
                                Open {
                                    trace: t,
                                    last_ts: e.ts_ns,
                                },
                            );
                            self.order.push_back((e.skb, self.open[&e.skb].trace.ts_ns));
                            return;
                        }
                        // Room for the usual passes (conntrack recirculations) at once: no
                        // reallocation while the packet is in flight.
                        let mut passes = Vec::with_capacity(PASSES_RESERVED);
                        passes.push(pass);
                        self.open.insert(
                            e.skb,
                            Open {
                                trace: PacketTrace {
                                    ts_ns: e.ts_ns,
                                    in_port: e.in_port,
                                    len: e.len,
                                    packet: e.packet.clone(),
                                    passes,
                                    verdict: Verdict::Unknown,
                                    latency_ns: 0,
                                    after_upcall: false,
                                },
                                last_ts: e.ts_ns,
                            },
                        );
                        self.order.push_back((e.skb, e.ts_ns));
                    }
                }
            }
            Kind::Execute => self.execute(e, out),
            Kind::Output | Kind::Drop | Kind::Upcall => {
                let verdict = match e.kind {
                    Kind::Output => Verdict::Output { port: e.reason },
                    Kind::Drop => Verdict::Drop {
                        reason: e.reason,
                        reason_name: drop_reason(e.reason),
                    },
                    _ => Verdict::Upcall { cmd: e.reason },
                };
                // An end right after an execute whose event was not seen (filtered, lost,
                // or probes of an older detrace in a recording).
                // (The mark says no kernel pass came after the execute: a trace the execute
                // opened ends with its executed pass; any other under this skb is stale.)
                let opened_by_execute = self
                    .open
                    .get(&e.skb)
                    .and_then(|o| o.trace.passes.last())
                    .is_some_and(|p| p.executed);
                if e.after_upcall && !opened_by_execute {
                    self.after_upcall(e, verdict, out);
                    return;
                }
                let miss = e.kind == Kind::Upcall && e.reason == CMD_MISS;
                match self.open.remove(&e.skb) {
                    Some(o) if miss => {
                        let latency = e.ts_ns.saturating_sub(o.trace.ts_ns);
                        self.hold(
                            o.trace,
                            (e.in_port, e.packet.clone()),
                            verdict,
                            latency,
                            out,
                        );
                        self.trim_order();
                    }
                    Some(mut o) => {
                        let latency = if o.trace.passes.iter().any(|p| p.executed) {
                            // From the first pass, through ovs-vswitchd, to this end.
                            e.ts_ns.saturating_sub(o.trace.ts_ns)
                        } else {
                            e.latency_ns
                        };
                        // Decided by the executed flow's actions, no kernel pass since.
                        o.trace.after_upcall = e.after_upcall;
                        self.finish(o.trace, verdict, latency, out);
                        self.trim_order();
                    }
                    // A miss on a packet's first pass: the upcall is its whole trip so far.
                    None if e.kind == Kind::Upcall => {
                        let t = PacketTrace {
                            ts_ns: e.ts_ns,
                            in_port: e.in_port,
                            len: e.len,
                            packet: e.packet.clone(),
                            passes: Vec::new(),
                            verdict: Verdict::Unknown,
                            latency_ns: 0,
                            after_upcall: false,
                        };
                        if miss {
                            self.hold(t, (e.in_port, e.packet.clone()), verdict, e.latency_ns, out);
                        } else {
                            self.finish(t, verdict, e.latency_ns, out);
                        }
                    }
                    None => self.stats.orphan_ends += 1,
                }
            }
        }
    }

    /// ovs-vswitchd executes a packet after its upcall, as a new skb: its trip up to the
    /// upcall (held, same input port and fields) goes on under this skb, through the flow
    /// installed for it.
    fn execute(&mut self, e: &PacketEvent, out: &mut Vec<PacketTrace>) {
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
    fn after_upcall(&mut self, e: &PacketEvent, verdict: Verdict, out: &mut Vec<PacketTrace>) {
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
            self.hold(t, (e.in_port, e.packet.clone()), verdict, latency, out);
        } else {
            t.after_upcall = true;
            self.finish(t, verdict, latency, out);
        }
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

    fn finish(
        &mut self,
        mut t: PacketTrace,
        verdict: Verdict,
        latency_ns: u64,
        out: &mut Vec<PacketTrace>,
    ) {
        t.verdict = verdict;
        t.latency_ns = latency_ns;
        self.stats.traces += 1;
        out.push(t);
    }

    /// Whether an `order` entry still names an open packet (not one finished since).
    fn is_open(&self, skb: u64, ts: u64) -> bool {
        self.open.get(&skb).is_some_and(|o| o.trace.ts_ns == ts)
    }

    /// Keeps `order` bounded by the open packets: entries of finished packets are dropped from
    /// its front as they come up, and all at once when a long-open packet holds the front and
    /// they pile up behind it (amortized O(1) per packet).
    fn trim_order(&mut self) {
        while let Some(&(skb, ts)) = self.order.front() {
            if self.is_open(skb, ts) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.max_open {
            let open = &self.open;
            self.order
                .retain(|&(skb, ts)| open.get(&skb).is_some_and(|o| o.trace.ts_ns == ts));
        }
    }

    /// Entries in the start order (bounded by twice the open packets' bound).
    pub fn order_len(&self) -> usize {
        self.order.len()
    }

    fn make_room(&mut self, out: &mut Vec<PacketTrace>) {
        while self.open.len() >= self.max_open {
            let Some((skb, ts)) = self.order.pop_front() else {
                break;
            };
            if let Some(o) = self.open.get(&skb)
                && o.trace.ts_ns == ts
                && let Some(o) = self.open.remove(&skb)
            {
                self.stats.evicted += 1;
                self.finish(o.trace, Verdict::Unknown, 0, out);
            }
        }
    }

    /// Closes packets idle for longer than the timeout (their end was not seen), and releases
    /// held upcalls whose continuation did not come within [`HOLD_NS`].
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<PacketTrace>) {
        self.release_held_before(now_ns, out);
        while let Some(&(skb, ts)) = self.order.front() {
            let Some(o) = self.open.get(&skb).filter(|o| o.trace.ts_ns == ts) else {
                self.order.pop_front();
                continue;
            };
            if now_ns.saturating_sub(o.last_ts) < self.timeout_ns {
                break;
            }
            self.order.pop_front();
            if let Some(o) = self.open.remove(&skb) {
                self.stats.unfinished += 1;
                self.finish(o.trace, Verdict::Unknown, 0, out);
            }
        }
    }

    pub fn open_len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
pub(crate) mod tests {
    use detrace_common::EventKind;

    use super::*;
    use crate::events::tests::wire;

    fn ev(kind: EventKind, skb: u64, ts: u64, ufid: u32, recirc: u32, reason: u32) -> PacketEvent {
        let mut w = wire(
            kind,
            skb,
            ts,
            if ufid == 0 { [0; 4] } else { [ufid, 0, 0, 1] },
            recirc,
        );
        w.reason = reason;
        w.latency_ns = if kind == EventKind::Pass {
            0
        } else {
            ts.saturating_sub(100)
        };
        PacketEvent::decode(&w).unwrap()
    }

    #[test]
    fn recirculations_join_into_one_trace() {
        let mut a = PathAssembler::new(16, 1_000_000_000);
        let mut out = Vec::new();
        // Two packets interleaved on two skbs; the first recirculates twice then is output.
        for e in [
            ev(EventKind::Pass, 1, 100, 0xa, 0, 0),
            ev(EventKind::Pass, 2, 110, 0xb, 0, 0),
            ev(EventKind::Pass, 1, 120, 0xc, 0x25, 0),
            ev(EventKind::Pass, 1, 130, 0xd, 0x28, 0),
            ev(EventKind::Output, 1, 140, 0, 0, 7),
            ev(EventKind::Drop, 2, 150, 0xb, 0, 0x30003),
        ] {
            a.push(&e, &mut out);
        }
        assert_eq!(out.len(), 2);
        let ids: Vec<u32> = out[0]
            .passes
            .iter()
            .map(|p| (p.ufid.0 >> 96) as u32)
            .collect();
        assert_eq!(ids, vec![0xa, 0xc, 0xd]);
        assert_eq!(out[0].passes[1].recirc_id, 0x25);
        assert_eq!(out[0].verdict, Verdict::Output { port: 7 });
        assert_eq!(out[0].latency_ns, 40);
        assert_eq!(
            out[1].verdict,
            Verdict::Drop {
                reason: 0x30003,
                reason_name: "OVS_DROP_EXPLICIT".into()
            }
        );
        assert_eq!(out[1].last_ufid().map(|u| (u.0 >> 96) as u32), Some(0xb));
        assert_eq!(a.open_len(), 0);
    }

    /// A new conversation's first packet in the lab: a miss (its only kernel pass), then
    /// ovs-vswitchd executes it with the flow it installed, whose drop action frees it; the
    /// next packet hits that flow in the kernel.
    #[test]
    fn a_drop_after_upcall_is_a_trace_of_the_installed_flow() {
        let mut a = PathAssembler::new(16, 1_000_000_000);
        let mut out = Vec::new();
        let mut executed = ev(EventKind::Drop, 5, 200, 0xe, 0x7, 0x30003);
        executed.after_upcall = true;
        // An earlier packet left open under the executed skb's address ended unseen.
        a.push(&ev(EventKind::Pass, 5, 50, 0xa, 0, 0), &mut out);
        a.push(&ev(EventKind::Upcall, 4, 100, 0, 0, 1), &mut out);
        a.push(&executed, &mut out);
        a.push(&ev(EventKind::Pass, 6, 300, 0xe, 0x7, 0), &mut out);
        a.push(&ev(EventKind::Drop, 6, 310, 0xe, 0x7, 0x30003), &mut out);
        let v: Vec<(bool, Option<u32>, &Verdict)> = out
            .iter()
            .map(|t| {
                (
                    t.after_upcall,
                    t.last_ufid().map(|u| (u.0 >> 96) as u32),
                    &t.verdict,
                )
            })
            .collect();
        let drop = Verdict::Drop {
            reason: 0x30003,
            reason_name: "OVS_DROP_EXPLICIT".into(),
        };
        // The miss and the execute are one packet: shown once, ending in the installed flow.
        assert_eq!(
            v,
            vec![
                (false, Some(0xa), &Verdict::Unknown),
                (true, Some(0xe), &drop),
                (false, Some(0xe), &drop),
            ]
        );
        assert_eq!((a.stats.orphan_ends, a.stats.unfinished), (0, 1));
        assert_eq!(a.stats.traces, 3);
        assert_eq!(a.held_len(), 0);
        assert_eq!(out[1].passes[0].recirc_id, 0x7);
        assert!(out[1].passes[0].executed);
        assert_eq!(out[1].ts_ns, 100, "the packet's trip starts at its miss");
        assert_eq!(out[1].latency_ns, 100, "through ovs-vswitchd to its drop");
        // Replayed, the executed packet counts as a drop of its flow, not as a pass.
        let mut t = crate::aggregate::FlowTable::default();
        out.iter().for_each(|tr| t.add_trace(tr));
        let s = t.stats()[&Uuid::from_words([0xe, 0, 0, 1])];
        assert_eq!((s.packets, s.drops, s.drops_after_upcall), (1, 2, 1));
        // The mark is written only when set: old recordings read back unchanged.
        let json = serde_json::to_string(&out[2]).unwrap();
        assert!(
            !json.contains("after_upcall") && !json.contains("executed"),
            "{json}"
        );
        let json = serde_json::to_string(&out[1]).unwrap();
        assert!(json.contains("\"after_upcall\":true"), "{json}");
        let back: PacketTrace = serde_json::from_str(&json).unwrap();
        assert_eq!(back, out[1]);
    }

    /// A packet that hits a flow, misses at its recirculation, and comes back from
    /// ovs-vswitchd recirculated again (a pass of an skb never seen, with its fields): one
    /// trace, ended in the kernel. Another miss whose packet never comes back is released as it
    /// was when the run ends.
    #[test]
    fn a_miss_and_its_continuation_are_one_packet() {
        let mut a = PathAssembler::new(16, 1_000_000_000);
        let mut out = Vec::new();
        a.push(&ev(EventKind::Pass, 1, 100, 0xa, 0, 0), &mut out);
        a.push(&ev(EventKind::Upcall, 1, 110, 0xa, 0x5, 1), &mut out);
        a.push(&ev(EventKind::Upcall, 3, 120, 0, 0, 1), &mut out);
        assert!(out.is_empty());
        assert_eq!(a.held_len(), 2);
        // Executed as skb 2: ct, then recirculated to a flow the kernel has.
        a.push(&ev(EventKind::Pass, 2, 300, 0xb, 0x6, 0), &mut out);
        a.push(&ev(EventKind::Output, 2, 310, 0, 0, 4), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let t = &out[0];
        let ids: Vec<u32> = t.passes.iter().map(|p| (p.ufid.0 >> 96) as u32).collect();
        assert_eq!(ids, vec![0xa, 0xb]);
        assert_eq!(t.verdict, Verdict::Output { port: 4 });
        assert!(!t.after_upcall, "its end was a kernel pass's doing");
        assert_eq!((t.ts_ns, t.latency_ns), (100, 210));
        // The second miss: the same fields, but its continuation never came.
        assert_eq!(a.held_len(), 1);
        a.release_held(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].verdict, Verdict::Upcall { cmd: 1 });
        assert_eq!(a.stats.traces, 2);
        assert_eq!(a.held_len(), 0);
    }

    /// A new conversation through two new flows: the miss at its first pass, the executed
    /// packet recirculated into a second miss (its upcall marked after-upcall), executed again
    /// and dropped. One packet, one trace, both executed flows in its path.
    #[test]
    fn two_upcalls_in_a_row_are_one_packet() {
        let mut a = PathAssembler::new(16, 1_000_000_000);
        let mut out = Vec::new();
        a.push(&ev(EventKind::Upcall, 1, 100, 0, 0, 1), &mut out);
        let mut up2 = ev(EventKind::Upcall, 2, 200, 0xa, 0x5, 1);
        up2.after_upcall = true;
        a.push(&up2, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.held_len(), 1, "the second upcall continues the first");
        let mut drop = ev(EventKind::Drop, 3, 300, 0xb, 0x5, 0x30003);
        drop.after_upcall = true;
        a.push(&drop, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let t = &out[0];
        let path: Vec<(u32, bool)> = t
            .passes
            .iter()
            .map(|p| ((p.ufid.0 >> 96) as u32, p.executed))
            .collect();
        assert_eq!(path, vec![(0xa, true), (0xb, true)]);
        assert!(t.after_upcall && matches!(t.verdict, Verdict::Drop { .. }));
        assert_eq!((t.ts_ns, t.latency_ns), (100, 200));
        assert_eq!(a.held_len(), 0);
    }

    /// With the execute seen (its event carries the installed flow and the packet's fields
    /// as it went up): the trip goes on under the executed skb, through the kernel passes that
    /// follow, to its end; an end right after an execute is the executed flow's doing.
    #[test]
    fn an_execute_continues_the_trip_that_went_up() {
        let mut a = PathAssembler::new(16, 1_000_000_000);
        let mut out = Vec::new();
        a.push(&ev(EventKind::Pass, 1, 100, 0xa, 0, 0), &mut out);
        a.push(&ev(EventKind::Upcall, 1, 110, 0xa, 0x5, 1), &mut out);
        let mut exec = ev(EventKind::Execute, 7, 200, 0xe, 0x5, 0);
        exec.after_upcall = true;
        a.push(&exec, &mut out);
        a.push(&ev(EventKind::Pass, 7, 210, 0xf, 0x6, 0), &mut out);
        a.push(&ev(EventKind::Output, 7, 220, 0xf, 0x6, 3), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let path: Vec<(u32, bool)> = out[0]
            .passes
            .iter()
            .map(|p| ((p.ufid.0 >> 96) as u32, p.executed))
            .collect();
        assert_eq!(path, vec![(0xa, false), (0xe, true), (0xf, false)]);
        assert_eq!(out[0].verdict, Verdict::Output { port: 3 });
        assert!(!out[0].after_upcall, "ended by a kernel pass");
        assert_eq!(out[0].latency_ns, 120);
        // An execute whose actions drop at once: the installed flow decided.
        a.push(&ev(EventKind::Upcall, 2, 300, 0, 0, 1), &mut out);
        let mut exec = ev(EventKind::Execute, 8, 400, 0xe, 0x5, 0);
        exec.after_upcall = true;
        a.push(&exec, &mut out);
        let mut drop = ev(EventKind::Drop, 8, 410, 0xe, 0x5, 0x30003);
        drop.after_upcall = true;
        a.push(&drop, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out[1].after_upcall && matches!(out[1].verdict, Verdict::Drop { .. }));
        assert_eq!(out[1].passes.len(), 1);
        assert_eq!((a.held_len(), a.open_len(), a.stats.traces), (0, 0, 2));
    }

    #[test]
    fn misses_orphans_reuse_timeouts_and_bounds() {
        let mut a = PathAssembler::new(2, 1000);
        let mut out = Vec::new();
        a.push(&ev(EventKind::Upcall, 9, 10, 0, 0, 1), &mut out);
        assert!(out.is_empty(), "held for its continuation");
        a.expire(10 + HOLD_NS / 2, &mut out);
        assert!(out.is_empty(), "still held");
        a.expire(10 + HOLD_NS, &mut out);
        assert_eq!(out.pop().unwrap().verdict, Verdict::Upcall { cmd: 1 });
        assert_eq!(a.held_len(), 0);
        a.push(&ev(EventKind::Drop, 8, 20, 0, 0, 0x30003), &mut out);
        assert_eq!(a.stats.orphan_ends, 1);
        assert!(out.is_empty());
        // skb 1 reused by a new packet before its end was seen.
        a.push(&ev(EventKind::Pass, 1, 30, 0xa, 0, 0), &mut out);
        a.push(&ev(EventKind::Pass, 1, 40, 0xb, 0, 0), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].verdict, Verdict::Unknown);
        assert_eq!(a.stats.unfinished, 1);
        // Table of 2: a third packet evicts the oldest.
        a.push(&ev(EventKind::Pass, 2, 50, 0xa, 0, 0), &mut out);
        a.push(&ev(EventKind::Pass, 3, 60, 0xa, 0, 0), &mut out);
        assert_eq!(a.stats.evicted, 1);
        assert_eq!(a.open_len(), 2);
        // Timeout closes the rest.
        a.expire(10_000, &mut out);
        assert_eq!(a.open_len(), 0);
        assert_eq!(a.stats.traces as usize, out.len() + 1);
    }

    /// A packet whose end never comes holds the front of the start order while thousands of
    /// others come and go behind it: the order stays bounded, and both the old packet and the
    /// eviction bound still work.
    #[test]
    fn start_order_stays_bounded_behind_a_stuck_packet() {
        let mut a = PathAssembler::new(8, u64::MAX);
        let mut out = Vec::new();
        a.push(&ev(EventKind::Pass, 1, 10, 0xa, 0, 0), &mut out);
        for i in 0..10_000u64 {
            let skb = 100 + i % 5;
            a.push(&ev(EventKind::Pass, skb, 20 + 2 * i, 0xb, 0, 0), &mut out);
            a.push(&ev(EventKind::Output, skb, 21 + 2 * i, 0, 0, 2), &mut out);
            assert!(a.order_len() <= 16, "{} at {i}", a.order_len());
        }
        assert_eq!(out.len(), 10_000);
        assert!(out.iter().all(|t| t.verdict == Verdict::Output { port: 2 }));
        assert_eq!(a.open_len(), 1);
        // The stuck packet is still the oldest: the next packets over the bound evict it first.
        for skb in 200..208 {
            a.push(&ev(EventKind::Pass, skb, 50_000 + skb, 0xc, 0, 0), &mut out);
        }
        assert_eq!(a.stats.evicted, 1);
        let evicted = out.last().unwrap();
        assert_eq!((evicted.ts_ns, &evicted.verdict), (10, &Verdict::Unknown));
        assert_eq!(a.open_len(), 8);
    }

    /// Raw events recorded in the lab (Linux 6.12, OVS 3.5 kernel datapath): tests/fixtures/lab.
    #[derive(serde::Deserialize)]
    struct WireKey {
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        eth_type: u16,
        proto: u8,
        ip_version: u8,
    }
    #[derive(serde::Deserialize)]
    struct Wire {
        kind: u32,
        cpu: u32,
        ts_ns: u64,
        skb: u64,
        ufid: [u32; 4],
        recirc_id: u32,
        in_port: u32,
        reason: u32,
        len: u32,
        latency_ns: u64,
        key: WireKey,
        /// Absent in events recorded before it existed.
        #[serde(default)]
        flags: u32,
    }

    pub(crate) fn lab_events() -> Vec<PacketEvent> {
        crate::testutil::fixture_raw("lab/events-lab-6.12.jsonl")
            .lines()
            .map(|l| {
                let w: Wire = serde_json::from_str(l).unwrap();
                let k = detrace_common::PacketKey {
                    src: w.key.src,
                    dst: w.key.dst,
                    sport: w.key.sport,
                    dport: w.key.dport,
                    eth_type: w.key.eth_type,
                    proto: w.key.proto,
                    ip_version: w.key.ip_version,
                };
                let e = detrace_common::Event {
                    kind: w.kind,
                    cpu: w.cpu,
                    ts_ns: w.ts_ns,
                    skb: w.skb,
                    ufid: w.ufid,
                    recirc_id: w.recirc_id,
                    in_port: w.in_port,
                    reason: w.reason,
                    len: w.len,
                    latency_ns: w.latency_ns,
                    key: k,
                    flags: w.flags,
                    _pad: 0,
                };
                PacketEvent::decode(&e).unwrap()
            })
            .collect()
    }

    #[test]
    fn lab_capture_assembles_into_packets() {
        let events = lab_events();
        let mut a = PathAssembler::new(1024, u64::MAX);
        let mut out = Vec::new();
        for e in &events {
            a.push(e, &mut out);
        }
        a.release_held(&mut out);
        let ends = events.iter().filter(|e| e.kind != Kind::Pass).count();
        // Every end closes a packet (but ends of packets never seen); a packet whose end was not
        // seen is closed, as unfinished, when its skb starts a new packet.
        assert_eq!(
            out.len() as u64,
            ends as u64 - a.stats.orphan_ends + a.stats.unfinished,
            "{:?}",
            a.stats
        );
        assert!(
            out.iter().filter(|t| t.verdict == Verdict::Unknown).count() as u64
                == a.stats.unfinished
        );
        let flows = crate::testutil::fixture_raw("lab/events-lab-6.12.flows.txt");
        // The ACL drop: OVS_DROP_EXPLICIT, attributed to the flow matching tcp dst 9999.
        let drop = out
            .iter()
            .find(|t| matches!(t.verdict, Verdict::Drop { .. }))
            .unwrap();
        assert_eq!(
            drop.verdict,
            Verdict::Drop {
                reason: 0x30003,
                reason_name: "OVS_DROP_EXPLICIT".into()
            }
        );
        assert_eq!(drop.packet.dport, 9999);
        let last = drop.last_ufid().unwrap().to_string();
        let line = flows.lines().find(|l| l.contains(&last)).unwrap();
        assert!(line.contains("dst=9999"), "{line}");
        // A VIP connection: first pass to the VIP, later passes (after DNAT) to the backend.
        let vip = out
            .iter()
            .find(|t| {
                t.packet.dst.map(|d| d.to_string()) == Some("10.244.1.42".into())
                    && t.passes.len() >= 2
                    && matches!(t.verdict, Verdict::Output { .. })
            })
            .unwrap();
        assert_eq!(vip.passes[0].recirc_id, 0);
        assert!(vip.passes[1..].iter().all(|p| p.recirc_id != 0));
        assert!(
            vip.passes
                .iter()
                .any(|p| p.packet.dst.map(|d| d.to_string()) == Some("10.244.2.5".into())),
            "{vip:#?}"
        );
        assert_eq!(vip.verdict, Verdict::Output { port: 3 });
        assert!(vip.latency_ns > 0);
        // The miss after a recirculation ends its packet as an upcall.
        assert!(
            out.iter()
                .any(|t| t.verdict == Verdict::Upcall { cmd: 1 } && !t.passes.is_empty())
        );
    }
}
