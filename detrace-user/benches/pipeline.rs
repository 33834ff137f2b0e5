//! User-space pipeline throughput on one core: raw ring-buffer records -> size-checked copy
//! into `Event`s (as the ring-buffer reader does) -> the live pipeline (`live::pipeline`:
//! decode -> path assembly across recirculations -> the explain stage) -> a sink that looks
//! every pass's explanation up (as watch and record do) and one that aggregates per flow.
//!
//!   cargo bench -p detrace-user --bench pipeline -- [N_FLOWS] [N_EVENTS]   (default 100000 5000000)
//!
//! The synthetic stream is shaped like the lab's traffic: packets of 1 to 3 passes (conntrack
//! recirculations), 5% dropped, the rest output; flows drawn from N_FLOWS UFIDs with a skewed
//! (hot/cold) distribution; up to 64 packets in flight at once, interleaved.

use std::{hint::black_box, time::Instant};

use detrace::{
    events::path::PacketTrace,
    explain::{FlowSummary, culprit::Culprit},
    live::{
        explainer::{Backend, ExplainCache, Explained, LookupRef},
        pipeline::{Needs, Pipeline, Sink, Tee, View},
        sinks::flows::FlowSink,
    },
    ovs::unixctl::UnixctlClient,
    uuid::Uuid,
};
use detrace_common::{Event, EventKind, PacketKey};

mod common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn ufid_words(i: u64) -> [u32; 4] {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    [(h >> 32) as u32, h as u32, i as u32, 0x5eed]
}

fn as_bytes(e: &Event) -> Vec<u8> {
    // SAFETY: Event is repr(C) plain integers; viewing it as bytes is sound.
    unsafe {
        std::slice::from_raw_parts(
            (e as *const Event).cast::<u8>(),
            std::mem::size_of::<Event>(),
        )
    }
    .to_vec()
}

/// Serialized records, as the ring buffer hands them over.
fn stream(n_flows: u64, n_events: usize) -> Vec<Vec<u8>> {
    let mut r = Rng(0x1234_5678);
    let mut out = Vec::with_capacity(n_events);
    let mut ts = 1_000_000u64;
    let mut key = PacketKey {
        ip_version: 4,
        proto: 6,
        eth_type: 0x0800,
        sport: 40000,
        dport: 80,
        ..Default::default()
    };
    key.src[..4].copy_from_slice(&[10, 244, 1, 4]);
    key.dst[..4].copy_from_slice(&[10, 244, 1, 42]);
    // Packets in flight: (skb, passes left, flow).
    let mut flight: Vec<(u64, u32, u64)> = Vec::new();
    let mut next_skb = 0xffff_8880_0000_0000u64;
    while out.len() < n_events {
        if flight.len() < 64 {
            // Hot/cold: 80% of packets on 20% of the flows.
            let f = if r.next() % 10 < 8 {
                r.next() % (n_flows / 5).max(1)
            } else {
                r.next() % n_flows
            };
            next_skb += 256;
            flight.push((next_skb, 1 + (r.next() % 3) as u32, f));
        }
        let i = (r.next() as usize) % flight.len();
        let (skb, left, f) = flight[i];
        ts += 50;
        let depth = 3 - left.min(3);
        let pass = Event {
            kind: EventKind::Pass as u32,
            skb,
            ts_ns: ts,
            ufid: ufid_words(f * 3 + u64::from(depth)),
            recirc_id: depth * 0x10,
            in_port: 3,
            len: 74,
            key,
            ..Default::default()
        };
        out.push(as_bytes(&pass));
        if left == 1 {
            let dropped = r.next().is_multiple_of(20);
            let end = Event {
                kind: if dropped {
                    EventKind::Drop
                } else {
                    EventKind::Output
                } as u32,
                skb,
                ts_ns: ts + 10,
                ufid: pass.ufid,
                reason: if dropped { 0x30003 } else { 5 },
                latency_ns: 5_000,
                len: 74,
                key,
                ..Default::default()
            };
            out.push(as_bytes(&end));
            flight.swap_remove(i);
        } else {
            flight[i].1 -= 1;
        }
    }
    out
}

fn summary(u: Uuid) -> Explained {
    Explained {
        summary: FlowSummary {
            ufid: u,
            datapath: "system@ovs-system".into(),
            match_compact:
                "recirc_id(0),in_port(3),eth_type(0x0800),ipv4(dst=10.244.1.42,proto=6),tcp(dst=80)"
                    .into(),
            actions: "ct(zone=2,nat),recirc(0x25)".into(),
            label: "LB lb0, LSP client".into(),
            objects: Vec::new(),
            stages: vec!["ls_in_lb".into()],
            drop_culprit: Culprit {
                kind: detrace::explain::culprit::CulpritKind::Acl,
                id: u.to_string(),
                name: "drop-9999".into(),
                detail: String::new(),
                nb_table: Some("ACL".into()),
                datapath: None,
                flow_desc: None,
                platform: None,
            },
            details: Vec::new(),
            rules_error: None,
        },
        full: serde_json::Value::Null,
        summary_json: Default::default(),
    }
}

/// Records per batch, as one ring-buffer wake-up drains them.
const BATCH: usize = 1024;

/// Reads every pass's explanation when its packet ends, as watch and record do.
#[derive(Default)]
struct Explanations {
    explained: u64,
}

impl Sink<UnixctlClient> for Explanations {
    fn needs(&self) -> Needs {
        Needs {
            passes: true,
            ..Needs::default()
        }
    }
    #[inline]
    fn packet(&mut self, view: &View<'_, UnixctlClient>, t: &PacketTrace) -> std::io::Result<()> {
        for p in &t.passes {
            if let LookupRef::Explained(e) = view.peek(&p.ufid) {
                self.explained += black_box(e.summary.label.len() as u64).min(1);
            }
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_flows = args.first().copied().unwrap_or(100_000);
    let n_events = args.get(1).copied().unwrap_or(5_000_000) as usize;
    let records = stream(n_flows, n_events);

    let live0 = common::live();
    let mut cache = ExplainCache::<UnixctlClient>::new(Backend::Recorded, 1.0);
    for f in 0..n_flows * 3 {
        cache.insert(summary(Uuid::from_words(ufid_words(f))));
    }
    let cache_bytes = common::live() - live0;

    let mut pipe = Pipeline::new(cache);
    let mut sink = Tee(Explanations::default(), FlowSink::default());
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let live1 = common::live();
    let t = Instant::now();
    for chunk in records.chunks(BATCH) {
        // What the ring-buffer reader hands over: whole records, copied out unaligned.
        batch.extend(
            chunk
                .iter()
                .filter(|r| r.len() == std::mem::size_of::<Event>())
                // SAFETY: the record is exactly one Event of plain integers; read_unaligned
                // copies it out whatever its alignment.
                .map(|r| unsafe { std::ptr::read_unaligned(r.as_ptr().cast::<Event>()) }),
        );
        pipe.ingest(&batch, &mut sink)
            .expect("in-memory sinks do not fail");
        batch.clear();
    }
    let secs = t.elapsed().as_secs_f64();
    let table_bytes = common::live().saturating_sub(live1);
    let (Explanations { explained }, FlowSink { table }) = (&sink.0, &sink.1);
    assert_eq!(pipe.decode_errors, 0);
    assert!(*explained > 0);
    println!(
        "events={n_events} flows={} packets={} secs={secs:.2} rate={:.2}M events/s (one core)  memory: explanations {:.0} MiB ({:.0} B/flow), flow table {:.0} MiB ({:.0} B/flow), in-flight bound 65536 packets",
        table.flows.len(),
        pipe.asm.stats.traces,
        n_events as f64 / secs / 1e6,
        cache_bytes as f64 / 1048576.0,
        cache_bytes as f64 / (n_flows * 3) as f64,
        table_bytes as f64 / 1048576.0,
        table_bytes as f64 / table.flows.len().max(1) as f64,
    );
    // Freeing the 300k explanations takes longer than the run: leave it to the exit (and out
    // of a profile of the run).
    std::process::exit(0);
}
