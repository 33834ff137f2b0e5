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

use super::{FlowTable, Row, RowKey, row};
use crate::{
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
        let mut rows = self.once_rows(
            secs,
            &place,
            |p| p.platforms.clone(),
            |o| (RowKey::Platform(o.clone()), o.to_string()),
        );
        for r in &mut rows {
            if let RowKey::Platform(p) = &r.key {
                r.platform = Some(p.clone());
            }
        }
        rows
    }

    /// Rows per OVN object, each packet once.
    pub fn object_rows(&self, secs: f64, place: impl Fn(&Uuid) -> Option<FlowPlace>) -> Vec<Row> {
        self.once_rows(
            secs,
            &place,
            |p| p.objects.clone(),
            |o| {
                (
                    RowKey::Object {
                        table: o.table.clone(),
                        uuid: o.uuid,
                    },
                    format!("{} {}", o.table, o.name),
                )
            },
        )
    }

    /// Rows per key, a flow's packets counting for a key unless an earlier pass of theirs
    /// named it already.
    fn once_rows<K: Hash + Eq + Clone>(
        &self,
        secs: f64,
        place: &impl Fn(&Uuid) -> Option<FlowPlace>,
        keys: impl Fn(&FlowPlace) -> Vec<K>,
        head: impl Fn(&K) -> (RowKey, String),
    ) -> Vec<Row> {
        let places: HashMap<Uuid, (FlowPlace, Vec<K>)> = self
            .flows
            .keys()
            .filter_map(|u| {
                let p = place(u)?;
                let k = keys(&p);
                Some((*u, (p, k)))
            })
            .collect();
        let mut cont = Continuations::default();
        for (p, k) in places.values() {
            cont.learn(k, p);
        }
        let mut sums: HashMap<&K, (FlowStats, FlowStats)> = HashMap::new();
        for (u, c) in &self.flows {
            let Some((p, ks)) = places.get(u) else {
                continue;
            };
            let s = c.to_stats();
            let d = self
                .prev
                .get(u)
                .map(|q| s.saturating_sub(&q.to_stats()))
                .unwrap_or(s);
            for k in ks {
                let again = cont.again(k, p);
                let e = sums.entry(k).or_default();
                e.0.add(&ends_only(&s, again));
                e.1.add(&ends_only(&d, again));
            }
        }
        sums.into_iter()
            .map(|(k, (s, d))| {
                let (key, label) = head(k);
                row(key, label, &s, Some(&d), secs)
            })
            .collect()
    }
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
