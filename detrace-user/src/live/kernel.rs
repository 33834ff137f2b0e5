//! The eBPF probes as the live commands' [`Tracer`] and [`EventSource`].

use std::{cell::RefCell, collections::BTreeSet, net::IpAddr, time::Duration};

use detrace_common::{COUNTER_SLOTS, Event, FlowStats};

use super::source::{EventSource, Tracer};
use crate::probes::loader::{EventReader, Filter, ProbeOptions, Probes};

/// The event path's settings: what the kernel sends, and how much.
pub struct EventOptions {
    pub filter: Filter,
    /// Ring buffer size in bytes.
    pub ring_size: u32,
    /// Events per second per CPU (0: none).
    pub rate_limit: u32,
}

/// Attached probes; dropping this detaches them. In a cell: the filter's address set is
/// rewritten while the run loop holds the tracer shared.
pub struct KernelTracer(RefCell<Probes>);

/// Their ring buffer (idle when per-packet events were not asked for).
pub struct KernelEvents(Option<EventReader>);

impl Tracer for KernelTracer {
    fn flow_stats(&self) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        Ok(self.0.borrow().flow_stats()?)
    }
    fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]> {
        Ok(self.0.borrow().counters()?)
    }
    fn set_filter_addrs(&self, addrs: &BTreeSet<IpAddr>) -> anyhow::Result<()> {
        Ok(self.0.borrow_mut().set_filter_addrs(addrs)?)
    }
}

impl EventSource for KernelEvents {
    async fn read_batch(&mut self, out: &mut Vec<Event>) -> std::io::Result<()> {
        match &mut self.0 {
            Some(r) => r.read_batch(out).await,
            None => std::future::pending().await,
        }
    }
    fn malformed(&self) -> u64 {
        self.0.as_ref().map_or(0, EventReader::malformed)
    }
}

/// Attaches the probes; per-packet events (with the filters) only when `events`.
pub fn attach_live(
    args: &EventOptions,
    events: bool,
    kprobes_only: bool,
) -> anyhow::Result<(KernelTracer, KernelEvents, Duration)> {
    let opts = ProbeOptions {
        events,
        ring_bytes: args.ring_size,
        rate_limit: args.rate_limit,
        filter: args.filter.clone(),
        cost: false,
        kprobes_only,
    };
    let mut probes = Probes::attach(&opts)?;
    let reader = probes.take_events();
    let t = probes.attach_time();
    let kinds: Vec<String> = probes
        .hook_kinds()
        .iter()
        .map(|(f, k)| format!("{f}:{k}"))
        .collect();
    tracing::info!("datapath hooks: {}", kinds.join(" "));
    Ok((KernelTracer(RefCell::new(probes)), KernelEvents(reader), t))
}
