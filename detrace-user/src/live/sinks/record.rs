//! `record`: packets and the explanations they need, the kernel's counters and a summary,
//! as JSON lines (see [`crate::live::record`]).

use std::io::Write;

use detrace_common::FlowStats;

use crate::{
    FastMap,
    events::path::PacketTrace,
    live::{
        clock::{Clock, Ports},
        explainer::LookupRef,
        pipeline::{FlowsAt, Needs, RunEnd, Sink, View},
        record::{RECORD_VERSION, RecordLine, RecordLineRef},
    },
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

pub struct RecordSink {
    out: Box<dyn Write>,
    /// UFIDs whose explanation is already in the recording.
    recorded: rustc_hash::FxHashSet<Uuid>,
    pub packets_shown: u64,
}

fn line(out: &mut dyn Write, l: &impl serde::Serialize) -> std::io::Result<()> {
    writeln!(out, "{}", serde_json::to_string(l).unwrap_or_default())
}

impl RecordSink {
    pub fn new(out: Box<dyn Write>) -> Self {
        Self {
            out,
            recorded: rustc_hash::FxHashSet::default(),
            packets_shown: 0,
        }
    }

    pub fn header(&mut self, command: &str, clock: &Clock, ports: &Ports) -> std::io::Result<()> {
        let h = RecordLine::Header {
            version: RECORD_VERSION,
            clock_offset_ns: clock.offset_ns() as i64,
            command: command.to_string(),
            ports: ports.clone(),
        };
        line(&mut self.out, &h)
    }

    fn flow_lines(&mut self, flows: &FastMap<Uuid, FlowStats>) -> std::io::Result<()> {
        for (u, s) in flows {
            line(
                &mut self.out,
                &RecordLine::Flow {
                    ufid: *u,
                    stats: s.into(),
                },
            )?;
        }
        Ok(())
    }
}

impl<A: Appctl> Sink<A> for RecordSink {
    fn needs(&self) -> Needs {
        Needs {
            passes: true,
            ..Needs::default()
        }
    }

    fn packet(&mut self, view: &View<'_, A>, t: &PacketTrace) -> std::io::Result<()> {
        for p in &t.passes {
            if self.recorded.contains(&p.ufid) {
                continue;
            }
            if let LookupRef::Explained(e) = view.peek(&p.ufid) {
                line(&mut self.out, &RecordLineRef::Explanation(e))?;
                self.recorded.insert(p.ufid);
            }
        }
        line(&mut self.out, &RecordLineRef::Packet(t))?;
        self.packets_shown += 1;
        Ok(())
    }

    fn flows(&mut self, _: &View<'_, A>, at: &FlowsAt<'_>) -> std::io::Result<()> {
        if !at.last {
            return Ok(());
        }
        self.flow_lines(at.flows)
    }

    /// Retired flows' counts are final: written now (the replay sums a UFID's lines).
    fn retired(&mut self, _: &View<'_, A>, gone: &FastMap<Uuid, FlowStats>) -> std::io::Result<()> {
        // Their explanations leave the cache: one met again is explained, and recorded, anew.
        for u in gone.keys() {
            self.recorded.remove(u);
        }
        self.flow_lines(gone)
    }

    fn finish(&mut self, end: &RunEnd) -> std::io::Result<()> {
        let s = RecordLine::Summary {
            loss: end.loss,
            assembly: end.assembly,
            explain: end.explain,
            malformed_events: end.malformed_events,
        };
        line(&mut self.out, &s)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
