//! The agent's ledger: what each flow did, attributed once to the objects it names (see the
//! module above), kept as totals per label set.

use std::{collections::HashMap, time::Instant};

use detrace_common::{FlowStats, LATENCY_BUCKETS};

use crate::{
    FastMap,
    aggregate::platform::{Continuations, FlowPlace},
    explain::ObjectName,
    live::{explainer::LookupRef, pipeline::View},
    ovn::platform::PlatformRef,
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

pub(super) type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) drops: u64,
    /// Datapath latency of the packets that ended at these flows (log2 buckets, ns).
    pub(super) latency: [u64; LATENCY_BUCKETS],
    pub(super) latency_sum_ns: u64,
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

/// What every report adds to: totals per object since the agent started.
pub struct Ledger {
    /// Per flow: the cumulative counters already attributed.
    attributed: FastMap<Uuid, FlowStats>,
    pub(super) objects: HashMap<Labels, Totals>,
    pub(super) platform: HashMap<Labels, Totals>,
    /// (culprit and reason labels) -> drops.
    pub(super) drops: HashMap<Labels, u64>,
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
        let before = self.attributed.get(&u).copied().unwrap_or_default();
        let d = s.saturating_sub(&before);
        // A counter that went back keeps its high mark, counted again only above it: a
        // flow-table flow's drops follow its current actions (all its packets, or none), and
        // a UFID reinstalled by a restarted ovs-vswitchd may drop, not drop, then drop again.
        self.attributed.insert(u, before.max(s));
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
