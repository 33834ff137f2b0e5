//! Aggregation: per-flow counters (from the kernel's per-CPU FLOW_STATS, or rebuilt from
//! recorded packets), per-OVN-object sums, latency percentiles, and drops by culprit.

pub mod counters;
pub mod drops;
pub mod platform;
pub mod ufid_map;

pub use drops::{DropGroup, group_drops};

use std::collections::BTreeMap;

use detrace_common::{
    DROP_REASON_SLOTS, FlowStats, OVS_DROP_REASON_BASE, drop_reason_slot, latency_bucket,
};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    FastMap,
    aggregate::counters::FlowCounters,
    events::{Verdict, drop_reason_name, path::PacketTrace},
    explain::culprit::Culprit,
    ovn::platform::PlatformRef,
    uuid::Uuid,
};

/// Records a packet's fate into a flow's stats, as the kernel does for the last flow hit (or
/// for the flow installed for a packet executed `after_upcall`).
pub fn record_end(s: &mut FlowStats, v: &Verdict, latency_ns: u64, after_upcall: bool) {
    match v {
        Verdict::Drop { reason, .. } => {
            s.drops += 1;
            if after_upcall {
                s.drops_after_upcall += 1;
            }
            s.drop_reasons[drop_reason_slot(*reason)] += 1;
        }
        Verdict::Output { .. } => s.outputs += 1,
        _ => return,
    }
    s.latency[latency_bucket(latency_ns)] += 1;
    s.latency_sum_ns += latency_ns;
}

pub(crate) fn slot_name(slot: usize) -> String {
    if slot == DROP_REASON_SLOTS - 1 {
        "other".into()
    } else {
        drop_reason_name(OVS_DROP_REASON_BASE + slot as u32)
    }
}

/// Latency percentiles (ns) from the log2 histogram. Each bucket [2^i, 2^(i+1)) is recorded
/// at its geometric middle, so a percentile is exact to the bucket (within a factor sqrt(2)).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

pub fn percentiles(s: &FlowStats) -> Percentiles {
    let Ok(mut h) = Histogram::<u64>::new_with_bounds(1, 1 << 40, 2) else {
        return Percentiles::default();
    };
    let mut count = 0;
    for (i, &n) in s.latency.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let mid = ((1u64 << i) as f64 * std::f64::consts::SQRT_2) as u64;
        let _ = h.record_n(mid.max(1), n);
        count += n;
    }
    if count == 0 {
        return Percentiles::default();
    }
    Percentiles {
        count,
        p50_ns: h.value_at_quantile(0.5),
        p90_ns: h.value_at_quantile(0.9),
        p99_ns: h.value_at_quantile(0.99),
        max_ns: h.max(),
        mean_ns: s.latency_sum_ns / count,
    }
}

/// What a table row counts: a datapath flow, or an OVN object all its flows trace back to.
/// Serialized as `ufid:<uuid>` and `<table> <uuid>`, as `top --format json` has always shown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RowKey {
    Flow(Uuid),
    Object {
        table: String,
        uuid: Uuid,
    },
    /// A platform object (without its rule: a NetworkPolicy, not each of its rules).
    Platform(PlatformRef),
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flow(u) => write!(f, "ufid:{u}"),
            Self::Object { table, uuid } => write!(f, "{table} {uuid}"),
            Self::Platform(p) => write!(f, "{} {}", p.platform.label(), p),
        }
    }
}

impl Serialize for RowKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The order of `top`'s tables (largest first).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Packets,
    Rate,
    Bytes,
    Drops,
    Latency,
}

/// Sorts rows by `key`, largest first, then by packets (stable: ties keep their order).
pub fn sort_rows(rows: &mut [Row], key: SortKey) {
    let k = |r: &Row| match key {
        SortKey::Packets => r.packets as f64,
        SortKey::Rate => r.pps,
        SortKey::Bytes => r.bytes as f64,
        SortKey::Drops => r.drops as f64,
        SortKey::Latency => r.latency.p99_ns as f64,
    };
    rows.sort_by(|a, b| {
        k(b).total_cmp(&k(a))
            .then_with(|| b.packets.cmp(&a.packets))
    });
}

/// One row of a table: a flow or an OVN object.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub key: RowKey,
    pub label: String,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub pps: f64,
    pub bps: f64,
    pub drop_reasons: BTreeMap<String, u64>,
    pub latency: Percentiles,
    /// Who decided the drops of this flow (flows with drops, once explained).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Culprit>,
    /// The platform object of a platform row, structured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRef>,
    #[serde(skip)]
    pub stats: FlowStats,
}

pub(crate) fn row(
    key: RowKey,
    label: String,
    s: &FlowStats,
    delta: Option<&FlowStats>,
    secs: f64,
) -> Row {
    let mut reasons = BTreeMap::new();
    for (i, &n) in s.drop_reasons.iter().enumerate() {
        if n > 0 {
            reasons.insert(slot_name(i), n);
        }
    }
    let rate = |f: fn(&FlowStats) -> u64| delta.map_or(0.0, |d| f(d) as f64 / secs.max(1e-9));
    Row {
        key,
        label,
        packets: s.packets,
        bytes: s.bytes,
        drops: s.drops,
        pps: rate(|d| d.packets),
        bps: rate(|d| d.bytes),
        drop_reasons: reasons,
        latency: percentiles(s),
        culprit: None,
        platform: None,
        stats: *s,
    }
}

/// Per-flow counters with rates between snapshots. A flow costs one compact 64-byte
/// [`FlowCounters`] (plus its key) rather than the kernel's 424-byte [`FlowStats`].
#[derive(Default)]
pub struct FlowTable {
    pub flows: FastMap<Uuid, FlowCounters>,
    pub(crate) prev: FastMap<Uuid, FlowCounters>,
    /// What retired flows left to the object and platform rows (see [`FlowTable::retire`]).
    pub(crate) gone_objects: std::collections::HashMap<RowKey, (String, FlowStats)>,
    pub(crate) gone_platform: std::collections::HashMap<RowKey, (String, FlowStats)>,
    /// Where retired flows' packets went next (each packet counts once per object).
    pub(crate) gone_cont: platform::Continuations<RowKey>,
}

impl FlowTable {
    /// Replaces the table with a kernel snapshot (cumulative counters), keeping the previous one
    /// for rates.
    pub fn snapshot(&mut self, now: impl IntoIterator<Item = (Uuid, FlowStats)>) {
        self.prev = std::mem::take(&mut self.flows);
        self.flows = now
            .into_iter()
            .map(|(u, s)| (u, FlowCounters::from_stats(&s)))
            .collect();
    }

    /// Adds a recorded packet (replay): every pass counts for its flow, the end for the last.
    /// One table lookup per pass: the last pass's entry also takes the end. A pass executed
    /// by ovs-vswitchd after an upcall ran its flow's actions: counted for the flow installed
    /// for it, as the probes count it live (the kernel's own counters do not).
    pub fn add_trace(&mut self, t: &PacketTrace) {
        let last = t.passes.len().wrapping_sub(1);
        for (i, p) in t.passes.iter().enumerate() {
            let c = self.flows.entry(p.ufid).or_default();
            c.add_pass(t.len);
            if i == last {
                c.record_end(&t.verdict, t.latency_ns, t.after_upcall);
            }
        }
    }

    /// Every flow's counters in the kernel's layout (what drop grouping takes).
    pub fn stats(&self) -> FastMap<Uuid, FlowStats> {
        self.flows.iter().map(|(u, c)| (*u, c.to_stats())).collect()
    }

    /// Rows per flow; `label` names a flow (e.g. its OVN objects).
    pub fn rows(&self, secs: f64, label: impl Fn(&Uuid) -> String) -> Vec<Row> {
        self.flows
            .iter()
            .map(|(u, c)| {
                let s = c.to_stats();
                let d = self
                    .prev
                    .get(u)
                    .map(|p| s.saturating_sub(&p.to_stats()))
                    .unwrap_or(s);
                row(RowKey::Flow(*u), label(u), &s, Some(&d), secs)
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;
    use detrace_common::LATENCY_BUCKETS;

    use crate::events::Packet;

    #[test]
    fn buckets_and_percentiles() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(1023), 9);
        assert_eq!(latency_bucket(1024), 10);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        let mut s = FlowStats::default();
        for _ in 0..90 {
            record_end(&mut s, &Verdict::Output { port: 1 }, 1000, false);
        }
        for _ in 0..10 {
            record_end(
                &mut s,
                &Verdict::Drop {
                    reason: 0x30003,
                    reason_name: "".into(),
                },
                1_000_000,
                false,
            );
        }
        let p = percentiles(&s);
        assert_eq!(p.count, 100);
        // 1000 ns sits in bucket 9 ([512, 1024)), reported at its middle ~724.
        assert!((512..1024).contains(&p.p50_ns), "{p:?}");
        assert!((1 << 19..1 << 20).contains(&p.p99_ns), "{p:?}");
        assert_eq!(p.mean_ns, (90 * 1000 + 10 * 1_000_000) / 100);
        assert_eq!(s.drop_reasons[3], 10);
        assert_eq!((s.drops, s.outputs), (10, 90));
    }

    #[test]
    fn drops_group_by_culprit_and_rates() {
        let u1 = Uuid(1 << 96);
        let u2 = Uuid(2 << 96);
        let u3 = Uuid(3 << 96);
        let mut t = FlowTable::default();
        let mk = |drops: u64, packets: u64| {
            let mut s = FlowStats {
                drops,
                packets,
                ..Default::default()
            };
            s.drop_reasons[3] = drops;
            s
        };
        t.snapshot([(u1, mk(0, 10)), (u2, mk(0, 10))]);
        t.snapshot([(u1, mk(5, 20)), (u2, mk(7, 30)), (u3, mk(0, 1))]);
        let acl = Culprit {
            kind: crate::explain::culprit::CulpritKind::Acl,
            id: "x".into(),
            name: "drop-9999".into(),
            detail: String::new(),
            nb_table: Some("ACL".into()),
            datapath: None,
            flow_desc: None,
            platform: None,
        };
        let groups = group_drops(
            &t.stats(),
            |_| acl.clone(),
            |u| (*u == u2).then(Packet::default),
        );
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].drops, 12);
        assert_eq!((groups[0].in_kernel, groups[0].after_upcall), (12, 0));
        assert_eq!(groups[0].flows, vec![u1, u2]);
        assert_eq!(groups[0].reasons["OVS_DROP_EXPLICIT"], 12);
        assert!(groups[0].sample.is_some());
        let rows = t.rows(2.0, |_| String::new());
        let r1 = rows.iter().find(|r| r.key == RowKey::Flow(u1)).unwrap();
        assert_eq!(serde_json::to_value(&r1.key).unwrap(), format!("ufid:{u1}"));
        assert_eq!(r1.pps, 5.0);
        // Objects: both flows (two first passes) belong to one ACL.
        let orows = t.object_rows(2.0, |u| {
            Some(platform::FlowPlace {
                objects: if *u == u3 {
                    vec![]
                } else {
                    vec![crate::explain::ObjectName {
                        table: "ACL".into(),
                        uuid: Uuid(9),
                        name: "a".into(),
                        platform: None,
                    }]
                },
                platforms: Vec::new(),
                recirc_id: 0,
                recirc_to: Vec::new(),
            })
        });
        assert_eq!(orows.len(), 1);
        assert_eq!(orows[0].packets, 50);
        assert_eq!(orows[0].drops, 12);
    }

    #[test]
    fn drop_groups_split_in_kernel_and_after_upcall() {
        let (u1, u2) = (Uuid(1 << 96), Uuid(2 << 96));
        let mut flows = FastMap::default();
        let mk = |drops, after| FlowStats {
            drops,
            drops_after_upcall: after,
            ..Default::default()
        };
        flows.insert(u1, mk(11, 1));
        flows.insert(u2, mk(1, 1));
        let c = Culprit {
            kind: crate::explain::culprit::CulpritKind::Acl,
            id: "x".into(),
            name: "port-security".into(),
            detail: String::new(),
            nb_table: Some("ACL".into()),
            datapath: None,
            flow_desc: None,
            platform: None,
        };
        let g = group_drops(&flows, |_| c.clone(), |_| None);
        assert_eq!((g[0].drops, g[0].in_kernel, g[0].after_upcall), (12, 10, 2));
        let v = serde_json::to_value(&g[0]).unwrap();
        assert_eq!(
            (v["in_kernel"].as_u64(), v["after_upcall"].as_u64()),
            (Some(10), Some(2))
        );
        // The compact per-flow counters keep the split exactly.
        let back = FlowCounters::from_stats(&flows[&u1]).to_stats();
        assert_eq!(back, flows[&u1]);
        let mut c = FlowCounters::default();
        let drop = Verdict::Drop {
            reason: 0x30003,
            reason_name: "".into(),
        };
        c.record_end(&drop, 100, true);
        c.record_end(&drop, 100, false);
        assert_eq!((c.drops, c.drops_after_upcall()), (2, 1));
        assert_eq!(c.drop_reasons()[3], 2);
    }

    /// Aggregation of the packets recorded in the lab (Linux 6.12, OVS 3.5): what a replay of
    /// that capture would show.
    #[test]
    fn lab_capture_aggregates_per_flow() {
        let events = crate::events::path::tests::lab_events();
        let mut a = crate::events::path::PathAssembler::new(1024, u64::MAX);
        let mut traces = Vec::new();
        for e in &events {
            a.push(e, &mut traces);
        }
        let mut t = FlowTable::default();
        traces.iter().for_each(|tr| t.add_trace(tr));
        let passes = events
            .iter()
            .filter(|e| e.kind == crate::events::Kind::Pass)
            .count() as u64;
        let counted: u64 = t.flows.values().map(|s| s.packets).sum();
        // Every pass of an assembled packet counts once for its flow.
        let assembled: u64 = traces.iter().map(|tr| tr.passes.len() as u64).sum();
        assert_eq!(counted, assembled);
        assert!(counted <= passes);
        let drops: Vec<(&Uuid, &FlowCounters)> =
            t.flows.iter().filter(|(_, s)| s.drops > 0).collect();
        assert_eq!(drops.len(), 1, "one dropping flow in the capture");
        assert_eq!(drops[0].1.drop_reasons()[3], 1, "OVS_DROP_EXPLICIT");
        let outputs: u64 = t.flows.values().map(|s| s.outputs).sum();
        let output_traces = traces
            .iter()
            .filter(|tr| matches!(tr.verdict, Verdict::Output { .. }))
            .count() as u64;
        assert_eq!(outputs, output_traces);
        let p = percentiles(&t.flows.values().fold(FlowStats::default(), |mut acc, s| {
            acc.add(&s.to_stats());
            acc
        }));
        assert_eq!(p.count, outputs + 1);
        assert!(
            p.p50_ns > 1000,
            "datapath latency under TCG is microseconds at least: {p:?}"
        );
    }
}
