//! `serve`: a drop ledger and per-object counters for Prometheus, from the kernel's per-flow
//! counters, each flow's delta attributed once its explanation is known.
//!
//! Labels are objects, never flows or packets: OVN rows (table, uuid, name), platform objects
//! (platform, kind, namespace, name), and drop culprits with their reason; their number is
//! bounded by the Northbound database, not by traffic. Counters only grow: a flow's counters are
//! read as deltas from what was attributed before, and a flow that expired keeps what it gave.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use detrace_common::{FlowStats, LATENCY_BUCKETS};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    FastMap,
    live::pipeline::{FlowsAt, Needs, Sink, View},
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

mod ledger;

pub use ledger::{HOLD, Ledger};
use ledger::{Labels, Totals};

/// A histogram already bucketed (the kernel's log2 buckets), for the exposition.
#[derive(Clone, Debug, Default)]
struct Log2Histogram(Arc<Mutex<([u64; LATENCY_BUCKETS], u64)>>);

impl TypedMetric for Log2Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Log2Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (counts, sum_ns) = *self.0.lock().map_err(|_| std::fmt::Error)?;
        // Bucket i holds [2^i, 2^(i+1)) ns; the last one everything above.
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let le = if i + 1 == LATENCY_BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << (i + 1)) as f64 / 1e9
                };
                (le, *n)
            })
            .collect();
        let count = counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// detrace's own health, as of the last report.
#[derive(Default, Clone, Copy)]
pub struct Health {
    pub explained: u64,
    pub after_expiry: u64,
    pub failed: u64,
    pub ovs_requests: u64,
    pub queued: u64,
    pub evicted: u64,
    pub events_lost: u64,
    pub ovs_reconnects: u64,
    pub datapath_upcalls_lost: u64,
}

/// The exposition text of a ledger and the agent's health.
pub fn render(l: &Ledger, h: &Health) -> String {
    let mut reg = Registry::with_prefix("detrace");
    let family = |reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>| {
        let f = Family::<Labels, Counter>::default();
        for (labels, v) in rows {
            f.get_or_create(&labels).inc_by(v);
        }
        reg.register(name, help, f);
    };
    type Pick = fn(&Totals) -> u64;
    let tables: [(&str, &str, &HashMap<Labels, Totals>, Pick); 6] = [
        (
            "object_packets",
            "Packets through an OVN Northbound row (its datapath flows), each packet once",
            &l.objects,
            |t| t.packets,
        ),
        (
            "object_bytes",
            "Bytes through an OVN Northbound row, each packet once",
            &l.objects,
            |t| t.bytes,
        ),
        (
            "object_drops",
            "Drops at datapath flows naming an OVN Northbound row",
            &l.objects,
            |t| t.drops,
        ),
        (
            "platform_packets",
            "Packets per platform object (pod, NetworkPolicy, Service, security group...), each once",
            &l.platform,
            |t| t.packets,
        ),
        (
            "platform_bytes",
            "Bytes per platform object, each packet once",
            &l.platform,
            |t| t.bytes,
        ),
        (
            "platform_drops",
            "Drops at flows naming a platform object",
            &l.platform,
            |t| t.drops,
        ),
    ];
    for (name, help, m, pick) in tables {
        let rows = m.iter().map(|(k, t)| (k.clone(), pick(t))).collect();
        family(&mut reg, name, help, rows);
    }
    let latency = Family::<Labels, Log2Histogram>::default();
    for (k, t) in l
        .platform
        .iter()
        .filter(|(_, t)| t.latency.iter().any(|n| *n > 0))
    {
        if let Ok(mut h) = latency.get_or_create(k).0.lock() {
            *h = (t.latency, t.latency_sum_ns);
        }
    }
    reg.register(
        "platform_latency_seconds",
        "Datapath latency of packets that ended at flows naming a platform object",
        latency,
    );
    family(
        &mut reg,
        "drops",
        "Dropped packets by the object responsible (the culprit) and the kernel's drop reason",
        l.drops.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    );
    register_health(&mut reg, l, h);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// detrace's own health: counters of the explain stage and the event path.
fn register_health(reg: &mut Registry, l: &Ledger, h: &Health) {
    let health: [(&str, &str, u64); 9] = [
        ("explanations", "Flows explained", h.explained),
        (
            "explanations_after_expiry",
            "Flows explained after their flow expired",
            h.after_expiry,
        ),
        (
            "explanations_failed",
            "Flows whose explanation failed",
            h.failed,
        ),
        (
            "ovs_requests",
            "unixctl requests sent to ovs-vswitchd",
            h.ovs_requests,
        ),
        (
            "explanations_evicted",
            "Explanations evicted (bound reached)",
            h.evicted,
        ),
        (
            "events_lost",
            "Per-packet events lost (ring buffer full)",
            h.events_lost,
        ),
        (
            "ovs_reconnects",
            "Reconnections to ovs-vswitchd after a restart",
            h.ovs_reconnects,
        ),
        (
            "datapath_upcalls_lost",
            "Upcalls the kernel datapath lost (ovs-vswitchd did not take them) since start",
            h.datapath_upcalls_lost,
        ),
        (
            "unexplained_packets",
            "Packets of flows that could not be explained",
            l.unexplained_packets,
        ),
    ];
    for (name, help, v) in health {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        reg.register(name, help, c);
    }
    let q = Gauge::<i64>::default();
    q.set(i64::try_from(h.queued).unwrap_or(i64::MAX));
    reg.register("explain_queue", "Flows waiting for their explanation", q);
}

/// What the HTTP side serves: the latest exposition and when it was made.
#[derive(Default)]
pub struct Published {
    pub text: String,
    pub at: Option<Instant>,
}

/// The agent's sink: a ledger, published every report.
pub struct MetricsSink {
    pub ledger: Ledger,
    pub published: Arc<Mutex<Published>>,
}

impl<A: Appctl> Sink<A> for MetricsSink {
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
        self.ledger.retire(view, gone);
        Ok(())
    }

    fn flows(&mut self, view: &View<'_, A>, at: &FlowsAt<'_>) -> std::io::Result<()> {
        self.ledger.update(view, at.flows);
        let ex = &view.cache.stats;
        let kernel = |c| at.kernel.map_or(0, |k| k.get(c));
        let h = Health {
            explained: ex.explained,
            after_expiry: ex.after_expiry,
            failed: ex.failed,
            ovs_requests: ex.ovs_requests,
            queued: view.cache.queued() as u64,
            evicted: ex.evicted,
            events_lost: kernel(detrace_common::Counter::EventsLost),
            ovs_reconnects: view.cache.ovs_generation(),
            datapath_upcalls_lost: kernel(detrace_common::Counter::DatapathLost),
        };
        let text = render(&self.ledger, &h);
        let mut p = self
            .published
            .lock()
            .map_err(|_| std::io::Error::other("metrics lock poisoned"))?;
        p.text = text;
        p.at = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
