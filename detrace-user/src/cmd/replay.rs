//! `detrace replay FILE`: a recording shown as watch, top or drops, without root or daemons.
//! The recording is the source of the same pipeline the live commands run; each view is its
//! live sink.

use std::io::BufReader;

use anyhow::{Context as _, bail};

use crate::{
    aggregate::SortKey,
    cli::{ReplayArgs, ReplayAs},
    live::{
        clock::Clock,
        explainer::{Backend, ExplainCache},
        pipeline::{FlowsAt, Pipeline, Sink, Tee},
        record::{Recording, RecordingError},
        sinks::{
            drops::DropsSink,
            flows::FlowSink,
            top::{TopMode, TopSink},
            watch::WatchSink,
        },
    },
    ovs::unixctl::UnixctlClient,
};

fn read(args: &ReplayArgs) -> anyhow::Result<Recording> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let rec = match Recording::read(BufReader::new(file)) {
        Ok(r) if !r.has_header() => bail!(
            "{} is not a detrace recording ({}); make one with `detrace record -o FILE`",
            args.file.display(),
            if r.malformed_lines == 0 && r.truncated_line.is_none() && r.packets.is_empty() {
                "it is empty"
            } else {
                "it has no header line"
            }
        ),
        Ok(r) => r,
        Err(RecordingError::Read(e)) if e.kind() == std::io::ErrorKind::InvalidData => bail!(
            "{} is not a detrace recording (not text: {e})",
            args.file.display()
        ),
        Err(RecordingError::Version { version }) => bail!(
            "{} is a version {version} recording; this detrace reads up to {}",
            args.file.display(),
            crate::live::record::RECORD_VERSION
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.file.display())),
    };
    for (n, e) in &rec.malformed {
        eprintln!(
            "detrace: {}:{n}: skipping a malformed line: {e}",
            args.file.display()
        );
    }
    if rec.malformed_lines > 0 {
        eprintln!("detrace: {} malformed lines skipped", rec.malformed_lines);
    }
    if let Some(n) = rec.truncated_line {
        eprintln!(
            "detrace: {}:{n}: the last line is cut off (the recording was interrupted, a full \
             disk?): replaying what came before it",
            args.file.display()
        );
    }
    Ok(rec)
}

/// The recording's packets through the pipeline into `sink`, then its per-flow counters (or,
/// from a recording interrupted before them, counters rebuilt from its packets).
fn replay<K: Sink<UnixctlClient>>(mut rec: Recording, sink: K) -> anyhow::Result<()> {
    let mut cache = ExplainCache::<UnixctlClient>::new(Backend::Recorded, 1.0);
    for e in rec.explanations.drain(..) {
        cache.insert(e);
    }
    let mut pipe = Pipeline::new(cache);
    if let Some(off) = rec.clock_offset_ns {
        pipe.clock = Clock::with_offset(i128::from(off));
    }
    pipe.ports = std::mem::take(&mut rec.ports);
    let mut tee = Tee(sink, FlowSink::default());
    pipe.feed(&rec.packets, &mut tee)?;
    let Tee(mut sink, rebuilt) = tee;
    let flows = if rec.flows.is_empty() {
        rebuilt.table.stats()
    } else {
        std::mem::take(&mut rec.flows)
    };
    pipe.explain_flows(sink.needs(), &flows);
    let at = FlowsAt {
        flows: &flows,
        kernel: None,
        last: true,
    };
    sink.flows(&pipe.view(), &at)?;
    sink.flush()?;
    Ok(())
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let rec = read(&args)?;
    let loss = rec.loss;
    let out = Box::new(std::io::stdout().lock());
    match args.as_ {
        ReplayAs::Watch => replay(rec, WatchSink::new(args.format, out))?,
        ReplayAs::Drops => replay(rec, DropsSink::new(args.format, out))?,
        ReplayAs::Top => {
            let sink = TopSink::new(
                args.format,
                SortKey::Packets,
                usize::MAX,
                TopMode::Replay,
                out,
            );
            replay(rec, sink)?;
        }
    }
    if let Some(loss) = loss {
        eprintln!("detrace: recorded with {}", loss.line());
    }
    Ok(())
}
