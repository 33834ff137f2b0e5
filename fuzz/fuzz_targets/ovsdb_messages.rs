//! A stream of OVSDB JSON-RPC messages as `Connection` reads them, each applied to the
//! Southbound and Northbound replicas the way `ovn::sync` does; schemas and remotes too.
#![no_main]

use detrace::{
    ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
    ovsdb::{
        jsonrpc::{Message, Remote, schema_tables},
        replica::Replica,
    },
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sb = Replica::new(SB_DB, SB_TABLES);
    let mut nb = Replica::new(NB_DB, NB_TABLES);
    for msg in serde_json::Deserializer::from_slice(data).into_iter::<Message>() {
        let Ok(msg) = msg else { break };
        sb.apply_notification(&msg);
        nb.apply_notification(&msg);
        if let Some(result) = &msg.result {
            sb.apply_table_updates_raw(result);
            nb.apply_table_updates_raw(result);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(result.get()) {
                let _ = schema_tables(&v);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Remote::parse_list(s);
    }
});
