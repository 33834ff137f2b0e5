//! How packets and tables are shown: text for people, JSON lines for programs.

use std::fmt::Write as _;

use serde::Serialize;

use super::explainer::{Explained, Lookup};
use crate::{
    aggregate::{DropGroup, Row},
    events::{Packet, Verdict, path::PacketTrace},
    explain::culprit::Culprit,
    uuid::Uuid,
};

/// Wall-clock time of a kernel timestamp (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }
    /// Recorded traces keep the offset of the machine that recorded them.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }
    pub fn monotonic_now_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
    /// HH:MM:SS.micros (UTC).
    pub fn format(&self, ktime_ns: u64) -> String {
        let t = i128::from(ktime_ns) + self.offset_ns;
        let secs = (t / 1_000_000_000) as i64;
        let micros = ((t % 1_000_000_000) / 1000) as i64;
        let day = secs.rem_euclid(86_400);
        format!(
            "{:02}:{:02}:{:02}.{micros:06}",
            day / 3600,
            day % 3600 / 60,
            day % 60
        )
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

/// Datapath port numbers -> names.
pub type Ports = std::collections::BTreeMap<u32, String>;

fn port(ports: &Ports, n: u32) -> String {
    match ports.get(&n) {
        Some(name) => format!("{n} ({name})"),
        None => n.to_string(),
    }
}

fn verdict_text(v: &Verdict, ports: &Ports) -> String {
    match v {
        Verdict::Output { port: p } => format!("output port {}", port(ports, *p)),
        Verdict::Drop { reason_name, .. } => format!("DROP {reason_name}"),
        Verdict::Upcall { cmd: 1 } => "upcall (miss: to ovs-vswitchd)".into(),
        Verdict::Upcall { cmd } => format!("upcall (cmd {cmd}: userspace action)"),
        Verdict::Unknown => "end not seen".into(),
    }
}

/// One pass of a packet as JSON: the flow, and what it is.
#[derive(Serialize)]
pub struct PassView<'a> {
    pub ufid: Uuid,
    pub recirc_id: u32,
    pub packet: &'a Packet,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<&'a serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain_error: Option<String>,
}

#[derive(Serialize)]
pub struct PacketView<'a> {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_port_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_port_name: Option<&'a str>,
    #[serde(flatten)]
    pub trace: &'a PacketTrace,
    pub path: Vec<PassView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<&'a Culprit>,
}

/// The explanations of a trace's passes, in order (None while pending or failed).
pub fn lookups(trace: &PacketTrace, mut get: impl FnMut(Uuid) -> Lookup) -> Vec<Lookup> {
    trace.passes.iter().map(|p| get(p.ufid)).collect()
}

fn explained(l: &Lookup) -> Option<&Explained> {
    match l {
        Lookup::Explained(e) => Some(e),
        _ => None,
    }
}

pub fn packet_json(clock: &Clock, ports: &Ports, t: &PacketTrace, looks: &[Lookup]) -> String {
    let path = t
        .passes
        .iter()
        .zip(looks)
        .map(|(p, l)| PassView {
            ufid: p.ufid,
            recirc_id: p.recirc_id,
            packet: &p.packet,
            explanation: explained(l).map(|e| e.summary_json()),
            explain_error: match l {
                Lookup::Failed { error, .. } => Some(error.clone()),
                Lookup::Pending => Some("not resolved yet (request budget)".into()),
                Lookup::Explained(_) => None,
            },
        })
        .collect();
    let culprit = match t.verdict {
        Verdict::Drop { .. } => looks
            .last()
            .and_then(explained)
            .map(|e| &e.summary.drop_culprit),
        _ => None,
    };
    let v = PacketView {
        in_port_name: ports.get(&t.in_port).map(String::as_str),
        output_port_name: match t.verdict {
            Verdict::Output { port } => ports.get(&port).map(String::as_str),
            _ => None,
        },
        time: clock.format(t.ts_ns),
        trace: t,
        path,
        culprit,
    };
    serde_json::to_string(&v).unwrap_or_default()
}

pub fn packet_text(clock: &Clock, ports: &Ports, t: &PacketTrace, looks: &[Lookup]) -> String {
    let mut s = format!(
        "{} in_port {} len {} {}  => {}",
        clock.format(t.ts_ns),
        port(ports, t.in_port),
        t.len,
        t.packet,
        verdict_text(&t.verdict, ports)
    );
    if t.after_upcall {
        s.push_str(" after upcall");
    }
    if t.latency_ns > 0 {
        let _ = write!(s, "  ({})", human_ns(t.latency_ns));
    }
    s.push('\n');
    let mut lbs_shown: Vec<String> = Vec::new();
    for (p, l) in t.passes.iter().zip(looks) {
        let recirc = if p.recirc_id == 0 {
            "recirc 0   ".to_string()
        } else {
            format!("recirc {:#x}", p.recirc_id)
        };
        let _ = write!(s, "    {recirc:<11} ufid:{} ", &p.ufid.to_string()[..8]);
        if p.executed {
            s.push_str("(executed by ovs-vswitchd after the upcall) ");
        }
        match l {
            Lookup::Explained(e) => {
                let _ = write!(s, "[{}] actions:{}", e.summary.label, e.summary.actions);
                if p.packet != t.packet {
                    let _ = write!(s, "  (now {})", p.packet);
                }
                s.push('\n');
                for d in &e.summary.details {
                    if d.starts_with("LB ") && !lbs_shown.contains(d) {
                        let _ = writeln!(s, "        {d}");
                        lbs_shown.push(d.clone());
                    }
                }
            }
            Lookup::Failed { error, .. } => {
                let _ = writeln!(s, "(unexplained: {error})");
            }
            Lookup::Pending => {
                let _ = writeln!(s, "(not resolved yet: over the --ovs-rate budget)");
            }
        }
    }
    if let (Verdict::Drop { .. }, Some(e)) = (&t.verdict, looks.last().and_then(explained)) {
        let c = &e.summary.drop_culprit;
        let _ = writeln!(s, "    dropped by {} {}: {}", c.kind, c.name, c.detail);
    }
    s
}

fn pct(ns: u64) -> String {
    if ns == 0 { "-".into() } else { human_ns(ns) }
}

/// A fixed-width table of rows.
pub fn table(title: &str, rows: &[Row]) -> String {
    let mut s = format!(
        "{title}\n{:>10} {:>10} {:>12} {:>8} {:>10} {:>10}  {}\n",
        "pkts/s", "packets", "bytes", "drops", "p50", "p99", "what"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>10.1} {:>10} {:>12} {:>8} {:>10} {:>10}  {}  {}",
            r.pps,
            r.packets,
            r.bytes,
            r.drops,
            pct(r.latency.p50_ns),
            pct(r.latency.p99_ns),
            r.label,
            if r.key.starts_with("ufid:") {
                &r.key[..13]
            } else {
                ""
            }
        );
    }
    s
}

pub fn drops_text(groups: &[DropGroup]) -> String {
    if groups.is_empty() {
        return "no drops\n".into();
    }
    let mut s = String::new();
    for g in groups {
        let reasons: Vec<String> = g.reasons.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        let _ = writeln!(
            s,
            "{:>8} drops  {} {} ({})",
            g.drops, g.culprit.kind, g.culprit.name, g.culprit.id
        );
        if g.after_upcall > 0 {
            let _ = writeln!(
                s,
                "          {} in the kernel, {} after upcall (executed by ovs-vswitchd)",
                g.in_kernel, g.after_upcall
            );
        }
        let _ = writeln!(s, "          {}", g.culprit.detail);
        let _ = writeln!(s, "          reasons: {}", reasons.join(", "));
        let flows: Vec<String> = g.flows.iter().map(|u| format!("ufid:{u}")).collect();
        let _ = writeln!(s, "          flows: {}", flows.join(" "));
        if let Some(p) = &g.sample {
            let _ = writeln!(s, "          sample: {p}");
        }
        for n in &g.notes {
            let _ = writeln!(s, "          note: {n}");
        }
    }
    s
}
