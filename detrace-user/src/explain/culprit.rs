//! Which OVN object is responsible for what a flow does to a packet, above all for a drop.

use serde::{Deserialize, Serialize};

use super::FlowExplanation;
use crate::ovn::{NbObject, SbCandidate};

/// What kind of decision dropped a packet: each names the object that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CulpritKind {
    /// An ACL whose action drops or rejects (NB ACL, held by a switch or port group).
    #[serde(alias = "ACL")]
    Acl,
    /// A Logical_Router_Policy that drops (or reroutes to nowhere).
    RouterPolicy,
    /// Port security: the Logical_Switch_Port whose port_security refused the packet.
    PortSecurity,
    /// A Load_Balancer VIP with no backends (drop or reject).
    #[serde(alias = "Load_Balancer")]
    LbNoBackends,
    /// No L2 destination: unknown destination MAC on a switch.
    NoL2Destination,
    /// Conntrack said invalid (`ct.inv`).
    CtInvalid,
    /// IP TTL (hop limit) expired on a router.
    TtlExpired,
    /// No route on a router.
    NoRoute,
    /// ARP/ND not resolved for the next hop.
    NeighborUnresolved,
    /// A meter (QoS, CoPP) dropped it.
    Meter,
    /// A logical flow stage that drops, with no more specific object.
    #[serde(alias = "Logical_Flow")]
    LogicalFlow,
    /// The flow's chain could not be resolved (see the detail for why).
    #[serde(alias = "Datapath_Flow")]
    Unexplained,
}

impl CulpritKind {
    /// The name people read in text output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Acl => "ACL",
            Self::RouterPolicy => "router policy",
            Self::PortSecurity => "port security",
            Self::LbNoBackends => "load balancer without backends",
            Self::NoL2Destination => "no L2 destination",
            Self::CtInvalid => "conntrack invalid",
            Self::TtlExpired => "TTL expired",
            Self::NoRoute => "no route",
            Self::NeighborUnresolved => "ARP/ND unresolved",
            Self::Meter => "meter",
            Self::LogicalFlow => "logical flow",
            Self::Unexplained => "unexplained",
        }
    }
}

impl std::fmt::Display for CulpritKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The object a drop (or any verdict) is attributed to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Culprit {
    pub kind: CulpritKind,
    /// NB/SB UUID, or the UFID for an unexplained datapath flow.
    pub id: String,
    /// A short human name: ACL name (or its match), LB name, port name, stage name.
    pub name: String,
    /// The details an engineer checks first (ACL direction/priority/match/action, LB VIPs,
    /// port_security addresses, policy match...).
    pub detail: String,
    /// The NB table of `id` ("ACL", "Logical_Router_Policy", "Logical_Switch_Port",
    /// "Load_Balancer"...); None when the culprit is an SB logical flow or nothing resolved.
    #[serde(default)]
    pub nb_table: Option<String>,
    /// The logical datapath(s) (switch or router names) where the decision was taken.
    #[serde(default)]
    pub datapath: Option<String>,
    /// OVN's own text for the dropping flow (SB Logical_Flow.flow_desc, OVN >= 24.09).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_desc: Option<String>,
}

impl Culprit {
    /// A flow whose chain could not be resolved, and why.
    pub fn unexplained(ufid: crate::uuid::Uuid, why: impl Into<String>) -> Self {
        Self {
            kind: CulpritKind::Unexplained,
            id: ufid.to_string(),
            name: format!("ufid:{ufid}"),
            detail: why.into(),
            nb_table: None,
            datapath: None,
            flow_desc: None,
        }
    }
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
        kind: CulpritKind::Acl,
        id: o.uuid.to_string(),
        name,
        detail,
        nb_table: Some("ACL".into()),
        datapath: None,
        flow_desc: None,
    }
}

pub fn lb_culprit(o: &NbObject) -> Culprit {
    let vips = o.vips_text();
    Culprit {
        kind: CulpritKind::LbNoBackends,
        id: o.uuid.to_string(),
        name: o.label(),
        detail: format!("vips {vips}"),
        nb_table: Some("Load_Balancer".into()),
        datapath: None,
        flow_desc: None,
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
                    kind: CulpritKind::LogicalFlow,
                    id: uuid.to_string(),
                    name: stage_name.clone(),
                    detail: format!("{dp}: match=({match_}) actions=({actions})"),
                    nb_table: None,
                    datapath: Some(dp),
                    flow_desc: None,
                };
            }
        }
    }
    if let Some(lb) = nb_all().find(|o| o.table == "Load_Balancer") {
        return lb_culprit(lb);
    }
    Culprit::unexplained(
        e.ufid,
        format!(
            "no OVN object found; match {} actions {}",
            e.match_compact, e.actions
        ),
    )
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
