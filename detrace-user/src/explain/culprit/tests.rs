//! Drop attribution on real captures (tests/fixtures).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

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
