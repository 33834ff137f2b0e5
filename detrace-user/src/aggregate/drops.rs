//! Drops grouped by the OVN object responsible (the typed culprit of `explain`).

use std::collections::BTreeMap;

use detrace_common::FlowStats;
use serde::Serialize;

use super::slot_name;
use crate::{
    FastMap,
    events::Packet,
    explain::culprit::{Culprit, CulpritKind},
    uuid::Uuid,
};

/// Drops grouped by the object responsible.
#[derive(Clone, Debug, Serialize)]
pub struct DropGroup {
    pub culprit: Culprit,
    /// Every drop: `in_kernel + after_upcall`.
    pub drops: u64,
    /// Dropped by a flow the packet hit in the kernel's flow table.
    pub in_kernel: u64,
    /// Dropped while ovs-vswitchd executed the packet after its upcall, with the actions of the
    /// flow it installed for it (often a conversation's first packet).
    pub after_upcall: u64,
    pub reasons: BTreeMap<String, u64>,
    pub flows: Vec<Uuid>,
    /// Flows gone for good past the first [`GONE_FLOWS_LISTED`] of a group: counted, not
    /// listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub flows_not_listed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Packet>,
    /// How the culprit was found when it matters (e.g. explained after the flow expired).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Groups per-flow drop counts by culprit; `sample` gives a packet seen dropped by a flow.
pub fn group_drops(
    flows: &FastMap<Uuid, FlowStats>,
    culprit: impl Fn(&Uuid) -> Culprit,
    sample: impl Fn(&Uuid) -> Option<Packet>,
) -> Vec<DropGroup> {
    // One group per object: flows explained at different times (or on different datapaths)
    // may word the same culprit's detail differently.
    let mut groups: BTreeMap<(CulpritKind, String), DropGroup> = BTreeMap::new();
    for (u, s) in flows.iter().filter(|(_, s)| s.drops > 0) {
        let c = culprit(u);
        let g = groups
            .entry((c.kind, c.id.clone()))
            .or_insert_with(|| DropGroup {
                culprit: c,
                drops: 0,
                in_kernel: 0,
                after_upcall: 0,
                reasons: BTreeMap::new(),
                flows: Vec::new(),
                flows_not_listed: 0,
                sample: None,
                notes: Vec::new(),
            });
        g.drops += s.drops;
        // A subset of drops; saturating for counters read while the kernel updates them.
        let after = s.drops_after_upcall.min(s.drops);
        g.after_upcall += after;
        g.in_kernel += s.drops - after;
        for (i, &n) in s.drop_reasons.iter().enumerate() {
            if n > 0 {
                *g.reasons.entry(slot_name(i)).or_default() += n;
            }
        }
        g.flows.push(*u);
        if g.sample.is_none() {
            g.sample = sample(u);
        }
    }
    let mut v: Vec<DropGroup> = groups.into_values().collect();
    for g in &mut v {
        g.flows.sort();
    }
    sort_groups(&mut v);
    v
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Most drops first.
fn sort_groups(v: &mut [DropGroup]) {
    v.sort_by(|a, b| {
        b.drops
            .cmp(&a.drops)
            .then_with(|| a.culprit.cmp(&b.culprit))
    });
}

/// A group's retired flows listed at most (a culprit that drops all day meets flows without
/// end; their counts stay, their UFIDs do not).
pub const GONE_FLOWS_LISTED: usize = 32;

/// Drop groups of flows gone for good, by culprit: what they counted stays in every report.
#[derive(Default)]
pub struct GoneDrops(BTreeMap<(CulpritKind, String), DropGroup>);

impl GoneDrops {
    /// Folds the groups of retired flows in. Unexplained flows (each its own culprit, named
    /// by its UFID) fold into one group: gone, they would otherwise keep a group each.
    pub fn fold(&mut self, groups: Vec<DropGroup>) {
        for mut g in groups {
            if g.culprit.kind == CulpritKind::Unexplained {
                g.culprit.id = String::new();
                g.culprit.name = "(unexplained flows, gone)".into();
            }
            let key = (g.culprit.kind, g.culprit.id.clone());
            match self.0.get_mut(&key) {
                Some(into) => add_group(into, &g, GONE_FLOWS_LISTED),
                None => {
                    let extra = g.flows.len().saturating_sub(GONE_FLOWS_LISTED);
                    g.flows.truncate(GONE_FLOWS_LISTED);
                    g.flows_not_listed += extra as u64;
                    self.0.insert(key, g);
                }
            }
        }
    }

    /// `live` (the groups of the flows still counted) with what gone flows left added.
    pub fn merged(&self, mut live: Vec<DropGroup>) -> Vec<DropGroup> {
        for g in self.0.values() {
            match live
                .iter_mut()
                .find(|l| l.culprit.kind == g.culprit.kind && l.culprit.id == g.culprit.id)
            {
                Some(l) => add_group(l, g, usize::MAX),
                None => live.push(g.clone()),
            }
        }
        sort_groups(&mut live);
        live
    }
}

/// Adds `g`'s counts to `into`, its flows listed while `into` lists fewer than `listed`.
fn add_group(into: &mut DropGroup, g: &DropGroup, listed: usize) {
    into.drops += g.drops;
    into.in_kernel += g.in_kernel;
    into.after_upcall += g.after_upcall;
    for (r, n) in &g.reasons {
        *into.reasons.entry(r.clone()).or_default() += n;
    }
    for u in &g.flows {
        if into.flows.contains(u) {
            continue;
        }
        if into.flows.len() < listed {
            into.flows.push(*u);
        } else {
            into.flows_not_listed += 1;
        }
    }
    into.flows_not_listed += g.flows_not_listed;
    if into.sample.is_none() {
        into.sample.clone_from(&g.sample);
    }
    for n in &g.notes {
        if !into.notes.contains(n) && into.notes.len() < GONE_FLOWS_LISTED {
            into.notes.push(n.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(c: Culprit, u: u128, drops: u64) -> DropGroup {
        let mut g = group_drops(
            &[(
                Uuid(u),
                FlowStats {
                    drops,
                    ..FlowStats::default()
                },
            )]
            .into_iter()
            .collect(),
            |_| c.clone(),
            |_| None,
        );
        g.remove(0)
    }

    /// Gone flows keep their drops under their culprit, listed up to a bound; unexplained ones
    /// (a culprit each, by UFID) fold into one group; live groups get the gone counts added.
    #[test]
    fn gone_drops_fold_bounded() {
        let acl = Culprit {
            kind: CulpritKind::Acl,
            id: "acl-1".into(),
            ..Culprit::unexplained(Uuid(0), "")
        };
        let mut gone = GoneDrops::default();
        for u in 1..=40u128 {
            gone.fold(vec![
                group(acl.clone(), u, 2),
                group(Culprit::unexplained(Uuid(1000 + u), "x"), 1000 + u, 1),
            ]);
        }
        let live = vec![group(acl.clone(), 99, 5)];
        let all = gone.merged(live);
        assert_eq!(all.len(), 2, "{all:#?}");
        let a = &all[0];
        assert_eq!((a.culprit.id.as_str(), a.drops), ("acl-1", 85));
        assert_eq!(a.flows.len() as u64 + a.flows_not_listed, 41);
        assert!(a.flows.contains(&Uuid(99)));
        let un = &all[1];
        assert_eq!((un.culprit.kind, un.drops), (CulpritKind::Unexplained, 40));
        assert_eq!(
            (un.flows.len(), un.flows_not_listed),
            (GONE_FLOWS_LISTED, 40 - GONE_FLOWS_LISTED as u64)
        );
    }
}
