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
    #[serde(default)]
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

/// Logical actions after which the packet goes no further down the pipeline: an explicit drop
/// (`drop;`, 23.03's ACL `/* drop */`), or a packet handed to ovn-controller instead of being
/// forwarded (`reject`, `tcp_reset`, `icmp4/6 {...}` errors such as TTL exceeded, `arp {...}` /
/// `nd_ns {...}` neighbour requests). OVN's action names: lib/actions.c.
fn ends_packet(actions: &str) -> bool {
    is_drop_action(actions)
        || [
            "tcp_reset {",
            "sctp_abort {",
            "icmp4 {",
            "icmp6 {",
            "icmp4_error {",
            "icmp6_error {",
            "arp {",
            "nd_ns {",
        ]
        .iter()
        .any(|a| actions.contains(a))
}

/// The fields of an SB logical flow the attribution looks at.
struct Lf<'a> {
    uuid: crate::uuid::Uuid,
    stage: &'a str,
    priority: u16,
    match_: &'a str,
    actions: &'a str,
    datapaths: String,
    flow_desc: Option<&'a str>,
    nb: &'a [NbObject],
}

/// `metadata=0x2` in an OpenFlow match: the tunnel key of the logical datapath.
fn metadata_of(of_match: &str) -> Option<u64> {
    of_match
        .split(',')
        .find_map(|f| f.trim().strip_prefix("metadata="))
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
}

/// Whether datapath actions send the packet out of a port (`dt-v-p1`, or a number in the plain
/// form): a bare action, not `drop` nor a call such as `ct(...)`, `recirc(...)`, `userspace(...)`.
fn outputs(dp_actions: &str) -> bool {
    crate::ovs::dpflow::split_top(dp_actions)
        .iter()
        .map(|a| a.trim())
        .any(|a| !a.is_empty() && a != "drop" && !a.contains('('))
}

/// The logical flow of a candidate; `metadata` (from its OpenFlow rule) narrows a flow shared
/// by a datapath group to the datapath the packet was on.
fn lflow_on(c: &SbCandidate, metadata: Option<u64>) -> Option<Lf<'_>> {
    let mut l = lflow(c)?;
    if let (Some(m), SbCandidate::LogicalFlow { datapaths, .. }) = (metadata, c)
        && let Some(d) = datapaths.iter().find(|d| d.tunnel_key == Some(m))
    {
        l.datapaths = d.name.clone();
    }
    Some(l)
}

fn lflow(c: &SbCandidate) -> Option<Lf<'_>> {
    match c {
        SbCandidate::LogicalFlow {
            uuid,
            datapaths,
            stage_name,
            priority,
            match_,
            actions,
            flow_desc,
            nb,
            ..
        } => Some(Lf {
            uuid: *uuid,
            stage: stage_name,
            priority: *priority,
            match_,
            actions,
            datapaths: datapaths
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>()
                .join(","),
            flow_desc: flow_desc.as_deref().filter(|d| !d.is_empty()),
            nb,
        }),
        SbCandidate::Other { .. } => None,
    }
}

/// A column as text; sets (JSON arrays) as their elements quoted and space separated.
fn col(o: &NbObject, k: &str) -> String {
    match o.fields.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| {
                format!(
                    "\"{}\"",
                    v.as_str().map_or_else(|| v.to_string(), str::to_string)
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// `"a b"` for a single-valued set, as ovn-nbctl prints it.
fn quoted_set(o: &NbObject, k: &str) -> String {
    match o.fields.get(k) {
        Some(serde_json::Value::String(s)) => format!("\"{s}\""),
        _ => col(o, k),
    }
}

fn with_owners(mut detail: String, o: &NbObject) -> String {
    if !o.owners.is_empty() {
        detail.push_str(&format!(" [in {}]", o.owners.join(", ")));
    }
    detail
}

/// Where a culprit's decision was taken: its lflow's datapaths, else the NB object's holders.
fn place(lf: Option<&Lf<'_>>, o: Option<&NbObject>) -> Option<String> {
    lf.map(|l| l.datapaths.clone())
        .filter(|d| !d.is_empty())
        .or_else(|| {
            o.map(|o| {
                o.owners
                    .iter()
                    .map(|w| w.rsplit(' ').next().unwrap_or(w).to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|d| !d.is_empty())
        })
}

pub fn acl_culprit(o: &NbObject) -> Culprit {
    let name = match col(o, "name") {
        n if !n.is_empty() => n,
        _ => format!("{} {}", col(o, "direction"), col(o, "match")),
    };
    let detail = with_owners(
        format!(
            "{} priority {} match=({}) action={}",
            col(o, "direction"),
            col(o, "priority"),
            col(o, "match"),
            col(o, "action")
        ),
        o,
    );
    Culprit {
        kind: CulpritKind::Acl,
        id: o.uuid.to_string(),
        name,
        detail,
        nb_table: Some("ACL".into()),
        datapath: place(None, Some(o)),
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
        datapath: place(None, Some(o)),
        flow_desc: None,
    }
}

/// A load balancer that dropped or rejected: the VIPs it has without backends first.
fn lb_no_backends(o: &NbObject, lf: &Lf<'_>) -> Culprit {
    let empty: Vec<String> = o
        .fields
        .get("vips")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter(|(_, be)| be.as_str().is_none_or(str::is_empty))
                .map(|(vip, _)| vip.clone())
                .collect()
        })
        .unwrap_or_default();
    let verdict = if lf.actions.contains("reject") {
        "rejects"
    } else {
        "drops"
    };
    let detail = if empty.is_empty() {
        format!("{verdict}: vips {}", o.vips_text())
    } else {
        format!("{verdict}: vip {} has no backends", empty.join(", "))
    };
    Culprit {
        detail: with_owners(detail, o),
        datapath: place(Some(lf), Some(o)),
        flow_desc: lf.flow_desc.map(str::to_string),
        ..lb_culprit(o)
    }
}

fn router_policy_culprit(o: &NbObject, lf: Option<&Lf<'_>>) -> Culprit {
    let m = col(o, "match");
    Culprit {
        kind: CulpritKind::RouterPolicy,
        id: o.uuid.to_string(),
        name: format!("priority {} ({m})", col(o, "priority")),
        detail: with_owners(
            format!(
                "priority {} match=({m}) action={}",
                col(o, "priority"),
                col(o, "action")
            ),
            o,
        ),
        nb_table: Some("Logical_Router_Policy".into()),
        datapath: place(lf, Some(o)),
        flow_desc: lf.and_then(|l| l.flow_desc).map(str::to_string),
    }
}

/// The Logical_Switch_Port whose port security refused the packet.
fn port_security_culprit(lsp: &NbObject, lf: Option<&Lf<'_>>) -> Culprit {
    let ps = quoted_set(lsp, "port_security");
    let detail = if ps.is_empty() {
        format!(
            "no port_security; addresses {}",
            quoted_set(lsp, "addresses")
        )
    } else {
        format!("port_security {ps}")
    };
    Culprit {
        kind: CulpritKind::PortSecurity,
        id: lsp.uuid.to_string(),
        name: lsp.label(),
        detail,
        nb_table: Some(lsp.table.to_string()),
        datapath: place(None, Some(lsp)).or_else(|| place(lf, None)),
        flow_desc: lf.and_then(|l| l.flow_desc).map(str::to_string),
    }
}

/// A culprit that is a logical flow stage (no NB row decided it): named by its stage and
/// datapath, with the NB object the flow's stage-hint names when it has one.
fn stage_culprit(kind: CulpritKind, lf: &Lf<'_>, what: &str) -> Culprit {
    let mut detail = format!(
        "{} priority {} match=({}) actions=({})",
        lf.stage, lf.priority, lf.match_, lf.actions
    );
    if !what.is_empty() {
        detail = format!("{what}; {detail}");
    }
    let hint = lf.nb.first();
    if let Some(o) = hint {
        detail.push_str(&format!(" (stage-hint: {} {})", o.table, o.label()));
    }
    Culprit {
        kind,
        id: lf.uuid.to_string(),
        name: match hint {
            // e.g. the router port a TTL-expired packet came in on
            Some(o) if kind != CulpritKind::LogicalFlow => format!("{} {}", lf.stage, o.label()),
            _ => lf.stage.to_string(),
        },
        detail,
        nb_table: None,
        datapath: Some(lf.datapaths.clone()).filter(|d| !d.is_empty()),
        flow_desc: lf.flow_desc.map(str::to_string),
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
    /// One line: `port security: LSP p4 (port_security "...") on sw0`.
    pub fn text(&self) -> String {
        let name = match self.nb_table.as_deref() {
            Some("Logical_Switch_Port") => format!("LSP {}", self.name),
            Some("Load_Balancer") => format!("LB {}", self.name),
            Some("ACL") => format!("ACL {}", self.name),
            _ => self.name.clone(),
        };
        let mut s = format!("{}: {name} ({})", self.kind, self.detail);
        if let Some(dp) = self.datapath.as_deref().filter(|d| !d.is_empty()) {
            s.push_str(&format!(" on {dp}"));
        }
        if let Some(d) = &self.flow_desc {
            s.push_str(&format!(" - OVN: {d}"));
        }
        s
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

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;
    use crate::{
        explain::{FlowSummary, explain, render},
        ovn::{
            Resolver,
            schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
        },
        ovs::{DpFlow, RuleSource, ofrule::parse_trace, vswitchd::FlowRules},
        testutil::{fixture, replica},
    };

    /// A flow of `dir`'s dump-flows-m.txt explained with its captured ofproto/trace (OVS 3.1).
    fn explained_trace(dir: &str, ufid8: &str, trace: &str) -> FlowExplanation {
        let sb = replica(
            SB_DB,
            SB_TABLES,
            &format!("{dir}/ovsdb/sb-monitor-initial.json"),
        );
        let nb = replica(
            NB_DB,
            NB_TABLES,
            &format!("{dir}/ovsdb/nb-monitor-initial.json"),
        );
        let dump = fixture(&format!("{dir}/dump-flows-m.txt"));
        let line = dump
            .lines()
            .find(|l| l.starts_with(&format!("ufid:{ufid8}")))
            .unwrap_or_else(|| panic!("no flow {ufid8} in {dir}"));
        let flow = DpFlow::parse(line).unwrap();
        let found = FlowRules {
            source: Some(RuleSource::Trace),
            rules: parse_trace(&fixture(&format!("{dir}/{trace}"))),
            ..Default::default()
        };
        explain(
            "netdev@ovs-netdev",
            &flow,
            found,
            &Resolver { sb: &sb, nb: &nb },
        )
    }

    const DC: &str = "ovs-3.1/drop-causes";

    fn cause(ufid8: &str) -> (FlowExplanation, Culprit) {
        let e = explained_trace(DC, ufid8, &format!("trace/trace-{ufid8}.txt"));
        let c = e
            .drop_culprit
            .clone()
            .unwrap_or_else(|| panic!("{ufid8}: no drop decision in\n{}", render::text(&e)));
        assert_eq!(c, drop_culprit(&e));
        (e, c)
    }

    fn assert_culprit(
        c: &Culprit,
        kind: CulpritKind,
        name: &str,
        datapath: &str,
        nb_table: Option<&str>,
    ) {
        assert_eq!(
            (
                c.kind,
                c.name.as_str(),
                c.datapath.as_deref(),
                c.nb_table.as_deref()
            ),
            (kind, name, Some(datapath), nb_table),
            "{c:#?}"
        );
    }

    /// OVN 23.03: ls_in_check_port_sec resubmits to the port-security table, where p4's rule
    /// (cookie = its Port_Binding) sets the bit ls_in_apply_port_sec drops on: the port is named,
    /// not the shared apply stage.
    #[test]
    fn port_security_names_the_port_ovn2303() {
        let (e, c) = cause("2d454865");
        assert_culprit(
            &c,
            CulpritKind::PortSecurity,
            "p4",
            "sw0",
            Some("Logical_Switch_Port"),
        );
        assert_eq!(c.detail, "port_security \"50:54:00:00:00:14 10.0.0.14\"");
        let text = render::text(&e);
        assert!(
            text.contains("dropped by port security: LSP p4 (port_security \"50:54:00:00:00:14 10.0.0.14\") on sw0"),
            "{text}"
        );
    }

    #[test]
    fn router_policy_drop_names_the_policy_ovn2303() {
        let (_, c) = cause("0a389f0e");
        assert_culprit(
            &c,
            CulpritKind::RouterPolicy,
            "priority 1000 (ip4.dst == 20.0.0.99)",
            "lr0",
            Some("Logical_Router_Policy"),
        );
        assert!(c.id.starts_with("13971f5b"), "{c:?}");
        assert!(
            c.detail.contains("action=drop [in Logical_Router lr0]"),
            "{c:?}"
        );
    }

    #[test]
    fn lb_without_backends_drop_and_reject_ovn2303() {
        let (_, c) = cause("6d5aada0");
        assert_culprit(
            &c,
            CulpritKind::LbNoBackends,
            "lb-empty",
            "sw0",
            Some("Load_Balancer"),
        );
        assert!(
            c.detail
                .starts_with("drops: vip 10.0.0.200:80 has no backends"),
            "{c:?}"
        );
        let (_, c) = cause("ca504e44");
        assert_culprit(
            &c,
            CulpritKind::LbNoBackends,
            "lb-reject",
            "sw0",
            Some("Load_Balancer"),
        );
        assert!(
            c.detail
                .starts_with("rejects: vip 10.0.0.201:80 has no backends"),
            "{c:?}"
        );
    }

    /// Stages that decide with no NB row of their own: classified by stage and match, on the
    /// datapath the OpenFlow rule's metadata names (these flows are shared by sw0 and sw1).
    #[test]
    fn stage_causes_ovn2303() {
        for (ufid8, kind, name, dp) in [
            (
                "59eb2c57",
                CulpritKind::NoL2Destination,
                "ls_in_l2_unknown",
                "sw0",
            ),
            ("bc3a8e8f", CulpritKind::CtInvalid, "ls_in_acl", "sw0"),
            ("6151aa5a", CulpritKind::NoRoute, "lr_in_ip_routing", "lr0"),
            (
                "fe0e983f",
                CulpritKind::NeighborUnresolved,
                "lr_in_arp_request",
                "lr0",
            ),
            (
                "553cf22e",
                CulpritKind::TtlExpired,
                "lr_in_ip_input lr0-sw0",
                "lr0",
            ),
        ] {
            let (_, c) = cause(ufid8);
            assert_culprit(&c, kind, name, dp, None);
            assert!(c.detail.contains("match=("), "{c:?}");
        }
    }

    /// Passes that forward or recirculate decide nothing; a drop after them is unexplained by
    /// them, and says so.
    #[test]
    fn forwarding_passes_have_no_drop_decision_ovn2303() {
        for ufid8 in ["47f30771", "c88c03a8", "b615d008"] {
            let e = explained_trace(DC, ufid8, &format!("trace/trace-{ufid8}.txt"));
            assert_eq!(e.drop_culprit, None, "{}", render::text(&e));
            assert!(!render::text(&e).contains("dropped by"));
            let c = drop_culprit(&e);
            assert_eq!(c.kind, CulpritKind::Unexplained, "{c:?}");
            assert!(
                c.detail.contains("no logical flow of this pass drops")
                    || c.detail.contains("this pass outputs the packet"),
                "{c:?}"
            );
        }
    }

    /// The base capture's ACL drop (23.03 drops in ls_out_acl): the ACL, on its switch.
    #[test]
    fn acl_drop_ovn2303() {
        let e = explained_trace("ovs-3.1", "268c54c6", "trace-drop9999-recirc-m.txt");
        let c = e.drop_culprit.clone().unwrap();
        assert_culprit(&c, CulpritKind::Acl, "drop-9999", "sw0", Some("ACL"));
        assert!(c.detail.contains("[in Logical_Switch sw0]"), "{c:?}");
    }

    /// The JSON of a summary carries every culprit field, flow_desc included (null when OVN has
    /// none), and reads back.
    #[test]
    fn culprit_json_has_every_field() {
        let (e, c) = cause("2d454865");
        let s = FlowSummary::of(&e);
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "kind",
            "id",
            "name",
            "detail",
            "nb_table",
            "datapath",
            "flow_desc",
        ] {
            assert!(v["drop_culprit"].get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["drop_culprit"]["kind"], "port_security");
        let back: FlowSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back.drop_culprit, c);
        let ev = serde_json::to_value(&e).unwrap();
        assert_eq!(ev["drop_culprit"]["name"], "p4");
    }
}
