//! `detrace watch`, `top`, `drops`, `record`: attach the probes, run a live session, detach.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    cli::{DropsArgs, EventArgs, Format, LiveArgs, RecordArgs, SortKey, TopArgs, WatchArgs},
    live::{
        explainer::{Backend, ExplainCache, LookupRef},
        print,
        session::{Mode, Session, flow_map, run_events, stop_signal},
        source::{LossReport, Tracer},
    },
    ovn::OvnReplicas,
    ovs::{unixctl::DaemonCtl, vswitchd::Vswitchd},
    ovsdb::Remote,
    uuid::Uuid,
};

fn explainer(live: &LiveArgs) -> anyhow::Result<ExplainCache<DaemonCtl>> {
    let sb = Remote::parse_list(&live.conn.sb_remote()).context("--sb-db")?;
    let nb = Remote::parse_list(&live.conn.nb_remote()).context("--nb-db")?;
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

/// Runs an event-driven command with attached probes.
fn run_with_events(
    live: &LiveArgs,
    events: &EventArgs,
    mode: Mode,
    out: Box<dyn std::io::Write>,
    command: &str,
) -> anyhow::Result<()> {
    let cache = explainer(live)?;
    let (tracer, mut source, attach_time) =
        crate::live::kernel::attach_live(events, true, live.kprobes)?;
    eprintln!("detrace: probes attached in {attach_time:?}");
    if live.ready {
        println!("ready");
        std::io::stdout().flush()?;
    }
    let mut cache = cache;
    // Only a recording writes the full chain of each explanation: the others keep the summary.
    cache.keep_full = matches!(mode, Mode::Record);
    let ports = cache.port_names();
    let mut sess = Session::new(cache, live.format, mode, out);
    sess.ports = ports;
    sess.write_header(command)?;
    let rt = runtime()?;
    let result = rt.block_on(run_events(&tracer, &mut source, &mut sess, deadline(live)));
    let t = Instant::now();
    drop(source);
    drop(tracer);
    eprintln!("detrace: probes detached in {:?}", t.elapsed());
    let loss = result?;
    report(
        &loss,
        &sess.asm.stats,
        &sess.cache.stats,
        sess.cache.queued(),
    );
    Ok(())
}

fn report(
    loss: &LossReport,
    asm: &crate::events::path::AssemblyStats,
    ex: &crate::live::explainer::ExplainStats,
    still_queued: usize,
) {
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
fn explain_line(ex: &crate::live::explainer::ExplainStats, still_queued: usize) -> String {
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

pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    run_with_events(
        &args.live,
        &args.events,
        Mode::Watch,
        // Buffered: one write per batch of events (the session flushes after each batch and
        // every 500 ms), not one per packet line as stdout's own line buffering does.
        Box::new(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout(),
        )),
        "watch",
    )
}

pub fn drops(args: DropsArgs) -> anyhow::Result<()> {
    let mode = Mode::Drops {
        interval: args.interval.map(Duration::from_secs_f64),
    };
    run_with_events(
        &args.live,
        &args.events,
        mode,
        Box::new(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout(),
        )),
        "drops",
    )
}

pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    let f = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    run_with_events(
        &args.live,
        &args.events,
        Mode::Record,
        Box::new(std::io::BufWriter::new(f)),
        "record",
    )?;
    eprintln!("detrace: recorded to {}", args.output.display());
    Ok(())
}

fn sort_rows(rows: &mut [crate::aggregate::Row], key: SortKey) {
    rows.sort_by(|a, b| {
        let k = |r: &crate::aggregate::Row| match key {
            SortKey::Packets => r.packets as f64,
            SortKey::Rate => r.pps,
            SortKey::Bytes => r.bytes as f64,
            SortKey::Drops => r.drops as f64,
            SortKey::Latency => r.latency.p99_ns as f64,
        };
        k(b).total_cmp(&k(a))
            .then_with(|| b.packets.cmp(&a.packets))
    });
}

pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let mut cache = explainer(&args.live)?;
    cache.keep_full = false;
    let no_events = EventArgs {
        filter: Default::default(),
        ring_size: 4096,
        rate_limit: 0,
    };
    let (tracer, _source, attach_time) =
        crate::live::kernel::attach_live(&no_events, false, args.live.kprobes)?;
    eprintln!("detrace: probes attached in {attach_time:?}");
    if args.live.ready {
        println!("ready");
        std::io::stdout().flush()?;
    }
    let tty = std::io::stdout().is_terminal() && args.live.format == Format::Text;
    let rt = runtime()?;
    let interval = Duration::from_secs_f64(args.interval.max(0.1));
    let mut table = crate::aggregate::FlowTable::default();
    let mut last = Instant::now();
    let result: anyhow::Result<()> = rt.block_on(async {
        let stop = stop_signal(deadline(&args.live));
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = &mut stop => true,
                _ = tick.tick() => false,
            };
            let secs = last.elapsed().as_secs_f64();
            last = Instant::now();
            let flows = flow_map(&tracer)?;
            // Every flow is queued at first sight and explained within the request budget,
            // while it still exists; the table shows what is known (no request from here).
            for u in flows.keys() {
                cache.seen(*u);
            }
            cache.pump();
            table.snapshot(flows);
            let mut rows = table.rows(secs, |_| String::new());
            sort_rows(&mut rows, args.sort);
            rows.truncate(args.limit);
            for r in &mut rows {
                let u: Uuid = r.key.trim_start_matches("ufid:").parse().unwrap_or(Uuid(0));
                r.label = match cache.peek(&u) {
                    LookupRef::Explained(e) => {
                        if r.drops > 0 {
                            r.culprit = Some(e.summary.drop_culprit.clone());
                        }
                        e.summary.label.clone()
                    }
                    LookupRef::Failed { error, .. } => format!("(unexplained: {error})"),
                    LookupRef::Pending => "(pending)".into(),
                };
            }
            let objs = |u: &Uuid| cache.cached(u).map(|e| e.summary.objects.clone()).unwrap_or_default();
            let mut orows = table.object_rows(secs, objs);
            sort_rows(&mut orows, args.sort);
            orows.truncate(args.limit);
            let loss = LossReport::from_counters(&tracer.counters()?);
            let mut so = std::io::stdout().lock();
            match args.live.format {
                Format::Json => writeln!(so, "{}", serde_json::json!({"interval_s": secs, "flows": rows, "objects": orows, "kernel": loss}))?,
                Format::Text => {
                    if tty {
                        write!(so, "\x1b[2J\x1b[H")?;
                    }
                    writeln!(so, "detrace top  ({} flows, sorted by {:?}; {})", table.flows.len(), args.sort, loss.line())?;
                    write!(so, "{}", print::table("flows", &rows))?;
                    writeln!(so)?;
                    write!(so, "{}", print::table("OVN objects", &orows))?;
                    writeln!(so)?;
                }
            }
            so.flush()?;
            if stopping {
                return Ok(());
            }
        }
    });
    let t = Instant::now();
    drop(tracer);
    eprintln!("detrace: probes detached in {:?}", t.elapsed());
    result?;
    eprintln!("detrace: {}", explain_line(&cache.stats, cache.queued()));
    Ok(())
}
