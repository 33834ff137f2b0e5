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
    aggregate::platform::{Continuations, FlowPlace},
    explain::ObjectName,
    live::{
        explainer::LookupRef,
        pipeline::{FlowsAt, Needs, Sink, View},
    },
    ovn::platform::PlatformRef,
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, Default)]
struct Totals {
    packets: u64,
    bytes: u64,
    drops: u64,
    /// Datapath latency of the packets that ended at these flows (log2 buckets, ns).
    latency: [u64; LATENCY_BUCKETS],
    latency_sum_ns: u64,
}

impl Totals {
    fn add(&mut self, d: &FlowStats, packets_too: bool) {
        if packets_too {
            self.packets += d.packets;
            self.bytes += d.bytes;
        }
        self.drops += d.drops;
        for (t, n) in self.latency.iter_mut().zip(d.latency) {
            *t += n;
        }
        self.latency_sum_ns += d.latency_sum_ns;
    }
}

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

/// What every report adds to: totals per object since the agent started.
pub struct Ledger {
    /// Per flow: the cumulative counters already attributed.
    attributed: FastMap<Uuid, FlowStats>,
    objects: HashMap<Labels, Totals>,
    platform: HashMap<Labels, Totals>,
    /// (culprit and reason labels) -> drops.
    drops: HashMap<Labels, u64>,
    /// Where the packets of flows naming an object go next: each packet counts once per
    /// object (see aggregate::platform).
    continued: Continuations<Labels>,
    /// Flows whose explanation failed: their counters count as unexplained.
    pub unexplained_packets: u64,
    /// Since when a flow's explanation has been failing (it is retried meanwhile).
    failing_since: FastMap<Uuid, Instant>,
    /// Each explained flow: when it was first seen explained, and what it counts for.
    known: FastMap<Uuid, Known>,
    /// How long an explained flow waits before its counters are attributed ([`HOLD`]).
    pub hold: std::time::Duration,
}

/// An explained flow, as the ledger attributes it: made once, when first seen explained.
struct Known {
    at: Instant,
    place: FlowPlace,
    objects: Vec<Labels>,
    platforms: Vec<Labels>,
}

/// Explained flows wait this long before their counters are attributed: the flows before and
/// after a recirculation are explained within moments of each other, and a packet counts once
/// per object only when both are known.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a flow's explanation may keep failing before its packets count as unexplained.
const GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

fn object_labels(o: &ObjectName) -> Labels {
    vec![
        ("table".into(), o.table.clone()),
        ("uuid".into(), o.uuid.to_string()),
        ("name".into(), o.name.clone()),
    ]
}

fn platform_labels(p: &PlatformRef) -> Labels {
    vec![
        ("platform".into(), p.platform.label().into()),
        ("kind".into(), serde_plain(&p.kind)),
        ("namespace".into(), p.namespace.clone().unwrap_or_default()),
        ("name".into(), p.name.clone()),
    ]
}

/// A unit enum variant as serde names it (`network_policy`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            attributed: FastMap::default(),
            objects: HashMap::new(),
            platform: HashMap::new(),
            drops: HashMap::new(),
            continued: Continuations::default(),
            unexplained_packets: 0,
            failing_since: FastMap::default(),
            known: FastMap::default(),
            hold: HOLD,
        }
    }
}

impl Ledger {
    /// Attributes what each explained flow did since the last report.
    pub fn update<A: Appctl>(&mut self, view: &View<'_, A>, flows: &FastMap<Uuid, FlowStats>) {
        self.learn(view, flows);
        for (u, s) in flows {
            if !self.ready(view, u) {
                // Attributed once settled: the kernel's counter keeps the delta meanwhile.
                continue;
            }
            self.attribute(view, *u, s);
        }
        // Flows no longer counted gave what they had (or were retired): forget them.
        self.attributed.retain(|u, _| flows.contains_key(u));
        self.failing_since.retain(|u, _| flows.contains_key(u));
        self.known.retain(|u, _| flows.contains_key(u));
    }

    /// Flows retired from the kernel's accounts: what they did since their last attribution
    /// is attributed now, with what is known of them (the wait for their siblings is over:
    /// they are gone), and they are forgotten.
    pub fn retire<A: Appctl>(&mut self, view: &View<'_, A>, gone: &FastMap<Uuid, FlowStats>) {
        self.learn(view, gone);
        for (u, s) in gone {
            self.attribute(view, *u, s);
            self.attributed.remove(u);
            self.failing_since.remove(u);
            self.known.remove(u);
        }
    }

    /// Where every explained flow's packets go next, before anything is attributed: a flow
    /// after a recirculation may be explained before the one that recirculates.
    fn learn<A: Appctl>(&mut self, view: &View<'_, A>, flows: &FastMap<Uuid, FlowStats>) {
        for u in flows.keys() {
            if let LookupRef::Explained(e) = view.peek(u)
                && !self.known.contains_key(u)
            {
                let place = FlowPlace::of(&e.summary);
                let objects: Vec<Labels> = place.objects.iter().map(object_labels).collect();
                let platforms: Vec<Labels> = place.platforms.iter().map(platform_labels).collect();
                self.continued.learn(&objects, &place);
                self.continued.learn(&platforms, &place);
                let at = Instant::now();
                self.known.insert(
                    *u,
                    Known {
                        at,
                        place,
                        objects,
                        platforms,
                    },
                );
            }
        }
    }

    /// Attributes the change of a flow's cumulative counters `s` since the last time.
    fn attribute<A: Appctl>(&mut self, view: &View<'_, A>, u: Uuid, s: &FlowStats) {
        let before = self.attributed.insert(u, *s).unwrap_or_default();
        let d = s.saturating_sub(&before);
        if d.packets == 0 && d.drops == 0 {
            return;
        }
        if let Some(k) = self.known.get(&u) {
            for (keys, totals) in [
                (&k.objects, &mut self.objects),
                (&k.platforms, &mut self.platform),
            ] {
                for key in keys {
                    let again = self.continued.again(key, &k.place);
                    totals.entry(key.clone()).or_default().add(&d, !again);
                }
            }
        } else {
            self.unexplained_packets += d.packets;
        }
        if d.drops > 0 {
            self.add_drops(view, u, &d);
        }
    }

    /// Whether a flow's counters can be attributed now: explained a little while ago (its
    /// siblings across recirculations had the time to be explained too), or failing for good.
    fn ready<A: Appctl>(&mut self, view: &View<'_, A>, u: &Uuid) -> bool {
        match view.peek(u) {
            LookupRef::Pending => false,
            // Failures are retried (a daemon restarting, a flow not revalidated yet):
            // unexplained only once it kept failing.
            LookupRef::Failed { .. } => {
                let since = *self.failing_since.entry(*u).or_insert_with(Instant::now);
                since.elapsed() >= GIVE_UP
            }
            LookupRef::Explained(_) => {
                self.failing_since.remove(u);
                self.known
                    .get(u)
                    .is_some_and(|k| k.at.elapsed() >= self.hold)
            }
        }
    }

    fn add_drops<A: Appctl>(&mut self, view: &View<'_, A>, u: Uuid, d: &FlowStats) {
        let mut c = view.culprit(u);
        if c.kind == crate::explain::culprit::CulpritKind::Unexplained {
            // Its id and name are the flow's UFID: one series per flow, which labels must not be.
            c.id = String::new();
            c.name = "(unexplained)".into();
        }
        let p = c.platform.as_ref();
        let base: Labels = vec![
            ("culprit_kind".into(), serde_plain(&c.kind)),
            ("culprit".into(), c.name.clone()),
            ("culprit_id".into(), c.id.clone()),
            (
                "platform".into(),
                p.map(|p| p.platform.label().to_string())
                    .unwrap_or_default(),
            ),
            (
                "platform_kind".into(),
                p.map(|p| serde_plain(&p.kind)).unwrap_or_default(),
            ),
            (
                "namespace".into(),
                p.and_then(|p| p.namespace.clone()).unwrap_or_default(),
            ),
            (
                "platform_name".into(),
                p.map(|p| p.name.clone()).unwrap_or_default(),
            ),
        ];
        for (slot, n) in d.drop_reasons.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let mut l = base.clone();
            l.push(("reason".into(), crate::aggregate::slot_name(slot)));
            *self.drops.entry(l).or_default() += n;
        }
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
