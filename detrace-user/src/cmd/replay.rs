//! `detrace replay FILE`: a recording shown as watch, top or drops, without root or daemons.

use std::io::{BufRead as _, BufReader, Write as _};

use anyhow::{Context as _, bail};

use crate::{
    aggregate::FlowTable,
    cli::{Format, ReplayArgs, ReplayAs},
    live::{
        explainer::{Backend, ExplainCache},
        print::{self, Clock},
        session::{Mode, RECORD_VERSION, RecordLine, Session},
    },
    ovs::unixctl::UnixctlClient,
    uuid::Uuid,
};

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let mut cache = ExplainCache::<UnixctlClient>::new(Backend::Recorded, 1.0);
    let mode = match args.as_ {
        ReplayAs::Watch => Mode::Watch,
        ReplayAs::Drops => Mode::Drops { interval: None },
        ReplayAs::Top => Mode::Watch,
    };
    let mut packets = Vec::new();
    let mut flows: crate::FastMap<Uuid, detrace_common::FlowStats> = crate::FastMap::default();
    let mut clock = Clock::new();
    let mut ports = crate::live::print::Ports::new();
    let mut bad = 0u64;
    let mut summary = None;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RecordLine>(&line) {
            Ok(RecordLine::Header {
                version,
                clock_offset_ns,
                ports: recorded_ports,
                ..
            }) => {
                ports = recorded_ports;
                if version > RECORD_VERSION {
                    bail!(
                        "{} is a version {version} recording; this detrace reads up to {RECORD_VERSION}",
                        args.file.display()
                    );
                }
                clock = Clock::with_offset(i128::from(clock_offset_ns));
            }
            Ok(RecordLine::Explanation(e)) => cache.insert(*e),
            Ok(RecordLine::Packet(p)) => packets.push(p),
            Ok(RecordLine::Flow { ufid, stats }) => {
                flows.insert(ufid, (&stats).into());
            }
            Ok(RecordLine::Summary { loss, .. }) => summary = Some(loss),
            Err(e) => {
                bad += 1;
                if bad <= 3 {
                    eprintln!(
                        "detrace: {}:{}: skipping a malformed line: {e}",
                        args.file.display(),
                        n + 1
                    );
                }
            }
        }
    }
    if bad > 0 {
        eprintln!("detrace: {bad} malformed lines skipped");
    }
    let out: Box<dyn std::io::Write> = Box::new(std::io::stdout().lock());
    let mut sess = Session::new(cache, args.format, mode, out);
    sess.clock = clock;
    sess.ports = ports;
    match args.as_ {
        ReplayAs::Watch | ReplayAs::Drops => {
            for p in &packets {
                sess.handle(p)?;
            }
            if args.as_ == ReplayAs::Drops {
                if flows.is_empty() {
                    // An interrupted recording has no counters: rebuild them from its packets.
                    let mut t = FlowTable::default();
                    packets.iter().for_each(|p| t.add_trace(p));
                    flows = t.stats();
                }
                sess.print_drops(&flows)?;
            }
        }
        ReplayAs::Top => {
            let mut t = FlowTable::default();
            if flows.is_empty() {
                packets.iter().for_each(|p| t.add_trace(p));
            } else {
                t.snapshot(flows);
            }
            let label = |u: &Uuid| match sess.cache.cached(u) {
                Some(e) => e.summary.label.clone(),
                None => "(unexplained)".into(),
            };
            let mut rows = t.rows(0.0, label);
            rows.sort_by_key(|r| std::cmp::Reverse(r.packets));
            for r in rows.iter_mut().filter(|r| r.drops > 0) {
                let u: Option<Uuid> = r.key.trim_start_matches("ufid:").parse().ok();
                r.culprit = u
                    .and_then(|u| sess.cache.cached(&u))
                    .map(|e| e.summary.drop_culprit.clone());
            }
            let objs = |u: &Uuid| {
                sess.cache
                    .cached(u)
                    .map(|e| e.summary.objects.clone())
                    .unwrap_or_default()
            };
            let mut orows = t.object_rows(0.0, objs);
            orows.sort_by_key(|r| std::cmp::Reverse(r.packets));
            let mut so = std::io::stdout().lock();
            match args.format {
                Format::Text => {
                    write!(so, "{}", print::table("flows", &rows))?;
                    write!(so, "\n{}", print::table("OVN objects", &orows))?;
                }
                Format::Json => writeln!(
                    so,
                    "{}",
                    serde_json::json!({"flows": rows, "objects": orows})
                )?,
            }
        }
    }
    if let Some(loss) = summary {
        eprintln!("detrace: recorded with {}", loss.line());
    }
    Ok(())
}
