//! kube-ovn: rows carry `vendor=kube-ovn`; pod ports are named `<pod>.<namespace>` with
//! `pod=<namespace>/<pod>`; NetworkPolicy ACLs name their policy in `parent`
//! (`<policy>.<namespace>`) with `np`/`anp`/`banp` keys.

use super::{Platform, PlatformKind as K, PlatformRef, ext};
use crate::ovsdb::Row;

fn r(kind: K, name: &str) -> PlatformRef {
    PlatformRef::new(Platform::KubeOvn, kind, name)
}

pub(super) fn identify(table: &str, row: &Row) -> Option<PlatformRef> {
    if ext(row, "vendor") != Some("kube-ovn") {
        return None;
    }
    match table {
        "Logical_Switch_Port" => {
            let pod = ext(row, "pod")?;
            let (ns, name) = pod.split_once('/')?;
            Some(PlatformRef {
                namespace: Some(ns.to_string()),
                ..r(K::Pod, name)
            })
        }
        "ACL" | "Port_Group" | "Address_Set" => {
            let (kind, key) = [
                (K::NetworkPolicy, "np"),
                (K::AdminNetworkPolicy, "anp"),
                (K::BaselineAdminNetworkPolicy, "banp"),
            ]
            .into_iter()
            .find(|(_, k)| ext(row, k).is_some())?;
            let full = ext(row, key).or_else(|| ext(row, "parent"))?;
            // `<policy>.<namespace>` for NetworkPolicies.
            Some(match (kind, full.rsplit_once('.')) {
                (K::NetworkPolicy, Some((name, ns))) => PlatformRef {
                    namespace: Some(ns.to_string()),
                    direction: ext(row, "direction").map(str::to_lowercase),
                    ..r(kind, name)
                },
                _ => r(kind, full),
            })
        }
        _ => None,
    }
}
