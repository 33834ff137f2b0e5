#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
//! On the Northbound rows ovn-kubernetes, Neutron and kube-ovn write (tests/fixtures/platform,
//! captured from OVN 23.03 after xtask/guest/platform_nb.py wrote them).

use super::*;
use crate::{
    live::select::Selector,
    ovn::{
        Resolver,
        schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
    },
    testutil::replica,
};

fn nb() -> Replica {
    replica(NB_DB, NB_TABLES, "platform/nb-monitor-initial.json")
}

/// The platform object of the row of `table` whose `col` is `value`.
fn of(nb: &Replica, table: &str, col: &str, value: &str) -> Option<PlatformRef> {
    let (u, row) = nb
        .rows(table)
        .find(|(_, r)| r.str(col) == Some(value))
        .unwrap_or_else(|| panic!("no {table} with {col}={value}"));
    identify(nb, table, *u, row)
}

fn acl_matching(nb: &Replica, part: &str) -> PlatformRef {
    let (u, row) = nb
        .rows("ACL")
        .find(|(_, r)| r.str("match").is_some_and(|m| m.contains(part)))
        .unwrap_or_else(|| panic!("no ACL matching {part}"));
    identify(nb, "ACL", *u, row).unwrap()
}

#[test]
fn ovn_kubernetes_policies_pods_and_services() {
    let nb = nb();
    let np = of(&nb, "ACL", "name", "NP:prod:allow-web:Ingress:0").unwrap();
    assert_eq!(np.platform, Platform::OvnKubernetes);
    assert_eq!(np.kind, PlatformKind::NetworkPolicy);
    assert_eq!(np.namespace.as_deref(), Some("prod"));
    assert_eq!(np.name, "allow-web");
    assert_eq!(np.direction.as_deref(), Some("ingress"));
    assert_eq!(np.rule.as_deref(), Some("0"));
    assert_eq!(
        np.to_string(),
        "NetworkPolicy prod/allow-web (ingress rule 0, ports udp)"
    );
    assert_eq!(np.object().to_string(), "NetworkPolicy prod/allow-web");

    let deny = acl_matching(&nb, "outport == @a12230657373597829327");
    assert_eq!(deny.kind, PlatformKind::DefaultDeny);
    assert_eq!(deny.namespace.as_deref(), Some("prod"));
    assert_eq!(
        deny.to_string(),
        "default deny of namespace prod (ingress, not allowed by the NetworkPolicies of prod: \
         allow-web, deny-db)"
    );
    let arp = acl_matching(&nb, "(arp || nd)");
    assert_eq!(arp.kind, PlatformKind::DefaultDeny);
    assert_eq!(arp.detail.as_deref(), Some("arpAllow"));

    let ef = of(&nb, "ACL", "name", "EF:dev:0").unwrap();
    assert_eq!(ef.kind, PlatformKind::EgressFirewall);
    assert_eq!(ef.to_string(), "EgressFirewall dev/default (rule 0)");

    let pod = of(&nb, "Logical_Switch_Port", "name", "prod_web-0").unwrap();
    assert_eq!(pod.to_string(), "pod prod/web-0");
    // A port no platform wrote is nobody's.
    assert_eq!(of(&nb, "Logical_Switch_Port", "name", "stor-node1"), None);

    let svc = of(&nb, "Load_Balancer", "name", "Service_prod/web_UDP_cluster").unwrap();
    assert_eq!(
        (svc.kind, svc.qualified()),
        (PlatformKind::Service, "prod/web".to_string())
    );

    let ns = of(&nb, "Port_Group", "name", "a13296060851750767456").unwrap();
    assert_eq!(ns.to_string(), "namespace dev");
    let sel = of(&nb, "Address_Set", "name", "a9795568507827597858").unwrap();
    assert_eq!(sel.kind, PlatformKind::PodSelector);
    assert_eq!(sel.name, "prod_LS{ML:{app: client,},}");
}

#[test]
fn neutron_ports_networks_and_security_groups() {
    let nb = nb();
    let sg = "a1b2c3d4-1111-2222-3333-444455556666";
    let rule = acl_matching(&nb, "udp.dst == 7000");
    assert_eq!(rule.platform, Platform::Neutron);
    assert_eq!(rule.kind, PlatformKind::SecurityGroupRule);
    assert_eq!(rule.name, sg);
    assert_eq!(rule.direction.as_deref(), Some("ingress"));
    assert_eq!(
        rule.rule.as_deref(),
        Some("0d5e0000-0000-4000-8000-000000000002")
    );
    assert_eq!(
        rule.to_string(),
        format!("security group {sg} (ingress rule 0d5e0000-0000-4000-8000-000000000002)")
    );
    // The egress rule, on the group's from-lport side.
    let egress = acl_matching(&nb, "inport == @pg_a1b2c3d4");
    assert_eq!(egress.direction.as_deref(), Some("egress"));

    let drop = acl_matching(&nb, "outport == @neutron_pg_drop");
    assert_eq!(drop.kind, PlatformKind::SecurityGroupDefaultDrop);
    assert_eq!(drop.direction.as_deref(), Some("ingress"));

    let vm1 = of(
        &nb,
        "Logical_Switch_Port",
        "name",
        "3f0e2b8a-5a44-4b0e-9d1e-7c3f1b2a9e10",
    )
    .unwrap();
    assert_eq!(vm1.to_string(), "port vm-web (compute:nova)");
    // Without a Neutron name, the port id.
    let vm2 = of(
        &nb,
        "Logical_Switch_Port",
        "name",
        "4a1f3c9b-6b55-4c1f-8e2f-8d4a2c3b0f21",
    )
    .unwrap();
    assert_eq!(vm2.name, "4a1f3c9b-6b55-4c1f-8e2f-8d4a2c3b0f21");

    let net = of(
        &nb,
        "Logical_Switch",
        "name",
        "neutron-6b1c7f38-2f7c-4c34-9d5e-2a9f1f0c1a11",
    )
    .unwrap();
    assert_eq!(net.to_string(), "network private");
}

#[test]
fn kube_ovn_policy_from_the_acls_parent() {
    let nb = nb();
    let allow = of(&nb, "ACL", "name", "np/allow-web.demo/ingress/ipv4/0").unwrap();
    assert_eq!(allow.platform, Platform::KubeOvn);
    assert_eq!(
        allow.to_string(),
        "NetworkPolicy demo/allow-web (ingress rule 0)"
    );
    let block = of(&nb, "ACL", "name", "demo/allow-web").unwrap();
    assert_eq!(
        block.to_string(),
        "NetworkPolicy demo/allow-web (default block)"
    );
    let pod = of(&nb, "Logical_Switch_Port", "name", "web-0.demo").unwrap();
    assert_eq!(pod.to_string(), "pod demo/web-0");
}

#[test]
fn matches_name_port_groups_and_address_sets_by_owner() {
    let nb = nb();
    let (_, row) = nb
        .rows("ACL")
        .find(|(_, r)| r.str("name") == Some("NP:prod:allow-web:Ingress:0"))
        .unwrap();
    let m = row.str("match").unwrap();
    let refs: BTreeMap<_, _> = match_refs(&nb, m).into_iter().collect();
    assert_eq!(refs.len(), 2, "{refs:?}");
    let text = annotate_match(m, &refs);
    assert_eq!(
        text,
        "ip4.src == {$a9795568507827597858(pods of selector prod_LS{ML:{app: client,},})} && udp \
         && udp.dst==8080 && outport == @a994682290149243433(NetworkPolicy prod/allow-web)"
    );
    // Neutron's `$pg_<id>_ip4`: the address set northd derives from the group.
    let (_, row) = nb
        .rows("ACL")
        .find(|(_, r)| r.str("match").is_some_and(|m| m.contains("_ip4")))
        .unwrap();
    let refs = match_refs(&nb, row.str("match").unwrap());
    let owners: Vec<String> = refs.iter().map(|(t, p)| format!("{t}={p}")).collect();
    assert_eq!(
        owners,
        vec![
            "@pg_b2c3d4e5_2222_3333_4444_555566667777=security group b2c3d4e5-2222-3333-4444-555566667777",
            "$pg_b2c3d4e5_2222_3333_4444_555566667777_ip4=security group b2c3d4e5-2222-3333-4444-555566667777",
        ]
    );
    // Whole tokens only; unknown names stay as they are.
    let one: BTreeMap<String, PlatformRef> = [(
        "@pg1".to_string(),
        PlatformRef::new(Platform::Neutron, PlatformKind::SecurityGroup, "x"),
    )]
    .into();
    assert_eq!(
        annotate_match("outport == @pg10 || outport == @pg1", &one),
        "outport == @pg10 || outport == @pg1(security group x)"
    );
    assert!(match_refs(&nb, "outport == @nosuch && ip4.src == $nosuch").is_empty());
}

#[test]
fn the_resolver_attaches_platform_objects_to_nb_rows() {
    let nb = nb();
    let sb = replica(SB_DB, SB_TABLES, "ovs-3.1/ovsdb/sb-monitor-initial.json");
    let res = Resolver { sb: &sb, nb: &nb };
    let (u, _) = nb
        .rows("ACL")
        .find(|(_, r)| r.str("name") == Some("EF:dev:0"))
        .unwrap();
    let o = res.nb_object("ACL", *u).unwrap();
    assert_eq!(
        o.platform.as_ref().unwrap().kind,
        PlatformKind::EgressFirewall
    );
    assert_eq!(o.match_owners.len(), 1);
    assert_eq!(
        o.match_owners.values().next().unwrap().to_string(),
        "namespace dev"
    );
    let c = crate::explain::culprit::acl_culprit(&o);
    assert!(
        c.text()
            .starts_with("EgressFirewall dev/default (rule 0) -> ACL: ACL EF:dev:0 ("),
        "{}",
        c.text()
    );
    assert!(
        c.detail
            .contains("inport == @a13296060851750767456(namespace dev)"),
        "{}",
        c.detail
    );
}

#[test]
fn pods_and_namespaces_select_their_addresses() {
    let nb = nb();
    let pod = Selector::Pod {
        namespace: "prod".into(),
        name: "db".into(),
    };
    let ns = Selector::Namespace("prod".into());
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(
        pod.resolve(&nb).into_iter().collect::<Vec<_>>(),
        vec![ip("10.244.8.11")]
    );
    assert_eq!(
        ns.resolve(&nb).into_iter().collect::<Vec<_>>(),
        vec![ip("10.244.8.10"), ip("10.244.8.11"), ip("10.244.8.12")]
    );
    assert!(Selector::Namespace("nosuch".into()).resolve(&nb).is_empty());
    // kube-ovn pods too.
    let ko = Selector::Pod {
        namespace: "demo".into(),
        name: "web-0".into(),
    };
    assert_eq!(
        ko.resolve(&nb).into_iter().collect::<Vec<_>>(),
        vec![ip("10.16.0.5")]
    );
}

#[test]
fn a_selection_reports_changes_only() {
    let mut nb = nb();
    let mut sel = crate::live::select::Selection::new(Selector::Namespace("dev".into()), &nb);
    assert_eq!(sel.current.len(), 1);
    assert!(sel.refresh(&nb).is_none());
    // The pod goes away: the set empties, once.
    let u = nb
        .rows("Logical_Switch_Port")
        .find(|(_, r)| r.str("name") == Some("dev_tester"))
        .map(|(u, _)| *u)
        .unwrap();
    nb.apply_row(
        "Logical_Switch_Port",
        &u.to_string(),
        &serde_json::json!({"old": {}}),
    )
    .unwrap();
    assert_eq!(
        sel.refresh(&nb).map(std::collections::BTreeSet::len),
        Some(0)
    );
    assert!(sel.refresh(&nb).is_none());
    assert!(
        sel.describe().contains("nothing matches"),
        "{}",
        sel.describe()
    );
}
