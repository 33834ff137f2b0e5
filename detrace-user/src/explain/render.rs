//! Text rendering of explanations, shaped like the talk's "Connecting the dots" slides.

use std::fmt::{self, Write};

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
    let mut s = String::new();
    write_nb_line(&mut s, o).map_or_else(|_| String::new(), |()| s)
}

fn write_nb_line(s: &mut impl Write, o: &NbObject) -> fmt::Result {
    write!(s, "NB {} {} ({})", o.table, o.label(), o.uuid)?;
    match o.table {
        "ACL" => {
            write!(
                s,
                ": {} priority {} match=({}) action={}",
                field(o, "direction"),
                field(o, "priority"),
                super::culprit::match_text(o),
                field(o, "action")
            )?;
        }
        "Load_Balancer" => {
            let vips = o.vips_text();
            write!(s, ": protocol {} vips {vips}", field(o, "protocol"))?;
        }
        // Containers: their name says it all; their member lists are noise here.
        "Logical_Switch" | "Logical_Router" | "Port_Group" => {}
        _ => {
            let rest: Vec<String> = o
                .fields
                .iter()
                .filter(|(k, _)| k.as_str() != "name" && k.as_str() != "external_ids")
                .map(|(k, v)| match v {
                    serde_json::Value::String(t) => format!("{k}={t}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            if !rest.is_empty() {
                write!(s, ": {}", rest.join(" "))?;
            }
        }
    }
    if !o.owners.is_empty() {
        write!(s, "  [in {}]", o.owners.join(", "))?;
    }
    if let Some(p) = &o.platform {
        write!(s, "  <- {} {p}", p.platform.label())?;
    }
    Ok(())
}

fn write_sb_line(s: &mut impl Write, c: &SbCandidate) -> fmt::Result {
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
            write!(
                s,
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
            write!(s, "SB {table} {uuid}:")?;
            for (k, v) in fields {
                match v {
                    serde_json::Value::String(t) => {
                        write!(s, " {k}={t}")?;
                    }
                    other => {
                        write!(s, " {k}={other}")?;
                    }
                }
            }
            if let Some(d) = datapath {
                write!(s, " on {}", dp_label(d))?;
            }
            Ok(())
        }
    }
}

/// A flow's whole chain as text.
pub fn text(e: &FlowExplanation) -> String {
    let mut s = String::new();
    write_text(&mut s, e).map_or_else(|_| String::new(), |()| s)
}

fn write_text(s: &mut impl Write, e: &FlowExplanation) -> fmt::Result {
    writeln!(
        s,
        "ufid:{}  {}  packets:{} bytes:{} used:{}",
        e.ufid, e.datapath, e.packets, e.bytes, e.used
    )?;
    writeln!(s, "  match:   {}", e.match_compact)?;
    writeln!(s, "  actions: {}", e.actions)?;
    let how = match e.rules_source {
        Some(crate::ovs::RuleSource::Detrace) => "ofproto/detrace",
        Some(crate::ovs::RuleSource::Trace) => {
            "ofproto/trace (OVS < 3.4: re-translated from the match)"
        }
        None => "none",
    };
    writeln!(s, "  OpenFlow rules ({how}):")?;
    if let Some(err) = &e.rules_error {
        writeln!(s, "    ! {err}")?;
    }
    let mut bridge: Option<&str> = None;
    for r in &e.rules {
        if r.rule.bridge.as_deref() != bridge {
            bridge = r.rule.bridge.as_deref();
            writeln!(s, "    bridge {}", bridge.unwrap_or("?"))?;
        }
        if r.rule.no_match {
            writeln!(s, "    table {}: no match", r.rule.table)?;
            continue;
        }
        if let Some(g) = r.rule.group_id {
            writeln!(s, "    group {g}: {}", r.rule.actions)?;
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
        writeln!(
            s,
            "    table {}{prio}{cookie} {}",
            r.rule.table, r.rule.match_
        )?;
        writeln!(s, "      actions={}", r.rule.actions)?;
        if r.unresolved {
            writeln!(
                s,
                "      ? cookie 0x{:x}: no OVN Southbound row (not OVN's, or deleted since)",
                r.rule.cookie
            )?;
        }
        if r.sb.len() > 1 {
            writeln!(s, "      ! cookie collision: {} candidate rows", r.sb.len())?;
        }
        for c in &r.sb {
            s.write_str("      ")?;
            write_sb_line(s, c)?;
            s.write_char('\n')?;
            for o in c.nb() {
                s.write_str("        ")?;
                write_nb_line(s, o)?;
                s.write_char('\n')?;
            }
        }
    }
    write_objects(s, e)
}

/// The NB objects met, their platform objects, and who dropped.
fn write_objects(s: &mut impl Write, e: &FlowExplanation) -> fmt::Result {
    if !e.objects.is_empty() {
        let objs: Vec<String> = e
            .objects
            .iter()
            .map(|o| format!("{} {}", o.table, o.name))
            .collect();
        writeln!(s, "  OVN objects: {}", objs.join(", "))?;
        let mut platform: Vec<String> = Vec::new();
        for p in e.objects.iter().filter_map(|o| o.platform.as_ref()) {
            let p = p.object().to_string();
            if !platform.contains(&p) {
                platform.push(p);
            }
        }
        if !platform.is_empty() {
            writeln!(s, "  platform: {}", platform.join(", "))?;
        }
    }
    if let Some(c) = &e.drop_culprit {
        writeln!(s, "  dropped by {}", c.text())?;
    }
    Ok(())
}
