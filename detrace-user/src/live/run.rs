//! The live run: the kernel's event stream and counters through the pipeline into a sink,
//! until the duration is over, Ctrl-C or SIGTERM.

use std::time::{Duration, Instant};

use detrace_common::{Counter, FlowStats};

use super::{
    pipeline::{FlowsAt, Pipeline, Sink},
    source::{EventSource, LossReport, Tracer},
    upcall_loss::LossWarning,
};
use crate::{FastMap, ovs::unixctl::Appctl, uuid::Uuid};

/// Per-UFID stats from the tracer, keyed by UFID; the flows that read retired go to the sink
/// (once each) before the caller uses the rest. A flow whose explanation waits in the queue
/// does not retire yet: retired, it would be folded as unexplained for good.
fn read_flows<T: Tracer, A: Appctl>(
    tracer: &T,
    pipe: &mut Pipeline<A>,
    sink: &mut impl Sink<A>,
) -> anyhow::Result<FastMap<Uuid, FlowStats>> {
    let by_ufid = |v: Vec<([u32; 4], FlowStats)>| -> FastMap<Uuid, FlowStats> {
        v.into_iter()
            .map(|(w, s)| (Uuid::from_words(w), s))
            .collect()
    };
    let flows = by_ufid(tracer.flow_stats(&|u| !pipe.cache.is_queued(u))?);
    pipe.retire(&by_ufid(tracer.take_retired()), sink)?;
    Ok(flows)
}

/// Resolves when the run should stop: the duration is over, Ctrl-C, or SIGTERM.
pub async fn stop_signal(deadline: Option<Instant>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = until => {}
    }
}

/// When a run stops and reports.
pub struct RunOptions {
    pub deadline: Option<Instant>,
    /// The sink gets the kernel's per-flow counters this often (and always at the end).
    pub report_every: Option<Duration>,
}

/// Gives the sink the kernel's counters, their flows explained first as it needs.
fn report<T: Tracer, A: Appctl>(
    tracer: &T,
    pipe: &mut Pipeline<A>,
    sink: &mut impl Sink<A>,
    last: bool,
) -> anyhow::Result<LossReport> {
    let flows = read_flows(tracer, pipe, sink)?;
    pipe.explain_flows(sink.needs(), &flows);
    let loss = LossReport::from_counters(&tracer.counters()?);
    let at = FlowsAt {
        flows: &flows,
        kernel: Some(&loss),
        last,
    };
    sink.flows(&pipe.view(), &at)?;
    Ok(loss)
}

/// Every 500 ms: packets whose end never came are closed, the explanation queue pumped (the
/// kernel's flows read for it once a second, every 10 s for retirement alone when the sink
/// reads no counters), lost events said.
fn tick<T: Tracer, A: Appctl>(
    tracer: &T,
    pipe: &mut Pipeline<A>,
    sink: &mut impl Sink<A>,
    scan: bool,
    sweep: bool,
    warn: &mut Warnings,
) -> anyhow::Result<()> {
    pipe.expire(sink)?;
    let needs = sink.needs();
    let flows = if scan && (needs.drops || needs.flows) {
        Some(read_flows(tracer, pipe, sink)?)
    } else {
        if sweep {
            // A sink that reads no counters (watch, record): they are read now and then all
            // the same, so that flows gone for good retire and their explanations go.
            read_flows(tracer, pipe, sink)?;
        }
        None
    };
    if scan {
        pipe.actions_changed(tracer.actions_changed());
    }
    pipe.tick(needs, flows.as_ref());
    if scan && let Some(addrs) = pipe.refresh_selection() {
        tracer.set_filter_addrs(&addrs)?;
    }
    sink.flush()?;
    let loss = LossReport::from_counters(&tracer.counters()?);
    let lost = loss.get(Counter::EventsLost);
    if lost > warn.events_lost {
        eprintln!("detrace: {lost} events lost so far (ring buffer full)");
        warn.events_lost = lost;
    }
    if let Some(msg) = warn
        .datapath
        .check(loss.get(Counter::DatapathLost), Instant::now())
    {
        eprintln!("{msg}");
    }
    Ok(())
}

/// What the run has said on stderr about losses.
struct Warnings {
    events_lost: u64,
    datapath: LossWarning,
}

/// Runs the pipeline on the kernel's events and counters until stopped; the sink gets every
/// packet, the counters every `report_every` and at the end, then the run's summary.
pub async fn run<T: Tracer, S: EventSource, A: Appctl>(
    tracer: &T,
    source: &mut S,
    pipe: &mut Pipeline<A>,
    sink: &mut impl Sink<A>,
    opts: RunOptions,
) -> anyhow::Result<LossReport> {
    let stop = stop_signal(opts.deadline);
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut reports = opts
        .report_every
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    let next_report = async |r: &mut Option<tokio::time::Interval>| match r {
        Some(r) => {
            r.tick().await;
        }
        None => std::future::pending::<()>().await,
    };
    let mut batch = Vec::with_capacity(1024);
    let mut warn = Warnings {
        events_lost: 0,
        datapath: LossWarning::new(Duration::from_secs(10)),
    };
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = source.read_batch(&mut batch) => {
                r?;
                pipe.ingest(&batch, sink)?;
                batch.clear();
                // What this batch printed goes out now (the output may be buffered).
                sink.flush()?;
            }
            _ = ticker.tick() => {
                ticks += 1;
                let scan = ticks.is_multiple_of(2);
                if scan && tracer.module_gone() {
                    eprintln!(
                        "detrace: the openvswitch module was unloaded: the probes on it went \
                         with it and no datapath is left to watch; stopping (the counts below \
                         are up to the unload)"
                    );
                    break;
                }
                // Every 10 s.
                let sweep = ticks.is_multiple_of(20);
                tick(tracer, pipe, sink, scan, sweep, &mut warn)?;
            }
            _ = next_report(&mut reports) => {
                report(tracer, pipe, sink, false)?;
            }
        }
    }
    // Close what is open, then the last report.
    pipe.expire(sink)?;
    pipe.release_held(sink)?;
    let flows = read_flows(tracer, pipe, sink)?;
    pipe.tick(sink.needs(), Some(&flows));
    let loss = report(tracer, pipe, sink, true)?;
    sink.finish(&pipe.end(loss, source.malformed()))?;
    sink.flush()?;
    Ok(loss)
}
