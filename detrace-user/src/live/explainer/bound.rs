//! What the cache keeps: explanations up to [`ExplainCache::max_explained`] (oldest evicted
//! first), those of retired flows forgotten, and a table compacted to follow what is kept.

use std::time::Instant;

use super::{COMPACT_MIN, Entry, ExplainCache};
use crate::{ovs::unixctl::Appctl, uuid::Uuid};

impl<A: Appctl> ExplainCache<A> {
    /// Evicted UFIDs leave an empty slot, failures their error: dropped (a failure after its
    /// retry time, when a UFID is asked again anyway) once the table holds twice what it kept
    /// last time, so memory follows what is kept, not every flow met since the start.
    pub(super) fn compact(&mut self) {
        if self.cache.len() <= self.compact_over {
            return;
        }
        let now = Instant::now();
        self.cache.retain(|_, e| match e {
            None => false,
            Some(Entry::Failed(f)) => now < f.retry_at,
            Some(Entry::Explained(_) | Entry::Queued) => true,
        });
        let cache = &self.cache;
        self.failures.retain(|u, _| cache.get(u).is_some());
        // Matches kept for a retry leave with their failure.
        self.captured
            .retain(|u, _| matches!(cache.get(u), Some(Some(Entry::Queued | Entry::Failed(_)))));
        self.compact_over = (2 * self.cache.len()).max(COMPACT_MIN);
    }

    /// Forgets UFIDs whose flows are gone for good (retired from the kernel's accounts, their
    /// counts folded by the sinks): not counted as evictions. Seen again, a UFID is explained
    /// again.
    pub fn forget(&mut self, ufids: impl IntoIterator<Item = Uuid>) {
        for u in ufids {
            if let Some(Some(e)) = self.cache.get(&u) {
                if matches!(e, Entry::Explained(_)) {
                    self.forgotten_in_order += 1;
                }
                self.cache.insert(u, None);
            }
            self.failures.remove(&u);
            self.captured.remove(&u);
        }
        // The eviction order keeps a forgotten UFID until the next eviction reaches it: dropped
        // from it once they are half of it, so that it follows what is kept.
        if self.forgotten_in_order > COMPACT_MIN && 2 * self.forgotten_in_order > self.order.len() {
            let mut kept = rustc_hash::FxHashSet::default();
            let cache = &self.cache;
            self.order.retain(|u| {
                matches!(cache.get(u), Some(Some(Entry::Explained(_)))) && kept.insert(*u)
            });
            self.forgotten_in_order = 0;
        }
        self.compact();
    }

    /// Whether `ufid` waits in the queue for its explanation.
    pub fn is_queued(&self, ufid: &Uuid) -> bool {
        matches!(self.cache.get(ufid), Some(Some(Entry::Queued)))
    }

    /// UFIDs in the table (evicted ones too until it is compacted).
    pub fn table_len(&self) -> usize {
        self.cache.len()
    }

    /// Drops the oldest explanations beyond [`Self::max_explained`] (counted). A UFID evicted
    /// and seen again is explained again.
    pub(super) fn evict_over_bound(&mut self) {
        while self.order.len() > self.max_explained.max(1) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(Some(Entry::Explained(_))) = self.cache.get(&old) {
                self.cache.insert(old, None);
                self.stats.evicted += 1;
            }
        }
    }
}
