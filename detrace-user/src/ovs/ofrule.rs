//! OpenFlow rules behind a datapath flow, parsed from `ofproto/detrace` (OVS >= 3.4,
//! xlate_xcache_format() in ofproto/ofproto-dpif-xlate-cache.c) or from `ofproto/trace`
//! (ofproto/ofproto-dpif-trace.c) on older OVS.

use serde::Serialize;

/// How the rules of a flow were found.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// `ofproto/detrace UFID`: the rules recorded in the flow's xlate cache: exact.
    Detrace,
    /// `ofproto/trace DP MATCH`: a re-translation of the flow's match on OVS < 3.4: the rules
    /// the same packet would hit now, up to the end of this datapath pass.
    Trace,
}

/// One OpenFlow rule (or group / table miss) that contributed to a datapath flow.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct OfRule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    pub table: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// 0 when OVS printed none (it omits zero cookies).
    pub cookie: u64,
    #[serde(rename = "match")]
    pub match_: String,
    pub actions: String,
    /// `table_id=N, no match` / `N. No match.`: the packet fell off the table.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_match: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_packets: Option<u64>,
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Why `ofproto/detrace` gave no rules. OVS prints these as normal output (exit 0), not errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DetraceMiss {
    /// The flow's xlate cache is not filled yet (or the flow never saw a packet).
    #[error("{0}")]
    CacheNotFound(String),
    /// The flow is gone.
    #[error("{0}")]
    UfidNotFound(String),
}

/// Parses `ofproto/detrace` output (one line per rule, no indentation):
/// `cookie=0x.., table_id=N, duration=Ns, n_packets=.., n_bytes=.., [n_offload_...,] priority=P,MATCH,actions=A`
/// (cookie and table_id left out when 0), `group_id=G,type=..,bucket=..` and `table_id=N, no match`;
/// a `bridge(...)` line where the bridge changes.
pub fn parse_detrace(text: &str) -> Result<Vec<OfRule>, DetraceMiss> {
    let mut rules = Vec::new();
    let mut bridge: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("----") {
            continue;
        }
        if line.starts_with("Cache was not found") {
            return Err(DetraceMiss::CacheNotFound(line.to_string()));
        }
        if line.starts_with("UFID was not found") {
            return Err(DetraceMiss::UfidNotFound(line.to_string()));
        }
        if let Some(b) = line.strip_prefix("bridge(") {
            bridge = Some(b.trim_end_matches(')').trim_matches('"').to_string());
            continue;
        }
        let mut rule = OfRule {
            bridge: bridge.clone(),
            ..Default::default()
        };
        // Leading "key=value, " statistics (a head without a comma), then the flow itself
        // ("priority=P,match...,actions=..."), whose first item is followed by ',' not ", ".
        let mut rest = line;
        while let Some((head, tail)) = rest.split_once(", ") {
            let Some((k, v)) = head.split_once('=') else {
                break;
            };
            if head.contains(',') {
                break;
            }
            match k {
                "cookie" => rule.cookie = parse_u64(v).unwrap_or(0),
                "table_id" => rule.table = parse_u64(v).unwrap_or(0) as u8,
                "n_packets" => rule.n_packets = parse_u64(v),
                _ => {}
            }
            rest = tail;
        }
        if rest == "no match" {
            rule.no_match = true;
            rules.push(rule);
            continue;
        }
        if let Some(g) = rest.strip_prefix("group_id=") {
            let (id, tail) = g.split_once(',').unwrap_or((g, ""));
            rule.group_id = parse_u64(id).map(|v| v as u32);
            rule.actions = tail.to_string();
            rules.push(rule);
            continue;
        }
        let (flow, actions) = match rest.find("actions=") {
            Some(at) => (
                rest[..at].trim_end_matches(','),
                &rest[at + "actions=".len()..],
            ),
            None => (rest, ""),
        };
        rule.actions = actions.to_string();
        let mut matches = Vec::new();
        for part in flow.split(',').filter(|p| !p.is_empty()) {
            match part.strip_prefix("priority=") {
                Some(p) => rule.priority = p.parse().ok(),
                None => matches.push(part),
            }
        }
        rule.match_ = matches.join(",");
        rules.push(rule);
    }
    Ok(rules)
}

/// Parses the rules of the *first* datapath pass of an `ofproto/trace` output:
/// `bridge("br-int")` headers, rule lines `  N. MATCH, priority P, cookie 0xC` with their actions
/// indented below, `  N. No match.`; the pass ends at the first `====` line (what follows is the
/// simulated recirculation, which belongs to other datapath flows).
pub fn parse_trace(text: &str) -> Vec<OfRule> {
    let mut rules: Vec<OfRule> = Vec::new();
    let mut bridge: Option<String> = None;
    let mut in_pass = false;
    // Indentation of the current rule line: deeper lines are its actions, until the next rule.
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with("====") && in_pass {
            break;
        }
        if let Some(b) = line.strip_prefix("bridge(") {
            bridge = Some(b.trim_end_matches(')').trim_matches('"').to_string());
            in_pass = true;
            continue;
        }
        if !in_pass
            || line.is_empty()
            || line.starts_with("----")
            || line.starts_with("Final flow:")
            || line.starts_with("Megaflow:")
            || line.starts_with("Datapath actions:")
        {
            continue;
        }
        if let Some(rule) = parse_trace_rule(line, bridge.as_deref())
            .or_else(|| parse_unroll(line, bridge.as_deref()))
        {
            rules.push(rule);
        } else if let Some(last) = rules.last_mut() {
            // An action (or an explanation "-> ...") of the last rule.
            if !line.starts_with("->") && !last.no_match {
                if !last.actions.is_empty() {
                    last.actions.push(',');
                }
                last.actions.push_str(line);
            }
        }
    }
    rules
}

/// A pass resumed from frozen state (after a `hash` recirculation for a select group) starts
/// with the rule that froze it: `unroll_xlate(table=20, cookie=783614532)` (decimal cookie,
/// ofproto/ofproto-dpif-xlate.c) whose remaining actions (e.g. the group bucket) follow.
fn parse_unroll(line: &str, bridge: Option<&str>) -> Option<OfRule> {
    let inner = line.strip_prefix("unroll_xlate(")?.strip_suffix(')')?;
    let (table, cookie) = inner.split_once(", ")?;
    Some(OfRule {
        bridge: bridge.map(str::to_string),
        table: table.strip_prefix("table=")?.parse().ok()?,
        cookie: cookie.strip_prefix("cookie=")?.parse().ok()?,
        match_: "(resumed from frozen state)".into(),
        ..Default::default()
    })
}

/// `14. tcp,reg0=0x4/0x4,metadata=0x2,nw_dst=10.0.0.100,tp_dst=80, priority 120, cookie 0x38acf78`
/// or `73. No match.`
fn parse_trace_rule(line: &str, bridge: Option<&str>) -> Option<OfRule> {
    let (num, rest) = line.split_once(". ")?;
    let table: u8 = num.parse().ok()?;
    let mut rule = OfRule {
        bridge: bridge.map(str::to_string),
        table,
        ..Default::default()
    };
    if rest.starts_with("No match") {
        rule.no_match = true;
        return Some(rule);
    }
    let mut rest = rest;
    if let Some((head, cookie)) = rest.rsplit_once(", cookie ") {
        rule.cookie = parse_u64(cookie)?;
        rest = head;
    }
    if let Some((head, prio)) = rest.rsplit_once(", priority ") {
        rule.priority = prio.trim().parse().ok();
        rest = head;
    } else if let Some(prio) = rest.strip_prefix("priority ") {
        rule.priority = prio.trim().parse().ok();
        rest = "";
    } else {
        return None;
    }
    rule.match_ = rest.to_string();
    Some(rule)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;

    use crate::testutil::fixture;

    #[test]
    fn detrace_acl_drop_flow_ovs35() {
        let rules = parse_detrace(&fixture("ovs-3.5/detrace/detrace-e666129a.txt")).unwrap();
        let acl = rules.iter().find(|r| r.table == 51).unwrap();
        assert_eq!(
            (acl.cookie, acl.priority, acl.n_packets),
            (0x557164d, Some(2002), Some(28))
        );
        assert_eq!(
            acl.match_,
            "tcp,reg0=0x200/0x200,reg15=0x3,metadata=0x2,tp_dst=9999"
        );
        assert!(
            acl.actions
                .starts_with("set_field:0x2000000000000/0x2000000000000->xreg4")
        );
        assert!(rules.iter().all(|r| r.bridge.is_none()));
    }

    #[test]
    fn detrace_vip_flow_has_table0_and_drop_rules_ovs35() {
        let rules = parse_detrace(&fixture("ovs-3.5/detrace/detrace-3adc8747.txt")).unwrap();
        let t0 = &rules[0];
        assert_eq!((t0.table, t0.priority), (0, Some(100)));
        assert_ne!(t0.cookie, 0);
        assert!(t0.match_.starts_with("in_port="), "{t0:?}");
        // table_id=254 ... priority=0,reg0=0x2,actions=drop: cookie 0 (OVS leaves it out).
        if let Some(t254) = rules.iter().find(|r| r.table == 254) {
            assert_eq!(t254.cookie, 0);
        }
    }

    #[test]
    fn detrace_misses_ovs35() {
        assert!(matches!(
            parse_detrace(&fixture("ovs-3.5/detrace-error-cache-not-found.txt")),
            Err(DetraceMiss::CacheNotFound(m)) if m == "Cache was not found for netdev@ovs-netdev"
        ));
        assert!(matches!(
            parse_detrace(&fixture("ovs-3.5/detrace-error-ufid-not-found.txt")),
            Err(DetraceMiss::UfidNotFound(_))
        ));
    }

    #[test]
    fn detrace_group_line() {
        let rules = parse_detrace("group_id=1,type=select,selection_method=dp_hash,bucket=bucket_id:1,weight:100,actions=ct(commit,table=22,zone=NXM_NX_REG13[0..15],nat(dst=20.0.0.13:8080))").unwrap();
        assert_eq!(rules[0].group_id, Some(1));
        assert!(rules[0].actions.contains("nat(dst=20.0.0.13:8080)"));
    }

    #[test]
    fn trace_first_pass_of_vip_flow_ovs31() {
        let rules = parse_trace(&fixture("ovs-3.1/trace-vip-recirc0-m.txt"));
        let first = &rules[0];
        assert_eq!(first.bridge.as_deref(), Some("br-int"));
        assert_eq!(
            (first.table, first.priority, first.cookie),
            (0, Some(100), 0x15b06678)
        );
        assert_eq!(first.match_, "in_port=1");
        assert!(
            first.actions.starts_with("set_field:0x7->reg13"),
            "{}",
            first.actions
        );
        assert!(rules.iter().any(|r| r.table == 73 && r.no_match));
        let last = rules.last().unwrap();
        assert_eq!(
            (last.table, last.priority, last.cookie),
            (14, Some(120), 0x38acf78)
        );
        assert_eq!(
            last.match_,
            "tcp,reg0=0x4/0x4,metadata=0x2,nw_dst=10.0.0.100,tp_dst=80"
        );
        assert!(
            last.actions
                .contains("ct(table=15,zone=NXM_NX_REG13[0..15],nat)")
        );
        // Table 15 onwards belongs to the recirculated pass, another datapath flow.
        assert!(!rules.iter().any(|r| r.table == 15), "{rules:#?}");
    }

    /// Captured from the host test lab (OVS 3.1): a VIP flow after `hash(l4(0)),recirc(..)`.
    #[test]
    fn trace_thawed_select_group_ovs31() {
        let rules = parse_trace(&fixture("ovs-3.1/trace-vip-dp-hash-thaw.txt"));
        assert_eq!(rules.len(), 1, "{rules:#?}");
        assert_eq!((rules[0].table, rules[0].cookie), (20, 2187500048));
        assert!(
            rules[0].actions.contains("group:1,bucket "),
            "{}",
            rules[0].actions
        );
        assert!(
            rules[0].actions.contains("ct(commit,table=21,"),
            "{}",
            rules[0].actions
        );
    }

    #[test]
    fn trace_resumed_recirculation_ovs31() {
        let rules = parse_trace(&fixture("ovs-3.1/trace-vip-recirc-nonzero-m.txt"));
        assert_eq!(
            rules.first().map(|r| (r.table, r.cookie)),
            Some((15, 0xcb1621b8))
        );
        let lb = rules.iter().find(|r| r.table == 20).unwrap();
        assert_eq!(lb.cookie, 0x7830738d);
        assert!(lb.actions.contains("group:2"));
    }
}
