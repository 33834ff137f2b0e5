//! Test helpers: the fixtures captured from real OVS/OVN runs (tests/fixtures).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use serde_json::Value;

use crate::ovsdb::{Replica, TableSpec};

fn path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

/// A fixture file as captured.
pub fn fixture_raw(rel: &str) -> String {
    let p = path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A captured command output without the `# command` header lines OVS did not print.
pub fn fixture(rel: &str) -> String {
    fixture_raw(rel)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn fixture_json(rel: &str) -> Value {
    serde_json::from_str(&fixture_raw(rel)).unwrap()
}

/// A replica loaded from a captured `monitor` reply; every row must apply.
pub fn replica(db: &'static str, specs: &'static [TableSpec], rel: &str) -> Replica {
    let mut r = Replica::new(db, specs);
    r.apply_table_updates(&fixture_json(rel)["result"]);
    assert_eq!(r.bad_rows, 0, "{:?}", r.last_bad_row);
    r
}
