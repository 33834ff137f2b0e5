//! The seams between the live commands and the kernel: the per-flow counters and the event
//! stream. The eBPF probes implement them; tests and replays use their own.

use std::{collections::BTreeSet, net::IpAddr};

use detrace_common::{COUNTER_SLOTS, COUNTERS, Counter, Event, FlowStats};

use crate::uuid::Uuid;
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{IgnoredAny, MapAccess, Visitor},
    ser::SerializeStruct as _,
};

/// Kernel-side aggregates.
pub trait Tracer {
    /// Cumulative per-UFID stats, summed over CPUs. A flow due to retire does so only if
    /// `may_retire` says so (not while its explanation waits in the queue).
    fn flow_stats(
        &self,
        may_retire: &dyn Fn(&Uuid) -> bool,
    ) -> anyhow::Result<Vec<([u32; 4], FlowStats)>>;
    /// Flows retired since the last call (gone from the kernel's table for a while; see
    /// live::flowtable): their last stats, given once. They are absent from later
    /// [`Self::flow_stats`]; a UFID that comes back counts from zero.
    fn take_retired(&self) -> Vec<([u32; 4], FlowStats)> {
        Vec::new()
    }
    /// UFIDs whose datapath actions changed in place since the last call (per-packet
    /// counting: their explanations are to be made again; counting from the flow table splits
    /// such flows itself, through [`Self::take_retired`]). Asked once a second.
    fn actions_changed(&self) -> Vec<Uuid> {
        Vec::new()
    }
    /// Cumulative counters (indexed by [`Counter`]), summed over CPUs.
    fn counters(&self) -> anyhow::Result<[u64; COUNTER_SLOTS as usize]>;
    /// Replaces the addresses of the kernel's address-set filter (`--pod`, `--namespace`).
    fn set_filter_addrs(&self, addrs: &BTreeSet<IpAddr>) -> anyhow::Result<()>;
    /// The kernel module the probes are on has gone (unloaded under them: possible with
    /// kprobes; fentry holds a reference that keeps it loaded). Checked once a second.
    fn module_gone(&self) -> bool {
        false
    }
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

/// The counters a user must see to trust the output: what was lost, and where. Every
/// [`Counter`], serialized under its wire name from [`COUNTERS`] (in recordings: one field
/// per counter; a counter absent from an older recording reads as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossReport {
    counts: [u64; COUNTER_SLOTS as usize],
}

impl LossReport {
    pub fn from_counters(c: &[u64; COUNTER_SLOTS as usize]) -> Self {
        Self { counts: *c }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counts[c as usize]
    }

    /// (wire name, value) of every counter, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        COUNTERS.iter().map(|i| (i.name, self.get(i.counter)))
    }

    /// One line for stderr; says loudly when anything was lost.
    pub fn line(&self) -> String {
        let mut s = if self.get(Counter::Passes) == 0 && self.get(Counter::Hits) > 0 {
            // Counted from the kernel's flow table: no probe saw passes, upcalls or outputs.
            format!(
                "kernel: flow table: {} hits, {} drops ({} by no flow's action), {} flows \
                 removed",
                self.get(Counter::Hits),
                self.get(Counter::Drops),
                self.get(Counter::DropsNoFlow),
                self.get(Counter::FlowsRemoved)
            )
        } else {
            format!(
                "kernel: {} passes, {} hits, {} upcalls, {} drops, {} outputs",
                self.get(Counter::Passes),
                self.get(Counter::Hits),
                self.get(Counter::Upcalls),
                self.get(Counter::Drops),
                self.get(Counter::Outputs)
            )
        };
        if self.get(Counter::DatapathLost) > 0 {
            s.push_str(&format!(
                "; the DATAPATH LOST {} upcalls (dropped before ovs-vswitchd or detrace saw \
                 them: see `ovs-dpctl show`, lookups lost)",
                self.get(Counter::DatapathLost)
            ));
        }
        if self.get(Counter::LatencySample) > 0 {
            s.push_str(&format!(
                "; latency sampled: 1 packet in {}",
                self.get(Counter::LatencySample)
            ));
        }
        if self.get(Counter::FlowsRetired) > 0 {
            s.push_str(&format!(
                "; {} flows retired (gone from the table: counted in their objects' totals)",
                self.get(Counter::FlowsRetired)
            ));
        }
        if self.get(Counter::FlowsChanged) > 0 {
            s.push_str(&format!(
                "; {} flows changed actions in place (counted apart before and after)",
                self.get(Counter::FlowsChanged)
            ));
        }
        if self.get(Counter::RemovedStatsFull) > 0 {
            s.push_str(&format!(
                "; {} removed flows NOT counted (REMOVED_STATS full)",
                self.get(Counter::RemovedStatsFull)
            ));
        }
        if self.get(Counter::Executes) > 0 || self.get(Counter::DropsAfterUpcall) > 0 {
            s.push_str(&format!(
                "; after upcalls: {} executes ({} without an install before them: not \
                 followed), {} drops",
                self.get(Counter::Executes),
                self.get(Counter::ExecutesWithoutPut),
                self.get(Counter::DropsAfterUpcall)
            ));
        }
        s.push_str(&format!("; events: {} sent", self.get(Counter::EventsSent)));
        if self.get(Counter::EventsLost) > 0 {
            s.push_str(&format!(
                ", {} LOST (ring buffer full: raise --ring-size or narrow the filters)",
                self.get(Counter::EventsLost)
            ));
        }
        if self.get(Counter::EventsRateLimited) > 0 {
            s.push_str(&format!(
                ", {} not sent (over --rate-limit)",
                self.get(Counter::EventsRateLimited)
            ));
        }
        if self.get(Counter::ProbeErrors) > 0 {
            s.push_str(&format!(
                "; {} probe read errors",
                self.get(Counter::ProbeErrors)
            ));
        }
        if self.get(Counter::FlowStatsFull) > 0 {
            s.push_str(&format!(
                "; {} flow updates not counted (per-flow map full or out of memory)",
                self.get(Counter::FlowStatsFull)
            ));
        }
        if self.get(Counter::InflightReplaced) > 0 {
            s.push_str(&format!(
                "; {} packets' in-flight state taken over by a later packet (they left the \
                 datapath without an output or drop the probes see, or collided in the \
                 per-CPU table)",
                self.get(Counter::InflightReplaced)
            ));
        }
        s
    }
}

impl Serialize for LossReport {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut s = ser.serialize_struct("LossReport", COUNTERS.len())?;
        for (name, v) in self.iter() {
            s.serialize_field(name, &v)?;
        }
        s.end()
    }
}

impl<'de> Deserialize<'de> for LossReport {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LossReport;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of kernel counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LossReport, A::Error> {
                let mut r = LossReport::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match COUNTERS.iter().find(|i| i.name == key) {
                        Some(i) => r.counts[i.counter as usize] = map.next_value()?,
                        // Unknown fields are skipped, as serde's derive does.
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        de.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of recordings: every counter under its name, in slot order, and back.
    #[test]
    fn loss_report_json_round_trips() {
        let mut c = [0u64; COUNTER_SLOTS as usize];
        for (i, v) in c.iter_mut().enumerate() {
            *v = i as u64 * 10;
        }
        let r = LossReport::from_counters(&c);
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(
            json.starts_with(r#"{"passes":0,"hits":10,"upcalls":20,"drops":30,"outputs":40,"#),
            "{json}"
        );
        assert!(
            json.ends_with(
                r#""datapath_upcalls_lost":190,"flows_retired":200,"flows_changed":210}"#
            ),
            "{json}"
        );
        let back: LossReport = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, r);
        // An older recording: later counters absent, unknown fields skipped.
        let old: LossReport =
            serde_json::from_str(r#"{"passes":3,"events_lost":2,"future":{"x":1}}"#)
                .unwrap_or_default();
        assert_eq!(
            (old.get(Counter::Passes), old.get(Counter::EventsLost)),
            (3, 2)
        );
        assert_eq!(old.get(Counter::Executes), 0);
    }
}
