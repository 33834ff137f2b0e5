//! Per-flow counters rebuilt from packets (replay of a recording without the kernel's
//! counters; the pipeline benchmark).

use crate::{
    aggregate::FlowTable,
    events::path::PacketTrace,
    live::pipeline::{Needs, Sink, View},
    ovs::unixctl::Appctl,
};

#[derive(Default)]
pub struct FlowSink {
    pub table: FlowTable,
}

impl<A: Appctl> Sink<A> for FlowSink {
    fn needs(&self) -> Needs {
        Needs::default()
    }
    #[inline]
    fn packet(&mut self, _: &View<'_, A>, t: &PacketTrace) -> std::io::Result<()> {
        self.table.add_trace(t);
        Ok(())
    }
}
