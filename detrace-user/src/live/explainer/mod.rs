//! Explanations of the UFIDs live traffic hits, cached: each UFID costs ovs-vswitchd a few
//! unixctl requests once, within a bounded request rate; flows that vanish or fail are
//! remembered and retried later, never silently dropped.
//!
//! A UFID is explained at first sight, not when a report is printed: datapath flows expire
//! ~10 s after their last packet, and a report printed minutes after a burst of drops must
//! still name the culprit. [`ExplainCache::seen`] queues every new UFID; [`ExplainCache::pump`]
//! resolves the queue within the request budget. A queued flow's match is captured at first
//! sight (one `dpctl/get-flow` while the queue keeps up; one `dpctl/dump-flows` for all of them
//! when it outgrows the budget), so that a flow gone before its turn (flushed, evicted over the
//! flow limit) is still re-translated (`ofproto/trace` of the captured match) and says so.
//! Explanations are kept after their flow has gone, up to [`ExplainCache::max_explained`]
//! (oldest evicted first, counted).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

mod bound;
mod capture;
mod lookup;

use capture::Captured;
pub use lookup::{ExplainStats, Explained, Lookup, LookupRef};

use crate::{
    FastMap,
    aggregate::ufid_map::{UfidMap, prefetch},
    explain::{FlowSummary, explain},
    ovn::{OvnReplicas, Resolver},
    ovs::{
        unixctl::Appctl,
        vswitchd::{Vswitchd, VswitchdError},
    },
    uuid::Uuid,
};

/// What the cache holds per UFID: 16 bytes (the rare failure boxed), so a map slot with its
/// key is 32 bytes, two to a cache line.
enum Entry {
    Explained(Arc<Explained>),
    Failed(Box<Failure>),
    /// Seen, waiting in the queue for its turn.
    Queued,
}

struct Failure {
    error: String,
    retry_at: Instant,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);

impl Entry {
    fn as_lookup(&self) -> LookupRef<'_> {
        match self {
            Self::Explained(e) => LookupRef::Explained(e),
            Self::Failed(f) => LookupRef::Failed {
                error: &f.error,
                retry_at: f.retry_at,
            },
            Self::Queued => LookupRef::Pending,
        }
    }
}

/// How many UFIDs [`ExplainCache::warm`] keeps between prefetching a slot and reading it.
const WARM_DEPTH: usize = 4;

/// How an explanation made after its flow expired says so (in its `rules_error`).
pub const AFTER_EXPIRY: &str = "explained after the flow expired";

/// At most this many UFIDs wait for their explanation (a UFID seen while it is full is
/// counted, and queued when seen again).
pub const QUEUE_MAX: usize = 65_536;

/// Explanations kept by default (a summary is 1-2 KB: ~200 MB at the bound).
pub const MAX_EXPLAINED: usize = 100_000;

/// The cache's table is first compacted at this many UFIDs (see [`ExplainCache::compact`]).
const COMPACT_MIN: usize = 4096;

/// See [`ExplainCache::settle`].
pub const SETTLE: Duration = Duration::from_millis(700);

/// Least time between two captures of the queued flows' matches (a dump of every flow).
const CAPTURE_EVERY: Duration = Duration::from_secs(2);

/// Where explanations come from: live daemons, or a recording.
pub enum Backend<A: Appctl> {
    Live {
        ovs: Vswitchd<A>,
        ovn: OvnReplicas,
    },
    /// Recorded explanations only (replay): unknown UFIDs stay unexplained.
    Recorded,
}

pub struct ExplainCache<A: Appctl> {
    backend: Backend<A>,
    /// None: never asked (the map's empty value).
    cache: UfidMap<Option<Entry>>,
    /// Pass UFIDs whose slot was prefetched most recently (see [`Self::warm`]).
    warming: [Uuid; WARM_DEPTH],
    warm_next: usize,
    /// Token bucket over unixctl requests.
    budget: f64,
    per_sec: f64,
    last: Instant,
    retry_after: Duration,
    pub stats: ExplainStats,
    latency: Option<hdrhistogram::Histogram<u64>>,
    /// Keep each live explanation's full chain (as JSON, 3-5 KB of text per flow in the
    /// fixtures, several times that as a tree) next to its summary. Only a recording writes
    /// it: watch, drops and top turn this off and keep the summary alone.
    pub keep_full: bool,
    /// UFIDs seen and not explained yet, in the order they were first seen, with when.
    queue: VecDeque<(Uuid, Instant)>,
    /// How long a queued UFID waits before it is explained: ovs-vswitchd fills a new flow's
    /// xlate cache (what `ofproto/detrace` reads) at its first revalidation, within ~500 ms;
    /// asked before, detrace has to fall back to re-translating it.
    pub settle: Duration,
    /// Explained UFIDs in the order they were explained, for eviction.
    order: VecDeque<Uuid>,
    /// Explanations kept at most (see [`MAX_EXPLAINED`]).
    pub max_explained: usize,
    /// Matches of queued (or failed, waiting for their retry) flows, captured before they
    /// could expire.
    captured: FastMap<Uuid, Captured>,
    /// Queued UFIDs whose match is not captured yet, oldest first, with when they were queued
    /// (see [`Self::capture_fresh`]).
    fresh: VecDeque<(Uuid, Instant)>,
    last_capture: Option<Instant>,
    /// The cache's table is compacted when it holds more UFIDs than this.
    compact_over: usize,
    /// Failures in a row per UFID: each doubles its wait before the next try (see
    /// [`MAX_RETRY_DOUBLINGS`]), so flows that cannot be explained (gone for good, a recirc_id
    /// of a restarted ovs-vswitchd) do not spend the request budget every few seconds.
    failures: FastMap<Uuid, u32>,
    /// Explained UFIDs forgotten (see [`Self::forget`]) still in `order`.
    forgotten_in_order: usize,
}

/// A UFID that keeps failing waits `retry_after` doubled up to this many times (5 s -> 320 s).
const MAX_RETRY_DOUBLINGS: u32 = 6;

impl<A: Appctl> ExplainCache<A> {
    /// `per_sec`: at most this many unixctl requests per second to ovs-vswitchd (its main loop
    /// serves them; a tracer must not slow it down).
    pub fn new(backend: Backend<A>, per_sec: f64) -> Self {
        Self {
            backend,
            cache: UfidMap::default(),
            warming: [Uuid(0); WARM_DEPTH],
            warm_next: 0,
            budget: per_sec.max(1.0),
            per_sec: per_sec.max(0.1),
            last: Instant::now(),
            retry_after: Duration::from_secs(5),
            stats: ExplainStats::default(),
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
            keep_full: true,
            queue: VecDeque::new(),
            settle: SETTLE,
            order: VecDeque::new(),
            max_explained: MAX_EXPLAINED,
            captured: FastMap::default(),
            fresh: VecDeque::new(),
            last_capture: None,
            compact_over: COMPACT_MIN,
            failures: FastMap::default(),
            forgotten_in_order: 0,
        }
    }

    /// A UFID met in live traffic: queued for explanation unless it is explained, queued, or
    /// failed recently. One hash probe when it is known.
    #[inline]
    pub fn seen(&mut self, ufid: Uuid) {
        if matches!(self.backend, Backend::Recorded) {
            return;
        }
        match self.cache.get(&ufid) {
            Some(Some(Entry::Explained(_) | Entry::Queued)) => {}
            Some(Some(Entry::Failed(f))) if Instant::now() < f.retry_at => {}
            _ => self.enqueue(ufid),
        }
    }

    fn enqueue(&mut self, ufid: Uuid) {
        if self.queue.len() >= QUEUE_MAX {
            self.stats.queue_full += 1;
            return;
        }
        self.queue.push_back((ufid, Instant::now()));
        if self.fresh.len() >= QUEUE_MAX {
            self.fresh.pop_front();
        }
        self.fresh.push_back((ufid, Instant::now()));
        self.cache.insert(ufid, Some(Entry::Queued));
        self.stats.queued += 1;
    }

    /// What is known of `ufid` now, without asking anything (renderers and tables).
    pub fn peek(&self, ufid: &Uuid) -> LookupRef<'_> {
        match self.cache.get(ufid) {
            Some(Some(e)) => e.as_lookup(),
            _ => LookupRef::Pending,
        }
    }

    /// Changes when ovs-vswitchd was reconnected to after a restart (port numbers may have
    /// changed with it); 0 for a recording.
    pub fn ovs_generation(&self) -> u64 {
        match &self.backend {
            Backend::Live { ovs, .. } => ovs.generation(),
            Backend::Recorded => 0,
        }
    }

    /// The Northbound replica, live (None for a recording).
    pub fn nb(&self) -> Option<std::sync::RwLockReadGuard<'_, crate::ovsdb::Replica>> {
        match &self.backend {
            Backend::Live { ovn, .. } => Some(ovn.nb()),
            Backend::Recorded => None,
        }
    }

    /// UFIDs waiting for their explanation.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Explains queued UFIDs, oldest first, as far as the request budget allows now; captures
    /// the matches of those that will have to wait. Call it often (every tick).
    pub fn pump(&mut self) {
        if matches!(self.backend, Backend::Recorded) || self.queue.is_empty() {
            return;
        }
        self.refill();
        // Settling waits for the xlate cache `ofproto/detrace` reads; an ovs-vswitchd without
        // that command (before 3.4) re-translates the flow's match instead, which is there at
        // once: waiting would only let a short-lived flow go before it is explained.
        let settle = match &self.backend {
            Backend::Live { ovs, .. } if !ovs.has_detrace() => Duration::ZERO,
            _ => self.settle,
        };
        if self.behind() {
            self.capture_if_behind();
        } else if !settle.is_zero() {
            // Without settling, a UFID is explained as soon as the budget allows: capturing
            // first would only spend a request.
            self.capture_fresh(settle);
        }
        while self.budget >= 2.0 {
            // First seen, first explained: the rest is younger still.
            if self
                .queue
                .front()
                .is_none_or(|(_, seen)| seen.elapsed() < settle)
            {
                break;
            }
            let Some((u, _)) = self.queue.pop_front() else {
                break;
            };
            // Resolved meanwhile by a direct lookup: nothing to do.
            if let Some(Some(Entry::Queued)) = self.cache.get(&u) {
                self.resolve(u);
                self.refill();
            }
        }
    }

    /// Adds an explanation obtained elsewhere (a recording).
    pub fn insert(&mut self, e: Explained) {
        self.cache
            .insert(e.summary.ufid, Some(Entry::Explained(Arc::new(e))));
    }

    pub fn cached(&self, ufid: &Uuid) -> Option<&Arc<Explained>> {
        match self.cache.get(ufid) {
            Some(Some(Entry::Explained(e))) => Some(e),
            _ => None,
        }
    }

    /// `requests` sent to ovs-vswitchd: out of the budget, and counted.
    fn charge(&mut self, requests: u64) {
        self.budget -= requests as f64;
        self.stats.ovs_requests += requests;
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.budget = (self.budget + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.per_sec.max(3.0));
        self.last = now;
    }

    /// The explanation of `ufid`, resolving it now if the request budget allows.
    pub fn get(&mut self, ufid: Uuid) -> Lookup {
        self.lookup(ufid).to_owned()
    }

    /// As [`Self::get`], borrowed: the hot path (a hit is one hash probe, plus a second on the
    /// entry just touched, and no reference count).
    pub fn lookup(&mut self, ufid: Uuid) -> LookupRef<'_> {
        let settled = match self.cache.get(&ufid) {
            Some(Some(Entry::Explained(_))) => true,
            Some(Some(Entry::Failed(f))) => Instant::now() < f.retry_at,
            _ => false,
        };
        if !settled && !self.try_resolve(ufid) {
            // Over the budget now: its turn comes in the queue.
            self.seen(ufid);
            return LookupRef::Pending;
        }
        match self.cache.get(&ufid) {
            Some(Some(e)) => e.as_lookup(),
            _ => LookupRef::Pending,
        }
    }

    /// Resolves `ufid` now if it is not settled and the request budget allows (queued
    /// otherwise), so that what follows reads it with [`Self::peek`]: the explain stage of the
    /// pipeline, before anything is rendered. A settled UFID costs one hash probe.
    #[inline]
    pub fn ensure(&mut self, ufid: Uuid) {
        if let Some(Some(Entry::Explained(_))) = self.cache.get(&ufid) {
            return;
        }
        let _ = self.lookup(ufid);
    }

    /// Explanations come from a recording: nothing is ever asked, a UFID not in it stays
    /// unexplained.
    pub fn is_recorded(&self) -> bool {
        matches!(self.backend, Backend::Recorded)
    }

    /// Prepares a lookup of `ufid` that will come a little later (a pass's UFID is known when
    /// its event arrives; it is looked up when its packet ends): its cache slot is prefetched
    /// now, and the explanation of the UFID warmed [`WARM_DEPTH`] calls ago (whose slot has
    /// arrived since) is prefetched in turn. Never waits for memory, changes nothing.
    #[inline]
    pub fn warm(&mut self, ufid: Uuid) {
        self.cache.prefetch(&ufid);
        let earlier = std::mem::replace(&mut self.warming[self.warm_next], ufid);
        self.warm_next = (self.warm_next + 1) % WARM_DEPTH;
        if let Some(Some(Entry::Explained(e))) = self.cache.get(&earlier) {
            let p = Arc::as_ptr(e).cast::<u8>();
            // The summary the printers read: its first lines.
            for off in (0..std::mem::size_of::<Explained>().min(4 * 64)).step_by(64) {
                prefetch(p.wrapping_add(off));
            }
        }
    }

    /// Resolves `ufid` if the backend and the request budget allow; false when deferred.
    fn try_resolve(&mut self, ufid: Uuid) -> bool {
        if matches!(self.backend, Backend::Recorded) {
            return false;
        }
        self.refill();
        if self.budget < 2.0 {
            self.stats.deferred += 1;
            return false;
        }
        self.resolve(ufid);
        true
    }

    fn resolve(&mut self, ufid: Uuid) {
        let Backend::Live { ovs, ovn } = &mut self.backend else {
            return;
        };
        let t = Instant::now();
        let before = ovs.requests();
        let keep_full = self.keep_full;
        let mut captured = self.captured.remove(&ufid);
        let mut after_expiry = false;
        let result = match ovs.get_flow(ufid) {
            Ok((dp, flow)) => Ok((dp, flow, None)),
            // Gone before its turn, but its match was kept: the rules it would hit now.
            Err(VswitchdError::UfidNotFound { .. })
                if captured
                    .as_ref()
                    .is_some_and(|c| c.still_means(ovs.generation())) =>
            {
                let Captured { dp, flow, .. } = captured.take().expect("matched just above");
                after_expiry = true;
                let rules = capture::retranslate(ovs, &dp, &flow);
                Ok((dp, flow, Some(rules)))
            }
            Err(e) => Err(e),
        }
        .map(|(dp, flow, rules)| {
            let rules = rules.unwrap_or_else(|| ovs.rules(&dp, &flow));
            let (sb, nb) = (ovn.sb(), ovn.nb());
            let e = explain(&dp, &flow, rules, &Resolver { sb: &sb, nb: &nb });
            let summary = FlowSummary::of(&e);
            Explained::new(
                summary,
                if keep_full {
                    serde_json::to_value(&e).unwrap_or_default()
                } else {
                    serde_json::Value::Null
                },
            )
        });
        // Every request made counts against the budget (get-flow, detrace and its retries, the
        // trace fallback): the long-run rate stays at `per_sec` whatever a lookup costs.
        let spent = ovs.requests() - before;
        self.charge(spent);
        if let Some(h) = &mut self.latency {
            let _ = h.record((t.elapsed().as_micros() as u64).max(1));
            self.stats.resolve_p50_us = h.value_at_quantile(0.5);
            self.stats.resolve_max_us = h.max();
        }
        let entry = match result {
            Ok(e) => {
                self.stats.explained += 1;
                self.stats.after_expiry += u64::from(after_expiry);
                self.order.push_back(ufid);
                self.failures.remove(&ufid);
                Entry::Explained(Arc::new(e))
            }
            Err(err) => {
                self.stats.failed += 1;
                // ovs-vswitchd away (restarting, say): the captured match waits for the retry,
                // which re-translates it if the flow has gone meanwhile.
                if let Some(c) = captured {
                    self.captured.insert(ufid, c);
                }
                let n = self.failures.entry(ufid).or_default();
                let wait = self.retry_after * (1 << (*n).min(MAX_RETRY_DOUBLINGS));
                *n += 1;
                Entry::Failed(Box::new(Failure {
                    error: err.to_string(),
                    retry_at: Instant::now() + wait,
                }))
            }
        };
        self.cache.insert(ufid, Some(entry));
        self.evict_over_bound();
        self.compact();
    }

    /// Datapath port names (empty for a recording, or when ovs-vswitchd does not answer).
    pub fn port_names(&mut self) -> std::collections::BTreeMap<u32, String> {
        match &mut self.backend {
            Backend::Live { ovs, .. } => ovs.port_names().unwrap_or_else(|e| {
                tracing::warn!("no datapath port names: {e}");
                Default::default()
            }),
            Backend::Recorded => Default::default(),
        }
    }

    /// Every explanation held (for recordings).
    pub fn explained(&self) -> impl Iterator<Item = &Arc<Explained>> {
        self.cache.values().filter_map(|l| match l {
            Some(Entry::Explained(e)) => Some(e),
            _ => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests;
