//! The pipeline end to end: fake kernel, real sinks, the recording format.

use std::{cell::RefCell, rc::Rc};

use detrace_common::{COUNTER_SLOTS, Counter, EventKind};

use std::{
    io::Write,
    time::{Duration, Instant},
};

use detrace_common::{Event, FlowStats};

use super::{
    clock::Clock,
    explainer::{Backend, ExplainCache, Explained},
    pipeline::Pipeline,
    record::{RECORD_VERSION, RecordLine, RecordLineRef},
    run::{RunOptions, run},
    sinks::{drops::DropsSink, record::RecordSink},
    source::{EventSource, Tracer},
};
use crate::{
    events::{
        PacketEvent, Verdict,
        path::{PacketTrace, PathAssembler},
    },
    live::render::Format,
    ovs::unixctl::Appctl,
    uuid::Uuid,
};

/// A Tracer and EventSource fed from memory.
struct Fake {
    batches: Vec<Vec<Event>>,
    stats: Vec<([u32; 4], FlowStats)>,
    lost: u64,
    /// The openvswitch module unloaded under the probes.
    gone: bool,
    /// Flows the accounts retire at the next read.
    retired: RefCell<Vec<([u32; 4], FlowStats)>>,
}
impl Tracer for Fake {
    fn take_retired(&self) -> Vec<([u32; 4], FlowStats)> {
        std::mem::take(&mut *self.retired.borrow_mut())
    }
    fn module_gone(&self) -> bool {
        self.gone
    }
    fn flow_stats(&self, _: &dyn Fn(&Uuid) -> bool) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        Ok(self.stats.clone())
    }
    fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]> {
        let mut c = [0; COUNTER_SLOTS as usize];
        c[Counter::EventsLost as usize] = self.lost;
        Ok(c)
    }
    fn set_filter_addrs(
        &self,
        _: &std::collections::BTreeSet<std::net::IpAddr>,
    ) -> anyhow::Result<()> {
        Ok(())
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
    fn call(&mut self, _: &str, _: &[&str]) -> Result<String, crate::ovs::unixctl::UnixctlError> {
        unreachable!()
    }
}

/// The explanation of a flow whose packets the ACL drop-9999 drops.
fn acl_drop(ufid: Uuid) -> Explained {
    serde_json::from_value(serde_json::json!({
        "summary": {
            "ufid": ufid, "datapath": "system@ovs-system",
            "match": "recirc_id(0)", "actions": "drop", "label": "ACL drop-9999",
            "objects": [], "stages": ["ls_out_acl"],
            "drop_culprit": {"kind": "ACL", "id": "x", "name": "drop-9999", "detail": ""},
            "details": []
        }
    }))
    .unwrap()
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
    top_table_of_a_recording(&e);
    let owned = serde_json::to_string(&RecordLine::Explanation(Box::new(e.clone()))).unwrap();
    let borrowed = serde_json::to_string(&RecordLineRef::Explanation(&e)).unwrap();
    assert_eq!(borrowed, owned);
    assert!(matches!(
        serde_json::from_str::<RecordLine>(&borrowed).unwrap(),
        RecordLine::Explanation(x) if x.summary.label == "ACL drop-9999"
    ));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A kernel that counted one drop on flow 0xb and lost 7 events.
fn fake_kernel() -> Fake {
    let mut dropstats = FlowStats {
        drops: 1,
        packets: 1,
        ..Default::default()
    };
    dropstats.drop_reasons[3] = 1;
    Fake {
        batches: vec![],
        stats: vec![([0xb, 0, 0, 1], dropstats)],
        lost: 7,
        gone: false,
        retired: RefCell::default(),
    }
}

fn opts() -> RunOptions {
    RunOptions {
        deadline: Some(Instant::now() + Duration::from_millis(300)),
        report_every: None,
    }
}

#[test]
fn record_writes_packets_flows_and_loss() {
    let rt = rt();
    let buf = Buf::default();
    let cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0);
    let mut pipe = Pipeline::new(cache);
    let mut sink = RecordSink::new(Box::new(buf.clone()));
    sink.header("test", &pipe.clock, &pipe.ports).unwrap();
    let batches = vec![vec![
        ev(EventKind::Pass, 1, 0xa, 0, 0),
        ev(EventKind::Pass, 1, 0xb, 0x5, 0),
        ev(EventKind::Drop, 1, 0xb, 0, 0x30003),
        ev(EventKind::Pass, 2, 0xa, 0, 0),
        ev(EventKind::Output, 2, 0xa, 0, 4),
    ]];
    let fake = fake_kernel();
    let _ = &fake.batches;
    // Flow 0xb also lived before (retired with 4 packets, 2 drops, then back): its two lives
    // are two lines, summed by the replay.
    let mut before = FlowStats {
        packets: 4,
        drops: 2,
        ..Default::default()
    };
    before.drop_reasons[3] = 2;
    fake.retired.borrow_mut().push(([0xb, 0, 0, 1], before));
    let mut src = FakeSource(batches);
    let loss = rt
        .block_on(run(&fake, &mut src, &mut pipe, &mut sink, opts()))
        .unwrap();
    assert_eq!(loss.get(detrace_common::Counter::EventsLost), 7);
    assert_eq!(sink.packets_shown, 2);
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
        matches!(lines.last().unwrap(), RecordLine::Summary { loss, .. } if loss.get(detrace_common::Counter::EventsLost) == 7)
    );
    let rec = super::record::Recording::read(text.as_bytes()).unwrap();
    let s = rec.flows[&Uuid(0xb << 96 | 1)];
    assert_eq!((s.packets, s.drops, s.drop_reasons[3]), (5, 3, 3));
}

/// The same events through `drops`: one group, the unexplained flow, with its sample.
#[test]
fn drops_group_the_kernel_counts_with_a_sample() {
    let (rt, fake) = (rt(), fake_kernel());
    let buf2 = Buf::default();
    let cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0);
    let mut pipe = Pipeline::new(cache);
    let mut sink = DropsSink::new(Format::Json, Box::new(buf2.clone()));
    let mut src = FakeSource(vec![vec![
        ev(EventKind::Pass, 1, 0xb, 0, 0),
        ev(EventKind::Drop, 1, 0xb, 0, 0x30003),
    ]]);
    rt.block_on(run(&fake, &mut src, &mut pipe, &mut sink, opts()))
        .unwrap();
    let out = String::from_utf8(buf2.0.borrow().clone()).unwrap();
    let g: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(g["drops"], 1);
    assert_eq!(g["culprit"]["kind"], "unexplained");
    assert_eq!(g["reasons"]["OVS_DROP_EXPLICIT"], 1);
    assert!(g["sample"].is_object());
}

/// A flow retired from the kernel's accounts (gone from its table for a minute) keeps its
/// drops in the report, under the culprit its explanation named, after it left the flows
/// read; its explanation leaves the cache.
#[test]
fn retired_flows_keep_their_drops_and_leave_the_cache() {
    let rt = rt();
    let fake = fake_kernel();
    let gone_ufid = Uuid(0xc << 96 | 1);
    let mut gone_stats = FlowStats {
        drops: 5,
        packets: 5,
        ..Default::default()
    };
    gone_stats.drop_reasons[3] = 5;
    fake.retired
        .borrow_mut()
        .push((gone_ufid.words(), gone_stats));
    let mut cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0);
    for u in [gone_ufid, Uuid(0xb << 96 | 1)] {
        cache.insert(acl_drop(u));
    }
    let mut pipe = Pipeline::new(cache);
    let buf = Buf::default();
    let mut sink = DropsSink::new(Format::Json, Box::new(buf.clone()));
    rt.block_on(run(
        &fake,
        &mut FakeSource(Vec::new()),
        &mut pipe,
        &mut sink,
        opts(),
    ))
    .unwrap();
    let out = String::from_utf8(buf.0.borrow().clone()).unwrap();
    let g: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        g["drops"], 6,
        "the live flow's 1 and the retired one's 5: {out}"
    );
    assert_eq!(g["culprit"]["name"], "drop-9999");
    assert_eq!(g["flows"].as_array().unwrap().len(), 2, "{out}");
    assert!(pipe.cache.cached(&gone_ufid).is_none(), "forgotten");
    assert!(pipe.cache.cached(&Uuid(0xb << 96 | 1)).is_some());
}

/// `drops` with a filter counts the drops of the packets it sees, per last UFID: a retired
/// flow's count leaves that table for its culprit's group (the run's memory follows the flows
/// that exist) and the report still has every drop.
#[test]
fn filtered_drops_of_retired_flows_fold_into_their_group() {
    let rt = rt();
    let fake = fake_kernel();
    let gone_ufid = Uuid(0xc << 96 | 1);
    fake.retired
        .borrow_mut()
        .push((gone_ufid.words(), FlowStats::default()));
    let mut cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0);
    cache.insert(acl_drop(gone_ufid));
    let mut pipe = Pipeline::new(cache);
    let buf = Buf::default();
    let mut sink = DropsSink::new(Format::Json, Box::new(buf.clone()));
    sink.from_events = true;
    let drop_of = |skb| {
        vec![
            ev(EventKind::Pass, skb, 0xc, 0, 0),
            ev(EventKind::Drop, skb, 0xc, 0, 0x30003),
        ]
    };
    let mut source = FakeSource(vec![drop_of(2), drop_of(1)]);
    rt.block_on(run(&fake, &mut source, &mut pipe, &mut sink, opts()))
        .unwrap();
    let out = String::from_utf8(buf.0.borrow().clone()).unwrap();
    let g: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(g["drops"], 2, "both packets' drops: {out}");
    assert_eq!(
        (&g["report"], &g["final"]),
        (&serde_json::json!(1), &serde_json::json!(true)),
        "the one report, the last: {out}"
    );
    assert_eq!(g["culprit"]["name"], "drop-9999");
    assert_eq!(
        sink.counted_flows(),
        0,
        "the retired flow's count left the table"
    );
}

/// The openvswitch module unloaded under a run (kprobes let it go): the run stops at the
/// next second's check instead of watching nothing until its deadline, and still ends with
/// its report (the counts up to the unload).
#[test]
fn a_run_stops_when_the_module_goes() {
    let rt = rt();
    let mut fake = fake_kernel();
    fake.gone = true;
    let buf = Buf::default();
    let mut pipe = Pipeline::new(ExplainCache::<NoOvs>::new(Backend::Recorded, 10.0));
    let mut sink = DropsSink::new(Format::Json, Box::new(buf.clone()));
    let long = RunOptions {
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        report_every: None,
    };
    let t = Instant::now();
    rt.block_on(run(
        &fake,
        &mut FakeSource(Vec::new()),
        &mut pipe,
        &mut sink,
        long,
    ))
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let out = String::from_utf8(buf.0.borrow().clone()).unwrap();
    let g: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(g["drops"], 1, "the report is still made: {out}");
}

/// A header with port names reads back (with its clock offset).
#[test]
fn header_with_ports_reads_back() {
    let mut ports = super::clock::Ports::new();
    ports.insert(2, "client".into());
    let h = RecordLine::Header {
        version: RECORD_VERSION,
        clock_offset_ns: 42,
        command: "record".into(),
        ports,
    };
    let text = serde_json::to_string(&h).unwrap();
    let rec = super::record::Recording::read(text.as_bytes()).unwrap();
    assert_eq!(rec.malformed_lines, 0, "{:?}", rec.malformed);
    assert_eq!(rec.clock_offset_ns, Some(42));
    assert_eq!(rec.ports.get(&2).map(String::as_str), Some("client"));
}

/// A recording cut off mid-line (disk full, crash): the lines before it read back, the cut
/// line is said apart from malformed lines; nothing at all is not a recording.
#[test]
fn truncated_and_empty_recordings() {
    let h = RecordLine::Header {
        version: RECORD_VERSION,
        clock_offset_ns: 7,
        command: "record".into(),
        ports: Default::default(),
    };
    let header = serde_json::to_string(&h).unwrap();
    let text = format!("{header}\nnot json\n{}", &header[..header.len() / 2]);
    let rec = super::record::Recording::read(text.as_bytes()).unwrap();
    assert!(rec.has_header());
    assert_eq!(rec.truncated_line, Some(3));
    assert_eq!(rec.malformed_lines, 1, "{:?}", rec.malformed);
    // A cut-off line followed by more is malformed, not the end.
    let text = format!("{}\n{header}\n", &header[..10]);
    let rec = super::record::Recording::read(text.as_bytes()).unwrap();
    assert_eq!((rec.truncated_line, rec.malformed_lines), (None, 1));
    for empty in ["", "\n\n", "hello\n"] {
        let rec = super::record::Recording::read(empty.as_bytes()).unwrap();
        assert!(!rec.has_header(), "{empty:?}");
    }
}

/// `top`'s one table builder on a recording: an explained flow named by its label and, as it
/// drops, carrying its culprit; a flow the recording does not explain said so; typed keys.
fn top_table_of_a_recording(e: &Explained) {
    use crate::aggregate::{FlowTable, RowKey, SortKey};
    let (known, unknown) = (e.summary.ufid, Uuid(0xc << 96 | 1));
    let mut cache = ExplainCache::<NoOvs>::new(Backend::Recorded, 1.0);
    cache.insert(e.clone());
    let pipe = Pipeline::new(cache);
    let mut table = FlowTable::default();
    let s = |packets, drops| FlowStats {
        packets,
        drops,
        ..Default::default()
    };
    table.snapshot([(known, s(5, 2)), (unknown, s(9, 0))]);
    let t = super::sinks::top::TopTables::build(&pipe.view(), &table, 0.0, SortKey::Packets, 10);
    assert_eq!(t.flows[0].key, RowKey::Flow(unknown));
    assert_eq!(t.flows[0].label, "(unexplained)");
    assert_eq!(t.flows[1].label, "ACL drop-9999");
    assert_eq!(
        t.flows[1].culprit.as_ref().map(|c| c.name.as_str()),
        Some("drop-9999")
    );
    let mut text = String::new();
    super::render::table::table(&mut text, "flows", &t.flows).unwrap();
    assert!(
        text.lines()
            .nth(3)
            .unwrap()
            .ends_with(&format!("ufid:{}", &known.to_string()[..8]))
    );
}
