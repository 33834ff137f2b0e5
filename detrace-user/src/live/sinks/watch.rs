//! `watch`: every packet as it ends, explained.

use std::io::Write;

use super::{emit, fmt_err};
use crate::{
    events::path::PacketTrace,
    live::{
        explainer::LookupRef,
        pipeline::{Needs, Sink, View},
        render::{Format, packet},
    },
    ovs::unixctl::Appctl,
};

pub struct WatchSink {
    format: Format,
    out: Box<dyn Write>,
    buf: String,
    pub packets_shown: u64,
}

impl WatchSink {
    pub fn new(format: Format, out: Box<dyn Write>) -> Self {
        Self {
            format,
            out,
            buf: String::new(),
            packets_shown: 0,
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
