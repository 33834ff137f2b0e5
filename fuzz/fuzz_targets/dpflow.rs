//! `dpctl/dump-flows` / `dpctl/get-flow` text.
#![no_main]

use detrace::ovs::dpflow::DpFlow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (flows, _errors) = DpFlow::parse_dump(&text);
    for f in &flows {
        let _ = (f.recirc_id(), f.in_port(), f.match_compact());
    }
});
