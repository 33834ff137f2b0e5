//! `top`'s rows per platform object (NetworkPolicy, pod, Service...), each packet counted once.
//!
//! A packet crosses several datapath flows (one per recirculation), and a platform object is
//! often named by more than one of them (a pod's port at the first pass and again at the last,
//! a Service's load balancer before the conntrack recirculation and its backends after). The
//! kernel counts each flow's packets: summing them per object would count a packet once per
//! pass. So a flow's packets count for an object unless they came from a flow that already
//! named it (its `recirc_id` is the `recirc(...)` target of such a flow); its drops and
//! latency, recorded where packets end, always count.

use std::collections::{HashMap, HashSet};

use detrace_common::FlowStats;

use super::{FlowTable, Row, RowKey, row};
use crate::{explain::FlowSummary, ovn::platform::PlatformRef, uuid::Uuid};

/// What a flow tells about its place in a packet's passes.
pub struct FlowPlace {
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
            platforms,
            recirc_id: hex_arg(&s.match_compact, "recirc_id(")
                .first()
                .copied()
                .unwrap_or(0),
            recirc_to: hex_arg(&s.actions, "recirc("),
        }
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
    /// Rows per platform object; `place` gives each flow's platform objects and recirculations
    /// (None: not explained yet).
    pub fn platform_rows(&self, secs: f64, place: impl Fn(&Uuid) -> Option<FlowPlace>) -> Vec<Row> {
        let places: HashMap<Uuid, FlowPlace> = self
            .flows
            .keys()
            .filter_map(|u| place(u).map(|p| (*u, p)))
            .collect();
        // (object, recirc id) for every recirculation out of a flow naming the object.
        let mut continued: HashSet<(&PlatformRef, u32)> = HashSet::new();
        for p in places.values() {
            for o in &p.platforms {
                for to in &p.recirc_to {
                    continued.insert((o, *to));
                }
            }
        }
        let mut sums: HashMap<&PlatformRef, (FlowStats, FlowStats)> = HashMap::new();
        for (u, c) in &self.flows {
            let Some(p) = places.get(u) else { continue };
            let s = c.to_stats();
            let d = self
                .prev
                .get(u)
                .map(|q| s.saturating_sub(&q.to_stats()))
                .unwrap_or(s);
            for o in &p.platforms {
                let again = p.recirc_id != 0 && continued.contains(&(o, p.recirc_id));
                let e = sums.entry(o).or_default();
                e.0.add(&ends_only(&s, again));
                e.1.add(&ends_only(&d, again));
            }
        }
        sums.into_iter()
            .map(|(o, (s, d))| {
                let mut r = row(
                    RowKey::Platform(o.clone()),
                    o.to_string(),
                    &s,
                    Some(&d),
                    secs,
                );
                r.platform = Some(o.clone());
                r
            })
            .collect()
    }
}

/// `s` as it counts for an object its packets already counted for: their ends only.
fn ends_only(s: &FlowStats, again: bool) -> FlowStats {
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
                    platforms: vec![svc.clone(), pod.clone()],
                    recirc_id: 0,
                    recirc_to: vec![5],
                },
                2 => FlowPlace {
                    platforms: vec![svc.clone(), np.clone()],
                    recirc_id: 5,
                    recirc_to: vec![],
                },
                _ => FlowPlace {
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
