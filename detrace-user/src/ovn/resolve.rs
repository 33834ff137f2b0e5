//! Cookie -> Southbound rows -> stage-hint -> Northbound objects: the resolution ovn-detrace
//! (utilities/ovn_detrace.py.in) does by hand, over the in-memory replicas. Every candidate of a
//! colliding prefix is returned; nothing is guessed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::platform::{self, PlatformRef};
use crate::{
    ovsdb::{Datum, Replica, Row, replica::LOGICAL_FLOW},
    uuid::Uuid,
};

/// A logical datapath (switch or router) as northd names it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DatapathRef {
    pub uuid: Uuid,
    pub name: String,
    /// "switch", "router" or "" when unknown.
    pub kind: &'static str,
    /// Datapath_Binding.tunnel_key: the OpenFlow `metadata` of the datapath's rules, which tells
    /// which datapath of a flow's datapath group a packet was on.
    #[serde(skip)]
    pub tunnel_key: Option<u64>,
    /// The platform's name for it (a Neutron network or router), from its NB row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRef>,
}

impl DatapathRef {
    /// `neutron-6b1c... (network private)`, or the name alone.
    pub fn label(&self) -> String {
        match &self.platform {
            Some(p) => format!("{} ({p})", self.name),
            None => self.name.clone(),
        }
    }
}

/// A Northbound row a stage-hint (or a port name, or an lb_id) points at.
#[derive(Clone, Debug, Serialize)]
pub struct NbObject {
    pub table: &'static str,
    pub uuid: Uuid,
    /// The replicated columns (ACL match/action/priority, LB vips...).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Who holds it: e.g. "Logical_Switch sw0", "Port_Group pg1".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// The platform object the row was written for (pod, NetworkPolicy, Service, Neutron
    /// port or security group rule...), from its external_ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRef>,
    /// The owners of the port groups (`@name`) and address sets (`$name`) of its match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_owners: BTreeMap<String, PlatformRef>,
}

impl NbObject {
    /// A load balancer's `vips` as `VIP -> backends; ...` (empty for other rows).
    pub fn vips_text(&self) -> String {
        self.fields
            .get("vips")
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .map(|(vip, be)| format!("{vip} -> {}", be.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    /// A human name: the `name` column, else a short UUID.
    pub fn label(&self) -> String {
        match self
            .fields
            .get("name")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
        {
            Some(n) => n.to_string(),
            None => format!("{:08x}", self.uuid.prefix32()),
        }
    }
}

/// A Southbound row an OpenFlow cookie points at.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "table")]
pub enum SbCandidate {
    #[serde(rename = "Logical_Flow")]
    LogicalFlow {
        uuid: Uuid,
        datapaths: Vec<DatapathRef>,
        pipeline: String,
        table_id: u16,
        stage_name: String,
        priority: u16,
        #[serde(rename = "match")]
        match_: String,
        actions: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        stage_hint: Option<String>,
        #[serde(skip_serializing_if = "String::is_empty")]
        source: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        flow_desc: Option<String>,
        nb: Vec<NbObject>,
    },
    /// Port_Binding, Multicast_Group, MAC_Binding, Chassis, Load_Balancer, FDB.
    #[serde(untagged)]
    Other {
        table: &'static str,
        uuid: Uuid,
        #[serde(skip_serializing_if = "Option::is_none")]
        datapath: Option<DatapathRef>,
        fields: serde_json::Map<String, serde_json::Value>,
        nb: Vec<NbObject>,
    },
}

impl SbCandidate {
    pub fn nb(&self) -> &[NbObject] {
        match self {
            Self::LogicalFlow { nb, .. } | Self::Other { nb, .. } => nb,
        }
    }
    pub fn table(&self) -> &'static str {
        match self {
            Self::LogicalFlow { .. } => LOGICAL_FLOW,
            Self::Other { table, .. } => table,
        }
    }
}

/// Resolution over a consistent view of both replicas.
pub struct Resolver<'a> {
    pub sb: &'a Replica,
    pub nb: &'a Replica,
}

fn fields_of(row: &Row) -> serde_json::Map<String, serde_json::Value> {
    row.cols
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(c, d)| {
            (
                (*c).to_string(),
                serde_json::to_value(d).unwrap_or_default(),
            )
        })
        .collect()
}

impl Resolver<'_> {
    /// Every SB row whose UUID starts with `cookie` (only 32-bit cookies can be OVN's).
    pub fn cookie(&self, cookie: u64) -> Vec<SbCandidate> {
        let Ok(prefix) = u32::try_from(cookie) else {
            return Vec::new();
        };
        if prefix == 0 {
            return Vec::new();
        }
        self.sb
            .by_prefix(prefix)
            .iter()
            .filter_map(|&(table, uuid)| self.sb_candidate(table, uuid))
            .collect()
    }

    /// Every NB row whose UUID starts with the stage-hint.
    pub fn stage_hint(&self, hint: u32) -> Vec<NbObject> {
        self.nb
            .by_prefix(hint)
            .iter()
            .filter_map(|&(table, uuid)| self.nb_object(table, uuid))
            .collect()
    }

    pub fn datapath(&self, uuid: Uuid) -> DatapathRef {
        let row = self.sb.row("Datapath_Binding", uuid);
        let ext = row.and_then(|r| r.get("external_ids"));
        let name = ext
            .and_then(|e| e.get_str("name"))
            .unwrap_or_default()
            .to_string();
        // northd names the NB row a datapath comes from in its external_ids.
        let (kind, table, nb_row) = match ext {
            Some(e) if e.get("logical-switch").is_some() => {
                ("switch", "Logical_Switch", e.get_str("logical-switch"))
            }
            Some(e) if e.get("logical-router").is_some() => {
                ("router", "Logical_Router", e.get_str("logical-router"))
            }
            _ => ("", "", None),
        };
        let tunnel_key = row
            .and_then(|r| r.get("tunnel_key"))
            .and_then(Datum::as_int)
            .and_then(|k| u64::try_from(k).ok());
        // One lookup by UUID: this runs for every datapath of every logical flow met.
        let platform = nb_row
            .and_then(|u| u.parse::<Uuid>().ok())
            .and_then(|u| Some((u, self.nb.row(table, u)?)))
            .and_then(|(u, r)| platform::identify(self.nb, table, u, r));
        DatapathRef {
            uuid,
            name,
            kind,
            tunnel_key,
            platform,
        }
    }

    fn datapaths_of_group(&self, group: Uuid) -> Vec<DatapathRef> {
        self.sb
            .row("Logical_DP_Group", group)
            .and_then(|r| r.get("datapaths"))
            .map(|d| d.uuids().map(|u| self.datapath(u)).collect())
            .unwrap_or_default()
    }

    fn sb_candidate(&self, table: &'static str, uuid: Uuid) -> Option<SbCandidate> {
        if table == LOGICAL_FLOW {
            let lf = self.sb.lflows.get(&uuid)?;
            let mut datapaths: Vec<DatapathRef> = lf
                .logical_datapath
                .map(|d| self.datapath(d))
                .into_iter()
                .collect();
            if let Some(g) = lf.logical_dp_group {
                datapaths.extend(self.datapaths_of_group(g));
            }
            return Some(SbCandidate::LogicalFlow {
                uuid,
                datapaths,
                pipeline: lf.pipeline.to_string(),
                table_id: lf.table_id,
                stage_name: lf.stage_name.to_string(),
                priority: lf.priority,
                match_: lf.match_.to_string(),
                actions: lf.actions.to_string(),
                stage_hint: lf.stage_hint.map(|h| format!("{h:08x}")),
                source: lf.source.to_string(),
                flow_desc: lf.flow_desc.as_deref().map(str::to_string),
                nb: lf
                    .stage_hint
                    .map(|h| self.stage_hint(h))
                    .unwrap_or_default(),
            });
        }
        let row = self.sb.row(table, uuid)?;
        let datapath = row
            .get("datapath")
            .and_then(Datum::as_uuid)
            .map(|d| self.datapath(d));
        let nb = match table {
            // The logical port's NB row shares its name (northd creates the binding from it).
            "Port_Binding" | "MAC_Binding" => row
                .str("logical_port")
                .map(|p| self.nb_ports_named(p))
                .unwrap_or_default(),
            // northd records the NB Load_Balancer in external_ids:lb_id (northd/lb.c).
            "Load_Balancer" => row
                .get("external_ids")
                .and_then(|e| e.get_str("lb_id"))
                .and_then(|id| id.parse::<Uuid>().ok())
                .and_then(|u| self.nb_object("Load_Balancer", u))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        let mut fields = fields_of(row);
        fields.remove("datapath");
        Some(SbCandidate::Other {
            table,
            uuid,
            datapath,
            fields,
            nb,
        })
    }

    fn nb_ports_named(&self, name: &str) -> Vec<NbObject> {
        ["Logical_Switch_Port", "Logical_Router_Port"]
            .into_iter()
            .flat_map(|t| {
                self.nb
                    .rows(t)
                    .filter(|(_, r)| r.str("name") == Some(name))
                    .filter_map(move |(u, _)| self.nb_object(t, *u))
            })
            .collect()
    }

    /// The NB row with the owners that hold it (switch, router, port group).
    pub fn nb_object(&self, table: &'static str, uuid: Uuid) -> Option<NbObject> {
        let row = self.nb.row(table, uuid)?;
        let holders: &[(&str, &str)] = match table {
            "ACL" => &[("Logical_Switch", "acls"), ("Port_Group", "acls")],
            "Load_Balancer" => &[
                ("Logical_Switch", "load_balancer"),
                ("Logical_Router", "load_balancer"),
            ],
            "NAT" => &[("Logical_Router", "nat")],
            "Logical_Switch_Port" => &[("Logical_Switch", "ports")],
            "Logical_Router_Port" => &[("Logical_Router", "ports")],
            "Logical_Router_Policy" => &[("Logical_Router", "policies")],
            "Logical_Router_Static_Route" => &[("Logical_Router", "static_routes")],
            "QoS" => &[("Logical_Switch", "qos_rules")],
            "Forwarding_Group" => &[("Logical_Switch", "forwarding_groups")],
            _ => &[],
        };
        let mut owners = Vec::new();
        for (t, col) in holders {
            for (_, r) in self.nb.rows(t) {
                if r.get(col).is_some_and(|d| d.uuids().any(|u| u == uuid)) {
                    owners.push(format!("{t} {}", r.str("name").unwrap_or("?")));
                }
            }
        }
        owners.sort();
        let match_owners = row
            .str("match")
            .map(|m| platform::match_refs(self.nb, m).into_iter().collect())
            .unwrap_or_default();
        Some(NbObject {
            table,
            uuid,
            fields: fields_of(row),
            owners,
            platform: platform::identify(self.nb, table, uuid, row),
            match_owners,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {

    use super::*;
    use crate::ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES};

    use crate::testutil::replica as load;

    /// The 9999-drop ACL of the OVS 3.1 / OVN 23.03 capture, from its SB logical flows.
    #[test]
    fn acl_drop_cookie_resolves_to_acl_ovn2303() {
        let sb = load(SB_DB, SB_TABLES, "ovs-3.1/ovsdb/sb-monitor-initial.json");
        let nb = load(NB_DB, NB_TABLES, "ovs-3.1/ovsdb/nb-monitor-initial.json");
        let res = Resolver { sb: &sb, nb: &nb };
        let (uuid, _) = sb
            .lflows
            .iter()
            .find(|(_, lf)| {
                lf.match_.contains("tcp.dst == 9999")
                    && lf.stage_name.contains("acl")
                    && lf.actions.contains("drop")
            })
            .expect("an ACL logical flow for port 9999");
        let cands = res.cookie(u64::from(uuid.prefix32()));
        assert!(!cands.is_empty());
        let acl = cands
            .iter()
            .flat_map(|c| c.nb())
            .find(|o| o.table == "ACL")
            .expect("the lflow's stage-hint names an ACL");
        assert_eq!(acl.fields["action"], "drop");
        assert!(acl.fields["match"].as_str().unwrap().contains("9999"));
        assert_eq!(acl.owners, vec!["Logical_Switch sw0".to_string()]);
    }

    #[test]
    fn port_binding_cookie_names_its_lsp_and_unknown_cookie_is_empty() {
        let sb = load(SB_DB, SB_TABLES, "ovs-3.1/ovsdb/sb-monitor-initial.json");
        let nb = load(NB_DB, NB_TABLES, "ovs-3.1/ovsdb/nb-monitor-initial.json");
        let res = Resolver { sb: &sb, nb: &nb };
        let (pb, _) = sb
            .rows("Port_Binding")
            .find(|(_, r)| r.str("logical_port") == Some("p1"))
            .unwrap();
        let cands = res.cookie(u64::from(pb.prefix32()));
        let lsp = cands
            .iter()
            .flat_map(|c| c.nb())
            .find(|o| o.table == "Logical_Switch_Port")
            .unwrap();
        assert_eq!(lsp.label(), "p1");
        assert!(res.cookie(0).is_empty());
        assert!(res.cookie(1 << 40).is_empty());
    }
}
