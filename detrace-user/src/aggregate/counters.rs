//! Compact per-flow counters for the user-side flow table: one 64-byte cache line per UFID
//! instead of the kernel's 424-byte [`FlowStats`].
//!
//! What a flow needs on every pass (packets, bytes) and at a packet's end (outputs, drops, the
//! latency sum, one latency bucket, one drop reason) sits inline. A flow's latencies usually fall
//! in a few log2 buckets and its drops have one reason, so the histogram keeps up to
//! [`INLINE_BUCKETS`] (bucket, u32 count) pairs and one drop-reason slot inline; a flow that needs
//! more (a fourth bucket, a second reason, a count past `u32::MAX`) moves its histogram and
//! reasons to a boxed [`FlowStats`]-sized side part, exact in u64 as the kernel keeps them.
//! Conversions to and from [`FlowStats`] are lossless.

use detrace_common::{
    DROP_REASON_SLOTS, FlowStats, LATENCY_BUCKETS, drop_reason_slot, latency_bucket,
};

use crate::events::Verdict;

/// Latency buckets kept inline before spilling.
pub const INLINE_BUCKETS: usize = 3;
const EMPTY: u8 = u8::MAX;

/// The full histogram and drop reasons, for the flows that outgrow the inline part.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Spill {
    drop_reasons: [u64; DROP_REASON_SLOTS],
    latency: [u64; LATENCY_BUCKETS],
    /// Of the drops, those after an upcall ([`FlowStats::drops_after_upcall`]): no room in the
    /// 64 inline bytes, and only flows that dropped a packet executed after its upcall have any.
    drops_after_upcall: u64,
}

/// One flow's counters (64 bytes; a boxed 392-byte side part only for flows whose latencies
/// span more than [`INLINE_BUCKETS`] log2 buckets, whose drops have more than one reason, or
/// that dropped packets after an upcall).
#[derive(Clone, Debug)]
pub struct FlowCounters {
    /// Passes that hit this flow.
    pub packets: u64,
    pub bytes: u64,
    /// Packets whose last flow this was, by fate.
    pub outputs: u64,
    pub drops: u64,
    pub latency_sum_ns: u64,
    /// Inline histogram: `lat_count[i]` packets in log2 bucket `lat_bucket[i]` (EMPTY: unused).
    lat_count: [u32; INLINE_BUCKETS],
    lat_bucket: [u8; INLINE_BUCKETS],
    /// Inline drop reasons: every one of `drops` has this slot (EMPTY: none recorded).
    reason: u8,
    spill: Option<Box<Spill>>,
}

const _: () = assert!(std::mem::size_of::<FlowCounters>() == 64);

impl Default for FlowCounters {
    fn default() -> Self {
        Self {
            packets: 0,
            bytes: 0,
            outputs: 0,
            drops: 0,
            latency_sum_ns: 0,
            lat_count: [0; INLINE_BUCKETS],
            lat_bucket: [EMPTY; INLINE_BUCKETS],
            reason: EMPTY,
            spill: None,
        }
    }
}

impl PartialEq for FlowCounters {
    /// Equal counts, whichever representation holds them.
    fn eq(&self, other: &Self) -> bool {
        self.to_stats() == other.to_stats()
    }
}

impl FlowCounters {
    /// A pass of a packet of `len` bytes hit this flow.
    #[inline]
    pub fn add_pass(&mut self, len: u32) {
        self.packets += 1;
        self.bytes += u64::from(len);
    }

    /// Records a packet's fate after this flow (its last), as the kernel does; `after_upcall`:
    /// the packet was executed by ovs-vswitchd with this flow's actions after its upcall.
    #[inline]
    pub fn record_end(&mut self, v: &Verdict, latency_ns: u64, after_upcall: bool) {
        match v {
            Verdict::Drop { reason, .. } => {
                // Spilled before the reason is added: the inline reason stands for `drops`.
                if after_upcall && self.spill.is_none() {
                    self.spill_out();
                }
                self.add_reason(drop_reason_slot(*reason));
                if after_upcall && let Some(s) = &mut self.spill {
                    s.drops_after_upcall += 1;
                }
                self.drops += 1;
            }
            Verdict::Output { .. } => self.outputs += 1,
            _ => return,
        }
        self.add_latency(latency_bucket(latency_ns));
        self.latency_sum_ns += latency_ns;
    }

    /// Whether the histogram and reasons moved to the side part.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Heap bytes held besides the 64 inline ones.
    pub fn heap_bytes(&self) -> usize {
        if self.spill.is_some() {
            std::mem::size_of::<Spill>()
        } else {
            0
        }
    }

    /// Adds one drop of reason `slot` (before `drops` counts it).
    fn add_reason(&mut self, slot: usize) {
        if self.spill.is_none() {
            // Inline while every drop so far had this reason (and the count says so: counters
            // loaded from the kernel may have drops without a reason).
            if self.reason as usize == slot || (self.reason == EMPTY && self.drops == 0) {
                self.reason = slot as u8;
                return;
            }
            self.spill_out();
        }
        if let Some(s) = &mut self.spill {
            s.drop_reasons[slot] += 1;
        }
    }

    fn add_latency(&mut self, bucket: usize) {
        if self.spill.is_none() {
            let b = bucket as u8;
            if let Some(i) = self.lat_bucket.iter().position(|&x| x == b) {
                if self.lat_count[i] < u32::MAX {
                    self.lat_count[i] += 1;
                    return;
                }
            } else if let Some(i) = self.lat_bucket.iter().position(|&x| x == EMPTY) {
                self.lat_bucket[i] = b;
                self.lat_count[i] = 1;
                return;
            }
            self.spill_out();
        }
        if let Some(s) = &mut self.spill {
            s.latency[bucket] += 1;
        }
    }

    /// Moves the inline histogram and reasons to the side part.
    #[cold]
    fn spill_out(&mut self) {
        let s = Spill {
            drop_reasons: self.drop_reasons(),
            latency: self.latency(),
            drops_after_upcall: 0,
        };
        self.lat_bucket = [EMPTY; INLINE_BUCKETS];
        self.lat_count = [0; INLINE_BUCKETS];
        self.reason = EMPTY;
        self.spill = Some(Box::new(s));
    }

    /// Drops per reason slot (see [`drop_reason_slot`]).
    pub fn drop_reasons(&self) -> [u64; DROP_REASON_SLOTS] {
        if let Some(s) = &self.spill {
            return s.drop_reasons;
        }
        let mut r = [0; DROP_REASON_SLOTS];
        if self.reason != EMPTY {
            r[self.reason as usize] = self.drops;
        }
        r
    }

    /// Of the drops, those after an upcall.
    pub fn drops_after_upcall(&self) -> u64 {
        self.spill.as_ref().map_or(0, |s| s.drops_after_upcall)
    }

    /// The log2 latency histogram (see [`latency_bucket`]).
    pub fn latency(&self) -> [u64; LATENCY_BUCKETS] {
        if let Some(s) = &self.spill {
            return s.latency;
        }
        let mut l = [0; LATENCY_BUCKETS];
        for (&b, &n) in self.lat_bucket.iter().zip(&self.lat_count) {
            if b != EMPTY {
                l[b as usize] += u64::from(n);
            }
        }
        l
    }

    /// The counters in the kernel's layout.
    pub fn to_stats(&self) -> FlowStats {
        FlowStats {
            packets: self.packets,
            bytes: self.bytes,
            drops: self.drops,
            outputs: self.outputs,
            drop_reasons: self.drop_reasons(),
            latency: self.latency(),
            latency_sum_ns: self.latency_sum_ns,
            drops_after_upcall: self.drops_after_upcall(),
        }
    }

    /// From the kernel's layout, exactly (inline when it fits).
    pub fn from_stats(s: &FlowStats) -> Self {
        let mut c = Self {
            packets: s.packets,
            bytes: s.bytes,
            outputs: s.outputs,
            drops: s.drops,
            latency_sum_ns: s.latency_sum_ns,
            ..Self::default()
        };
        let reasons: Vec<usize> = (0..DROP_REASON_SLOTS)
            .filter(|&i| s.drop_reasons[i] > 0)
            .collect();
        let reasons_fit = match reasons.as_slice() {
            [] => true,
            [i] if s.drop_reasons[*i] == s.drops => {
                c.reason = *i as u8;
                true
            }
            _ => false,
        };
        let buckets: Vec<usize> = (0..LATENCY_BUCKETS).filter(|&i| s.latency[i] > 0).collect();
        let latency_fits = buckets.len() <= INLINE_BUCKETS
            && buckets.iter().all(|&i| s.latency[i] <= u64::from(u32::MAX));
        if reasons_fit && latency_fits && s.drops_after_upcall == 0 {
            for (k, &i) in buckets.iter().enumerate() {
                c.lat_bucket[k] = i as u8;
                c.lat_count[k] = s.latency[i] as u32;
            }
        } else {
            c.reason = EMPTY;
            c.spill = Some(Box::new(Spill {
                drop_reasons: s.drop_reasons,
                latency: s.latency,
                drops_after_upcall: s.drops_after_upcall,
            }));
        }
        c
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;
    use crate::aggregate::record_end;

    fn drop(reason: u32) -> Verdict {
        Verdict::Drop {
            reason,
            reason_name: "".into(),
        }
    }

    /// The same fates into the kernel layout and the compact one: equal counts, whatever the
    /// representation had to do on the way.
    fn both(fates: &[(Verdict, u64)]) -> (FlowStats, FlowCounters) {
        let mut s = FlowStats::default();
        let mut c = FlowCounters::default();
        for (v, ns) in fates {
            s.packets += 1;
            s.bytes += 60;
            record_end(&mut s, v, *ns, false);
            c.add_pass(60);
            c.record_end(v, *ns, false);
        }
        (s, c)
    }

    #[test]
    fn inline_while_it_fits() {
        let out = Verdict::Output { port: 1 };
        let (s, c) = both(&[
            (out.clone(), 600),
            (out.clone(), 1500),
            (drop(0x30003), 5000),
            (drop(0x30003), 7000),
            (Verdict::Unknown, 0),
            (out, 1000),
        ]);
        assert!(!c.spilled(), "3 buckets, one reason: inline");
        assert_eq!(c.heap_bytes(), 0);
        assert_eq!(c.to_stats(), s);
        assert_eq!((c.packets, c.outputs, c.drops), (6, 3, 2));
        assert_eq!(c.drop_reasons()[3], 2);
        assert_eq!(c.latency()[latency_bucket(1000)], 2);
        assert_eq!(c.latency()[latency_bucket(5000)], 2);
        assert_eq!(c.latency_sum_ns, 600 + 1500 + 5000 + 7000 + 1000);
    }

    #[test]
    fn spills_on_a_fourth_bucket_or_a_second_reason_exactly() {
        let out = Verdict::Output { port: 1 };
        let (s, c) = both(&[
            (out.clone(), 100),
            (out.clone(), 1000),
            (out.clone(), 10_000),
            (out.clone(), 100_000),
            (out, 100),
        ]);
        assert!(c.spilled());
        assert_eq!(c.heap_bytes(), 392);
        assert_eq!(c.to_stats(), s);
        assert_eq!(c.latency()[latency_bucket(100)], 2);

        let (s, c) = both(&[
            (drop(0x30003), 100),
            (drop(0x30003), 100),
            (drop(0x3000b), 100),
            (drop(7), 100),
        ]);
        assert!(c.spilled());
        assert_eq!(c.to_stats(), s);
        let r = c.drop_reasons();
        assert_eq!((r[3], r[0xb], r[DROP_REASON_SLOTS - 1]), (2, 1, 1));
    }

    #[test]
    fn kernel_layout_round_trips() {
        let mut s = FlowStats {
            packets: 10,
            bytes: 600,
            drops: 4,
            outputs: 6,
            latency_sum_ns: 12345,
            ..Default::default()
        };
        s.drop_reasons[3] = 4;
        s.latency[9] = 7;
        s.latency[12] = 3;
        let c = FlowCounters::from_stats(&s);
        assert!(!c.spilled());
        assert_eq!(c.to_stats(), s);

        // Beyond the inline part: counts past u32, two reasons, drops without a reason.
        let mut big = s;
        big.latency[9] = u64::from(u32::MAX) + 1;
        assert!(FlowCounters::from_stats(&big).spilled());
        assert_eq!(FlowCounters::from_stats(&big).to_stats(), big);
        let mut two = s;
        two.drop_reasons[5] = 1;
        assert_eq!(FlowCounters::from_stats(&two).to_stats(), two);
        let mut unexplained = s;
        unexplained.drop_reasons[3] = 0;
        let mut c = FlowCounters::from_stats(&unexplained);
        assert_eq!(c.to_stats(), unexplained);
        // A later drop must not claim the 4 earlier ones for its reason.
        c.record_end(&drop(0x30003), 100, false);
        assert_eq!(c.drop_reasons()[3], 1);
        assert_eq!(c.drops, 5);
    }

    #[test]
    fn an_inline_count_at_u32_max_spills_instead_of_wrapping() {
        let mut s = FlowStats {
            outputs: u64::from(u32::MAX),
            ..Default::default()
        };
        s.latency[5] = u64::from(u32::MAX);
        let mut c = FlowCounters::from_stats(&s);
        assert!(!c.spilled());
        c.record_end(&Verdict::Output { port: 1 }, 40, false);
        assert!(c.spilled());
        assert_eq!(c.latency()[5], u64::from(u32::MAX) + 1);
        assert_eq!(c.outputs, u64::from(u32::MAX) + 1);
    }
}
