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

mod upcall;

pub use upcall::HOLD_NS;
use upcall::{CMD_MISS, HoldKey};

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
    /// of one flow come back in the order they went up), each with the recirc_id it missed at.
    held: FastMap<HoldKey, VecDeque<(PacketTrace, u32)>>,
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

    /// Feeds one event; finished traces are appended to `out`.
    pub fn push(&mut self, e: &PacketEvent, out: &mut Vec<PacketTrace>) {
        self.stats.events += 1;
        match e.kind {
            Kind::Pass => self.pass(e, out),
            Kind::Execute => self.execute(e, out),
            Kind::Output | Kind::Drop | Kind::Upcall => self.end(e, out),
        }
    }

    /// A datapath pass: continues its skb's trace, or starts one.
    fn pass(&mut self, e: &PacketEvent, out: &mut Vec<PacketTrace>) {
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

    /// An output, a drop or an upcall: the end of its skb's trace (or, for a miss, held for
    /// what ovs-vswitchd does with the packet).
    fn end(&mut self, e: &PacketEvent, out: &mut Vec<PacketTrace>) {
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
        if e.at_install {
            self.install_drop(e, verdict, out);
            return;
        }
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
                    e.recirc_id,
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
                    self.hold(
                        t,
                        (e.in_port, e.packet.clone()),
                        e.recirc_id,
                        verdict,
                        e.latency_ns,
                        out,
                    );
                } else {
                    self.finish(t, verdict, e.latency_ns, out);
                }
            }
            None => self.stats.orphan_ends += 1,
        }
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
pub(crate) mod tests;
