//! The seams between the live commands and the kernel: the per-flow counters and the event
//! stream. The eBPF probes implement them; tests and replays use their own.

use detrace_common::{COUNTER_SLOTS, Counter, Event, FlowStats};

/// Kernel-side aggregates.
pub trait Tracer {
    /// Cumulative per-UFID stats, summed over CPUs.
    fn flow_stats(&self) -> anyhow::Result<Vec<([u32; 4], FlowStats)>>;
    /// Cumulative counters (indexed by [`Counter`]), summed over CPUs.
    fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]>;
}

/// Per-packet events.
#[allow(
    async_fn_in_trait,
    reason = "used with concrete types only, on one thread"
)]
pub trait EventSource {
    /// Waits for events and appends every one available.
    async fn read_batch(&mut self, out: &mut Vec<Event>) -> std::io::Result<()>;
    /// Records that were not a whole [`Event`] (counted, never decoded).
    fn malformed(&self) -> u64;
}

/// The counters a user must see to trust the output: what was lost, and where.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LossReport {
    pub passes: u64,
    pub hits: u64,
    pub upcalls: u64,
    pub drops: u64,
    pub outputs: u64,
    pub events_sent: u64,
    pub events_lost: u64,
    pub events_rate_limited: u64,
    pub probe_errors: u64,
    pub flow_stats_full: u64,
    /// Absent from recordings made before the counter existed.
    #[serde(default)]
    pub inflight_replaced: u64,
    /// After an upcall (absent from older recordings): flows installed, packets executed by
    /// ovs-vswitchd, executes with no install before them (not followed), and drops of
    /// executed packets (of `drops`).
    #[serde(default)]
    pub flow_inserts: u64,
    #[serde(default)]
    pub executes: u64,
    #[serde(default)]
    pub executes_without_put: u64,
    #[serde(default)]
    pub drops_after_upcall: u64,
}

impl LossReport {
    pub fn from_counters(c: &[u64; COUNTER_SLOTS as usize]) -> Self {
        let g = |k: Counter| c[k as usize];
        Self {
            passes: g(Counter::Passes),
            hits: g(Counter::Hits),
            upcalls: g(Counter::Upcalls),
            drops: g(Counter::Drops),
            outputs: g(Counter::Outputs),
            events_sent: g(Counter::EventsSent),
            events_lost: g(Counter::EventsLost),
            events_rate_limited: g(Counter::EventsRateLimited),
            probe_errors: g(Counter::ProbeErrors),
            flow_stats_full: g(Counter::FlowStatsFull),
            inflight_replaced: g(Counter::InflightReplaced),
            flow_inserts: g(Counter::FlowInserts),
            executes: g(Counter::Executes),
            executes_without_put: g(Counter::ExecutesWithoutPut),
            drops_after_upcall: g(Counter::DropsAfterUpcall),
        }
    }

    /// One line for stderr; says loudly when anything was lost.
    pub fn line(&self) -> String {
        let mut s = format!(
            "kernel: {} passes, {} hits, {} upcalls, {} drops, {} outputs",
            self.passes, self.hits, self.upcalls, self.drops, self.outputs
        );
        if self.executes > 0 || self.drops_after_upcall > 0 {
            s.push_str(&format!(
                "; after upcalls: {} executes ({} without an install before them: not \
                 followed), {} drops",
                self.executes, self.executes_without_put, self.drops_after_upcall
            ));
        }
        s.push_str(&format!("; events: {} sent", self.events_sent));
        if self.events_lost > 0 {
            s.push_str(&format!(
                ", {} LOST (ring buffer full: raise --ring-size or narrow the filters)",
                self.events_lost
            ));
        }
        if self.events_rate_limited > 0 {
            s.push_str(&format!(
                ", {} not sent (over --rate-limit)",
                self.events_rate_limited
            ));
        }
        if self.probe_errors > 0 {
            s.push_str(&format!("; {} probe read errors", self.probe_errors));
        }
        if self.flow_stats_full > 0 {
            s.push_str(&format!(
                "; {} flow updates not counted (flow table full)",
                self.flow_stats_full
            ));
        }
        if self.inflight_replaced > 0 {
            s.push_str(&format!(
                "; {} packets' in-flight state taken over by a later packet (they left the \
                 datapath without an output or drop the probes see, or collided in the \
                 per-CPU table)",
                self.inflight_replaced
            ));
        }
        s
    }
}
