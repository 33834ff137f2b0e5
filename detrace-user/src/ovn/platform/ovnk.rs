//! ovn-kubernetes: rows carry `k8s.ovn.org/owner-type`, `k8s.ovn.org/name` and
//! per-owner-type keys (go-controller/pkg/libovsdb/ops/db_object_ids.go and
//! db_object_types.go); pod ports are named `<namespace>_<pod>` with `namespace` and
//! `pod=true`; Service load balancers carry `k8s.ovn.org/kind` and `k8s.ovn.org/owner`.

use super::{Platform, PlatformKind as K, PlatformRef, ext};
use crate::ovsdb::Row;

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

pub(super) fn identify(table: &str, row: &Row) -> Option<PlatformRef> {
    if let Some(owner) = ext(row, OWNER_TYPE) {
        return Some(owned(table, owner, row));
    }
    match table {
        "Logical_Switch_Port" => pod(row),
        "Load_Balancer" => service(row),
        _ => None,
    }
}

/// A row with an owner type: policies' ACLs, port groups and address sets, and the rest.
fn owned(table: &str, owner: &str, row: &Row) -> PlatformRef {
    let name = ext(row, NAME).unwrap_or_default();
    let mut p = match owner {
        "NetworkPolicy" => namespaced(K::NetworkPolicy, name),
        "NetpolNamespace" | "NetpolDefault" => PlatformRef {
            namespace: Some(name.to_string()),
            ..r(K::DefaultDeny, "")
        },
        "NetpolNode" => r(K::NodeAccess, name),
        "AdminNetworkPolicy" => r(K::AdminNetworkPolicy, name),
        "BaselineAdminNetworkPolicy" => r(K::BaselineAdminNetworkPolicy, name),
        "EgressFirewall" => PlatformRef {
            namespace: Some(name.to_string()),
            ..r(K::EgressFirewall, "default")
        },
        "MulticastNamespace" => PlatformRef {
            namespace: Some(name.to_string()),
            ..r(K::Multicast, "")
        },
        "MulticastCluster" => r(K::Multicast, "cluster"),
        "Namespace" => r(K::Namespace, name),
        "Service" => namespaced(K::Service, name),
        other => PlatformRef {
            detail: Some(other.to_string()),
            ..r(K::Other, name)
        },
    };
    if table == "ACL" {
        p.direction = ext(row, "direction").map(str::to_lowercase);
        p.rule = ext(row, "gress-index")
            .or_else(|| ext(row, "rule-index"))
            .map(str::to_string);
        let part: Vec<String> = [
            ("port-policy-protocol", "ports"),
            ("ip-block-index", "ipBlock"),
        ]
        .iter()
        .filter_map(|(k, what)| ext(row, k).map(|v| format!("{what} {v}")))
        .filter(|s| !s.ends_with(" -1") && !s.ends_with(" None"))
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

/// A pod's port: external_ids `pod=true` and `namespace`, named `<namespace>_<pod>`.
fn pod(row: &Row) -> Option<PlatformRef> {
    if ext(row, "pod") != Some("true") {
        return None;
    }
    let ns = ext(row, "namespace")?;
    let name = row.str("name")?;
    // UDN ports are `<network>_<namespace>_<pod>`.
    let pod = name
        .split_once(&format!("{ns}_"))
        .map_or(name, |(_, p)| p);
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
