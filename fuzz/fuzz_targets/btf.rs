//! The BTF reader: a base blob alone, and a base + split pair (a module's BTF on vmlinux's).
//! The first 4 bytes choose where the input splits into base and split.
#![no_main]

use detrace::probes::btf::Btf;
use libfuzzer_sys::fuzz_target;

fn probe(btf: &Btf) {
    for (ty, path) in [
        ("sw_flow", "id"),
        ("sw_flow_key", "phy.in_port"),
        ("sw_flow_key", "ipv4.addr.src"),
        ("sk_buff", "len"),
    ] {
        let _ = btf.member(ty, path);
    }
    let _ = btf.split_func("ovs_dp_process_packet");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data.to_vec()) {
        probe(&btf);
    }
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let at = u32::from_le_bytes(*head) as usize % (rest.len() + 1);
    let (base, split) = rest.split_at(at);
    if let Ok(btf) = Btf::parse_split(base.to_vec(), split.to_vec()) {
        probe(&btf);
    }
});
