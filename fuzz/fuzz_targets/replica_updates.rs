//! A `<table-updates>` object through both appliers: the raw-text row applier (monitor replies)
//! and the tree one; both must agree on which rows exist.
#![no_main]

use detrace::{
    ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
    ovsdb::replica::Replica,
};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

/// The keys of a JSON object, in order (empty for anything else).
struct Keys<'de>(Vec<(std::borrow::Cow<'de, str>, &'de serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Keys<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Keys<'de>, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Keys(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// No object at the table or row level repeats a key.
fn unique_keys(raw: &serde_json::value::RawValue) -> bool {
    let Ok(tables) = serde_json::from_str::<Keys<'_>>(raw.get()) else {
        return true;
    };
    let distinct = |keys: &[(std::borrow::Cow<'_, str>, &serde_json::value::RawValue)]| {
        keys.iter().map(|(k, _)| k).collect::<BTreeSet<_>>().len() == keys.len()
    };
    distinct(&tables.0)
        && tables.0.iter().all(|(_, rows)| {
            serde_json::from_str::<Keys<'_>>(rows.get()).map_or(true, |r| distinct(&r.0))
        })
}

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
        // Duplicate keys (which OVSDB never sends) mean different things to a tree (the last
        // wins) and to a stream (each applies in turn): only unique keys are compared.
        if let (Ok(v), true) = (
            serde_json::from_str::<serde_json::Value>(raw.get()),
            unique_keys(raw),
        ) {
            let mut by_tree = Replica::new(db, specs);
            by_tree.apply_table_updates(&v);
            same(&by_text, &by_tree);
        }
    }
});
