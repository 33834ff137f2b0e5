//! Upcalls the datapath loses: a miss whose packet the kernel could not hand to ovs-vswitchd
//! (its netlink socket full, or no handler socket for the CPU: OVS 3.1.0 in per-CPU dispatch
//! mode started early in boot, docs/lab.md) is dropped before anything, detrace included,
//! explains it. The kernel counts them per datapath (`lookups: lost` of `ovs-dpctl show`);
//! detrace reads that counter over netlink and reports what was lost while it ran, so that a
//! user does not take the datapath's loss of every new flow's first packet for detrace's.

use std::time::{Duration, Instant};

use crate::{
    FastMap,
    ovs::netlink::{DatapathStats, FlowTable},
};

/// Per datapath (by name): the counter when first seen and the last value read.
#[derive(Debug, Default)]
pub struct LostSince {
    seen: FastMap<String, (u64, u64)>,
    /// Lost by datapaths that went away or were re-created (their counter restarted).
    retired: u64,
    started: bool,
}

impl LostSince {
    /// Takes a new reading; returns the upcalls lost since the first one. Datapaths present
    /// at the first reading count from there; one created later counts from zero; a counter
    /// that went down (datapath re-created) keeps what it had lost and starts again.
    pub fn update(&mut self, dps: &[DatapathStats]) -> u64 {
        for d in dps {
            let first = !self.started;
            let (base, last) = self.seen.entry(d.name.clone()).or_insert(if first {
                (d.lost, d.lost)
            } else {
                (0, 0)
            });
            if d.lost < *last {
                self.retired += *last - *base;
                *base = 0;
            }
            *last = d.lost;
        }
        self.started = true;
        self.total()
    }

    pub fn total(&self) -> u64 {
        self.retired
            + self
                .seen
                .values()
                .map(|(base, last)| last - base)
                .sum::<u64>()
    }
}

/// The kernel's datapaths read over their own netlink socket.
pub struct UpcallLoss {
    table: FlowTable,
    lost: LostSince,
    failed: bool,
}

impl UpcallLoss {
    /// None when generic netlink cannot reach the datapath family (said at debug level: the
    /// probes, which need the module, say more).
    pub fn open() -> Option<Self> {
        match FlowTable::open() {
            Ok(table) => {
                let mut u = Self {
                    table,
                    lost: LostSince::default(),
                    failed: false,
                };
                u.read();
                Some(u)
            }
            Err(e) => {
                tracing::debug!("datapath lookup counters not read: {e}");
                None
            }
        }
    }

    /// Upcalls lost since the first reading (the last known total if this read fails: said
    /// once on stderr).
    pub fn read(&mut self) -> u64 {
        match self.table.datapath_stats() {
            Ok(dps) => {
                self.failed = false;
                self.lost.update(&dps)
            }
            Err(e) => {
                if !self.failed {
                    eprintln!("detrace: reading the datapath's lookup counters: {e}");
                    self.failed = true;
                }
                self.lost.total()
            }
        }
    }
}

/// Says on stderr when the datapath loses upcalls: at most every `every`, with what was lost
/// since the last warning.
pub struct LossWarning {
    said: u64,
    at: Option<Instant>,
    every: Duration,
}

impl LossWarning {
    pub fn new(every: Duration) -> Self {
        Self {
            said: 0,
            at: None,
            every,
        }
    }

    /// The warning to print now for a total of `lost`, if any.
    pub fn check(&mut self, lost: u64, now: Instant) -> Option<String> {
        if lost <= self.said || self.at.is_some_and(|at| now < at + self.every) {
            return None;
        }
        let msg = format!(
            "detrace: the kernel datapath lost {} upcalls ({} since detrace started; \
             `ovs-dpctl show`: lookups lost): those packets were dropped before ovs-vswitchd, \
             or detrace, saw them. ovs-vswitchd is not taking its upcalls (stopped, overloaded, \
             or an OVS 3.1.0 in per-CPU dispatch mode started in the first seconds of boot, \
             whose handlers never came up: `ovs-vswitchd` logs \"Overriding n-handler-threads \
             to 0\"; restarting it helps)",
            lost - self.said,
            lost
        );
        self.said = lost;
        self.at = Some(now);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp(name: &str, lost: u64) -> DatapathStats {
        DatapathStats {
            name: name.into(),
            lost,
            ..DatapathStats::default()
        }
    }

    #[test]
    fn counts_from_the_first_reading_across_recreation() {
        let mut l = LostSince::default();
        assert_eq!(l.update(&[dp("ovs-system", 36)]), 0);
        assert_eq!(l.update(&[dp("ovs-system", 40)]), 4);
        // A datapath created later counts all its losses.
        assert_eq!(l.update(&[dp("ovs-system", 40), dp("ovs-netdev", 3)]), 7);
        // Re-created (counter restarts): the 4 stay, the new counter counts from zero.
        assert_eq!(l.update(&[dp("ovs-system", 2), dp("ovs-netdev", 3)]), 9);
        // Gone: what it lost stays counted.
        assert_eq!(l.update(&[dp("ovs-system", 5)]), 12);
    }

    #[test]
    fn warns_on_growth_at_most_every_period() {
        let mut w = LossWarning::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.check(0, t0), None);
        let first = w.check(12, t0).expect("a warning");
        assert!(first.contains("lost 12 upcalls (12 since"), "{first}");
        assert_eq!(w.check(20, t0 + Duration::from_secs(3)), None);
        let next = w
            .check(20, t0 + Duration::from_secs(11))
            .expect("a warning");
        assert!(next.contains("lost 8 upcalls (20 since"), "{next}");
        assert_eq!(w.check(20, t0 + Duration::from_secs(30)), None);
    }
}
