//! `detrace probes`: what eBPF the binary carries (no privileges needed).

use anyhow::Context as _;

pub fn run() -> anyhow::Result<()> {
    let obj = aya_obj::Object::parse(crate::probes::EBPF_OBJECT)
        .context("parsing the embedded eBPF object")?;
    let mut progs: Vec<_> = obj
        .programs
        .iter()
        .map(|(name, p)| format!("{name} ({:?})", p.section))
        .collect();
    progs.sort();
    let mut maps: Vec<_> = obj.maps.keys().cloned().collect();
    maps.sort();
    println!("eBPF object: {} bytes", crate::probes::EBPF_OBJECT.len());
    for p in progs {
        println!("program {p}");
    }
    for m in maps {
        println!("map {m}");
    }
    Ok(())
}
