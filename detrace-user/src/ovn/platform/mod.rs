//! The platform's names for Northbound rows: the pod, NetworkPolicy or Service (ovn-kubernetes,
//! kube-ovn), the port, network, router or security-group rule (OpenStack Neutron) a row was
//! written for. Platforms record who owns each row in its `external_ids` (and in its name), so
//! this needs no platform API: only the replicated Northbound database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    ovsdb::{Datum, Replica, Row},
    uuid::Uuid,
};

mod kubeovn;
mod neutron;
mod ovnk;

/// The platform that wrote a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    OvnKubernetes,
    KubeOvn,
    Neutron,
}

impl Platform {
    pub fn label(self) -> &'static str {
        match self {
            Self::OvnKubernetes => "ovn-kubernetes",
            Self::KubeOvn => "kube-ovn",
            Self::Neutron => "neutron",
        }
    }
}

/// What kind of platform object a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformKind {
    /// A Kubernetes NetworkPolicy (namespace/name), one of its ingress or egress rules.
    NetworkPolicy,
    /// The isolation a namespace gets once a NetworkPolicy selects its pods: what no policy
    /// allows is denied (ovn-kubernetes `NetpolNamespace` ACLs).
    DefaultDeny,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    EgressFirewall,
    /// Traffic from the node to its pods, allowed around policies (`NetpolNode`).
    NodeAccess,
    Multicast,
    Pod,
    /// The pods a NetworkPolicy peer's selector picks (an address set).
    PodSelector,
    Service,
    /// A load balancer of the platform's own (Octavia).
    LoadBalancer,
    Namespace,
    Node,
    /// A network: a Neutron network, a user-defined network.
    Network,
    Router,
    /// A Neutron port (a VM's interface, a router interface, a DHCP port...).
    Port,
    SecurityGroup,
    SecurityGroupRule,
    /// Neutron's drop of whatever no security group allows (`neutron_pg_drop`).
    SecurityGroupDefaultDrop,
    FloatingIp,
    /// Owned by the platform, of a kind detrace does not model (the owner type is the name).
    Other,
}

impl PlatformKind {
    /// The name people read in text output.
    pub fn label(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::DefaultDeny => "default deny of namespace",
            Self::AdminNetworkPolicy => "AdminNetworkPolicy",
            Self::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            Self::EgressFirewall => "EgressFirewall",
            Self::NodeAccess => "node access",
            Self::Multicast => "multicast policy",
            Self::Pod => "pod",
            Self::PodSelector => "pods of selector",
            Self::Service => "Service",
            Self::LoadBalancer => "load balancer",
            Self::Namespace => "namespace",
            Self::Node => "node",
            Self::Network => "network",
            Self::Router => "router",
            Self::Port => "port",
            Self::SecurityGroup => "security group",
            Self::SecurityGroupRule => "security group",
            Self::SecurityGroupDefaultDrop => "security groups' default drop",
            Self::FloatingIp => "floating IP",
            Self::Other => "object",
        }
    }
}

/// A platform object, as its users name it. Text: `NetworkPolicy prod/deny-db (ingress rule
/// 0)`, `pod prod/client`, `security group rule 5f3c... of security group web (ingress)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlatformRef {
    pub platform: Platform,
    pub kind: PlatformKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// "ingress" or "egress" for policies and rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// The rule within its policy: ovn-kubernetes' gress index, ANP rule index, egress
    /// firewall rule; Neutron's security group rule id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What else tells it apart: the policy's port/ipBlock part, a port's device owner, the
    /// security group a rule belongs to, the owner type of an `Other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl PlatformRef {
    fn new(platform: Platform, kind: PlatformKind, name: impl Into<String>) -> Self {
        Self {
            platform,
            kind,
            namespace: None,
            name: name.into(),
            direction: None,
            rule: None,
            detail: None,
        }
    }

    /// `namespace/name`, or the name alone.
    pub fn qualified(&self) -> String {
        match &self.namespace {
            Some(ns) if !ns.is_empty() && !self.name.is_empty() => format!("{ns}/{}", self.name),
            Some(ns) if self.name.is_empty() => ns.clone(),
            _ => self.name.clone(),
        }
    }

    /// The same object without its rule: what `top` aggregates by (a NetworkPolicy, not each
    /// of its rules).
    pub fn object(&self) -> Self {
        Self {
            direction: None,
            rule: None,
            detail: None,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for PlatformRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.label(), self.qualified())?;
        let mut paren: Vec<String> = Vec::new();
        match (&self.direction, &self.rule) {
            (Some(d), Some(r)) => paren.push(format!("{d} rule {r}")),
            (Some(d), None) => paren.push(d.clone()),
            (None, Some(r)) => paren.push(format!("rule {r}")),
            (None, None) => {}
        }
        if let Some(d) = &self.detail {
            paren.push(d.clone());
        }
        if !paren.is_empty() {
            write!(f, " ({})", paren.join(", "))?;
        }
        Ok(())
    }
}

/// A row's `external_ids` key, when set and not empty.
fn ext<'a>(row: &'a Row, key: &str) -> Option<&'a str> {
    row.get("external_ids")
        .and_then(|e| e.get_str(key))
        .filter(|v| !v.is_empty())
}

/// The platform object a Northbound row belongs to, from its external_ids and name (and, for
/// a row whose owner is held elsewhere, such as a Neutron ACL's security group, from the rows
/// holding it). None for rows no known platform wrote.
pub fn identify(nb: &Replica, table: &str, uuid: Uuid, row: &Row) -> Option<PlatformRef> {
    ovnk::identify(nb, table, row)
        .or_else(|| neutron::identify(nb, table, uuid, row))
        .or_else(|| kubeovn::identify(nb, table, row))
}

/// The `@port_group` and `$address_set` names in an ACL or policy match, each with the
/// platform object it belongs to (port groups and address sets are named by hashes on
/// ovn-kubernetes and by UUIDs on Neutron: nobody reads them). Only names that resolve.
pub fn match_refs(nb: &Replica, m: &str) -> Vec<(String, PlatformRef)> {
    let mut out: Vec<(String, PlatformRef)> = Vec::new();
    for (i, c) in m.char_indices() {
        if c != '@' && c != '$' {
            continue;
        }
        let name: String = m[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.')
            .collect();
        if name.is_empty() || out.iter().any(|(t, _)| t[1..] == name) {
            continue;
        }
        let owner = if c == '@' {
            named(nb, "Port_Group", &name)
        } else {
            named(nb, "Address_Set", &name).or_else(|| {
                // northd's per-port-group address sets: `<port group>_ip4` / `_ip6`.
                let pg = name
                    .strip_suffix("_ip4")
                    .or_else(|| name.strip_suffix("_ip6"))?;
                named(nb, "Port_Group", pg)
            })
        };
        if let Some(p) = owner {
            out.push((format!("{c}{name}"), p));
        }
    }
    out
}

/// The platform object of the row of `table` named `name`.
fn named(nb: &Replica, table: &str, name: &str) -> Option<PlatformRef> {
    let (uuid, row) = nb.rows(table).find(|(_, r)| r.str("name") == Some(name))?;
    identify(nb, table, *uuid, row)
}

/// A match with its port groups and address sets followed by their owners:
/// `outport == @a1234(NetworkPolicy prod/db) && ...`.
pub fn annotate_match(m: &str, refs: &BTreeMap<String, PlatformRef>) -> String {
    let mut out = m.to_string();
    for (token, owner) in refs {
        let with = format!("{token}({})", owner.object());
        // Replace whole tokens only (`@pg1` must not rewrite `@pg10`).
        let mut res = String::with_capacity(out.len() + with.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(token.as_str()) {
            let after = &rest[at + token.len()..];
            let whole = !after
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            res.push_str(&rest[..at]);
            res.push_str(if whole { &with } else { token });
            rest = after;
        }
        res.push_str(rest);
        out = res;
    }
    out
}

/// Addresses (IPv4 and IPv6) of a Logical_Switch_Port: its `addresses` column ("MAC IP..."),
/// else its dynamic addresses.
pub fn port_addresses(row: &Row) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    for col in ["addresses", "dynamic_addresses"] {
        let Some(d) = row.get(col) else { continue };
        let texts: Vec<&str> = match d {
            Datum::Str(s) => vec![s.as_str()],
            other => other.elems().iter().filter_map(Datum::as_str).collect(),
        };
        for t in texts {
            for word in t.split_whitespace() {
                let ip = word.split('/').next().unwrap_or(word);
                if let Ok(a) = ip.parse::<std::net::IpAddr>()
                    && !out.contains(&a)
                {
                    out.push(a);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
