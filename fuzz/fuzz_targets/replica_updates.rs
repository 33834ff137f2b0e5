//! A `<table-updates>` object through both appliers: the raw-text row applier (monitor replies)
//! and the tree one; both must agree on which rows exist.
#![no_main]

use detrace::{
    ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
    ovsdb::replica::Replica,
};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

/// Both appliers keep the same rows with the same values, and count the same bad rows.
fn same(a: &Replica, b: &Replica) {
    assert_eq!(a.bad_rows, b.bad_rows, "bad rows: {:?} vs {:?}", a.last_bad_row, b.last_bad_row);
    let lflows = |r: &Replica| r.lflows.keys().copied().collect::<BTreeSet<_>>();
    assert_eq!(lflows(a), lflows(b), "logical flows");
    for t in a.tables.keys().chain(b.tables.keys()) {
        let rows = |r: &Replica| {
            r.rows(t)
                .map(|(u, row)| (*u, format!("{:?}", row.cols)))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(rows(a), rows(b), "table {t}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<&serde_json::value::RawValue>(data) else {
        return;
    };
    for (db, specs) in [(SB_DB, SB_TABLES), (NB_DB, NB_TABLES)] {
        let mut by_text = Replica::new(db, specs);
        by_text.apply_table_updates_raw(raw);
        for spec in specs {
            for (uuid, _) in by_text.rows(spec.name) {
                let _ = by_text.by_prefix(uuid.prefix32());
            }
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw.get()) {
            let mut by_tree = Replica::new(db, specs);
            by_tree.apply_table_updates(&v);
            same(&by_text, &by_tree);
        }
    }
});
