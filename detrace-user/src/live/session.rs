//! The live run loop, generic over where events and counters come from (the eBPF probes, a
//! test, a recording): decode -> assemble paths -> explain (cached) -> show / aggregate / record.

use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, Instant},
};

use detrace_common::{Counter, Event, FlowStats};
use serde::{Deserialize, Serialize};

use super::{
    explainer::{AFTER_EXPIRY, ExplainCache, ExplainStats, Explained, Lookup, LookupRef},
    print::{self, Clock},
    source::{EventSource, LossReport, Tracer},
};
use crate::{
    FastMap,
    aggregate::{DropGroup, FlowTable, group_drops},
    cli::Format,
    events::{
        Kind, Packet, PacketEvent, Verdict,
        path::{AssemblyStats, PacketTrace, PathAssembler},
    },
    explain::culprit::Culprit,
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

/// What to do with each finished packet.
pub enum Mode {
    Watch,
    /// Keep a sample packet per dropping flow; report groups at the end (or every interval).
    Drops {
        interval: Option<Duration>,
    },
    /// Write packets and explanations as JSON lines.
    Record,
}

/// FlowStats as a recording stores it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowStatsRec {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub outputs: u64,
    pub drop_reasons: Vec<u64>,
    pub latency: Vec<u64>,
    pub latency_sum_ns: u64,
    /// Absent from recordings made before it existed.
    #[serde(default, skip_serializing_if = "crate::events::is_zero_u64")]
    pub drops_after_upcall: u64,
}

impl From<&FlowStats> for FlowStatsRec {
    fn from(s: &FlowStats) -> Self {
        Self {
            packets: s.packets,
            bytes: s.bytes,
            drops: s.drops,
            outputs: s.outputs,
            drop_reasons: s.drop_reasons.to_vec(),
            latency: s.latency.to_vec(),
            latency_sum_ns: s.latency_sum_ns,
            drops_after_upcall: s.drops_after_upcall,
        }
    }
}

impl From<&FlowStatsRec> for FlowStats {
    fn from(r: &FlowStatsRec) -> Self {
        let mut s = FlowStats {
            packets: r.packets,
            bytes: r.bytes,
            drops: r.drops,
            outputs: r.outputs,
            latency_sum_ns: r.latency_sum_ns,
            drops_after_upcall: r.drops_after_upcall,
            ..Default::default()
        };
        for (d, v) in s.drop_reasons.iter_mut().zip(&r.drop_reasons) {
            *d = *v;
        }
        for (d, v) in s.latency.iter_mut().zip(&r.latency) {
            *d = *v;
        }
        s
    }
}

/// One line of a recording.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordLine {
    Header {
        version: u32,
        clock_offset_ns: i64,
        command: String,
        #[serde(default)]
        ports: print::Ports,
    },
    Explanation(Box<Explained>),
    Packet(PacketTrace),
    Flow {
        ufid: Uuid,
        stats: FlowStatsRec,
    },
    Summary {
        loss: LossReport,
        assembly: AssemblyStats,
        explain: ExplainStats,
        malformed_events: u64,
    },
}

/// The per-packet lines of a recording, serialized from borrows (the same JSON as
/// [`RecordLine`]'s variants): a packet or an explanation is written without being cloned.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RecordLineRef<'a> {
    Explanation(&'a Explained),
    Packet(&'a PacketTrace),
}

pub const RECORD_VERSION: u32 = 1;

/// State of one live run.
pub struct Session<A: Appctl> {
    pub cache: ExplainCache<A>,
    pub clock: Clock,
    /// Datapath port names, for people.
    pub ports: print::Ports,
    pub asm: PathAssembler,
    pub format: Format,
    pub mode: Mode,
    pub out: Box<dyn Write>,
    /// A dropped packet per last flow (drops).
    samples: FastMap<Uuid, Packet>,
    /// UFIDs whose explanation is already in the recording.
    recorded: rustc_hash::FxHashSet<Uuid>,
    pub decode_errors: u64,
    pub packets_shown: u64,
    batch: Vec<Event>,
    traces: Vec<PacketTrace>,
    /// ovs-vswitchd's generation the port names were read at.
    ovs_generation: u64,
}

impl<A: Appctl> Session<A> {
    pub fn new(cache: ExplainCache<A>, format: Format, mode: Mode, out: Box<dyn Write>) -> Self {
        Self {
            cache,
            clock: Clock::new(),
            ports: print::Ports::new(),
            // A packet's passes take microseconds; one not finished in 2 s never will be.
            asm: PathAssembler::new(65_536, 2_000_000_000),
            format,
            mode,
            out,
            samples: FastMap::default(),
            recorded: rustc_hash::FxHashSet::default(),
            decode_errors: 0,
            packets_shown: 0,
            batch: Vec::with_capacity(1024),
            traces: Vec::new(),
            ovs_generation: 0,
        }
    }

    pub fn write_header(&mut self, command: &str) -> std::io::Result<()> {
        if let Mode::Record = self.mode {
            let h = RecordLine::Header {
                version: RECORD_VERSION,
                clock_offset_ns: self.clock.offset_ns() as i64,
                command: command.to_string(),
                ports: self.ports.clone(),
            };
            writeln!(
                self.out,
                "{}",
                serde_json::to_string(&h).unwrap_or_default()
            )?;
        }
        Ok(())
    }

    /// Decodes and assembles a batch of raw events; handles finished packets.
    pub fn ingest(&mut self, events: &[Event]) -> std::io::Result<()> {
        // Watch and record look up every pass's explanation when its packet ends: fetch it
        // from memory while the packet is still in flight.
        let warm = matches!(self.mode, Mode::Watch | Mode::Record);
        for e in events {
            match PacketEvent::decode(e) {
                Ok(pe) => {
                    if let (true, Kind::Pass, Some(u)) = (warm, pe.kind, pe.ufid) {
                        self.cache.warm(u);
                    }
                    self.asm.push(&pe, &mut self.traces);
                }
                Err(err) => {
                    self.decode_errors += 1;
                    tracing::warn!("undecodable event: {err}");
                }
            }
        }
        self.flush_traces()
    }

    /// At the end of a run: packets held for the continuation of their upcall are shown as
    /// they are.
    pub fn release_held(&mut self) -> std::io::Result<()> {
        self.asm.release_held(&mut self.traces);
        self.flush_traces()
    }

    /// Closes packets whose end never came.
    pub fn expire(&mut self) -> std::io::Result<()> {
        self.asm.expire(Clock::monotonic_now_ns(), &mut self.traces);
        self.flush_traces()
    }

    fn flush_traces(&mut self) -> std::io::Result<()> {
        let traces = std::mem::take(&mut self.traces);
        for t in &traces {
            self.handle(t)?;
        }
        Ok(())
    }

    /// Shows, samples or records one packet.
    pub fn handle(&mut self, t: &PacketTrace) -> std::io::Result<()> {
        match self.mode {
            Mode::Watch => {
                let looks = print::lookups(t, |u| self.cache.get(u));
                let line = match self.format {
                    Format::Json => print::packet_json(&self.clock, &self.ports, t, &looks),
                    Format::Text => print::packet_text(&self.clock, &self.ports, t, &looks),
                };
                writeln!(self.out, "{}", line.trim_end())?;
                self.packets_shown += 1;
            }
            Mode::Drops { .. } => {
                if let (Verdict::Drop { .. }, Some(u)) = (&t.verdict, t.last_ufid()) {
                    self.samples.entry(u).or_insert_with(|| t.packet.clone());
                    // Explained now, while its flow exists, not when the report is printed.
                    self.cache.seen(u);
                }
            }
            Mode::Record => {
                for p in &t.passes {
                    if self.recorded.contains(&p.ufid) {
                        continue;
                    }
                    if let LookupRef::Explained(e) = self.cache.lookup(p.ufid) {
                        writeln!(
                            self.out,
                            "{}",
                            serde_json::to_string(&RecordLineRef::Explanation(e))
                                .unwrap_or_default()
                        )?;
                        self.recorded.insert(p.ufid);
                    }
                }
                writeln!(
                    self.out,
                    "{}",
                    serde_json::to_string(&RecordLineRef::Packet(t)).unwrap_or_default()
                )?;
                self.packets_shown += 1;
            }
        }
        Ok(())
    }

    /// The culprit of drops after `ufid` (explaining it if needed).
    pub fn culprit(&mut self, ufid: Uuid) -> Culprit {
        match self.cache.get(ufid) {
            Lookup::Explained(e) => e.summary.drop_culprit.clone(),
            other => Culprit::unexplained(
                ufid,
                match other {
                    Lookup::Failed { error, .. } => format!("unexplained: {error}"),
                    _ => "unexplained (request budget)".into(),
                },
            ),
        }
    }

    /// Explains what waits (within the request budget); in `drops`, every flow the kernel
    /// counted drops on is queued too (its events may have been lost or rate-limited).
    /// Follows an ovs-vswitchd restart (its port numbers may have changed).
    pub fn tick<T: Tracer>(&mut self, tracer: &T, scan_flows: bool) -> anyhow::Result<()> {
        if scan_flows && let Mode::Drops { .. } = self.mode {
            for (u, s) in flow_map(tracer)? {
                if s.drops > 0 {
                    self.cache.seen(u);
                }
            }
        }
        self.cache.pump();
        let g = self.cache.ovs_generation();
        if g != self.ovs_generation {
            self.ovs_generation = g;
            let ports = self.cache.port_names();
            if !ports.is_empty() {
                self.ports = ports;
            }
        }
        Ok(())
    }

    /// Drop groups from per-flow counters.
    pub fn drop_groups(&mut self, flows: &FastMap<Uuid, FlowStats>) -> Vec<DropGroup> {
        let culprits: HashMap<Uuid, Culprit> = flows
            .iter()
            .filter(|(_, s)| s.drops > 0)
            .map(|(u, _)| (*u, self.culprit(*u)))
            .collect();
        let samples = &self.samples;
        let mut groups = group_drops(
            flows,
            |u| {
                culprits
                    .get(u)
                    .cloned()
                    .unwrap_or_else(|| self_culprit_fallback(u))
            },
            |u| samples.get(u).cloned(),
        );
        for g in &mut groups {
            for u in &g.flows {
                if let Some(e) = self.cache.cached(u)
                    && let Some(note) = e.summary.rules_error.as_deref()
                    && note.starts_with(AFTER_EXPIRY)
                {
                    let note = format!("ufid:{u} {note}");
                    g.notes.push(note);
                }
            }
        }
        groups
    }

    pub fn print_drops(&mut self, flows: &FastMap<Uuid, FlowStats>) -> std::io::Result<()> {
        let groups = self.drop_groups(flows);
        match self.format {
            Format::Json => {
                for g in &groups {
                    writeln!(self.out, "{}", serde_json::to_string(g).unwrap_or_default())?;
                }
            }
            Format::Text => write!(self.out, "{}", print::drops_text(&groups))?,
        }
        self.out.flush()
    }

    pub fn record_flows(&mut self, flows: &FastMap<Uuid, FlowStats>) -> std::io::Result<()> {
        for (u, s) in flows {
            writeln!(
                self.out,
                "{}",
                serde_json::to_string(&RecordLine::Flow {
                    ufid: *u,
                    stats: s.into()
                })
                .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

fn self_culprit_fallback(u: &Uuid) -> Culprit {
    Culprit::unexplained(*u, "")
}

/// Per-UFID stats from the tracer, keyed by UFID.
pub fn flow_map<T: Tracer>(t: &T) -> anyhow::Result<FastMap<Uuid, FlowStats>> {
    Ok(t.flow_stats()?
        .into_iter()
        .map(|(w, s)| (Uuid::from_words(w), s))
        .collect())
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

/// Runs an event-driven session (watch, drops, record) until stopped.
pub async fn run_events<T: Tracer, S: EventSource, A: Appctl>(
    tracer: &T,
    source: &mut S,
    sess: &mut Session<A>,
    deadline: Option<Instant>,
) -> anyhow::Result<LossReport> {
    let stop = stop_signal(deadline);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let report_every = match sess.mode {
        Mode::Drops { interval: Some(i) } => Some(i),
        _ => None,
    };
    let mut last_report = Instant::now();
    let mut last_lost = 0u64;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = source.read_batch(&mut sess.batch) => {
                r?;
                let batch = std::mem::take(&mut sess.batch);
                sess.ingest(&batch)?;
                sess.batch = batch;
                sess.batch.clear();
                // What this batch printed goes out now (the output may be buffered).
                sess.out.flush()?;
            }
            _ = tick.tick() => {
                sess.expire()?;
                ticks += 1;
                // The kernel's flow table is read once a second; the queue pumped every tick.
                sess.tick(tracer, ticks.is_multiple_of(2))?;
                sess.out.flush()?;
                let loss = LossReport::from_counters(&tracer.counters()?);
                if loss.get(Counter::EventsLost) > last_lost {
                    eprintln!("detrace: {} events lost so far (ring buffer full)", loss.get(Counter::EventsLost));
                    last_lost = loss.get(Counter::EventsLost);
                }
                if let Some(every) = report_every && last_report.elapsed() >= every {
                    last_report = Instant::now();
                    let flows = flow_map(tracer)?;
                    sess.print_drops(&flows)?;
                }
            }
        }
    }
    // Drain what is already in the ring, then close what is open.
    sess.expire()?;
    sess.release_held()?;
    sess.tick(tracer, true)?;
    let flows = flow_map(tracer)?;
    match sess.mode {
        Mode::Drops { .. } => sess.print_drops(&flows)?,
        Mode::Record => sess.record_flows(&flows)?,
        Mode::Watch => {}
    }
    let loss = LossReport::from_counters(&tracer.counters()?);
    if let Mode::Record = sess.mode {
        let s = RecordLine::Summary {
            loss,
            assembly: sess.asm.stats,
            explain: sess.cache.stats,
            malformed_events: source.malformed(),
        };
        writeln!(
            sess.out,
            "{}",
            serde_json::to_string(&s).unwrap_or_default()
        )?;
    }
    sess.out.flush()?;
    Ok(loss)
}

/// `top`: refreshing tables from the kernel's per-flow counters (no per-packet events).
pub struct TopView {
    pub table: FlowTable,
    pub last: Instant,
}

impl Default for TopView {
    fn default() -> Self {
        Self {
            table: FlowTable::default(),
            last: Instant::now(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use detrace_common::{COUNTER_SLOTS, Counter, EventKind};

    use super::*;
    use crate::live::explainer::Backend;

    /// A Tracer and EventSource fed from memory.
    struct Fake {
        batches: Vec<Vec<Event>>,
        stats: Vec<([u32; 4], FlowStats)>,
        lost: u64,
    }
    impl Tracer for Fake {
        fn flow_stats(&self) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
            Ok(self.stats.clone())
        }
        fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]> {
            let mut c = [0; COUNTER_SLOTS as usize];
            c[Counter::EventsLost as usize] = self.lost;
            Ok(c)
        }
    }
    struct FakeSource(Vec<Vec<Event>>);
    impl EventSource for FakeSource {
        async fn read_batch(&mut self, out: &mut Vec<Event>) -> std::io::Result<()> {
            match self.0.pop() {
                Some(b) => out.extend(b),
                None => std::future::pending::<()>().await,
            }
            Ok(())
        }
        fn malformed(&self) -> u64 {
            0
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Rc<RefCell<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn ev(kind: EventKind, skb: u64, ufid: u32, recirc: u32, reason: u32) -> Event {
        Event {
            kind: kind as u32,
            skb,
            ufid: if ufid == 0 { [0; 4] } else { [ufid, 0, 0, 1] },
            recirc_id: recirc,
            reason,
            ts_ns: Clock::monotonic_now_ns(),
            len: 60,
            ..Default::default()
        }
    }

    struct NoOvs;
    impl Appctl for NoOvs {
        fn call(
            &mut self,
            _: &str,
            _: &[&str],
        ) -> Result<String, crate::ovs::unixctl::UnixctlError> {
            unreachable!()
        }
    }

    /// The borrowed record lines write exactly what the owned ones do (and read back).
    #[test]
    fn borrowed_record_lines_are_the_recorded_format() {
        let mut a = PathAssembler::new(16, u64::MAX);
        let mut traces = Vec::new();
        for e in [
            ev(EventKind::Pass, 1, 0xa, 0, 0),
            ev(EventKind::Pass, 1, 0xb, 0x5, 0),
            ev(EventKind::Drop, 1, 0xb, 0, 0x30003),
        ] {
            a.push(&PacketEvent::decode(&e).unwrap(), &mut traces);
        }
        let t = &traces[0];
        let owned = serde_json::to_string(&RecordLine::Packet(t.clone())).unwrap();
        let borrowed = serde_json::to_string(&RecordLineRef::Packet(t)).unwrap();
        assert_eq!(borrowed, owned);
        assert!(borrowed.starts_with(r#"{"type":"packet","#), "{borrowed}");
        let e: Explained = serde_json::from_value(serde_json::json!({
            "summary": {
                "ufid": Uuid(0xb << 96 | 1), "datapath": "system@ovs-system",
                "match": "recirc_id(0x5)", "actions": "drop", "label": "ACL drop-9999",
                "objects": [], "stages": ["ls_out_acl"],
                "drop_culprit": {"kind": "ACL", "id": "x", "name": "drop-9999", "detail": ""},
                "details": []
            },
            "full": {"rules": []}
        }))
        .unwrap();
        let owned = serde_json::to_string(&RecordLine::Explanation(Box::new(e.clone()))).unwrap();
        let borrowed = serde_json::to_string(&RecordLineRef::Explanation(&e)).unwrap();
        assert_eq!(borrowed, owned);
        assert!(matches!(
            serde_json::from_str::<RecordLine>(&borrowed).unwrap(),
            RecordLine::Explanation(x) if x.summary.label == "ACL drop-9999"
        ));
    }

    #[test]
    fn record_then_drops_and_loss_are_reported() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let buf = Buf::default();
        let cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0);
        let mut sess = Session::new(cache, Format::Json, Mode::Record, Box::new(buf.clone()));
        sess.write_header("test").unwrap();
        let batches = vec![vec![
            ev(EventKind::Pass, 1, 0xa, 0, 0),
            ev(EventKind::Pass, 1, 0xb, 0x5, 0),
            ev(EventKind::Drop, 1, 0xb, 0, 0x30003),
            ev(EventKind::Pass, 2, 0xa, 0, 0),
            ev(EventKind::Output, 2, 0xa, 0, 4),
        ]];
        let mut dropstats = FlowStats {
            drops: 1,
            packets: 1,
            ..Default::default()
        };
        dropstats.drop_reasons[3] = 1;
        let fake = Fake {
            batches: vec![],
            stats: vec![([0xb, 0, 0, 1], dropstats)],
            lost: 7,
        };
        let _ = &fake.batches;
        let mut src = FakeSource(batches);
        let deadline = Some(Instant::now() + Duration::from_millis(300));
        let loss = rt
            .block_on(run_events(&fake, &mut src, &mut sess, deadline))
            .unwrap();
        assert_eq!(loss.get(Counter::EventsLost), 7);
        assert_eq!(sess.packets_shown, 2);
        let text = String::from_utf8(buf.0.borrow().clone()).unwrap();
        let lines: Vec<RecordLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(matches!(
            lines[0],
            RecordLine::Header {
                version: RECORD_VERSION,
                ..
            }
        ));
        let packets: Vec<&PacketTrace> = lines
            .iter()
            .filter_map(|l| {
                if let RecordLine::Packet(p) = l {
                    Some(p)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].passes.len(), 2);
        assert!(matches!(
            packets[0].verdict,
            Verdict::Drop {
                reason: 0x30003,
                ..
            }
        ));
        assert!(
            lines
                .iter()
                .any(|l| matches!(l, RecordLine::Flow { stats, .. } if stats.drops == 1))
        );
        assert!(
            matches!(lines.last().unwrap(), RecordLine::Summary { loss, .. } if loss.get(Counter::EventsLost) == 7)
        );

        // The same events through `drops`: one group, the unexplained flow, with its sample.
        let buf2 = Buf::default();
        let cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0);
        let mut sess = Session::new(
            cache,
            Format::Json,
            Mode::Drops { interval: None },
            Box::new(buf2.clone()),
        );
        let mut src = FakeSource(vec![vec![
            ev(EventKind::Pass, 1, 0xb, 0, 0),
            ev(EventKind::Drop, 1, 0xb, 0, 0x30003),
        ]]);
        rt.block_on(run_events(
            &fake,
            &mut src,
            &mut sess,
            Some(Instant::now() + Duration::from_millis(300)),
        ))
        .unwrap();
        let out = String::from_utf8(buf2.0.borrow().clone()).unwrap();
        let g: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(g["drops"], 1);
        assert_eq!(g["culprit"]["kind"], "unexplained");
        assert_eq!(g["reasons"]["OVS_DROP_EXPLICIT"], 1);
        assert!(g["sample"].is_object());
    }
}
