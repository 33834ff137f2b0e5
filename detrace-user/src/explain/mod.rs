//! The whole chain for one datapath flow: kernel flow -> OpenFlow rules -> SB rows -> NB objects.

pub mod culprit;
pub mod render;

use serde::Serialize;

use crate::{
    ovn::{NbObject, Resolver, SbCandidate, platform::PlatformRef},
    ovs::{DpFlow, OfRule, RuleSource, vswitchd::FlowRules},
    uuid::Uuid,
};

#[derive(Clone, Debug, Serialize)]
pub struct RuleExplanation {
    #[serde(flatten)]
    pub rule: OfRule,
    /// Every SB row the cookie may name (several on a collision).
    pub sb: Vec<SbCandidate>,
    /// A non-zero cookie that names no SB row (not OVN's, or deleted since).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unresolved: bool,
}

/// A Northbound object the flow traces back to, for summaries and assertions.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub table: &'static str,
    pub uuid: Uuid,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRef>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowExplanation {
    pub ufid: Uuid,
    pub datapath: String,
    pub recirc_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_port: Option<String>,
    #[serde(rename = "match")]
    pub match_compact: String,
    pub match_full: String,
    pub actions: String,
    pub packets: u64,
    pub bytes: u64,
    pub used: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_source: Option<RuleSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_error: Option<String>,
    pub rules: Vec<RuleExplanation>,
    /// Distinct NB objects reached through every rule.
    pub objects: Vec<ObjectRef>,
    /// When this pass ends the packet (drop, reject, ICMP error, ARP request instead of
    /// forwarding): the object that decided it. None when the pass forwards or recirculates.
    pub drop_culprit: Option<culprit::Culprit>,
}

fn object_ref(o: &NbObject) -> ObjectRef {
    ObjectRef {
        table: o.table,
        uuid: o.uuid,
        name: o.label(),
        platform: o.platform.clone(),
    }
}

/// Joins a flow, its rules and the replicas into one explanation.
pub fn explain(dp: &str, flow: &DpFlow, found: FlowRules, res: &Resolver<'_>) -> FlowExplanation {
    let rules: Vec<RuleExplanation> = found
        .rules
        .into_iter()
        .map(|rule| {
            let sb = res.cookie(rule.cookie);
            RuleExplanation {
                unresolved: rule.cookie != 0 && sb.is_empty(),
                rule,
                sb,
            }
        })
        .collect();
    let mut objects: Vec<ObjectRef> = rules
        .iter()
        .flat_map(|r| r.sb.iter())
        .flat_map(|c| c.nb())
        .map(object_ref)
        .collect();
    objects.sort();
    objects.dedup();
    let mut e = FlowExplanation {
        ufid: flow.ufid,
        datapath: dp.to_string(),
        recirc_id: flow.recirc_id(),
        in_port: flow.in_port().map(str::to_string),
        match_compact: flow.match_compact(),
        match_full: flow.match_full.clone(),
        actions: flow.actions.clone(),
        packets: flow.packets,
        bytes: flow.bytes,
        used: flow.used.clone(),
        rules_source: found.source,
        rules_error: found.error,
        rules,
        objects,
        drop_culprit: None,
    };
    e.drop_culprit = culprit::drop_decision(&e);
    e
}

/// An OVN object by table, UUID and name: owned, so it also comes back from a recording.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ObjectName {
    pub table: String,
    pub uuid: Uuid,
    pub name: String,
    /// The platform object the row was written for (pod, NetworkPolicy, Service...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformRef>,
}

/// One line of a [`FlowSummary`]'s details, typed: what it is about is known without reading
/// the text. Serialized as the line itself (`dropped by ...`, `LB name: ...`, `ACL name: ...`),
/// as recordings have always stored it; read back from that line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Who decided the drop when this pass ends the packet (the culprit's text).
    DroppedBy(String),
    /// A load balancer met, with its VIPs and backends.
    Lb { name: String, detail: String },
    /// An ACL met, with its direction, priority, match and action.
    Acl { name: String, detail: String },
    /// A line of no known kind (from a recording made by a later detrace).
    Other(String),
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DroppedBy(c) => write!(f, "dropped by {c}"),
            Self::Lb { name, detail } => write!(f, "LB {name}: {detail}"),
            Self::Acl { name, detail } => write!(f, "ACL {name}: {detail}"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

impl Detail {
    /// The line as written (by [`Display`](std::fmt::Display)) back into its kind: only where
    /// a recording is read. `Display` of the result is always `line` again.
    pub fn parse(line: &str) -> Self {
        let named = |rest: &str| {
            rest.split_once(": ")
                .map(|(n, d)| (n.to_string(), d.to_string()))
        };
        if let Some(c) = line.strip_prefix("dropped by ") {
            return Self::DroppedBy(c.to_string());
        }
        if let Some((name, detail)) = line.strip_prefix("LB ").and_then(named) {
            return Self::Lb { name, detail };
        }
        if let Some((name, detail)) = line.strip_prefix("ACL ").and_then(named) {
            return Self::Acl { name, detail };
        }
        Self::Other(line.to_string())
    }
}

impl Serialize for Detail {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Detail {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let line = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Self::parse(&line))
    }
}

/// What the live commands show of a flow: enough to print and aggregate, and to record and
/// replay without the daemons.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FlowSummary {
    pub ufid: Uuid,
    pub datapath: String,
    /// The datapath match without wildcarded fields, and its actions (ct, nat, recirc, output...).
    #[serde(rename = "match")]
    pub match_compact: String,
    pub actions: String,
    /// One-line name of what the flow is about (its NB objects, or its last active stage).
    pub label: String,
    pub objects: Vec<ObjectName>,
    /// The logical flow stages that did something other than `next;`, in order.
    pub stages: Vec<String>,
    /// Who is responsible if a packet ends dropped after this flow.
    pub drop_culprit: culprit::Culprit,
    /// One line per ACL and load balancer met: `ACL name: ...`, `LB name: vips ...`.
    #[serde(default)]
    pub details: Vec<Detail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_error: Option<String>,
}

impl FlowSummary {
    pub fn of(e: &FlowExplanation) -> Self {
        let mut stages: Vec<String> = Vec::new();
        for r in &e.rules {
            for c in &r.sb {
                if let SbCandidate::LogicalFlow {
                    stage_name,
                    actions,
                    ..
                } = c
                    && actions != "next;"
                    && stages.last() != Some(stage_name)
                {
                    stages.push(stage_name.clone());
                }
            }
        }
        let mut details: Vec<Detail> = Vec::new();
        if let Some(c) = &e.drop_culprit {
            details.push(Detail::DroppedBy(c.text()));
        }
        for o in e
            .rules
            .iter()
            .flat_map(|r| r.sb.iter())
            .flat_map(SbCandidate::nb)
        {
            let d = match o.table {
                "Load_Balancer" => Detail::Lb {
                    name: o.label(),
                    detail: culprit::lb_culprit(o).detail,
                },
                "ACL" => Detail::Acl {
                    name: o.label(),
                    detail: culprit::acl_culprit(o).detail,
                },
                _ => continue,
            };
            if !details.contains(&d) {
                details.push(d);
            }
        }
        Self {
            details,
            ufid: e.ufid,
            datapath: e.datapath.clone(),
            match_compact: e.match_compact.clone(),
            actions: e.actions.clone(),
            label: culprit::flow_label(e),
            objects: e
                .objects
                .iter()
                .map(|o| ObjectName {
                    table: o.table.to_string(),
                    uuid: o.uuid,
                    name: o.name.clone(),
                    platform: o.platform.clone(),
                })
                .collect(),
            stages,
            drop_culprit: culprit::drop_culprit(e),
            rules_error: e.rules_error.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {

    use super::*;
    use crate::{
        ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
        ovs::{ofrule::parse_detrace, vswitchd::FlowRules},
    };

    use crate::testutil::{fixture, replica};

    fn explained(ufid: &str) -> FlowExplanation {
        let sb = replica(SB_DB, SB_TABLES, "ovs-3.5/ovsdb/sb-monitor-initial.json");
        let nb = replica(NB_DB, NB_TABLES, "ovs-3.5/ovsdb/nb-monitor-initial.json");
        let dump = fixture("ovs-3.5/dump-flows-m.txt");
        let line = dump
            .lines()
            .find(|l| l.starts_with(&format!("ufid:{ufid}")))
            .unwrap();
        let flow = DpFlow::parse(line).unwrap();
        let rules = parse_detrace(&fixture(&format!(
            "ovs-3.5/detrace/detrace-{}.txt",
            &ufid[..8]
        )))
        .unwrap();
        let found = FlowRules {
            source: Some(RuleSource::Detrace),
            rules,
            ..Default::default()
        };
        explain(
            "netdev@ovs-netdev",
            &flow,
            found,
            &Resolver { sb: &sb, nb: &nb },
        )
    }

    /// OVS 3.5 / OVN 25.03: the ACL evaluates in ls_out_acl_eval and the drop happens in a later
    /// stage with no stage-hint; the drop is still the ACL's doing.
    #[test]
    fn acl_drop_flow_blames_the_acl_ovn2503() {
        let e = explained("e666129a-7f03-4f7f-b983-c5bae899c5c9");
        assert_eq!(e.actions, "drop");
        assert!(
            e.objects
                .iter()
                .any(|o| o.table == "ACL" && o.name == "drop-9999"),
            "{:?}",
            e.objects
        );
        let c = culprit::drop_culprit(&e);
        assert_eq!(
            (c.kind, c.name.as_str()),
            (culprit::CulpritKind::Acl, "drop-9999")
        );
        // The eval flow's datapath; the drop itself is in ls_out_acl_action, which has no hint.
        assert_eq!(c.datapath.as_deref(), Some("sw0"));
        assert_eq!(e.drop_culprit.as_ref(), Some(&c));
        assert!(
            c.detail.contains("tcp.dst == 9999") && c.detail.contains("action=drop"),
            "{}",
            c.detail
        );
        let s = FlowSummary::of(&e);
        assert!(s.label.contains("ACL drop-9999"), "{}", s.label);
        assert!(
            matches!(&s.details[0], Detail::DroppedBy(c)
                if c.starts_with("ACL: ACL drop-9999 (to-lport priority 1002")),
            "{:?}",
            s.details
        );
        // Typed, and written and read back as the lines recordings have always held.
        let json = serde_json::to_value(&s.details).unwrap();
        assert!(
            json[0]
                .as_str()
                .unwrap()
                .starts_with("dropped by ACL: ACL drop-9999")
        );
        let back: Vec<Detail> = serde_json::from_value(json).unwrap();
        assert_eq!(back, s.details);
        for line in [
            "LB lb0: 10.0.0.100:80 -> 10.0.0.12:8080",
            "ACL a: b: c",
            "LB x",
            "other",
        ] {
            assert_eq!(Detail::parse(line).to_string(), line);
        }
        assert!(matches!(Detail::parse("LB lb0: vips"), Detail::Lb { name, .. } if name == "lb0"));
        assert!(
            s.stages.iter().any(|st| st.contains("acl")),
            "{:?}",
            s.stages
        );
        let text = render::text(&e);
        assert!(text.contains("NB ACL drop-9999"), "{text}");
        // The JSON form round-trips through a recording.
        let back: FlowSummary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.drop_culprit, c);
    }

    #[test]
    fn vip_flow_names_the_load_balancer_ovn2503() {
        let e = explained("3adc8747-c077-47b6-a171-37601f35e511");
        assert!(
            e.objects
                .iter()
                .any(|o| o.table == "Load_Balancer" && o.name == "lb0"),
            "{:?}",
            e.objects
        );
        assert!(
            e.rules.iter().all(|r| !r.unresolved || r.rule.cookie == 0),
            "every OVN cookie resolves"
        );
    }
}
