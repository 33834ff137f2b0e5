//! `detrace watch`, `top`, `drops`, `record`: attach the probes, run a live session, detach.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    cli::{DropsArgs, EventArgs, Format, LiveArgs, RecordArgs, TopArgs, WatchArgs},
    events::path::AssemblyStats,
    live::{
        explainer::{Backend, ExplainCache, ExplainStats},
        kernel::{Counting, EventOptions, attach_live},
        pipeline::{Pipeline, Sink},
        run::{RunOptions, run},
        select::Selection,
        sinks::{
            drops::DropsSink,
            record::RecordSink,
            top::{TopMode, TopSink},
            watch::WatchSink,
        },
        source::LossReport,
    },
    ovn::OvnReplicas,
    ovs::{unixctl::DaemonCtl, vswitchd::Vswitchd},
    ovsdb::Remote,
};

/// watch and record follow every packet the filter matches, and only those.
const PER_PACKET: Counting = Counting {
    per_packet: true,
    latency_sample: 0,
    matching_only: true,
    retire_after: crate::live::flowtable::RETIRE_AFTER,
};

fn explainer(live: &LiveArgs) -> anyhow::Result<ExplainCache<DaemonCtl>> {
    let sb =
        Remote::parse_list_with(&live.conn.sb_remote(), &live.conn.ssl()).context("--sb-db")?;
    let nb =
        Remote::parse_list_with(&live.conn.nb_remote(), &live.conn.ssl()).context("--nb-db")?;
    let ovn = OvnReplicas::start(sb, nb, live.conn.timeout());
    // Followed across restarts (a new pid, a new socket): live commands outlive the daemon.
    let ctl = DaemonCtl::connect(&live.conn.ovs_rundir, "ovs-vswitchd", live.conn.timeout())
        .map_err(|e| {
            anyhow::anyhow!("{e}\nhint: is ovs-vswitchd running? set --ovs-rundir or OVS_RUNDIR")
        })?;
    let mut ovs = Vswitchd::new(ctl).context("asking ovs-vswitchd for its commands")?;
    // The event loop must not sleep waiting for a flow's xlate cache: one detrace attempt, then
    // the ofproto/trace fallback (which says so in the explanation).
    ovs.retry.attempts = 1;
    ovn.wait_ready(live.conn.timeout()).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the OVN databases: {e}\nhint: set --sb-db/--nb-db (or OVN_SB_DB/OVN_NB_DB)"
        )
    })?;
    Ok(ExplainCache::new(Backend::Live { ovs, ovn }, live.ovs_rate))
}

fn deadline(live: &LiveArgs) -> Option<Instant> {
    live.duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Attaches the probes (per-packet events only when asked), says so, and runs the pipeline
/// into `sink` until stopped; prints the closing lines.
pub(crate) fn run_live<K: Sink<DaemonCtl>>(
    live: &LiveArgs,
    events: Option<&EventArgs>,
    counting: Counting,
    mut pipe: Pipeline<DaemonCtl>,
    sink: &mut K,
    report_every: Option<Duration>,
) -> anyhow::Result<()> {
    let opts = match events {
        Some(e) => EventOptions {
            filter: select_pods(e, &mut pipe),
            ring_size: e.ring_size,
            rate_limit: e.rate_limit,
        },
        None => EventOptions {
            filter: Default::default(),
            ring_size: 4096,
            rate_limit: 0,
        },
    };
    let (tracer, mut source, attach_time) =
        attach_live(&opts, events.is_some(), counting, live.kprobes)?;
    eprintln!("detrace: probes attached in {attach_time:?}");
    if live.ready {
        println!("ready");
        std::io::stdout().flush()?;
    }
    let rt = runtime()?;
    let run_opts = RunOptions {
        deadline: deadline(live),
        report_every,
    };
    let result = rt.block_on(run(&tracer, &mut source, &mut pipe, sink, run_opts));
    let t = Instant::now();
    drop(source);
    drop(tracer);
    eprintln!("detrace: probes detached in {:?}", t.elapsed());
    let loss = result?;
    if events.is_some() {
        report(
            &loss,
            &pipe.asm.stats,
            &pipe.cache.stats,
            pipe.cache.queued(),
        );
    } else {
        eprintln!("detrace: {}", loss.line());
        eprintln!(
            "detrace: {}",
            explain_line(&pipe.cache.stats, pipe.cache.queued())
        );
    }
    Ok(())
}

/// The kernel filter of `e`, with the addresses of `--pod` / `--namespace` read from the
/// Northbound database now (the pipeline keeps them current).
fn select_pods(e: &EventArgs, pipe: &mut Pipeline<DaemonCtl>) -> crate::probes::loader::Filter {
    let mut filter = e.filter.to_filter();
    if let Some(selector) = e.filter.selector()
        && let Some(nb) = pipe.cache.nb()
    {
        let sel = Selection::new(selector, &nb);
        drop(nb);
        eprintln!("detrace: {}", sel.describe());
        filter.addrs = Some(sel.current.clone());
        pipe.selection = Some(sel);
    }
    filter
}

/// The pipeline of a live command: the explanation cache (the full chain of each
/// explanation only for a recording), ovs-vswitchd's port names.
pub(crate) fn pipeline(live: &LiveArgs, keep_full: bool) -> anyhow::Result<Pipeline<DaemonCtl>> {
    crate::probes::preflight()?;
    let mut cache = explainer(live)?;
    cache.keep_full = keep_full;
    let ports = cache.port_names();
    let mut pipe = Pipeline::new(cache);
    pipe.ports = ports;
    Ok(pipe)
}

fn report(loss: &LossReport, asm: &AssemblyStats, ex: &ExplainStats, still_queued: usize) {
    eprintln!("detrace: {}", loss.line());
    eprintln!(
        "detrace: {} packets assembled ({} unfinished, {} evicted, {} ends without passes); {}",
        asm.traces,
        asm.unfinished,
        asm.evicted,
        asm.orphan_ends,
        explain_line(ex, still_queued)
    );
}

/// The explainer's counts, for the closing lines of every live command.
fn explain_line(ex: &ExplainStats, still_queued: usize) -> String {
    format!(
        "{} flows explained ({} after their flow expired), {} failed, {} ovs-vswitchd requests, \
         {} deferred, {} still queued, {} not queued (queue full), {} evicted",
        ex.explained,
        ex.after_expiry,
        ex.failed,
        ex.ovs_requests,
        ex.deferred,
        still_queued,
        ex.queue_full,
        ex.evicted
    )
}

/// Buffered stdout: one write per batch of events (the run flushes after each batch and
/// every 500 ms), not one per packet line as stdout's own line buffering does.
fn stdout() -> Box<dyn std::io::Write> {
    Box::new(std::io::BufWriter::with_capacity(
        1 << 16,
        std::io::stdout(),
    ))
}

pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let pipe = pipeline(&args.live, false)?;
    let mut sink = WatchSink::new(args.live.format, stdout());
    sink.verdict = args.verdict;
    run_live(
        &args.live,
        Some(&args.events),
        PER_PACKET,
        pipe,
        &mut sink,
        None,
    )
}

pub fn drops(args: DropsArgs) -> anyhow::Result<()> {
    let pipe = pipeline(&args.live, false)?;
    let mut sink = DropsSink::new(args.live.format, stdout());
    // The kernel's per-flow drop counters hold every packet; a filter's are the events'.
    sink.from_events = args.events.filter.is_set();
    if sink.from_events {
        eprintln!(
            "detrace: filtered: drops counted from the packets' events (lost events are said at the end)"
        );
    }
    let every = args.interval.map(Duration::from_secs_f64);
    // Per-packet events only with per-packet counting (for the sample packets), which a filter
    // needs: the kernel's flow table counts every packet.
    let mut counting = args.count.counting();
    counting.per_packet |= sink.from_events;
    let events = counting.per_packet.then_some(&args.events);
    run_live(&args.live, events, counting, pipe, &mut sink, every)
}

pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    crate::probes::preflight()?;
    let f = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let pipe = pipeline(&args.live, true)?;
    let mut sink = RecordSink::new(Box::new(std::io::BufWriter::new(f)));
    // The probes are detached by the time a full disk is reported; what was written replays
    // (`replay` says where it was cut off).
    let full = |e: anyhow::Error| match e.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::StorageFull => e.context(format!(
            "writing {}: the disk is full; the recording so far replays with `detrace replay`",
            args.output.display()
        )),
        _ => e,
    };
    sink.header("record", &pipe.clock, &pipe.ports)
        .with_context(|| format!("writing {}", args.output.display()))?;
    run_live(
        &args.live,
        Some(&args.events),
        PER_PACKET,
        pipe,
        &mut sink,
        None,
    )
    .map_err(full)?;
    eprintln!("detrace: recorded to {}", args.output.display());
    Ok(())
}

/// `top`: refreshing tables from the kernel's per-flow counters (no per-packet events).
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let pipe = pipeline(&args.live, false)?;
    // Redraws in place on a terminal (or with --color always), never with --color never.
    let tty =
        crate::term::control(std::io::stdout().is_terminal()) && args.live.format == Format::Text;
    let mode = TopMode::Live {
        tty,
        last: Instant::now(),
    };
    let out = Box::new(std::io::stdout());
    let mut sink = TopSink::new(args.live.format, args.sort, args.limit, mode, out);
    let every = Duration::from_secs_f64(args.interval.max(0.1));
    run_live(
        &args.live,
        None,
        args.count.counting(),
        pipe,
        &mut sink,
        Some(every),
    )
}
