//! `top`'s rows per OVN object and per platform object (NetworkPolicy, pod, Service...), each
//! packet counted once.
//!
//! A packet crosses several datapath flows (one per recirculation), and a platform object is
//! often named by more than one of them (a pod's port at the first pass and again at the last,
//! a Service's load balancer before the conntrack recirculation and its backends after). The
//! kernel counts each flow's packets: summing them per object would count a packet once per
//! pass. So a flow's packets count for an object unless they came from a flow that already
//! named it (its `recirc_id` is the `recirc(...)` target of such a flow); its drops and
//! latency, recorded where packets end, always count.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use detrace_common::FlowStats;

use super::{FlowTable, Row, RowKey, counters::FlowCounters, row};
use crate::{
    FastMap,
    explain::{FlowSummary, ObjectName},
    ovn::platform::PlatformRef,
    uuid::Uuid,
};

/// What a flow tells about its place in a packet's passes.
pub struct FlowPlace {
    /// Its OVN Northbound objects.
    pub objects: Vec<ObjectName>,
    /// The platform objects they belong to (each once).
    pub platforms: Vec<PlatformRef>,
    pub recirc_id: u32,
    pub recirc_to: Vec<u32>,
}

impl FlowPlace {
    pub fn of(s: &FlowSummary) -> Self {
        let mut platforms: Vec<PlatformRef> = s
            .objects
            .iter()
            .filter_map(|o| o.platform.as_ref().map(PlatformRef::object))
            .collect();
        platforms.sort();
        platforms.dedup();
        Self {
            objects: s.objects.clone(),
            platforms,
            recirc_id: hex_arg(&s.match_compact, "recirc_id(")
                .first()
                .copied()
                .unwrap_or(0),
            recirc_to: hex_arg(&s.actions, "recirc("),
        }
    }
}

/// Counting each packet once per key across its passes: the (key, recirculation id) pairs out
/// of flows that name the key.
#[derive(Clone)]
pub struct Continuations<K>(HashSet<(K, u32)>);

impl<K: Hash + Eq + Clone> Default for Continuations<K> {
    fn default() -> Self {
        Self(HashSet::new())
    }
}

impl<K: Hash + Eq + Clone> Continuations<K> {
    /// Remembers where the packets of a flow naming `keys` go next.
    pub fn learn(&mut self, keys: &[K], place: &FlowPlace) {
        for k in keys {
            for to in &place.recirc_to {
                self.0.insert((k.clone(), *to));
            }
        }
    }

    /// Whether the packets of a flow at `place` were already counted for `key` at an earlier
    /// pass (then only their ends count here).
    pub fn again(&self, key: &K, place: &FlowPlace) -> bool {
        place.recirc_id != 0 && self.0.contains(&(key.clone(), place.recirc_id))
    }
}

/// Every `name(0x1f)` / `name(31)` argument in `text`.
fn hex_arg(text: &str, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(name) {
        // Not the tail of a longer name (`recirc(` inside `xrecirc(`).
        let ok = at == 0
            || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        rest = &rest[at + name.len()..];
        let arg = rest.split(')').next().unwrap_or_default();
        let v = match arg.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => arg.parse().ok(),
        };
        if let (true, Some(v)) = (ok, v) {
            out.push(v);
        }
    }
    out
}

impl FlowTable {
    /// Rows per platform object, each packet once; `place` gives each flow's objects and
    /// recirculations (None: not explained yet).
    pub fn platform_rows(&self, secs: f64, place: impl Fn(&Uuid) -> Option<FlowPlace>) -> Vec<Row> {
        let sums = self.once_sums(&place, platform_keys);
        let mut rows = to_rows(sums, &self.gone_platform, secs);
        for r in &mut rows {
            if let RowKey::Platform(p) = &r.key {
                r.platform = Some(p.clone());
            }
        }
        rows
    }

    /// Rows per OVN object, each packet once.
    pub fn object_rows(&self, secs: f64, place: impl Fn(&Uuid) -> Option<FlowPlace>) -> Vec<Row> {
        let sums = self.once_sums(&place, object_keys);
        to_rows(sums, &self.gone_objects, secs)
    }

    /// Folds flows gone for good (retired from the kernel's accounts) into the object and
    /// platform rows, where they keep counting; they leave the table of flows. Their
    /// continuations are learned from the flows still in the table too (a flow before a
    /// recirculation may retire a read before or after the one it recirculates to).
    pub fn retire(
        &mut self,
        gone: &FastMap<Uuid, FlowStats>,
        place: impl Fn(&Uuid) -> Option<FlowPlace>,
    ) {
        let gone: FastMap<Uuid, FlowCounters> = gone
            .iter()
            .map(|(u, s)| (*u, FlowCounters::from_stats(s)))
            .collect();
        let live: Vec<Uuid> = self.flows.keys().copied().collect();
        for (keys, into) in [
            (object_keys as KeysOf, &mut self.gone_objects),
            (platform_keys as KeysOf, &mut self.gone_platform),
        ] {
            let sums = once_sums_of(
                &gone,
                &FastMap::default(),
                &live,
                &place,
                keys,
                &self.gone_cont,
            );
            for (key, (label, s, _)) in sums {
                into.entry(key)
                    .or_insert_with(|| (label, FlowStats::default()))
                    .1
                    .add(&s);
            }
        }
        // Where retired flows' packets went next, for the flows that continue them and are
        // still in the table or retire later.
        for u in gone.keys() {
            if let Some(p) = place(u) {
                for keys in [object_keys, platform_keys] {
                    let k: Vec<RowKey> = keys(&p).into_iter().map(|(k, _)| k).collect();
                    self.gone_cont.learn(&k, &p);
                }
            }
        }
        for u in gone.keys() {
            self.flows.remove(u);
            self.prev.remove(u);
        }
    }

    /// Sums per key of the table's flows, each packet once (see [`once_sums_of`]).
    fn once_sums(&self, place: &impl Fn(&Uuid) -> Option<FlowPlace>, keys: KeysOf) -> Sums {
        once_sums_of(&self.flows, &self.prev, &[], place, keys, &self.gone_cont)
    }
}

/// A row's key and label.
type Keyed = (RowKey, String);

/// The keys a flow at a place counts for.
type KeysOf = fn(&FlowPlace) -> Vec<Keyed>;

/// Per key: label, cumulative stats, and their change since the previous snapshot.
type Sums = HashMap<RowKey, (String, FlowStats, FlowStats)>;

fn object_keys(p: &FlowPlace) -> Vec<Keyed> {
    p.objects
        .iter()
        .map(|o| {
            (
                RowKey::Object {
                    table: o.table.clone(),
                    uuid: o.uuid,
                },
                format!("{} {}", o.table, o.name),
            )
        })
        .collect()
}

fn platform_keys(p: &FlowPlace) -> Vec<Keyed> {
    p.platforms
        .iter()
        .map(|o| (RowKey::Platform(o.clone()), o.to_string()))
        .collect()
}

/// Sums per key of `flows`, a flow's packets counting for a key unless an earlier pass of
/// theirs named it already: learned from `flows`, the places of `learn`, and `prior`.
fn once_sums_of(
    flows: &FastMap<Uuid, FlowCounters>,
    prev: &FastMap<Uuid, FlowCounters>,
    learn: &[Uuid],
    place: &impl Fn(&Uuid) -> Option<FlowPlace>,
    keys: KeysOf,
    prior: &Continuations<RowKey>,
) -> Sums {
    let places: HashMap<Uuid, (FlowPlace, Vec<Keyed>)> = flows
        .keys()
        .filter_map(|u| {
            let p = place(u)?;
            let k = keys(&p);
            Some((*u, (p, k)))
        })
        .collect();
    // By key alone: two flows may label one object differently (explained before and after
    // a rename).
    let row_keys = |k: &[Keyed]| k.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>();
    let mut cont = prior.clone();
    for (p, k) in places.values() {
        cont.learn(&row_keys(k), p);
    }
    for u in learn.iter().filter(|u| !flows.contains_key(u)) {
        if let Some(p) = place(u) {
            cont.learn(&row_keys(&keys(&p)), &p);
        }
    }
    let mut sums = Sums::new();
    for (u, c) in flows {
        let Some((p, ks)) = places.get(u) else {
            continue;
        };
        let s = c.to_stats();
        let d = prev
            .get(u)
            .map(|q| s.saturating_sub(&q.to_stats()))
            .unwrap_or(s);
        for k in ks {
            let again = cont.again(&k.0, p);
            let e = sums
                .entry(k.0.clone())
                .or_insert_with(|| (k.1.clone(), FlowStats::default(), FlowStats::default()));
            e.1.add(&ends_only(&s, again));
            e.2.add(&ends_only(&d, again));
        }
    }
    sums
}

/// Rows from the sums of the flows in the table plus what retired flows left (no rate).
fn to_rows(mut sums: Sums, gone: &HashMap<RowKey, (String, FlowStats)>, secs: f64) -> Vec<Row> {
    for (key, (label, s)) in gone {
        sums.entry(key.clone())
            .or_insert_with(|| (label.clone(), FlowStats::default(), FlowStats::default()))
            .1
            .add(s);
    }
    sums.into_iter()
        .map(|(key, (label, s, d))| row(key, label, &s, Some(&d), secs))
        .collect()
}

/// `s` as it counts for an object its packets already counted for: their ends only.
pub fn ends_only(s: &FlowStats, again: bool) -> FlowStats {
    let mut s = *s;
    if again {
        s.packets = 0;
        s.bytes = 0;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::Verdict,
        ovn::platform::{Platform, PlatformKind},
    };

    fn p(kind: PlatformKind, name: &str) -> PlatformRef {
        PlatformRef {
            platform: Platform::OvnKubernetes,
            kind,
            namespace: Some("prod".into()),
            name: name.into(),
            direction: None,
            rule: None,
            detail: None,
        }
    }

    /// 10 packets through the Service's flow (recirc 0 -> 5) then its continuation (recirc 5,
    /// naming the Service again and the NetworkPolicy that allowed, 3 dropped there); 4 other
    /// packets through a flow of the pod only.
    #[test]
    fn each_packet_counts_once_per_object() {
        let (a, b, c) = (Uuid(1), Uuid(2), Uuid(3));
        let mut t = FlowTable::default();
        let drop = Verdict::Drop {
            reason: 0x30003,
            reason_name: "".into(),
        };
        for i in 0..10 {
            t.flows.entry(a).or_default().add_pass(100);
            let cb = t.flows.entry(b).or_default();
            cb.add_pass(100);
            let end = if i < 3 {
                drop.clone()
            } else {
                Verdict::Output { port: 2 }
            };
            cb.record_end(&end, 1000, false);
        }
        for _ in 0..4 {
            t.flows.entry(c).or_default().add_pass(60);
        }
        let (svc, np, pod) = (
            p(PlatformKind::Service, "web"),
            p(PlatformKind::NetworkPolicy, "allow-web"),
            p(PlatformKind::Pod, "client"),
        );
        let places = |u: &Uuid| {
            Some(match u.0 {
                1 => FlowPlace {
                    objects: Vec::new(),
                    platforms: vec![svc.clone(), pod.clone()],
                    recirc_id: 0,
                    recirc_to: vec![5],
                },
                2 => FlowPlace {
                    objects: Vec::new(),
                    platforms: vec![svc.clone(), np.clone()],
                    recirc_id: 5,
                    recirc_to: vec![],
                },
                _ => FlowPlace {
                    objects: Vec::new(),
                    platforms: vec![pod.clone()],
                    recirc_id: 0,
                    recirc_to: vec![],
                },
            })
        };
        let rows = t.platform_rows(1.0, places);
        let get = |o: &PlatformRef| {
            let r = rows
                .iter()
                .find(|r| r.platform.as_ref() == Some(o))
                .unwrap();
            (r.packets, r.bytes, r.drops)
        };
        // The Service: 10 packets once (not 20), the 3 drops of its continuation.
        assert_eq!(get(&svc), (10, 1000, 3));
        // The policy is first named after the recirculation: its packets count there.
        assert_eq!(get(&np), (10, 1000, 3));
        assert_eq!(get(&pod), (14, 1240, 0));
        assert_eq!(rows.len(), 3);

        // The flows retire (gone from the kernel): the continuation first, its head still in
        // the table, then the rest. The rows count the same; the flows leave the table.
        let sums = |t: &FlowTable| {
            let mut v: Vec<(String, u64, u64, u64)> = t
                .platform_rows(1.0, places)
                .into_iter()
                .map(|r| (r.label, r.packets, r.bytes, r.drops))
                .collect();
            v.sort();
            v
        };
        let before = sums(&t);
        let start = t.flows.clone();
        for gone in [vec![b], vec![a, c]] {
            let gone: FastMap<Uuid, FlowStats> =
                gone.iter().map(|u| (*u, t.flows[u].to_stats())).collect();
            t.retire(&gone, places);
            assert_eq!(sums(&t), before);
            assert!(gone.keys().all(|u| !t.flows.contains_key(u)));
        }
        assert!(t.flows.is_empty());
        // Gone flows have no rate.
        assert!(t.platform_rows(1.0, places).iter().all(|r| r.pps == 0.0));

        // The other order: the head of the recirculation retires first; its continuation,
        // still in the table and then retired, does not count its packets again.
        let mut t = FlowTable {
            flows: start,
            ..FlowTable::default()
        };
        for gone in [vec![a], vec![b, c]] {
            let gone: FastMap<Uuid, FlowStats> =
                gone.iter().map(|u| (*u, t.flows[u].to_stats())).collect();
            t.retire(&gone, places);
            assert_eq!(sums(&t), before);
        }
    }

    #[test]
    fn recirc_arguments() {
        assert_eq!(
            hex_arg("recirc_id(0x25),in_port(2)", "recirc_id("),
            vec![0x25]
        );
        assert_eq!(
            hex_arg("ct(zone=2,nat),recirc(0x25)", "recirc("),
            vec![0x25]
        );
        assert_eq!(hex_arg("recirc_id(0),in_port(2)", "recirc_id("), vec![0]);
        assert!(hex_arg("ct(zone=2),3", "recirc(").is_empty());
    }
}
