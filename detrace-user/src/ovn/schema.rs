//! Which tables and columns detrace replicates. Cookie targets follow ovn-controller
//! (controller/lflow.c, controller/physical.c: cookie = first 32 bits of the SB row UUID);
//! stage-hint targets follow ovn-northd (northd/lflow-mgr.c) and ovn-detrace's handlers.

use crate::ovsdb::TableSpec;

pub const SB_DB: &str = "OVN_Southbound";
pub const NB_DB: &str = "OVN_Northbound";

const fn t(name: &'static str, columns: &'static [&'static str], by_prefix: bool) -> TableSpec {
    TableSpec {
        name,
        columns,
        by_prefix,
    }
}

/// Southbound: every table an OpenFlow cookie can name, plus what names datapaths.
pub static SB_TABLES: &[TableSpec] = &[
    t(
        "Logical_Flow",
        &[
            "logical_datapath",
            "logical_dp_group",
            "pipeline",
            "table_id",
            "priority",
            "match",
            "actions",
            "external_ids",
            "flow_desc",
        ],
        true,
    ),
    t(
        "Port_Binding",
        &[
            "logical_port",
            "type",
            "datapath",
            "chassis",
            "mac",
            "tunnel_key",
            "options",
        ],
        true,
    ),
    t(
        "Multicast_Group",
        &["name", "datapath", "tunnel_key", "ports"],
        true,
    ),
    t(
        "MAC_Binding",
        &["logical_port", "ip", "mac", "datapath"],
        true,
    ),
    t("Chassis", &["name", "hostname"], true),
    t(
        "Load_Balancer",
        &[
            "name",
            "vips",
            "protocol",
            "external_ids",
            "datapaths",
            "datapath_group",
        ],
        true,
    ),
    t("FDB", &["mac", "dp_key", "port_key"], true),
    t("Datapath_Binding", &["external_ids", "tunnel_key"], false),
    t("Logical_DP_Group", &["datapaths"], false),
];

/// The SB tables without which detrace cannot work: a database lacking them is not OVN's.
pub const SB_REQUIRED: &[&str] = &["Logical_Flow", "Port_Binding", "Datapath_Binding"];

/// Northbound: every table a stage-hint can name, plus the owners shown next to them.
pub static NB_TABLES: &[TableSpec] = &[
    t(
        "ACL",
        &[
            "name",
            "direction",
            "priority",
            "match",
            "action",
            "log",
            "severity",
            "label",
            "tier",
            "external_ids",
        ],
        true,
    ),
    t(
        "Load_Balancer",
        &[
            "name",
            "vips",
            "protocol",
            "ip_port_mappings",
            "selection_fields",
            "external_ids",
        ],
        true,
    ),
    t(
        "NAT",
        &[
            "type",
            "external_ip",
            "external_port_range",
            "logical_ip",
            "logical_port",
            "external_mac",
            "external_ids",
        ],
        true,
    ),
    t(
        "Logical_Switch_Port",
        &[
            "name",
            "type",
            "addresses",
            "dynamic_addresses",
            "port_security",
            "options",
            "external_ids",
        ],
        true,
    ),
    t(
        "Logical_Router_Port",
        &["name", "mac", "networks", "peer", "external_ids"],
        true,
    ),
    t(
        "Logical_Router_Policy",
        &[
            "priority",
            "match",
            "action",
            "nexthop",
            "nexthops",
            "external_ids",
        ],
        true,
    ),
    t(
        "Logical_Router_Static_Route",
        &[
            "ip_prefix",
            "nexthop",
            "output_port",
            "policy",
            "route_table",
            "external_ids",
        ],
        true,
    ),
    t(
        "QoS",
        &["direction", "priority", "match", "action", "bandwidth"],
        true,
    ),
    t("DHCP_Options", &["cidr", "options"], true),
    t(
        "Forwarding_Group",
        &["name", "vip", "vmac", "child_port", "liveness"],
        true,
    ),
    // Only names and owners: ovn-kubernetes names address sets by hashes of their owner.
    t("Address_Set", &["name", "external_ids"], false),
    t(
        "Port_Group",
        &["name", "acls", "ports", "external_ids"],
        true,
    ),
    t(
        "Logical_Switch",
        &[
            "name",
            "ports",
            "acls",
            "qos_rules",
            "load_balancer",
            "forwarding_groups",
            "external_ids",
        ],
        true,
    ),
    t(
        "Logical_Router",
        &[
            "name",
            "ports",
            "nat",
            "load_balancer",
            "policies",
            "static_routes",
            "external_ids",
        ],
        true,
    ),
];

pub const NB_REQUIRED: &[&str] = &["ACL", "Logical_Switch", "Logical_Switch_Port"];
