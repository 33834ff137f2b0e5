//! A `<table-updates>` object through both appliers: the raw-text row applier (monitor replies)
//! and the tree one; both must agree on which rows exist.
#![no_main]

use detrace::{
    ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
    ovsdb::replica::Replica,
};
use libfuzzer_sys::fuzz_target;

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
        }
    }
});
