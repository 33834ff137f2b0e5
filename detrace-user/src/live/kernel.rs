//! The eBPF probes as the live commands' [`Tracer`] and [`EventSource`].

use std::time::Duration;

use detrace_common::{COUNTER_SLOTS, Event, FlowStats};

use super::source::{EventSource, Tracer};
use crate::cli::EventArgs;

/// Attached probes.
pub struct KernelTracer;
/// Their ring buffer.
pub struct KernelEvents;

impl Tracer for KernelTracer {
    fn flow_stats(&self) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        anyhow::bail!("the eBPF loader is not integrated yet")
    }
    fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]> {
        anyhow::bail!("the eBPF loader is not integrated yet")
    }
}

impl EventSource for KernelEvents {
    async fn read_batch(&mut self, _out: &mut Vec<Event>) -> std::io::Result<()> {
        std::future::pending().await
    }
    fn malformed(&self) -> u64 {
        0
    }
}

/// Attaches the probes (per-packet events only when `events`).
pub fn attach_live(
    _args: &EventArgs,
    _events: bool,
) -> anyhow::Result<(KernelTracer, KernelEvents, Duration)> {
    anyhow::bail!("the eBPF loader is not integrated yet (work in progress)")
}
