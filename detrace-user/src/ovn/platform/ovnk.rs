//! ovn-kubernetes: rows carry `k8s.ovn.org/owner-type`, `k8s.ovn.org/name` and
//! per-owner-type keys (go-controller/pkg/libovsdb/ops/db_object_ids.go and
//! db_object_types.go); pod ports are named `<namespace>_<pod>` with `namespace` and
//! `pod=true`; Service load balancers carry `k8s.ovn.org/kind` and `k8s.ovn.org/owner`.

use super::{Platform, PlatformKind as K, PlatformRef, ext};
use crate::ovsdb::{Replica, Row};

const OWNER_TYPE: &str = "k8s.ovn.org/owner-type";
const NAME: &str = "k8s.ovn.org/name";

fn r(kind: K, name: &str) -> PlatformRef {
    PlatformRef::new(Platform::OvnKubernetes, kind, name)
}

/// `namespace:name` (how ovn-kubernetes writes a namespaced object's name) split in two.
fn namespaced(kind: K, full: &str) -> PlatformRef {
    match full.split_once(':') {
        Some((ns, name)) => PlatformRef {
            namespace: Some(ns.to_string()),
            ..r(kind, name)
        },
        None => r(kind, full),
    }
}

pub(super) fn identify(nb: &Replica, table: &str, row: &Row) -> Option<PlatformRef> {
    if let Some(owner) = ext(row, OWNER_TYPE) {
        let mut p = owned(table, owner, row);
        if p.kind == K::DefaultDeny && p.detail.is_none() && table == "ACL" {
            p.detail = Some(isolating_policies(
                nb,
                p.namespace.as_deref().unwrap_or_default(),
            ));
        }
        return Some(p);
    }
    match table {
        "Logical_Switch_Port" => pod(row),
        "Load_Balancer" => service(row),
        "ACL" => legacy_acl(row),
        _ => None,
    }
}

/// A row with an owner type: policies' ACLs, port groups and address sets, and the rest.
/// Owner types and keys: db_object_types.go; the values: gress_policy.go,
/// base_network_controller_policy.go, egressfirewall.go, admin_network_policy/utils.go.
fn owned(table: &str, owner: &str, row: &Row) -> PlatformRef {
    let name = ext(row, NAME).unwrap_or_default();
    let in_ns = |kind: K, n: &str| PlatformRef {
        namespace: Some(name.to_string()),
        ..r(kind, n)
    };
    let mut p = match owner {
        // `<namespace>:<policy>`
        "NetworkPolicy" => namespaced(K::NetworkPolicy, name),
        // A namespace's isolation once a policy selects its pods: drop, and allow ARP/ND.
        "NetpolNamespace" => in_ns(K::DefaultDeny, ""),
        "NetpolNode" => r(K::NodeAccess, name),
        "AdminNetworkPolicy" => r(K::AdminNetworkPolicy, name),
        "BaselineAdminNetworkPolicy" => r(K::BaselineAdminNetworkPolicy, name),
        // An EgressFirewall is always named `default`; `k8s.ovn.org/name` is its namespace.
        "EgressFirewall" => in_ns(K::EgressFirewall, "default"),
        "MulticastNS" => in_ns(K::Multicast, ""),
        "MulticastCluster" => r(K::Multicast, "cluster"),
        "Namespace" => r(K::Namespace, name),
        // `<namespace>_<selector>`: the pods a policy's peer selector picks.
        "PodSelector" => r(K::PodSelector, name),
        other => PlatformRef {
            detail: Some(other.to_string()),
            ..r(K::Other, name)
        },
    };
    if matches!(table, "ACL" | "Port_Group" | "Address_Set") {
        p.direction = ext(row, "direction").map(str::to_lowercase);
    }
    if table == "ACL" {
        p.rule = ext(row, "gress-index")
            .or_else(|| ext(row, "rule-index"))
            .map(str::to_string);
        // One ACL per L4 protocol and per ipBlock of a rule: `None` / `-1` when not split.
        let part: Vec<String> = [
            ("port-policy-protocol", "ports"),
            ("ip-block-index", "ipBlock"),
        ]
        .iter()
        .filter_map(|(k, what)| ext(row, k).map(|v| (what, v)))
        .filter(|(_, v)| *v != "None" && *v != "-1")
        .map(|(what, v)| format!("{what} {v}"))
        .collect();
        if !part.is_empty() && p.detail.is_none() {
            p.detail = Some(part.join(", "));
        }
        if p.kind == K::DefaultDeny
            && let Some(t) = ext(row, "type").filter(|t| *t != "defaultDeny")
        {
            p.detail = Some(t.to_string());
        }
    }
    p
}

/// ACLs of ovn-kubernetes before its owner-type keys (2023): `namespace`, `policy`,
/// `policy_type`; default deny with `default-deny-policy-type`.
fn legacy_acl(row: &Row) -> Option<PlatformRef> {
    if let (Some(ns), Some(policy)) = (ext(row, "namespace"), ext(row, "policy")) {
        return Some(PlatformRef {
            namespace: Some(ns.to_string()),
            direction: ext(row, "policy_type").map(str::to_lowercase),
            ..r(K::NetworkPolicy, policy)
        });
    }
    let dir = ext(row, "default-deny-policy-type")?;
    let ns = row
        .str("name")
        .and_then(|n| n.split_once('_'))
        .map(|(ns, _)| ns.to_string());
    Some(PlatformRef {
        namespace: ns,
        direction: Some(dir.to_lowercase()),
        ..r(K::DefaultDeny, "")
    })
}

/// A pod's port: external_ids `pod=true` and `namespace`, named `<namespace>_<pod>`.
fn pod(row: &Row) -> Option<PlatformRef> {
    if ext(row, "pod") != Some("true") {
        return None;
    }
    let ns = ext(row, "namespace")?;
    let name = row.str("name")?;
    // UDN ports are `<network>_<namespace>_<pod>`.
    let pod = name.split_once(&format!("{ns}_")).map_or(name, |(_, p)| p);
    let mut p = PlatformRef {
        namespace: Some(ns.to_string()),
        ..r(K::Pod, pod)
    };
    if let Some(net) = ext(row, "k8s.ovn.org/nad").or_else(|| ext(row, "k8s.ovn.org/network")) {
        p.detail = Some(format!("network {net}"));
    }
    Some(p)
}

/// A Service's load balancer: `k8s.ovn.org/kind=Service`, `k8s.ovn.org/owner=<ns>/<name>`.
fn service(row: &Row) -> Option<PlatformRef> {
    if ext(row, "k8s.ovn.org/kind") != Some("Service") {
        return None;
    }
    let owner = ext(row, "k8s.ovn.org/owner")?;
    let (ns, name) = owner.split_once('/').unwrap_or(("", owner));
    Some(PlatformRef {
        namespace: Some(ns.to_string()).filter(|n| !n.is_empty()),
        ..r(K::Service, name)
    })
}

/// What a namespace's default deny means: none of its NetworkPolicies allowed the packet
/// (their port groups carry `k8s.ovn.org/name=<namespace>:<policy>`).
fn isolating_policies(nb: &Replica, ns: &str) -> String {
    let prefix = format!("{ns}:");
    let mut names: Vec<&str> = nb
        .rows("Port_Group")
        .filter(|(_, pg)| ext(pg, OWNER_TYPE) == Some("NetworkPolicy"))
        .filter_map(|(_, pg)| ext(pg, NAME)?.strip_prefix(prefix.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        format!("no NetworkPolicy of {ns} allows it")
    } else {
        format!(
            "not allowed by the NetworkPolicies of {ns}: {}",
            names.join(", ")
        )
    }
}
