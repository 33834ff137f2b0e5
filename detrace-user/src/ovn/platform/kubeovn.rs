//! kube-ovn: rows carry `vendor=kube-ovn` (pkg/ovs/ovn-nb*.go). Pod ports are named
//! `<pod>.<namespace>` with `pod=<namespace>/<pod>`; a NetworkPolicy's port group carries
//! `np=<namespace>/<policy>` (`anp=<name>` for an AdminNetworkPolicy), its address sets
//! `np=<namespace>/<policy>/<direction>`, and its ACLs only `parent=<port group>`, with names
//! `np/<policy>.<namespace>/<direction>/<family>/<index>` (the default block: `<ns>/<policy>`).

use super::{Platform, PlatformKind as K, PlatformRef, ext};
use crate::ovsdb::{Replica, Row};

fn r(kind: K, name: &str) -> PlatformRef {
    PlatformRef::new(Platform::KubeOvn, kind, name)
}

pub(super) fn identify(nb: &Replica, table: &str, row: &Row) -> Option<PlatformRef> {
    if ext(row, "vendor") != Some("kube-ovn") {
        return None;
    }
    match table {
        "Logical_Switch_Port" => {
            let (ns, name) = ext(row, "pod")?.split_once('/')?;
            Some(PlatformRef {
                namespace: Some(ns.to_string()),
                ..r(K::Pod, name)
            })
        }
        "Port_Group" | "Address_Set" => policy(row),
        "ACL" => {
            let parent = ext(row, "parent")?;
            let (_, pg) = nb
                .rows("Port_Group")
                .find(|(_, pg)| pg.str("name") == Some(parent))?;
            let mut p = policy(pg)?;
            // `np/<policy>.<ns>/<direction>/<family>/<index>`; the default block has no index.
            let parts: Vec<&str> = row.str("name").unwrap_or_default().split('/').collect();
            if let [_, _, dir, _, idx] = parts.as_slice() {
                p.direction = Some(dir.to_string());
                p.rule = Some(idx.to_string()).filter(|i| i != "all");
            } else if row.str("action") == Some("drop") {
                p.detail = Some("default block".into());
            }
            Some(p)
        }
        _ => None,
    }
}

/// `np=<ns>/<policy>[/<direction>]` or `anp=<name>` / `banp=<name>`.
fn policy(row: &Row) -> Option<PlatformRef> {
    if let Some(np) = ext(row, "np") {
        let mut it = np.splitn(3, '/');
        let (ns, name, dir) = (it.next()?, it.next()?, it.next());
        return Some(PlatformRef {
            namespace: Some(ns.to_string()),
            direction: dir.map(str::to_string),
            ..r(K::NetworkPolicy, name)
        });
    }
    ext(row, "anp")
        .map(|n| r(K::AdminNetworkPolicy, n))
        .or_else(|| ext(row, "banp").map(|n| r(K::BaselineAdminNetworkPolicy, n)))
}
