//! `detrace probes`: what eBPF the binary carries (no privileges needed) and, with `--attach`,
//! whether tracing works on this kernel: attach, wait, print what the probes saw as JSON lines.

use std::{
    io::{BufWriter, Write as _},
    time::Duration,
};

use anyhow::Context as _;
use detrace_common::{COUNTERS, Event, FlowStats, OVS_DROP_REASON_BASE};
use serde_json::{Value, json};

use crate::{
    cli::ProbesArgs,
    probes::{EventReader, ProbeOptions, Probes, ProgramCost},
    uuid::Uuid,
};

pub fn run(args: ProbesArgs) -> anyhow::Result<()> {
    match args.attach {
        None => list(),
        Some(secs) => attach(&args, Duration::from_secs_f64(secs.max(0.0))),
    }
}

fn list() -> anyhow::Result<()> {
    let obj = aya_obj::Object::parse(crate::probes::EBPF_OBJECT)
        .context("parsing the embedded eBPF object")?;
    let mut progs: Vec<_> = obj
        .programs
        .iter()
        .map(|(name, p)| format!("{name} ({:?})", p.section))
        .collect();
    progs.sort();
    let mut maps: Vec<_> = obj.maps.keys().cloned().collect();
    maps.sort();
    println!("eBPF object: {} bytes", crate::probes::EBPF_OBJECT.len());
    for p in progs {
        println!("program {p}");
    }
    for m in maps {
        println!("map {m}");
    }
    Ok(())
}

/// An Event with every wire field under its wire name (what `--events-out` writes): a
/// recording of raw kernel events, decodable back into `detrace_common::Event`.
pub fn event_json(e: &Event) -> Value {
    json!({
        "kind": e.kind,
        "cpu": e.cpu,
        "ts_ns": e.ts_ns,
        "skb": e.skb,
        "ufid": e.ufid,
        "recirc_id": e.recirc_id,
        "in_port": e.in_port,
        "reason": e.reason,
        "len": e.len,
        "latency_ns": e.latency_ns,
        "key": {
            "src": e.key.src,
            "dst": e.key.dst,
            "sport": e.key.sport,
            "dport": e.key.dport,
            "eth_type": e.key.eth_type,
            "proto": e.key.proto,
            "ip_version": e.key.ip_version,
        },
        "flags": e.flags,
    })
}

fn flow_json(ufid: [u32; 4], s: &FlowStats) -> Value {
    let reasons: serde_json::Map<String, Value> = s
        .drop_reasons
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            let key = if i + 1 < s.drop_reasons.len() {
                format!("{:#x}", OVS_DROP_REASON_BASE + i as u32)
            } else {
                "other".to_string()
            };
            (key, json!(n))
        })
        .collect();
    let latency: serde_json::Map<String, Value> = s
        .latency
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (format!("2^{i}ns"), json!(n)))
        .collect();
    json!({
        "type": "flow",
        "ufid": Uuid::from_words(ufid).to_string(),
        "packets": s.packets,
        "bytes": s.bytes,
        "drops": s.drops,
        "drops_after_upcall": s.drops_after_upcall,
        "outputs": s.outputs,
        "drop_reasons": reasons,
        "latency": latency,
        "latency_sum_ns": s.latency_sum_ns,
    })
}

fn options(args: &ProbesArgs) -> ProbeOptions {
    ProbeOptions {
        events: args.events || args.events_out.is_some(),
        ring_bytes: args.ring_bytes,
        rate_limit: args.rate_limit,
        filter: args.filter.to_filter(),
        cost: args.cost,
        kprobes_only: args.kprobes,
        per_packet: !args.flow_table,
        latency_sample: args.latency_sample.unwrap_or(0),
        matching_only: args.matching_only,
        noop: args.noop,
    }
}

fn attached_json(probes: &Probes, opts: &ProbeOptions) -> Value {
    json!({"type": "attached", "attach_ms": probes.attach_time().as_secs_f64() * 1e3,
           "events": opts.events,
           "hooks": probes.hook_kinds().iter()
               .map(|(f, k)| ((*f).to_string(), json!(k)))
               .collect::<serde_json::Map<_, _>>(),
           "phases_ms": probes.attach_phases().iter()
               .map(|(k, d)| ((*k).to_string(), json!(d.as_secs_f64() * 1e3)))
               .collect::<serde_json::Map<_, _>>(),
           "parts_ms": probes.attach_parts().iter()
               .map(|(k, d)| (k.clone(), json!(d.as_secs_f64() * 1e3)))
               .collect::<serde_json::Map<_, _>>()})
}

/// Where the events go while `--attach` waits: the events file (all of them) and stdout (up
/// to `max_events`).
struct EventSink<'a> {
    file: Option<BufWriter<std::fs::File>>,
    stdout: std::io::StdoutLock<'a>,
    max_events: usize,
    printed: usize,
    read: u64,
}

impl EventSink<'_> {
    fn write(&mut self, e: &Event, print: bool) -> std::io::Result<()> {
        self.read += 1;
        let v = event_json(e);
        if let Some(w) = self.file.as_mut() {
            writeln!(w, "{v}")?;
        }
        if print && self.printed < self.max_events {
            self.printed += 1;
            let mut v = v;
            v["type"] = json!("event");
            writeln!(self.stdout, "{v}")?;
        }
        Ok(())
    }
}

/// Streams events into `sink` until `wait` is over or a signal comes; says which.
async fn stream(
    reader: &mut Option<EventReader>,
    sink: &mut EventSink<'_>,
    wait: Duration,
) -> anyhow::Result<&'static str> {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut batch = Vec::new();
    loop {
        batch.clear();
        tokio::select! {
            _ = &mut deadline => return Ok("time"),
            _ = tokio::signal::ctrl_c() => return Ok("SIGINT"),
            _ = term.recv() => return Ok("SIGTERM"),
            r = async {
                match reader.as_mut() {
                    Some(r) => r.read_batch(&mut batch).await,
                    None => std::future::pending().await,
                }
            } => r.context("reading events")?,
        }
        for e in &batch {
            sink.write(e, true)?;
        }
    }
}

fn counters_json(counters: &[u64], read: u64, malformed: u64, why: &str) -> Value {
    let mut c = serde_json::Map::new();
    c.insert("type".into(), json!("counters"));
    for info in &COUNTERS {
        c.insert(info.name.into(), json!(counters[info.counter as usize]));
    }
    c.insert("events_read".into(), json!(read));
    c.insert("malformed".into(), json!(malformed));
    c.insert("stopped_by".into(), json!(why));
    Value::Object(c)
}

fn cost_json(p: &ProgramCost) -> Value {
    let avg_ns = if p.runs == 0 {
        0.0
    } else {
        p.time.as_nanos() as f64 / p.runs as f64
    };
    json!({"type": "cost", "program": p.name, "runs": p.runs,
           "time_ns": p.time.as_nanos() as u64, "avg_ns": avg_ns})
}

fn attach(args: &ProbesArgs, wait: Duration) -> anyhow::Result<()> {
    let opts = options(args);
    let file = match &args.events_out {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the tokio runtime")?;
    let mut probes = Probes::attach(&opts).context("attaching the probes")?;
    let mut sink = EventSink {
        file,
        stdout: std::io::stdout().lock(),
        max_events: args.max_events,
        printed: 0,
        read: 0,
    };
    writeln!(sink.stdout, "{}", attached_json(&probes, &opts))?;
    sink.stdout.flush()?;

    let mut reader = probes.take_events();
    if let Some(hold) = args.hold.filter(|_| reader.is_some()) {
        // Self-test of the ring's overflow accounting: let the kernel fill it unread.
        std::thread::sleep(Duration::from_secs_f64(hold.clamp(0.0, wait.as_secs_f64())));
    }
    let why = rt.block_on(stream(&mut reader, &mut sink, wait))?;
    // What is still in the ring when time is up: to the events file only.
    if let Some(r) = reader.as_mut() {
        let mut rest = Vec::new();
        r.try_read(&mut rest);
        for e in &rest {
            sink.write(e, false)?;
        }
    }
    if let Some(mut w) = sink.file.take() {
        w.flush().context("writing the events file")?;
    }
    let malformed = reader.as_ref().map_or(0, |r| r.malformed());
    let (read, mut stdout) = (sink.read, sink.stdout);
    let counters = probes.counters()?;
    writeln!(stdout, "{}", counters_json(&counters, read, malformed, why))?;
    for p in probes.program_costs()? {
        writeln!(stdout, "{}", cost_json(&p))?;
    }
    let mut flows = probes.flow_stats()?;
    flows.sort_by_key(|f| std::cmp::Reverse(f.1.packets));
    for (ufid, s) in &flows {
        writeln!(stdout, "{}", flow_json(*ufid, s))?;
    }
    drop(reader);
    let detach = probes.detach();
    writeln!(
        stdout,
        "{}",
        json!({"type": "detached", "detach_ms": detach.as_secs_f64() * 1e3})
    )?;
    Ok(())
}
