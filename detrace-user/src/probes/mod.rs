//! The kernel side as user space sees it: the embedded eBPF object, the struct offsets it needs
//! (read from BTF at load time), and the loader that attaches it and reads its maps.
//!
//! Offsets policy: rustc emits no CO-RE relocations and aya relocates against vmlinux BTF only,
//! while the structs the probes read live in the openvswitch module. So every offset the probes
//! use comes from /sys/kernel/btf/openvswitch (split BTF on /sys/kernel/btf/vmlinux) through
//! [`btf`], and reaches the programs in `detrace_common::Config` (a load-time global). No
//! offset is hard-coded.

pub mod btf;
mod fentry;
pub mod loader;
mod offsets;

pub use loader::{EventReader, Filter, ProbeError, ProbeOptions, Probes};

/// detrace-ebpf, compiled for bpfel-unknown-none by aya-build, aligned for aya's ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detrace"));
