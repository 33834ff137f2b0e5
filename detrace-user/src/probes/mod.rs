//! The eBPF side as user space sees it: the object built by build.rs and embedded here.

/// detrace-ebpf, compiled for bpfel-unknown-none by aya-build, aligned for aya's ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrace"));
