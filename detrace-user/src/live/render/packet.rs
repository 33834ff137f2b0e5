//! `watch`: one packet, its path of datapath flows, each explained, and its verdict.

use std::fmt::{self, Write};

use serde::Serialize;

use super::human_ns;
use crate::{
    events::{Packet, Verdict, path::PacketTrace},
    explain::{Detail, culprit::Culprit},
    live::{
        clock::{Clock, Ports},
        explainer::{Explained, LookupRef},
    },
    uuid::Uuid,
};

fn port(w: &mut impl Write, ports: &Ports, n: u32) -> fmt::Result {
    match ports.get(&n) {
        Some(name) => write!(w, "{n} ({name})"),
        None => write!(w, "{n}"),
    }
}

fn verdict(w: &mut impl Write, v: &Verdict, ports: &Ports) -> fmt::Result {
    match v {
        Verdict::Output { port: p } => {
            write!(w, "output port ")?;
            port(w, ports, *p)
        }
        Verdict::Drop { reason_name, .. } => write!(w, "DROP {reason_name}"),
        Verdict::Upcall { cmd: 1 } => write!(w, "upcall (miss: to ovs-vswitchd)"),
        Verdict::Upcall { cmd } => write!(w, "upcall (cmd {cmd}: userspace action)"),
        Verdict::Unknown => write!(w, "end not seen"),
    }
}

/// One pass of a packet as JSON: the flow, and what it is.
#[derive(Serialize)]
struct PassView<'a> {
    ufid: Uuid,
    recirc_id: u32,
    packet: &'a Packet,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain_error: Option<&'a str>,
}

#[derive(Serialize)]
struct PacketView<'a> {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_port_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_port_name: Option<&'a str>,
    #[serde(flatten)]
    trace: &'a PacketTrace,
    path: Vec<PassView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    culprit: Option<&'a Culprit>,
}

fn explained<'a>(l: &LookupRef<'a>) -> Option<&'a Explained> {
    match *l {
        LookupRef::Explained(e) => Some(e.as_ref()),
        _ => None,
    }
}

/// The culprit of a dropped packet: its last pass's.
fn culprit<'a>(t: &PacketTrace, looks: &[LookupRef<'a>]) -> Option<&'a Culprit> {
    match t.verdict {
        Verdict::Drop { .. } => looks
            .last()
            .and_then(explained)
            .map(|e| &e.summary.drop_culprit),
        _ => None,
    }
}

/// `looks`: the explanation of each of `t`'s passes, in order.
pub fn json(
    w: &mut impl Write,
    clock: &Clock,
    ports: &Ports,
    t: &PacketTrace,
    looks: &[LookupRef<'_>],
) -> fmt::Result {
    let path = t
        .passes
        .iter()
        .zip(looks)
        .map(|(p, l)| PassView {
            ufid: p.ufid,
            recirc_id: p.recirc_id,
            packet: &p.packet,
            explanation: explained(l).map(Explained::summary_json),
            explain_error: match l {
                LookupRef::Failed { error, .. } => Some(error),
                LookupRef::Pending => Some("not resolved yet (request budget)"),
                LookupRef::Explained(_) => None,
            },
        })
        .collect();
    let v = PacketView {
        in_port_name: ports.get(&t.in_port).map(String::as_str),
        output_port_name: match t.verdict {
            Verdict::Output { port } => ports.get(&port).map(String::as_str),
            _ => None,
        },
        time: clock.format(t.ts_ns),
        trace: t,
        path,
        culprit: culprit(t, looks),
    };
    let line = serde_json::to_string(&v).map_err(|_| fmt::Error)?;
    writeln!(w, "{line}")
}

/// As [`json`], for people: a line for the packet, one per pass, the load balancers met
/// (once each) and who dropped it.
pub fn text(
    w: &mut impl Write,
    clock: &Clock,
    ports: &Ports,
    t: &PacketTrace,
    looks: &[LookupRef<'_>],
) -> fmt::Result {
    write!(w, "{} in_port ", clock.format(t.ts_ns))?;
    port(w, ports, t.in_port)?;
    write!(w, " len {} {}  => ", t.len, t.packet)?;
    verdict(w, &t.verdict, ports)?;
    if t.after_upcall {
        write!(w, " after upcall")?;
    }
    if t.latency_ns > 0 {
        write!(w, "  ({})", human_ns(t.latency_ns))?;
    }
    writeln!(w)?;
    let mut lbs_shown: Vec<&Detail> = Vec::new();
    for (p, l) in t.passes.iter().zip(looks) {
        if p.recirc_id == 0 {
            write!(w, "    recirc 0    ")?;
        } else {
            write!(w, "    {:<11} ", format!("recirc {:#x}", p.recirc_id))?;
        }
        write!(w, "ufid:{} ", &p.ufid.to_string()[..8])?;
        if p.executed {
            write!(w, "(executed by ovs-vswitchd after the upcall) ")?;
        }
        match l {
            LookupRef::Explained(e) => {
                write!(w, "[{}] actions:{}", e.summary.label, e.summary.actions)?;
                if p.packet != t.packet {
                    write!(w, "  (now {})", p.packet)?;
                }
                writeln!(w)?;
                for d in &e.summary.details {
                    if matches!(d, Detail::Lb { .. }) && !lbs_shown.contains(&d) {
                        writeln!(w, "        {d}")?;
                        lbs_shown.push(d);
                    }
                }
            }
            LookupRef::Failed { error, .. } => writeln!(w, "(unexplained: {error})")?,
            LookupRef::Pending => {
                writeln!(w, "(not resolved yet: over the --ovs-rate budget)")?;
            }
        }
    }
    if let Some(c) = culprit(t, looks) {
        writeln!(w, "    dropped by {} {}: {}", c.kind, c.name, c.detail)?;
    }
    Ok(())
}
