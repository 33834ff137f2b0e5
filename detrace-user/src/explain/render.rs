//! Text rendering of explanations, shaped like the talk's "Connecting the dots" slides.

use std::fmt::Write as _;

use super::FlowExplanation;
use crate::ovn::{NbObject, SbCandidate, resolve::DatapathRef};

fn dp_label(d: &DatapathRef) -> String {
    let name = if d.name.is_empty() {
        format!("{:08x}", d.uuid.prefix32())
    } else {
        d.name.clone()
    };
    if d.kind.is_empty() {
        format!("\"{name}\"")
    } else {
        format!("{} \"{name}\"", d.kind)
    }
}

fn field(o: &NbObject, k: &str) -> String {
    match o.fields.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

/// One NB object on one line: the columns an engineer looks for first.
pub fn nb_line(o: &NbObject) -> String {
    let mut s = format!("NB {} {} ({})", o.table, o.label(), o.uuid);
    match o.table {
        "ACL" => {
            let _ = write!(
                s,
                ": {} priority {} match=({}) action={}",
                field(o, "direction"),
                field(o, "priority"),
                field(o, "match"),
                field(o, "action")
            );
        }
        "Load_Balancer" => {
            let vips = o.vips_text();
            let _ = write!(s, ": protocol {} vips {vips}", field(o, "protocol"));
        }
        // Containers: their name says it all; their member lists are noise here.
        "Logical_Switch" | "Logical_Router" | "Port_Group" => {}
        _ => {
            let rest: Vec<String> = o
                .fields
                .iter()
                .filter(|(k, _)| k.as_str() != "name")
                .map(|(k, v)| match v {
                    serde_json::Value::String(t) => format!("{k}={t}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            if !rest.is_empty() {
                let _ = write!(s, ": {}", rest.join(" "));
            }
        }
    }
    if !o.owners.is_empty() {
        let _ = write!(s, "  [in {}]", o.owners.join(", "));
    }
    s
}

fn sb_line(c: &SbCandidate) -> String {
    match c {
        SbCandidate::LogicalFlow {
            uuid,
            datapaths,
            pipeline,
            table_id,
            stage_name,
            priority,
            match_,
            actions,
            ..
        } => {
            let dps: Vec<String> = datapaths.iter().map(dp_label).collect();
            format!(
                "SB Logical_Flow {uuid}: {} [{pipeline}] table={table_id} ({stage_name}), priority={priority}, match=({match_}), actions=({actions})",
                dps.join(", ")
            )
        }
        SbCandidate::Other {
            table,
            uuid,
            datapath,
            fields,
            ..
        } => {
            let mut s = format!("SB {table} {uuid}:");
            for (k, v) in fields {
                match v {
                    serde_json::Value::String(t) => {
                        let _ = write!(s, " {k}={t}");
                    }
                    other => {
                        let _ = write!(s, " {k}={other}");
                    }
                }
            }
            if let Some(d) = datapath {
                let _ = write!(s, " on {}", dp_label(d));
            }
            s
        }
    }
}

pub fn text(e: &FlowExplanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ufid:{}  {}  packets:{} bytes:{} used:{}",
        e.ufid, e.datapath, e.packets, e.bytes, e.used
    );
    let _ = writeln!(s, "  match:   {}", e.match_compact);
    let _ = writeln!(s, "  actions: {}", e.actions);
    let how = match e.rules_source {
        Some(crate::ovs::RuleSource::Detrace) => "ofproto/detrace",
        Some(crate::ovs::RuleSource::Trace) => {
            "ofproto/trace (OVS < 3.4: re-translated from the match)"
        }
        None => "none",
    };
    let _ = writeln!(s, "  OpenFlow rules ({how}):");
    if let Some(err) = &e.rules_error {
        let _ = writeln!(s, "    ! {err}");
    }
    let mut bridge: Option<&str> = None;
    for r in &e.rules {
        if r.rule.bridge.as_deref() != bridge {
            bridge = r.rule.bridge.as_deref();
            let _ = writeln!(s, "    bridge {}", bridge.unwrap_or("?"));
        }
        if r.rule.no_match {
            let _ = writeln!(s, "    table {}: no match", r.rule.table);
            continue;
        }
        if let Some(g) = r.rule.group_id {
            let _ = writeln!(s, "    group {g}: {}", r.rule.actions);
            continue;
        }
        let prio = r
            .rule
            .priority
            .map(|p| format!(" priority {p}"))
            .unwrap_or_default();
        let cookie = if r.rule.cookie == 0 {
            String::new()
        } else {
            format!(" cookie=0x{:x}", r.rule.cookie)
        };
        let _ = writeln!(
            s,
            "    table {}{prio}{cookie} {}",
            r.rule.table, r.rule.match_
        );
        let _ = writeln!(s, "      actions={}", r.rule.actions);
        if r.unresolved {
            let _ = writeln!(
                s,
                "      ? cookie 0x{:x}: no OVN Southbound row (not OVN's, or deleted since)",
                r.rule.cookie
            );
        }
        if r.sb.len() > 1 {
            let _ = writeln!(s, "      ! cookie collision: {} candidate rows", r.sb.len());
        }
        for c in &r.sb {
            let _ = writeln!(s, "      {}", sb_line(c));
            for o in c.nb() {
                let _ = writeln!(s, "        {}", nb_line(o));
            }
        }
    }
    if !e.objects.is_empty() {
        let objs: Vec<String> = e
            .objects
            .iter()
            .map(|o| format!("{} {}", o.table, o.name))
            .collect();
        let _ = writeln!(s, "  OVN objects: {}", objs.join(", "));
    }
    if let Some(c) = &e.drop_culprit {
        let _ = writeln!(s, "  dropped by {}", c.text());
    }
    s
}
