//! The kernel side as user space sees it, one concern per file:
//! - [`kernel`]: what this kernel offers (root, the openvswitch module, tracefs, kprobes);
//! - [`config`] and [`offsets`]: the load-time configuration, what to trace and the struct
//!   offsets read from [`btf`];
//! - [`hooks`]: the hooked openvswitch functions, attached by [`fentry`] where that works and
//!   as kprobes otherwise;
//! - [`maps`] and [`ring`]: reading what the probes count and send;
//! - [`loader`]: [`Probes`], which ties these together and detaches everything when dropped;
//! - [`error`]: what can go wrong, typed.
//!
//! Offsets policy: rustc emits no CO-RE relocations and aya relocates against vmlinux BTF only,
//! while the structs the probes read live in the openvswitch module. So every offset the probes
//! use comes from /sys/kernel/btf/openvswitch (split BTF on /sys/kernel/btf/vmlinux) through
//! [`btf`], and reaches the programs in `detrace_common::Config` (a load-time global). No
//! offset is hard-coded.

pub mod btf;
mod config;
mod error;
mod fentry;
mod hooks;
mod kernel;
pub mod loader;
mod maps;
mod object;
mod offsets;
mod phases;
mod ring;

pub use error::{FentryError, ProbeError};

/// Root and the openvswitch module, checked before anything else is asked (the daemons'
/// sockets are root's too: without this a live command would fail on them first, with a
/// message that does not say what is missing).
pub fn preflight() -> Result<(), ProbeError> {
    kernel::check_privileges()
}
pub use hooks::{AttachedHook, Attachment};
pub use loader::{EventReader, Filter, ProbeOptions, Probes, ProgramCost};
pub use maps::sum_stats;
pub use object::EBPF_OBJECT;
