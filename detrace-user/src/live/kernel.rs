//! The eBPF probes as the live commands' [`Tracer`] and [`EventSource`].

use std::{cell::RefCell, collections::BTreeSet, net::IpAddr, time::Duration};

use anyhow::Context as _;
use detrace_common::{COUNTER_SLOTS, Counter, Event, FlowStats, RemovedStats, kernel_drop_slot};

use super::{
    actions::ActionWatch,
    flowtable::{FlowAccounts, FlowReads, IdleFlows},
    source::{EventSource, Tracer},
    upcall_loss::UpcallLoss,
};
use crate::{
    FastMap,
    ovs::netlink::{FlowTable, KernelFlow},
    probes::loader::{EventReader, Filter, ProbeOptions, Probes},
    uuid::Uuid,
};

/// The event path's settings: what the kernel sends, and how much.
pub struct EventOptions {
    pub filter: Filter,
    /// Ring buffer size in bytes.
    pub ring_size: u32,
    /// Events per second per CPU (0: none).
    pub rate_limit: u32,
}

/// How per-flow counts are made.
#[derive(Clone, Copy, Debug)]
pub struct Counting {
    /// By per-packet probes; else from the kernel's flow table.
    pub per_packet: bool,
    /// From the flow table: latency from 1 packet in this many (0: no latency).
    pub latency_sample: u32,
    /// Per packet, with events: only the packets the filter matches are followed and counted
    /// (watch, record: the others cost the probes an early return).
    pub matching_only: bool,
    /// From the flow table: how long a flow gone from it stays in the accounts.
    pub retire_after: Duration,
}

/// Attached probes; dropping this detaches them. Per-flow counts come from the probes'
/// per-packet counting, or (`flows` set) from the kernel's flow table. The probes in a cell:
/// the filter's address set is rewritten while the run loop holds the tracer shared.
pub struct KernelTracer {
    probes: RefCell<Probes>,
    flows: Option<RefCell<(FlowTable, FlowAccounts)>>,
    /// Per-packet counting's retirement (when `flows` is None).
    idle: RefCell<IdleFlows>,
    /// Per-packet counting's watch on the flows' actions (when `flows` is None; None when
    /// the flow table cannot be opened: said once).
    actions: Option<RefCell<(FlowTable, ActionWatch)>>,
    latency_sample: u32,
    /// The datapath's lost upcalls, counted from the attach.
    upcall_loss: Option<RefCell<UpcallLoss>>,
}

/// The kernel's flow table and the removal probe's map, for [`FlowAccounts`].
struct Reads<'a> {
    probes: &'a mut Probes,
    table: &'a mut FlowTable,
}

impl FlowReads for Reads<'_> {
    fn removed(&mut self) -> anyhow::Result<FastMap<Uuid, RemovedStats>> {
        Ok(self
            .probes
            .removed_stats()?
            .into_iter()
            .map(|(w, s)| (Uuid::from_words(w), s))
            .collect())
    }
    fn dump(&mut self) -> anyhow::Result<Vec<KernelFlow>> {
        let mut flows = self
            .table
            .dump()
            .context("dumping the datapath's flows (generic netlink ovs_flow)")?;
        // Named as this kernel frees them (as the probes do).
        let none = self.probes.no_drop_reasons();
        for f in &mut flows {
            f.drop_slot = kernel_drop_slot(f.drop_slot, none);
        }
        Ok(flows)
    }
    fn probe_stats(&mut self) -> anyhow::Result<FastMap<Uuid, FlowStats>> {
        Ok(self
            .probes
            .flow_stats()?
            .into_iter()
            .map(|(w, s)| (Uuid::from_words(w), s))
            .collect())
    }
    fn forget(&mut self, ufids: &[Uuid]) -> anyhow::Result<()> {
        forget(self.probes, ufids)
    }
}

/// Deletes retired UFIDs from the probes' per-UFID maps.
fn forget(probes: &mut Probes, ufids: &[Uuid]) -> anyhow::Result<()> {
    let words: Vec<[u32; 4]> = ufids.iter().map(|u| u.words()).collect();
    Ok(probes.forget_flows(&words)?)
}

/// Their ring buffer (idle when per-packet events were not asked for).
pub struct KernelEvents(Option<EventReader>);

impl Tracer for KernelTracer {
    fn flow_stats(
        &self,
        may_retire: &dyn Fn(&Uuid) -> bool,
    ) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        let Some(flows) = &self.flows else {
            let stats = self.probes.borrow().flow_stats()?;
            return self.idle.borrow_mut().read_at(
                stats,
                std::time::Instant::now(),
                may_retire,
                |ufids| forget(&mut self.probes.borrow_mut(), ufids),
            );
        };
        let mut flows = flows.borrow_mut();
        let (table, acc) = &mut *flows;
        let mut probes = self.probes.borrow_mut();
        let mut reads = Reads {
            probes: &mut probes,
            table,
        };
        match acc.read_at(&mut reads, std::time::Instant::now(), may_retire) {
            // The datapath went with the module: the counts stand as last read.
            Err(_) if self.module_gone() => acc.last_read(&mut reads),
            r => r,
        }
    }
    fn actions_changed(&self) -> Vec<Uuid> {
        let Some(a) = &self.actions else {
            return Vec::new();
        };
        let (table, watch) = &mut *a.borrow_mut();
        match table.dump() {
            Ok(flows) => watch.changes(&flows, std::time::Instant::now()),
            // The module going (said by the run loop) or a transient netlink error: the next
            // read catches up.
            Err(e) => {
                tracing::debug!("reading the flows' actions: {e:#}");
                Vec::new()
            }
        }
    }
    fn take_retired(&self) -> Vec<([u32; 4], FlowStats)> {
        match &self.flows {
            Some(f) => f.borrow_mut().1.retirement.take(),
            None => self.idle.borrow_mut().retirement.take(),
        }
    }
    fn module_gone(&self) -> bool {
        // Being unloaded already counts: the kernel marks the module "going" before its exit
        // unregisters the netlink families, and removes /sys/module/openvswitch only after
        // (a flow dump in between failed with ENOENT while the directory was still there). A
        // built-in openvswitch has no initstate, and never goes.
        match std::fs::read_to_string(format!("{}/initstate", crate::paths::OVS_MODULE)) {
            Ok(state) => state.trim() != "live",
            Err(_) => !std::path::Path::new(crate::paths::OVS_MODULE).exists(),
        }
    }
    fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]> {
        let mut c = self.probes.borrow().counters()?;
        if let Some(flows) = &self.flows {
            // No probe counts hits or drops per packet here: the flow table's counts (as of
            // the last read) do.
            let (hits, drops) = flows.borrow().1.totals;
            c[Counter::Hits as usize] = hits;
            c[Counter::Drops as usize] = drops + c[Counter::DropsNoFlow as usize];
            // What the sampled probes saw is not the traffic's.
            for k in [Counter::Passes, Counter::Upcalls, Counter::Outputs] {
                c[k as usize] = 0;
            }
            c[Counter::LatencySample as usize] = u64::from(self.latency_sample);
            let acc = &flows.borrow().1;
            c[Counter::FlowsRetired as usize] = acc.retirement.count;
            c[Counter::FlowsChanged as usize] = acc.changed;
        } else {
            c[Counter::FlowsRetired as usize] = self.idle.borrow().retirement.count;
            if let Some(a) = &self.actions {
                c[Counter::FlowsChanged as usize] = a.borrow().1.changed;
            }
        }
        if let Some(u) = &self.upcall_loss {
            c[Counter::DatapathLost as usize] = u.borrow_mut().read();
        }
        Ok(c)
    }
    fn set_filter_addrs(&self, addrs: &BTreeSet<IpAddr>) -> anyhow::Result<()> {
        Ok(self.probes.borrow_mut().set_filter_addrs(addrs)?)
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

/// Attaches the probes; per-packet events (with the filters) only when `events`; per-packet
/// counting only when asked (or with events), per-flow counts from the kernel's flow table
/// otherwise.
pub fn attach_live(
    args: &EventOptions,
    events: bool,
    counting: Counting,
    kprobes_only: bool,
) -> anyhow::Result<(KernelTracer, KernelEvents, Duration)> {
    let opts = ProbeOptions {
        events,
        ring_bytes: args.ring_size,
        rate_limit: args.rate_limit,
        filter: args.filter.clone(),
        cost: false,
        kprobes_only,
        per_packet: counting.per_packet,
        latency_sample: counting.latency_sample,
        matching_only: counting.matching_only,
        noop: false,
    };
    let mut probes = Probes::attach(&opts)?;
    let flows = if !opts.flow_table() {
        None
    } else {
        // The removal probe is attached first: a flow that goes from here on is caught.
        let mut table = FlowTable::open().context("opening generic netlink (ovs_flow)")?;
        let mut acc = FlowAccounts::start(&mut Reads {
            probes: &mut probes,
            table: &mut table,
        })?;
        acc.latency = counting.latency_sample > 0;
        acc.retirement.after = counting.retire_after;
        Some(RefCell::new((table, acc)))
    };
    let reader = probes.take_events();
    let t = probes.attach_time();
    let kinds: Vec<String> = probes
        .hook_kinds()
        .iter()
        .map(|(f, k)| format!("{f}:{k}"))
        .collect();
    tracing::info!("datapath hooks: {}", kinds.join(" "));
    let latency_sample = if opts.flow_table() {
        counting.latency_sample
    } else {
        0
    };
    // Per-packet counting reads the table for the flows' actions alone.
    let actions = match &flows {
        Some(_) => None,
        None => match FlowTable::open() {
            Ok(t) => Some(RefCell::new((t, ActionWatch::new(counting.retire_after)))),
            Err(e) => {
                eprintln!(
                    "detrace: cannot read the datapath's flow table ({e:#}): a flow whose \
                     actions change in place keeps the explanation of its old ones"
                );
                None
            }
        },
    };
    let tracer = KernelTracer {
        probes: RefCell::new(probes),
        flows,
        actions,
        idle: RefCell::new(IdleFlows::new(counting.retire_after)),
        latency_sample,
        upcall_loss: UpcallLoss::open().map(RefCell::new),
    };
    Ok((tracer, KernelEvents(reader), t))
}
