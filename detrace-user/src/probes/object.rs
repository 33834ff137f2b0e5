//! The embedded eBPF object (a leaf: the loader and the hook table both read it).

/// detrace-ebpf, compiled for bpfel-unknown-none by aya-build, aligned for aya's ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrace"));
