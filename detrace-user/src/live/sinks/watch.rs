//! `watch`: every packet as it ends, explained.

use std::io::Write;

use super::{emit, fmt_err};
use crate::{
    events::{Verdict, path::PacketTrace},
    live::{
        explainer::LookupRef,
        pipeline::{Needs, Sink, View},
        render::{Format, packet},
    },
    ovs::unixctl::Appctl,
};

/// `watch --verdict`: which packets to show, by how they ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictFilter {
    /// Dropped in the kernel (or after an upcall).
    Drop,
    /// Sent out of a port.
    Output,
    /// Sent up to ovs-vswitchd (a miss, or a userspace action).
    Upcall,
}

impl VerdictFilter {
    pub fn matches(self, v: &Verdict) -> bool {
        matches!(
            (self, v),
            (Self::Drop, Verdict::Drop { .. })
                | (Self::Output, Verdict::Output { .. })
                | (Self::Upcall, Verdict::Upcall { .. })
        )
    }
}

pub struct WatchSink {
    format: Format,
    out: Box<dyn Write>,
    buf: String,
    pub packets_shown: u64,
    /// Only packets that ended this way (decided in user space: a verdict is known only at
    /// the packet's end).
    pub verdict: Option<VerdictFilter>,
}

impl WatchSink {
    pub fn new(format: Format, out: Box<dyn Write>) -> Self {
        Self {
            format,
            out,
            buf: String::new(),
            packets_shown: 0,
            verdict: None,
        }
    }
}

impl<A: Appctl> Sink<A> for WatchSink {
    fn needs(&self) -> Needs {
        Needs {
            passes: true,
            ..Needs::default()
        }
    }

    fn packet(&mut self, view: &View<'_, A>, t: &PacketTrace) -> std::io::Result<()> {
        if self.verdict.is_some_and(|v| !v.matches(&t.verdict)) {
            return Ok(());
        }
        let looks: Vec<LookupRef<'_>> = t.passes.iter().map(|p| view.peek(&p.ufid)).collect();
        match self.format {
            Format::Json => packet::json(&mut self.buf, view.clock, view.ports, t, &looks),
            Format::Text => packet::text(&mut self.buf, view.clock, view.ports, t, &looks),
        }
        .map_err(fmt_err)?;
        // One line per packet in JSON; a packet's lines and no blank line after them in text.
        let end = self.buf.trim_end().len();
        self.buf.truncate(end);
        self.buf.push('\n');
        emit(&mut self.out, &mut self.buf)?;
        self.packets_shown += 1;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
