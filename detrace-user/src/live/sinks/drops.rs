//! `drops`: drops grouped by the object responsible, every interval and at the end.

use std::{collections::HashMap, io::Write};

use detrace_common::FlowStats;

use super::{emit, fmt_err};
use crate::{
    FastMap,
    aggregate::{DropGroup, drops::GoneDrops, group_drops, record_end},
    events::{Packet, Verdict, path::PacketTrace},
    explain::culprit::Culprit,
    live::{
        explainer::AFTER_EXPIRY,
        pipeline::{FlowsAt, Needs, Sink, View},
        render::{self, Format},
    },
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

pub struct DropsSink {
    format: Format,
    out: Box<dyn Write>,
    buf: String,
    /// A dropped packet per last flow.
    samples: FastMap<Uuid, Packet>,
    /// Count the drops of the packets seen (a filter is set: the kernel's per-flow counters
    /// hold every packet, not only those the filter picks), in `counted`.
    pub from_events: bool,
    counted: FastMap<Uuid, FlowStats>,
    /// What the flows retired from the kernel's accounts dropped, by culprit.
    gone: GoneDrops,
    /// Reports written so far.
    reports: u64,
}

/// A group as `--format json` writes it: one line per group, each saying which report it
/// belongs to (counted from 1; the groups are cumulative) and whether that is the last.
#[derive(serde::Serialize)]
struct GroupLine<'a> {
    report: u64,
    #[serde(rename = "final")]
    last: bool,
    #[serde(flatten)]
    group: &'a DropGroup,
}

impl DropsSink {
    /// UFIDs whose packets' drops are counted (with a filter), live: for tests.
    #[cfg(test)]
    pub fn counted_flows(&self) -> usize {
        self.counted.len()
    }

    pub fn new(format: Format, out: Box<dyn Write>) -> Self {
        Self {
            format,
            out,
            buf: String::new(),
            samples: FastMap::default(),
            from_events: false,
            counted: FastMap::default(),
            gone: GoneDrops::default(),
            reports: 0,
        }
    }
}

/// Drop groups from per-flow counters, from what `view` knows (see [`View::culprit`]), with
/// a note for each flow explained after it expired.
pub fn drop_groups<A: Appctl>(
    view: &View<'_, A>,
    flows: &FastMap<Uuid, FlowStats>,
    samples: &FastMap<Uuid, Packet>,
) -> Vec<DropGroup> {
    let culprits: HashMap<Uuid, Culprit> = flows
        .iter()
        .filter(|(_, s)| s.drops > 0)
        .map(|(u, _)| (*u, view.culprit(*u)))
        .collect();
    let mut groups = group_drops(
        flows,
        |u| {
            culprits
                .get(u)
                .cloned()
                .unwrap_or_else(|| Culprit::unexplained(*u, ""))
        },
        |u| samples.get(u).cloned(),
    );
    for g in &mut groups {
        for u in &g.flows {
            if let Some(e) = view.cache.cached(u)
                && let Some(note) = e.summary.rules_error.as_deref()
                && note.starts_with(AFTER_EXPIRY)
            {
                g.notes.push(format!("ufid:{u} {note}"));
            }
        }
    }
    groups
}

impl<A: Appctl> Sink<A> for DropsSink {
    fn needs(&self) -> Needs {
        Needs {
            drops: true,
            ..Needs::default()
        }
    }

    fn packet(&mut self, _: &View<'_, A>, t: &PacketTrace) -> std::io::Result<()> {
        if let (Verdict::Drop { .. }, Some(u)) = (&t.verdict, t.last_ufid()) {
            self.samples.entry(u).or_insert_with(|| t.packet.clone());
            if self.from_events {
                let s = self.counted.entry(u).or_default();
                record_end(s, &t.verdict, t.latency_ns, t.after_upcall);
            }
        }
        Ok(())
    }

    fn retired(
        &mut self,
        view: &View<'_, A>,
        gone: &FastMap<Uuid, FlowStats>,
    ) -> std::io::Result<()> {
        // With a filter, drops are counted from the packets seen, not from the flows: what the
        // packets of the retired flows counted leaves `counted` for the groups the same way.
        if self.from_events {
            let counted: FastMap<Uuid, FlowStats> = gone
                .keys()
                .filter_map(|u| Some((*u, self.counted.remove(u)?)))
                .collect();
            self.gone.fold(drop_groups(view, &counted, &self.samples));
        } else {
            self.gone.fold(drop_groups(view, gone, &self.samples));
        }
        for u in gone.keys() {
            self.samples.remove(u);
        }
        Ok(())
    }

    fn flows(&mut self, view: &View<'_, A>, at: &FlowsAt<'_>) -> std::io::Result<()> {
        let flows = if self.from_events {
            &self.counted
        } else {
            at.flows
        };
        let groups = self.gone.merged(drop_groups(view, flows, &self.samples));
        self.reports += 1;
        match self.format {
            Format::Json => {
                for group in &groups {
                    let line = GroupLine {
                        report: self.reports,
                        last: at.last,
                        group,
                    };
                    writeln!(
                        self.out,
                        "{}",
                        serde_json::to_string(&line).unwrap_or_default()
                    )?;
                }
            }
            Format::Text => {
                render::drops::text(&mut self.buf, &groups).map_err(fmt_err)?;
                emit(&mut self.out, &mut self.buf)?;
            }
        }
        self.out.flush()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
