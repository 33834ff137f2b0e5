//! The one pipeline every live command and `replay` run: source -> decode -> assemble ->
//! explain -> sinks. A source is the kernel's ring buffer (raw [`Event`]s, decoded and
//! assembled into packets here) or a recording (packets already assembled). The explain stage
//! settles what the sink [`Needs`] before the sink sees anything; sinks (watch, drops, top,
//! record, and whatever comes next: metrics) aggregate and render from a [`View`] of resolved
//! data, in which the explanation cache is only read (`peek`): no request to ovs-vswitchd can
//! start from a print path.

use detrace_common::{Event, FlowStats};

use super::{
    clock::{Clock, Ports},
    explainer::{ExplainCache, LookupRef},
    select::Selection,
    source::LossReport,
};
use crate::{
    FastMap,
    events::{
        Kind, PacketEvent, Verdict,
        path::{AssemblyStats, PacketTrace, PathAssembler},
    },
    explain::culprit::Culprit,
    live::explainer::ExplainStats,
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

/// What a sink needs explained before it renders.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Every pass of every packet, resolved when its packet ends (within the request budget);
    /// its explanation is prefetched when the pass arrives.
    pub passes: bool,
    /// Drops' flows, queued at first sight: the last flow of a dropped packet, and every flow
    /// the kernel counted drops on (its events may have been lost or rate-limited); resolved
    /// before a report.
    pub drops: bool,
    /// Every flow in the kernel's table, queued at first sight (`top`).
    pub flows: bool,
}

impl Needs {
    pub fn union(self, o: Self) -> Self {
        Self {
            passes: self.passes || o.passes,
            drops: self.drops || o.drops,
            flows: self.flows || o.flows,
        }
    }
}

/// What sinks read: resolved data only.
pub struct View<'a, A: Appctl> {
    pub cache: &'a ExplainCache<A>,
    pub clock: &'a Clock,
    pub ports: &'a Ports,
}

impl<A: Appctl> View<'_, A> {
    /// What is known of `ufid`: never a request.
    pub fn peek(&self, ufid: &Uuid) -> LookupRef<'_> {
        self.cache.peek(ufid)
    }

    /// The culprit of drops after `ufid`, as far as it is known.
    pub fn culprit(&self, ufid: Uuid) -> Culprit {
        match self.cache.peek(&ufid) {
            LookupRef::Explained(e) => e.summary.drop_culprit.clone(),
            LookupRef::Failed { error, .. } => {
                Culprit::unexplained(ufid, format!("unexplained: {error}"))
            }
            LookupRef::Pending => Culprit::unexplained(ufid, "unexplained (request budget)"),
        }
    }
}

/// The kernel's per-flow counters, as a sink gets them: every report interval (`last`
/// false) and once at the end.
pub struct FlowsAt<'a> {
    pub flows: &'a FastMap<Uuid, FlowStats>,
    /// The kernel's counters at the same time (None in a replay).
    pub kernel: Option<&'a LossReport>,
    pub last: bool,
}

/// What a run ends with.
pub struct RunEnd {
    pub loss: LossReport,
    pub assembly: AssemblyStats,
    pub explain: ExplainStats,
    pub malformed_events: u64,
}

/// A consumer of the pipeline: it aggregates and renders, from resolved data only.
pub trait Sink<A: Appctl> {
    fn needs(&self) -> Needs;
    /// A finished packet, its explanations settled as [`Self::needs`] asked (sinks that
    /// count from the kernel's per-flow counters alone ignore packets).
    fn packet(&mut self, _view: &View<'_, A>, _t: &PacketTrace) -> std::io::Result<()> {
        Ok(())
    }
    /// Per-flow counters (see [`FlowsAt`]).
    fn flows(&mut self, _view: &View<'_, A>, _at: &FlowsAt<'_>) -> std::io::Result<()> {
        Ok(())
    }
    /// Flows retired from the kernel's accounts (gone from its table for a while): their last
    /// counts, given once, before the [`Self::flows`] they are no longer in. A sink folds
    /// what it keeps of them now: their explanations are forgotten right after.
    fn retired(
        &mut self,
        _view: &View<'_, A>,
        _gone: &FastMap<Uuid, FlowStats>,
    ) -> std::io::Result<()> {
        Ok(())
    }
    /// The run is over (after the last [`Self::flows`]).
    fn finish(&mut self, _end: &RunEnd) -> std::io::Result<()> {
        Ok(())
    }
    /// What was rendered goes out now (output may be buffered).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Two sinks fed the same pipeline.
pub struct Tee<S1, S2>(pub S1, pub S2);

impl<A: Appctl, S1: Sink<A>, S2: Sink<A>> Sink<A> for Tee<S1, S2> {
    fn needs(&self) -> Needs {
        self.0.needs().union(self.1.needs())
    }
    fn packet(&mut self, view: &View<'_, A>, t: &PacketTrace) -> std::io::Result<()> {
        self.0.packet(view, t)?;
        self.1.packet(view, t)
    }
    fn flows(&mut self, view: &View<'_, A>, at: &FlowsAt<'_>) -> std::io::Result<()> {
        self.0.flows(view, at)?;
        self.1.flows(view, at)
    }
    fn retired(
        &mut self,
        view: &View<'_, A>,
        gone: &FastMap<Uuid, FlowStats>,
    ) -> std::io::Result<()> {
        self.0.retired(view, gone)?;
        self.1.retired(view, gone)
    }
    fn finish(&mut self, end: &RunEnd) -> std::io::Result<()> {
        self.0.finish(end)?;
        self.1.finish(end)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Decode, assembly and the explain stage, with what they keep between batches.
pub struct Pipeline<A: Appctl> {
    pub cache: ExplainCache<A>,
    pub clock: Clock,
    /// Datapath port names, for people.
    pub ports: Ports,
    pub asm: PathAssembler,
    pub decode_errors: u64,
    traces: Vec<PacketTrace>,
    /// ovs-vswitchd's generation the port names were read at.
    ovs_generation: u64,
    /// `--pod` / `--namespace`: the addresses the kernel filters on, kept current.
    pub selection: Option<Selection>,
}

impl<A: Appctl> Pipeline<A> {
    pub fn new(cache: ExplainCache<A>) -> Self {
        Self {
            cache,
            clock: Clock::new(),
            ports: Ports::new(),
            // A packet's passes take microseconds; one not finished in 2 s never will be.
            asm: PathAssembler::new(65_536, 2_000_000_000),
            decode_errors: 0,
            traces: Vec::new(),
            ovs_generation: 0,
            selection: None,
        }
    }

    /// The selected pods' addresses when they changed (pods came or went), said on stderr.
    pub fn refresh_selection(&mut self) -> Option<std::collections::BTreeSet<std::net::IpAddr>> {
        let sel = self.selection.as_mut()?;
        let nb = self.cache.nb()?;
        let now = sel.refresh(&nb)?.clone();
        eprintln!("detrace: {}", sel.describe());
        Some(now)
    }

    pub fn view(&self) -> View<'_, A> {
        View {
            cache: &self.cache,
            clock: &self.clock,
            ports: &self.ports,
        }
    }

    /// Decodes and assembles a batch of raw events; finished packets go to the sink.
    pub fn ingest(&mut self, events: &[Event], sink: &mut impl Sink<A>) -> std::io::Result<()> {
        // A sink that reads every pass's explanation when its packet ends: fetch it from
        // memory while the packet is still in flight.
        let warm = sink.needs().passes;
        for e in events {
            match PacketEvent::decode(e) {
                Ok(pe) => {
                    if let (true, Kind::Pass, Some(u)) = (warm, pe.kind, pe.ufid) {
                        self.cache.warm(u);
                    }
                    self.asm.push(&pe, &mut self.traces);
                }
                Err(err) => {
                    self.decode_errors += 1;
                    tracing::warn!("undecodable event: {err}");
                }
            }
        }
        self.deliver(sink)
    }

    /// Packets already assembled (a recording's) through the explain stage to the sink.
    pub fn feed(&mut self, traces: &[PacketTrace], sink: &mut impl Sink<A>) -> std::io::Result<()> {
        let needs = sink.needs();
        for t in traces {
            self.explain_packet(needs, t);
            sink.packet(&self.view(), t)?;
        }
        Ok(())
    }

    /// Closes packets whose end never came.
    pub fn expire(&mut self, sink: &mut impl Sink<A>) -> std::io::Result<()> {
        self.asm.expire(Clock::monotonic_now_ns(), &mut self.traces);
        self.deliver(sink)
    }

    /// At the end of a run: packets held for the continuation of their upcall go out as they
    /// are.
    pub fn release_held(&mut self, sink: &mut impl Sink<A>) -> std::io::Result<()> {
        self.asm.release_held(&mut self.traces);
        self.deliver(sink)
    }

    fn deliver(&mut self, sink: &mut impl Sink<A>) -> std::io::Result<()> {
        let traces = std::mem::take(&mut self.traces);
        let r = self.feed(&traces, sink);
        self.traces = traces;
        self.traces.clear();
        r
    }

    /// The explain stage for one packet.
    #[inline]
    fn explain_packet(&mut self, needs: Needs, t: &PacketTrace) {
        if needs.passes {
            for p in &t.passes {
                self.cache.ensure(p.ufid);
            }
        }
        if needs.drops
            && let (Verdict::Drop { .. }, Some(u)) = (&t.verdict, t.last_ufid())
        {
            // Explained now, while its flow exists, not when the report is printed.
            self.cache.seen(u);
        }
    }

    /// The explain stage for the kernel's flows, before a sink gets them: what it needs is
    /// resolved now as far as the budget allows.
    pub fn explain_flows(&mut self, needs: Needs, flows: &FastMap<Uuid, FlowStats>) {
        if needs.flows {
            for u in flows.keys() {
                self.cache.seen(*u);
            }
            self.cache.pump();
        }
        if needs.drops {
            for (u, _) in flows.iter().filter(|(_, s)| s.drops > 0) {
                self.cache.ensure(*u);
            }
        }
    }

    /// Every tick: explains what waits (within the request budget), after queueing the flows
    /// of `flows` (when read) the sink needs: all of them, or those the kernel counted drops
    /// on; follows an
    /// ovs-vswitchd restart (its port numbers may have changed).
    pub fn tick(&mut self, needs: Needs, flows: Option<&FastMap<Uuid, FlowStats>>) {
        if let Some(flows) = flows {
            for (u, s) in flows {
                // Every flow at first sight (within a second) for a sink that needs them all,
                // not at its next report: a report interval can outlast a flow.
                if needs.flows || (needs.drops && s.drops > 0) {
                    self.cache.seen(*u);
                }
            }
        }
        self.cache.pump();
        let g = self.cache.ovs_generation();
        if g != self.ovs_generation {
            self.ovs_generation = g;
            let ports = self.cache.port_names();
            if !ports.is_empty() {
                self.ports = ports;
            }
        }
    }

    /// Flows whose actions changed in place (per-packet counting): out of the explanation
    /// cache, to be explained again when next met.
    pub fn actions_changed(&mut self, changed: Vec<Uuid>) {
        if !changed.is_empty() {
            self.cache.forget(changed);
        }
    }

    /// Retired flows to the sink, then out of the explanation cache.
    pub fn retire(
        &mut self,
        gone: &FastMap<Uuid, FlowStats>,
        sink: &mut impl Sink<A>,
    ) -> std::io::Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        sink.retired(&self.view(), gone)?;
        self.cache.forget(gone.keys().copied());
        Ok(())
    }

    /// The counts a run ends with.
    pub fn end(&self, loss: LossReport, malformed_events: u64) -> RunEnd {
        RunEnd {
            loss,
            assembly: self.asm.stats,
            explain: self.cache.stats,
            malformed_events,
        }
    }
}
