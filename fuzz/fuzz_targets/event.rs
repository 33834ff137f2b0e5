//! A ring-buffer record as the probes' reader hands it over: any length through
//! `decode_bytes`, and the first `size_of::<Event>()` bytes as a well-sized record.
#![no_main]

use detrace::events::{PacketEvent, drop_reason};
use detrace_common::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = PacketEvent::decode_bytes(data);
    if let Some(record) = data.get(..size_of::<Event>())
        && let Ok(e) = PacketEvent::decode_bytes(record)
    {
        let _ = (e.packet.proto_name(), drop_reason(e.reason));
        let _ = serde_json::to_string(&e);
    }
});
