//! Replica load and cookie resolution at scale, on a synthetic SB/NB shaped like OVN's.
//!
//!   cargo bench -p detrace-user --bench replica -- [N_LFLOWS ...]   (default 100000)
//!
//! Prints load time (JSON bytes -> indexed replica, as `monitor` delivers it), resident memory
//! added by the replica, and lookups per second: the prefix index next to a linear scan of the
//! same replica (the side-by-side ratio), and full resolution (SB row + stage-hint -> NB object).

use std::{hint::black_box, time::Instant};

use detrace::{
    ovn::{
        Resolver,
        schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
    },
    ovsdb::Replica,
    uuid::Uuid,
};
use serde_json::json;

/// Deterministic pseudo-random UUIDs (splitmix64), so runs are comparable.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uuid(&mut self) -> Uuid {
        Uuid((u128::from(self.next()) << 64) | u128::from(self.next()))
    }
}

mod common;

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

/// A `monitor` reply body for SB with `n` logical flows over 200 datapaths, one in 20 with a
/// stage-hint to one of `n / 20` NB ACLs; and the NB reply holding those ACLs.
fn synth(n: usize) -> (String, String, Vec<Uuid>) {
    let mut g = Gen(42);
    let dps: Vec<Uuid> = (0..200).map(|_| g.uuid()).collect();
    let acls: Vec<Uuid> = (0..(n / 20).max(1)).map(|_| g.uuid()).collect();
    let mut lflows = serde_json::Map::new();
    let mut cookies = Vec::with_capacity(n);
    for i in 0..n {
        let u = g.uuid();
        cookies.push(u);
        let mut ext = vec![
            json!(["source", "northd.c:1234"]),
            json!(["stage-name", "ls_in_acl"]),
        ];
        if i % 20 == 0 {
            ext.push(json!([
                "stage-hint",
                format!("{:08x}", acls[i / 20 % acls.len()].prefix32())
            ]));
        }
        lflows.insert(
            u.to_string(),
            json!({"new": {
                "logical_datapath": ["uuid", dps[i % dps.len()].to_string()],
                "logical_dp_group": ["set", []],
                "pipeline": if i % 2 == 0 { "ingress" } else { "egress" },
                "table_id": i % 30, "priority": 1000 + i % 1000,
                "match": format!("outport == \"lsp{}\" && ip4 && tcp.dst == {}", i % 5000, i % 65535),
                "actions": "reg0[1] = 1; next;",
                "external_ids": ["map", ext],
            }}),
        );
    }
    let mut dpb = serde_json::Map::new();
    for (i, d) in dps.iter().enumerate() {
        dpb.insert(d.to_string(), json!({"new": {"external_ids": ["map", [["name", format!("sw{i}")], ["logical-switch", g.uuid().to_string()]]], "tunnel_key": i + 1}}));
    }
    let sb = json!({"Logical_Flow": lflows, "Datapath_Binding": dpb});
    let mut acl_rows = serde_json::Map::new();
    for (i, a) in acls.iter().enumerate() {
        acl_rows.insert(a.to_string(), json!({"new": {"name": format!("acl{i}"), "direction": "to-lport", "priority": 1000, "match": format!("tcp.dst == {i}"), "action": "drop"}}));
    }
    let nb = json!({"ACL": acl_rows});
    (sb.to_string(), nb.to_string(), cookies)
}

/// As `monitor` delivers it: the reply's result arrives as raw JSON text and is applied row by
/// row, never built as one JSON tree.
fn load(db: &'static str, specs: &'static [detrace::ovsdb::TableSpec], text: &str) -> Replica {
    let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).expect("synthetic JSON");
    let mut r = Replica::new(db, specs);
    r.apply_table_updates_raw(&raw);
    assert_eq!(r.bad_rows, 0);
    r
}

fn bench(n: usize) {
    let (sb_json, nb_json, uuids) = synth(n);
    let live0 = common::reset_peak();
    let t = Instant::now();
    let sb = load(SB_DB, SB_TABLES, &sb_json);
    let nb = load(NB_DB, NB_TABLES, &nb_json);
    let load_s = t.elapsed().as_secs_f64();
    let kept = common::live().saturating_sub(live0);
    let peak = common::peak().saturating_sub(live0);
    drop((sb_json, nb_json));
    assert_eq!(sb.lflows.len(), n);

    let probes: Vec<u32> = uuids
        .iter()
        .step_by((n / 100_000).max(1))
        .map(|u| u.prefix32())
        .collect();
    let rounds = (10_000_000 / probes.len()).max(1);
    let t = Instant::now();
    let mut hits = 0usize;
    for _ in 0..rounds {
        for &p in &probes {
            hits += black_box(sb.by_prefix(p)).len();
        }
    }
    let idx_s = t.elapsed().as_secs_f64();
    let idx_rate = (rounds * probes.len()) as f64 / idx_s;
    assert!(hits >= rounds * probes.len());

    // The same question answered by scanning, as a tool without the index would.
    let scan_n = 20;
    let t = Instant::now();
    for &p in probes.iter().take(scan_n) {
        black_box(sb.lflows.keys().filter(|u| u.prefix32() == p).count());
    }
    let scan_rate = scan_n as f64 / t.elapsed().as_secs_f64();

    let res = Resolver { sb: &sb, nb: &nb };
    let full_n = probes.len().min(200_000);
    let t = Instant::now();
    let mut nb_found = 0usize;
    for &p in probes.iter().take(full_n) {
        let c = res.cookie(u64::from(p));
        nb_found += c.iter().map(|c| c.nb().len()).sum::<usize>();
    }
    let full_rate = full_n as f64 / t.elapsed().as_secs_f64();
    assert!(nb_found > 0);

    println!(
        "lflows={n:>8}  load={load_s:>6.2}s  replica={:>6.0}MiB ({:.0} B/lflow)  load-peak={:>6.0}MiB  index={:>6.1}M lookups/s  scan={:>8.1} lookups/s  ratio={:>9.0}x  full-resolve={:>6.0}k/s",
        kept as f64 / 1048576.0,
        kept as f64 / n as f64,
        peak as f64 / 1048576.0,
        idx_rate / 1e6,
        scan_rate,
        idx_rate / scan_rate,
        full_rate / 1e3
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    for n in if sizes.is_empty() {
        vec![100_000]
    } else {
        sizes
    } {
        bench(n);
    }
}
