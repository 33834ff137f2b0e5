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
    v.sort_by(|a, b| {
        b.drops
            .cmp(&a.drops)
            .then_with(|| a.culprit.cmp(&b.culprit))
    });
    v
}
