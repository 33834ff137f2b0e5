//! Which OVN object is responsible for what a flow does to a packet, above all for a drop.

use serde::{Deserialize, Serialize};

use super::FlowExplanation;
use crate::ovn::{NbObject, SbCandidate};

/// The object a drop (or any verdict) is attributed to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Culprit {
    /// "ACL", "Load_Balancer", "Logical_Flow" (a stage with no NB object), or "Datapath_Flow"
    /// (nothing resolved).
    pub kind: String,
    /// NB/SB UUID, or the UFID for an unexplained datapath flow.
    pub id: String,
    /// A short human name: ACL name (or its match), LB name, stage name.
    pub name: String,
    /// The details an engineer checks first (ACL direction/priority/match/action, LB VIPs...).
    pub detail: String,
}

fn is_drop_action(a: &str) -> bool {
    a.contains("drop") || a.contains("reject")
}

pub fn acl_culprit(o: &NbObject) -> Culprit {
    let f = |k: &str| {
        o.fields
            .get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_default()
    };
    let name = match f("name") {
        n if !n.is_empty() => n,
        _ => format!("{} {}", f("direction"), f("match")),
    };
    let mut detail = format!(
        "{} priority {} match=({}) action={}",
        f("direction"),
        f("priority"),
        f("match"),
        f("action")
    );
    if !o.owners.is_empty() {
        detail.push_str(&format!(" [in {}]", o.owners.join(", ")));
    }
    Culprit {
        kind: "ACL".into(),
        id: o.uuid.to_string(),
        name,
        detail,
    }
}

pub fn lb_culprit(o: &NbObject) -> Culprit {
    let vips = o.vips_text();
    Culprit {
        kind: "Load_Balancer".into(),
        id: o.uuid.to_string(),
        name: o.label(),
        detail: format!("vips {vips}"),
    }
}

/// The responsible object for a dropped packet whose last flow is `e`:
/// an ACL whose action drops or rejects; else the logical flow stage that drops (with its NB
/// object when it has one: a load balancer without backends, a port...); else the flow itself.
pub fn drop_culprit(e: &FlowExplanation) -> Culprit {
    let nb_all = || {
        e.rules
            .iter()
            .flat_map(|r| r.sb.iter())
            .flat_map(SbCandidate::nb)
    };
    if let Some(acl) = nb_all().find(|o| {
        o.table == "ACL"
            && o.fields
                .get("action")
                .and_then(|a| a.as_str())
                .is_some_and(is_drop_action)
    }) {
        return acl_culprit(acl);
    }
    // The last logical flow whose actions drop.
    for r in e.rules.iter().rev() {
        for c in &r.sb {
            if let SbCandidate::LogicalFlow {
                uuid,
                stage_name,
                actions,
                match_,
                datapaths,
                nb,
                ..
            } = c
                && is_drop_action(actions)
            {
                if let Some(lb) = nb.iter().find(|o| o.table == "Load_Balancer") {
                    return lb_culprit(lb);
                }
                let dp = datapaths
                    .iter()
                    .map(|d| d.name.clone())
                    .collect::<Vec<_>>()
                    .join(",");
                return Culprit {
                    kind: "Logical_Flow".into(),
                    id: uuid.to_string(),
                    name: stage_name.clone(),
                    detail: format!("{dp}: match=({match_}) actions=({actions})"),
                };
            }
        }
    }
    if let Some(lb) = nb_all().find(|o| o.table == "Load_Balancer") {
        return lb_culprit(lb);
    }
    Culprit {
        kind: "Datapath_Flow".into(),
        id: e.ufid.to_string(),
        name: format!("ufid:{}", e.ufid),
        detail: format!(
            "no OVN object found; match {} actions {}",
            e.match_compact, e.actions
        ),
    }
}

/// A short label of what a flow is about, for one-line displays: its most telling NB objects.
pub fn flow_label(e: &FlowExplanation) -> String {
    let mut parts: Vec<String> = Vec::new();
    for o in &e.objects {
        let short = match o.table {
            "ACL" => format!("ACL {}", o.name),
            "Load_Balancer" => format!("LB {}", o.name),
            "Logical_Switch_Port" => format!("LSP {}", o.name),
            "Logical_Router_Port" => format!("LRP {}", o.name),
            "NAT" => format!("NAT {}", o.name),
            "Logical_Switch" | "Logical_Router" | "Port_Group" => continue,
            t => format!("{t} {}", o.name),
        };
        if !parts.contains(&short) {
            parts.push(short);
        }
    }
    if parts.is_empty() {
        // No NB object: name the last stage that did something.
        let stage = e
            .rules
            .iter()
            .rev()
            .flat_map(|r| r.sb.iter())
            .find_map(|c| match c {
                SbCandidate::LogicalFlow {
                    stage_name,
                    actions,
                    ..
                } if actions.as_str() != "next;" => Some(stage_name.clone()),
                _ => None,
            });
        return stage.unwrap_or_else(|| "-".into());
    }
    parts.join(", ")
}
