//! ovs-vswitchd's unixctl JSON-RPC reply, as `Unixctl::call` decodes it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for reply in serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>() {
        let Ok(reply) = reply else { break };
        let _ = detrace::ovs::unixctl::decode_reply("fuzz", Path::new("fuzz.ctl"), &reply);
    }
});
