//! Live tracing and replay: one pipeline, fed by a source (the kernel's probes, a recording),
//! into the sink of each view.
//!
//! - [`source`]: the seams to the kernel (per-flow counters, the event stream); [`kernel`]:
//!   the eBPF probes behind them; [`flowtable`]: per-flow counts from the kernel's flow table
//!   (no probe per packet); [`record`]: the recording format, read back as a source.
//! - [`pipeline`]: decode -> assemble -> explain (through [`explainer`], the cache of
//!   explanations) -> a [`pipeline::Sink`]; [`run`]: the live loop (ticks, reports, signals).
//! - [`sinks`]: watch, drops, top, record (and per-flow counters from packets), each
//!   rendering with [`render`] from resolved data; [`clock`]: kernel time and port names;
//!   [`upcall_loss`]: packets the datapath itself lost (upcalls ovs-vswitchd never took).

pub mod actions;
pub mod clock;
pub mod explainer;
pub mod flowtable;
pub mod kernel;
pub mod pipeline;
pub mod record;
pub mod render;
pub mod run;
pub mod select;
pub mod sinks;
pub mod source;
pub mod upcall_loss;

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests;
