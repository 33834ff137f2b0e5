//! The whole chain for one datapath flow: kernel flow -> OpenFlow rules -> SB rows -> NB objects.

pub mod render;

use serde::Serialize;

use crate::{
    ovn::{NbObject, Resolver, SbCandidate},
    ovs::{DpFlow, OfRule, RuleSource, vswitchd::FlowRules},
    uuid::Uuid,
};

#[derive(Clone, Debug, Serialize)]
pub struct RuleExplanation {
    #[serde(flatten)]
    pub rule: OfRule,
    /// Every SB row the cookie may name (several on a collision).
    pub sb: Vec<SbCandidate>,
    /// A non-zero cookie that names no SB row (not OVN's, or deleted since).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unresolved: bool,
}

/// A Northbound object the flow traces back to, for summaries and assertions.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub table: &'static str,
    pub uuid: Uuid,
    pub name: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowExplanation {
    pub ufid: Uuid,
    pub datapath: String,
    pub recirc_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_port: Option<String>,
    #[serde(rename = "match")]
    pub match_compact: String,
    pub match_full: String,
    pub actions: String,
    pub packets: u64,
    pub bytes: u64,
    pub used: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_source: Option<RuleSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_error: Option<String>,
    pub rules: Vec<RuleExplanation>,
    /// Distinct NB objects reached through every rule.
    pub objects: Vec<ObjectRef>,
}

fn object_ref(o: &NbObject) -> ObjectRef {
    ObjectRef {
        table: o.table,
        uuid: o.uuid,
        name: o.label(),
    }
}

/// Joins a flow, its rules and the replicas into one explanation.
pub fn explain(dp: &str, flow: &DpFlow, found: FlowRules, res: &Resolver<'_>) -> FlowExplanation {
    let rules: Vec<RuleExplanation> = found
        .rules
        .into_iter()
        .map(|rule| {
            let sb = res.cookie(rule.cookie);
            RuleExplanation {
                unresolved: rule.cookie != 0 && sb.is_empty(),
                rule,
                sb,
            }
        })
        .collect();
    let mut objects: Vec<ObjectRef> = rules
        .iter()
        .flat_map(|r| r.sb.iter())
        .flat_map(|c| c.nb())
        .map(object_ref)
        .collect();
    objects.sort();
    objects.dedup();
    FlowExplanation {
        ufid: flow.ufid,
        datapath: dp.to_string(),
        recirc_id: flow.recirc_id(),
        in_port: flow.in_port().map(str::to_string),
        match_compact: flow.match_compact(),
        match_full: flow.match_full.clone(),
        actions: flow.actions.clone(),
        packets: flow.packets,
        bytes: flow.bytes,
        used: flow.used.clone(),
        rules_source: found.source,
        rules_error: found.error,
        rules,
        objects,
    }
}
