//! Which OVN object is responsible for what a flow does to a packet, above all for a drop.

use serde::{Deserialize, Serialize};

mod objects;

use objects::{
    Lf, ends_packet, is_drop_action, lb_no_backends, lflow, lflow_on, metadata_of, outputs, place,
    port_security_culprit, router_policy_culprit, stage_culprit,
};
pub use objects::{acl_culprit, lb_culprit, match_text};

use super::FlowExplanation;
use crate::ovn::{NbObject, SbCandidate, platform::PlatformRef};

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
    #[serde(default)]
    pub flow_desc: Option<String>,
    /// The platform object behind the NB row (NetworkPolicy, pod, Service, security group
    /// rule...), when a platform wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRef>,
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
            platform: None,
        }
    }
}

/// The logical switch port behind a Port_Binding candidate.
fn lsp_of(c: &SbCandidate) -> Option<&NbObject> {
    match c {
        SbCandidate::Other { table, nb, .. } if *table == "Port_Binding" => {
            nb.iter().find(|o| o.table == "Logical_Switch_Port")
        }
        _ => None,
    }
}

/// Port security. `ls_{in,out}_check_port_sec` sets `reg0[15] = check_{in,out}_port_sec()`,
/// which resubmits to the port-security tables ovn-controller fills per port with the port's
/// Port_Binding cookie (controller/lflow.c); `ls_{in,out}_apply_port_sec` only drops on that bit.
/// So the port is the Port_Binding met between the check flow and the next logical flow.
fn port_security<'a>(steps: &[(usize, &'a SbCandidate)], drop_at: usize) -> Option<&'a NbObject> {
    let check = steps[..drop_at].iter().rposition(|(_, c)| {
        lflow(c).is_some_and(|l| {
            l.actions.contains("check_in_port_sec") || l.actions.contains("check_out_port_sec")
        })
    })?;
    steps[check + 1..drop_at]
        .iter()
        .take_while(|(_, c)| lflow(c).is_none())
        .find_map(|(_, c)| lsp_of(c))
}

/// The decision that ends the packet in this datapath pass and the object that made it, or None
/// when nothing in the pass drops (the packet goes on: output, recirculation, controller for
/// another reason).
///
/// A generic stage that drops on a verdict set earlier in the pipeline is attributed to the
/// earlier, specific object: an ACL's eval flow (25.03 drops in `*_acl_action`), the port whose
/// port security refused (`*_apply_port_sec` drops on `check_*_port_sec()`'s bit).
pub fn drop_decision(e: &FlowExplanation) -> Option<Culprit> {
    // A flooded packet can be dropped on one branch (a router port refusing multicast) and
    // delivered on others: a pass that outputs did not drop the packet.
    if outputs(&e.actions) {
        return None;
    }
    let steps: Vec<(usize, &SbCandidate)> = e
        .rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.sb.iter().map(move |c| (i, c)))
        .collect();
    if let Some(c) = acl_drop(e, &steps) {
        return Some(c);
    }
    // The last logical flow of the pass that ends the packet.
    let at = steps
        .iter()
        .rposition(|(_, c)| lflow(c).is_some_and(|l| ends_packet(l.actions)))?;
    let lf = lflow_on(steps[at].1, metadata_of(&e.rules[steps[at].0].rule.match_))?;
    if let Some(c) = port_security_drop(&steps, at, &lf) {
        return Some(c);
    }
    let nb = |t: &str| lf.nb.iter().find(|o| o.table == t);
    if let Some(lb) = nb("Load_Balancer") {
        return Some(lb_no_backends(lb, &lf));
    }
    if let Some(p) = nb("Logical_Router_Policy") {
        return Some(router_policy_culprit(p, Some(&lf)));
    }
    let kind = stage_kind(&lf);
    Some(stage_culprit(kind, &lf, kind_text(kind)))
}

/// An ACL whose action drops: when its flow matched, the packet was dropped by it.
fn acl_drop(e: &FlowExplanation, steps: &[(usize, &SbCandidate)]) -> Option<Culprit> {
    for (i, c) in steps {
        if let Some(acl) = c.nb().iter().find(|o| {
            o.table == "ACL"
                && o.fields
                    .get("action")
                    .and_then(|a| a.as_str())
                    .is_some_and(is_drop_action)
        }) {
            let lf = lflow_on(c, metadata_of(&e.rules[*i].rule.match_));
            return Some(Culprit {
                datapath: place(lf.as_ref(), Some(acl)),
                flow_desc: lf.as_ref().and_then(|l| l.flow_desc).map(str::to_string),
                ..acl_culprit(acl)
            });
        }
    }
    None
}

/// A drop in a port-security stage (`lf`, the flow at `at` in `steps`), named after the port
/// whose port security refused; None for any other stage.
fn port_security_drop(steps: &[(usize, &SbCandidate)], at: usize, lf: &Lf<'_>) -> Option<Culprit> {
    let stage = lf.stage;
    if stage.ends_with("apply_port_sec") {
        return Some(match port_security(steps, at) {
            Some(lsp) => port_security_culprit(lsp, Some(lf)),
            None => stage_culprit(
                CulpritKind::PortSecurity,
                lf,
                "the port whose port security refused was not found among the rules",
            ),
        });
    }
    if stage.ends_with("check_port_sec") {
        // Drops before any port's check (VLAN tagged, multicast source): the input port.
        let inport = steps[..at].iter().find_map(|(_, c)| lsp_of(c));
        let mut c = match inport {
            Some(lsp) => port_security_culprit(lsp, Some(lf)),
            None => stage_culprit(CulpritKind::PortSecurity, lf, ""),
        };
        c.detail = format!("{} refused: match=({}); {}", lf.stage, lf.match_, c.detail);
        return Some(c);
    }
    None
}

/// What kind of drop a generic stage's flow is, from its stage name, match and actions.
fn stage_kind(lf: &Lf<'_>) -> CulpritKind {
    let (m, stage) = (lf.match_, lf.stage);
    if m.contains("ct.inv") {
        CulpritKind::CtInvalid
    } else if m.contains("ip.ttl == {0, 1}")
        || m.contains("ip.ttl == 0")
        || lf.actions.contains("icmp4.type = 11")
        || lf.actions.contains("icmp6.type = 3;")
    {
        CulpritKind::TtlExpired
    } else if stage.ends_with("_ip_routing") || stage.ends_with("_ip_routing_ecmp") {
        CulpritKind::NoRoute
    } else if stage.ends_with("_arp_request")
        || lf.actions.trim_start().starts_with("arp {")
        || lf.actions.trim_start().starts_with("nd_ns {")
    {
        CulpritKind::NeighborUnresolved
    } else if stage.ends_with("_l2_unknown") || m.contains("outport == \"none\"") {
        CulpritKind::NoL2Destination
    } else if lf.actions.contains("meter") {
        CulpritKind::Meter
    } else {
        CulpritKind::LogicalFlow
    }
}

/// The sentence for a stage drop's detail ("" where the flow itself says it all).
fn kind_text(kind: CulpritKind) -> &'static str {
    match kind {
        CulpritKind::CtInvalid => "conntrack marked the packet invalid",
        CulpritKind::TtlExpired => "IP TTL expired: ICMP time exceeded sent back",
        CulpritKind::NoRoute => "no route matches the destination",
        CulpritKind::NeighborUnresolved => "next hop's MAC unknown: ARP/ND request sent",
        CulpritKind::NoL2Destination => "destination MAC unknown on the switch",
        _ => "",
    }
}

/// The responsible object for a dropped packet whose last flow is `e`: the decision of
/// [`drop_decision`]; else, for a pass that does not drop, a load balancer it met, or
/// Unexplained with the reason.
pub fn drop_culprit(e: &FlowExplanation) -> Culprit {
    if let Some(c) = drop_decision(e) {
        return c;
    }
    if let Some(lb) = e
        .rules
        .iter()
        .flat_map(|r| r.sb.iter())
        .flat_map(SbCandidate::nb)
        .find(|o| o.table == "Load_Balancer")
    {
        return lb_culprit(lb);
    }
    let why = if outputs(&e.actions) {
        "this pass outputs the packet; no logical flow of it decided a drop".to_string()
    } else if let Some(err) = &e.rules_error {
        format!("no OpenFlow rules: {err}")
    } else if e.rules.is_empty() {
        "no OpenFlow rules".to_string()
    } else if let Some(r) = e.rules.iter().rev().find(|r| r.unresolved) {
        format!(
            "cookie 0x{:x} (table {}) names no OVN Southbound row; no logical flow of this pass drops",
            r.rule.cookie, r.rule.table
        )
    } else {
        "no logical flow of this pass drops".to_string()
    };
    Culprit::unexplained(
        e.ufid,
        format!("{why}; match {} actions {}", e.match_compact, e.actions),
    )
}

impl Culprit {
    /// One line: `port security: LSP p4 (port_security "...") on sw0`; the platform object
    /// first when there is one: `NetworkPolicy prod/db (ingress rule 0) -> ACL: ACL ...`.
    pub fn text(&self) -> String {
        let name = match self.nb_table.as_deref() {
            Some("Logical_Switch_Port") => format!("LSP {}", self.name),
            Some("Load_Balancer") => format!("LB {}", self.name),
            Some("ACL") => format!("ACL {}", self.name),
            _ => self.name.clone(),
        };
        let mut s = match &self.platform {
            Some(p) => format!("{p} -> {}: {name} ({})", self.kind, self.detail),
            None => format!("{}: {name} ({})", self.kind, self.detail),
        };
        if let Some(dp) = self.datapath.as_deref().filter(|d| !d.is_empty()) {
            s.push_str(&format!(" on {dp}"));
        }
        if let Some(d) = &self.flow_desc {
            s.push_str(&format!(" - OVN: {d}"));
        }
        s
    }
}

/// A short label of what a flow is about, for one-line displays: its most telling NB objects,
/// each platform object first with its OVN rows after it (`pod prod/client (LSP prod_client)`).
pub fn flow_label(e: &FlowExplanation) -> String {
    // (platform object or "", OVN rows' short names), in the order met.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
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
        let owner = o
            .platform
            .as_ref()
            .map(|p| p.object().to_string())
            .unwrap_or_default();
        match groups.iter_mut().find(|(g, _)| *g == owner) {
            Some((_, rows)) if !rows.contains(&short) => rows.push(short),
            Some(_) => {}
            None => groups.push((owner, vec![short])),
        }
    }
    let mut parts: Vec<String> = Vec::new();
    for (owner, rows) in groups {
        if owner.is_empty() {
            parts.extend(rows);
        } else {
            parts.push(format!("{owner} ({})", rows.join(", ")));
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

#[cfg(test)]
mod tests;
