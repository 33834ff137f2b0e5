//! OpenStack Neutron (ML2/OVN): `neutron:*` external_ids (neutron/common/ovn/constants.py).
//! Switches are `neutron-<network id>`, routers `neutron-<router id>`, ports are named by their
//! port id; a security group is the port group `pg_<id with _ for ->`, each of its rules an ACL
//! with `neutron:security_group_rule_id`; `neutron_pg_drop` drops what no group allows.

use super::{Platform, PlatformKind as K, PlatformRef, ext};
use crate::{
    ovsdb::{Replica, Row},
    uuid::Uuid,
};

pub(super) const PG_DROP: &str = "neutron_pg_drop";

fn r(kind: K, name: &str) -> PlatformRef {
    PlatformRef::new(Platform::Neutron, kind, name)
}

pub(super) fn identify(nb: &Replica, table: &str, uuid: Uuid, row: &Row) -> Option<PlatformRef> {
    match table {
        "Logical_Switch_Port" => port(row),
        "Logical_Switch" => ext(row, "neutron:network_name").map(|n| r(K::Network, n)),
        "Logical_Router" => ext(row, "neutron:router_name").map(|n| r(K::Router, n)),
        "ACL" => acl(nb, uuid, row),
        "Port_Group" => {
            if row.str("name") == Some(PG_DROP) {
                return Some(r(K::SecurityGroupDefaultDrop, PG_DROP));
            }
            ext(row, "neutron:security_group_id").map(|g| r(K::SecurityGroup, g))
        }
        "Address_Set" => ext(row, "neutron:security_group_id").map(|g| r(K::SecurityGroup, g)),
        "NAT" => ext(row, "neutron:fip_id").map(|f| PlatformRef {
            detail: row.str("external_ip").map(|ip| format!("external ip {ip}")),
            ..r(K::FloatingIp, f)
        }),
        // Octavia's OVN provider: one row per protocol, named by the Octavia LB id.
        "Load_Balancer" => ext(row, "neutron:vip").map(|vip| PlatformRef {
            detail: Some(format!("vip {vip}")),
            ..r(K::LoadBalancer, row.str("name").unwrap_or_default())
        }),
        _ => None,
    }
}

/// A port: its Neutron name, or its id (the row's name) when it has none (most have none),
/// with its device owner (`compute:nova`, `network:router_interface`...).
fn port(row: &Row) -> Option<PlatformRef> {
    let owner = ext(row, "neutron:device_owner");
    if owner.is_none() && ext(row, "neutron:device_id").is_none() {
        ext(row, "neutron:port_name")?;
    }
    let name = ext(row, "neutron:port_name")
        .or_else(|| row.str("name"))
        .unwrap_or_default();
    Some(PlatformRef {
        detail: owner.map(str::to_string),
        ..r(K::Port, name)
    })
}

/// A security group rule's ACL, with the group from the port group holding it; the drop ACLs
/// of `neutron_pg_drop`.
fn acl(nb: &Replica, uuid: Uuid, row: &Row) -> Option<PlatformRef> {
    let holder = nb
        .rows("Port_Group")
        .find(|(_, pg)| pg.get("acls").is_some_and(|a| a.uuids().any(|u| u == uuid)))
        .map(|(_, pg)| pg);
    let direction = row.str("direction").map(|d| match d {
        "to-lport" => "ingress".to_string(),
        "from-lport" => "egress".to_string(),
        other => other.to_string(),
    });
    let group = holder.and_then(|pg| ext(pg, "neutron:security_group_id"));
    if let Some(rule) = ext(row, "neutron:security_group_rule_id") {
        return Some(PlatformRef {
            direction,
            rule: Some(rule.to_string()),
            ..r(
                K::SecurityGroupRule,
                group
                    .or_else(|| holder.and_then(|pg| pg.str("name")))
                    .unwrap_or_default(),
            )
        });
    }
    let drops = row.str("action") == Some("drop");
    if holder.and_then(|pg| pg.str("name")) == Some(PG_DROP) {
        return Some(PlatformRef {
            direction,
            ..r(K::SecurityGroupDefaultDrop, PG_DROP)
        });
    }
    // Newer Neutron: a logged drop per security group, on the group's own port group.
    match group {
        Some(g) if drops => Some(PlatformRef {
            direction,
            detail: Some(format!("security group {g}")),
            ..r(K::SecurityGroupDefaultDrop, g)
        }),
        _ => None,
    }
}
