//! `ofproto/detrace` and `ofproto/trace` text.
#![no_main]

use detrace::ovs::ofrule::{parse_detrace, parse_trace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_detrace(&text);
    let _ = parse_trace(&text);
});
