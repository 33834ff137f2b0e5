//! The culprits themselves: one constructor per kind of deciding object, and what they read
//! from a flow's logical flows (their datapath, stage, match and actions).

use super::{Culprit, CulpritKind};
use crate::ovn::{NbObject, SbCandidate, platform::annotate_match};

pub(super) fn is_drop_action(a: &str) -> bool {
    a.contains("drop") || a.contains("reject")
}

/// Logical actions after which the packet goes no further down the pipeline: an explicit drop
/// (`drop;`, 23.03's ACL `/* drop */`), or a packet handed to ovn-controller instead of being
/// forwarded (`reject`, `tcp_reset`, `icmp4/6 {...}` errors such as TTL exceeded, `arp {...}` /
/// `nd_ns {...}` neighbour requests). OVN's action names: lib/actions.c.
pub(super) fn ends_packet(actions: &str) -> bool {
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
pub(super) struct Lf<'a> {
    pub(super) uuid: crate::uuid::Uuid,
    pub(super) stage: &'a str,
    pub(super) priority: u16,
    pub(super) match_: &'a str,
    pub(super) actions: &'a str,
    pub(super) datapaths: String,
    pub(super) flow_desc: Option<&'a str>,
    pub(super) nb: &'a [NbObject],
}

/// `metadata=0x2` in an OpenFlow match: the tunnel key of the logical datapath.
pub(super) fn metadata_of(of_match: &str) -> Option<u64> {
    of_match
        .split(',')
        .find_map(|f| f.trim().strip_prefix("metadata="))
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
}

/// Whether datapath actions send the packet out of a port (`dt-v-p1`, or a number in the plain
/// form): a bare action, not `drop` nor a call such as `ct(...)`, `recirc(...)`, `userspace(...)`.
pub(super) fn outputs(dp_actions: &str) -> bool {
    crate::ovs::dpflow::split_top(dp_actions)
        .iter()
        .map(|a| a.trim())
        .any(|a| !a.is_empty() && a != "drop" && !a.contains('('))
}

/// The logical flow of a candidate; `metadata` (from its OpenFlow rule) narrows a flow shared
/// by a datapath group to the datapath the packet was on.
pub(super) fn lflow_on(c: &SbCandidate, metadata: Option<u64>) -> Option<Lf<'_>> {
    let mut l = lflow(c)?;
    if let (Some(m), SbCandidate::LogicalFlow { datapaths, .. }) = (metadata, c)
        && let Some(d) = datapaths.iter().find(|d| d.tunnel_key == Some(m))
    {
        l.datapaths = d.name.clone();
    }
    Some(l)
}

pub(super) fn lflow(c: &SbCandidate) -> Option<Lf<'_>> {
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
pub(super) fn col(o: &NbObject, k: &str) -> String {
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
pub(super) fn quoted_set(o: &NbObject, k: &str) -> String {
    match o.fields.get(k) {
        Some(serde_json::Value::String(s)) => format!("\"{s}\""),
        _ => col(o, k),
    }
}

/// A row's match, its port groups and address sets followed by their platform owners.
pub fn match_text(o: &NbObject) -> String {
    annotate_match(&col(o, "match"), &o.match_owners)
}

pub(super) fn with_owners(mut detail: String, o: &NbObject) -> String {
    if !o.owners.is_empty() {
        detail.push_str(&format!(" [in {}]", o.owners.join(", ")));
    }
    detail
}

/// Where a culprit's decision was taken: its lflow's datapaths, else the NB object's holders.
pub(super) fn place(lf: Option<&Lf<'_>>, o: Option<&NbObject>) -> Option<String> {
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
            match_text(o),
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
        platform: o.platform.clone(),
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
        platform: o.platform.clone(),
    }
}

/// A load balancer that dropped or rejected: the VIPs it has without backends first.
pub(super) fn lb_no_backends(o: &NbObject, lf: &Lf<'_>) -> Culprit {
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

pub(super) fn router_policy_culprit(o: &NbObject, lf: Option<&Lf<'_>>) -> Culprit {
    let m = match_text(o);
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
        platform: o.platform.clone(),
    }
}

/// The Logical_Switch_Port whose port security refused the packet.
pub(super) fn port_security_culprit(lsp: &NbObject, lf: Option<&Lf<'_>>) -> Culprit {
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
        platform: lsp.platform.clone(),
    }
}

/// A culprit that is a logical flow stage (no NB row decided it): named by its stage and
/// datapath, with the NB object the flow's stage-hint names when it has one.
pub(super) fn stage_culprit(kind: CulpritKind, lf: &Lf<'_>, what: &str) -> Culprit {
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
        platform: hint.and_then(|o| o.platform.clone()),
    }
}
