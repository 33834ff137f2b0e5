//! `top`: flows and OVN objects by rate, packets, bytes, drops or latency, from the kernel's
//! per-flow counters (live: refreshed every interval; replay: once, from the recording).

use std::{io::Write, time::Instant};

use detrace_common::FlowStats;

use super::{emit, fmt_err};
use crate::{
    FastMap,
    aggregate::{FlowTable, Row, RowKey, SortKey, platform::FlowPlace, sort_rows},
    live::{
        explainer::LookupRef,
        pipeline::{FlowsAt, Needs, Sink, View},
        render::{Format, table::table},
    },
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

/// Live tables refresh (in place on a terminal) and carry the interval and the kernel's
/// counters; a replay prints its tables once.
pub enum TopMode {
    Live { tty: bool, last: Instant },
    Replay,
}

pub struct TopSink {
    format: Format,
    sort: SortKey,
    limit: usize,
    mode: TopMode,
    table: FlowTable,
    out: Box<dyn Write>,
    buf: String,
}

/// The two tables of `top`, labelled from what is known.
pub struct TopTables {
    pub flows: Vec<Row>,
    pub objects: Vec<Row>,
    /// Per platform object (NetworkPolicy, pod, Service...): empty where no platform wrote
    /// the OVN rows.
    pub platform: Vec<Row>,
}

impl TopTables {
    /// Rows of `table` over `secs`, each flow named by its explanation (and carrying its
    /// culprit when it drops), objects summed over the flows explained; sorted, at most
    /// `limit` each.
    pub fn build<A: Appctl>(
        view: &View<'_, A>,
        table: &FlowTable,
        secs: f64,
        sort: SortKey,
        limit: usize,
    ) -> Self {
        // A recording holds every explanation it will ever have.
        let unknown = if view.cache.is_recorded() {
            "(unexplained)"
        } else {
            "(pending)"
        };
        let mut flows = table.rows(secs, |u| match view.peek(u) {
            LookupRef::Explained(e) => e.summary.label.clone(),
            LookupRef::Failed { error, .. } => format!("(unexplained: {error})"),
            LookupRef::Pending => unknown.into(),
        });
        for r in flows.iter_mut().filter(|r| r.drops > 0) {
            if let RowKey::Flow(u) = &r.key
                && let Some(e) = view.cache.cached(u)
            {
                r.culprit = Some(e.summary.drop_culprit.clone());
            }
        }
        sort_rows(&mut flows, sort);
        flows.truncate(limit);
        let place = |u: &_| view.cache.cached(u).map(|e| FlowPlace::of(&e.summary));
        let mut objects = table.object_rows(secs, place);
        sort_rows(&mut objects, sort);
        objects.truncate(limit);
        let mut platform = table.platform_rows(secs, place);
        sort_rows(&mut platform, sort);
        platform.truncate(limit);
        Self {
            flows,
            objects,
            platform,
        }
    }
}

impl TopSink {
    pub fn new(
        format: Format,
        sort: SortKey,
        limit: usize,
        mode: TopMode,
        out: Box<dyn Write>,
    ) -> Self {
        Self {
            format,
            sort,
            limit,
            mode,
            table: FlowTable::default(),
            out,
            buf: String::new(),
        }
    }

    fn render(&mut self, t: &TopTables, secs: f64, at: &FlowsAt<'_>) -> std::io::Result<()> {
        let (rows, orows, prows) = (&t.flows, &t.objects, &t.platform);
        match (&self.mode, self.format) {
            (TopMode::Live { .. }, Format::Json) => {
                let v = serde_json::json!({"interval_s": secs, "flows": rows, "objects": orows, "platform": prows, "kernel": at.kernel});
                writeln!(self.out, "{v}")?;
            }
            (TopMode::Replay, Format::Json) => {
                writeln!(
                    self.out,
                    "{}",
                    serde_json::json!({"flows": rows, "objects": orows, "platform": prows})
                )?;
            }
            (TopMode::Live { tty, .. }, Format::Text) => {
                use std::fmt::Write as _;
                let w = &mut self.buf;
                if *tty {
                    write!(w, "\x1b[2J\x1b[H").map_err(fmt_err)?;
                }
                let kernel = at.kernel.map(|k| k.line()).unwrap_or_default();
                let n = self.table.flows.len();
                writeln!(
                    w,
                    "detrace top  ({n} flows, sorted by {:?}; {kernel})",
                    self.sort
                )
                .map_err(fmt_err)?;
                table(w, "flows", rows).map_err(fmt_err)?;
                writeln!(w).map_err(fmt_err)?;
                table(w, "OVN objects", orows).map_err(fmt_err)?;
                writeln!(w).map_err(fmt_err)?;
                if !prows.is_empty() {
                    table(w, "platform objects", prows).map_err(fmt_err)?;
                    writeln!(w).map_err(fmt_err)?;
                }
                emit(&mut self.out, &mut self.buf)?;
            }
            (TopMode::Replay, Format::Text) => {
                use std::fmt::Write as _;
                let w = &mut self.buf;
                table(w, "flows", rows).map_err(fmt_err)?;
                writeln!(w).map_err(fmt_err)?;
                table(w, "OVN objects", orows).map_err(fmt_err)?;
                if !prows.is_empty() {
                    writeln!(w).map_err(fmt_err)?;
                    table(w, "platform objects", prows).map_err(fmt_err)?;
                }
                emit(&mut self.out, &mut self.buf)?;
            }
        }
        self.out.flush()
    }
}

impl<A: Appctl> Sink<A> for TopSink {
    fn needs(&self) -> Needs {
        Needs {
            flows: true,
            ..Needs::default()
        }
    }

    fn retired(
        &mut self,
        view: &View<'_, A>,
        gone: &FastMap<Uuid, FlowStats>,
    ) -> std::io::Result<()> {
        let place = |u: &_| view.cache.cached(u).map(|e| FlowPlace::of(&e.summary));
        self.table.retire(gone, place);
        Ok(())
    }

    fn flows(&mut self, view: &View<'_, A>, at: &FlowsAt<'_>) -> std::io::Result<()> {
        let secs = match &mut self.mode {
            TopMode::Live { last, .. } => {
                let s = last.elapsed().as_secs_f64();
                *last = Instant::now();
                s
            }
            TopMode::Replay => 0.0,
        };
        self.table.snapshot(at.flows.iter().map(|(u, s)| (*u, *s)));
        let t = TopTables::build(view, &self.table, secs, self.sort, self.limit);
        self.render(&t, secs, at)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
