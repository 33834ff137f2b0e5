//! Explanations of the UFIDs live traffic hits, cached: each UFID costs ovs-vswitchd a few
//! unixctl requests once, within a bounded request rate; flows that vanish or fail are
//! remembered and retried later, never silently dropped.
//!
//! A UFID is explained at first sight, not when a report is printed: datapath flows expire
//! ~10 s after their last packet, and a report printed minutes after a burst of drops must
//! still name the culprit. [`ExplainCache::seen`] queues every new UFID; [`ExplainCache::pump`]
//! resolves the queue within the request budget. When the queue outgrows the budget, the
//! matches of the queued flows are captured with one `dpctl/dump-flows`, so that a flow gone
//! before its turn is still re-translated (`ofproto/trace` of the captured match) and says so.
//! Explanations are kept after their flow has gone, up to [`ExplainCache::max_explained`]
//! (oldest evicted first, counted).

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    FastMap,
    aggregate::ufid_map::{UfidMap, prefetch},
    explain::{FlowSummary, explain},
    ovn::{OvnReplicas, Resolver},
    ovs::{
        DpFlow,
        unixctl::Appctl,
        vswitchd::{Vswitchd, VswitchdError},
    },
    uuid::Uuid,
};

/// The state of one UFID's explanation.
#[derive(Clone, Debug)]
pub enum Lookup {
    Explained(Arc<Explained>),
    /// Resolution failed (flow gone, daemon error); retried after `retry_at`.
    Failed {
        error: String,
        retry_at: Instant,
    },
    /// Not asked yet: over the request budget for now.
    Pending,
}

/// [`Lookup`] borrowed from the cache: what the per-pass hot path takes (no reference count
/// touched, nothing copied).
#[derive(Clone, Copy, Debug)]
pub enum LookupRef<'a> {
    Explained(&'a Arc<Explained>),
    Failed { error: &'a str, retry_at: Instant },
    Pending,
}

impl LookupRef<'_> {
    pub fn to_owned(self) -> Lookup {
        match self {
            Self::Explained(e) => Lookup::Explained(e.clone()),
            Self::Failed { error, retry_at } => Lookup::Failed {
                error: error.to_string(),
                retry_at,
            },
            Self::Pending => Lookup::Pending,
        }
    }
}

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

/// A flow's explanation: the summary the commands use, and the full chain when it was
/// resolved live (recordings keep it as JSON).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Explained {
    pub summary: FlowSummary,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub full: serde_json::Value,
    /// `summary` as JSON text, made the first time it is asked for: `watch --format json`
    /// prints it for every pass of every packet, and serializing it anew each time was the
    /// larger part of watch's own CPU.
    #[serde(skip)]
    pub summary_json: std::sync::OnceLock<Box<serde_json::value::RawValue>>,
}

impl Explained {
    pub fn new(summary: FlowSummary, full: serde_json::Value) -> Self {
        Self {
            summary,
            full,
            summary_json: std::sync::OnceLock::new(),
        }
    }

    /// [`Explained::summary`] as JSON text (the same text serializing it gives), made once.
    pub fn summary_json(&self) -> &serde_json::value::RawValue {
        self.summary_json.get_or_init(|| {
            serde_json::value::to_raw_value(&self.summary).unwrap_or_else(|e| {
                serde_json::value::to_raw_value(&format!("(summary not serializable: {e})"))
                    .expect("a string serializes")
            })
        })
    }
}

/// Counts the user sees next to the results.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct ExplainStats {
    pub explained: u64,
    pub failed: u64,
    /// Requests sent to ovs-vswitchd (unixctl).
    pub ovs_requests: u64,
    /// Lookups deferred by the request budget.
    pub deferred: u64,
    /// Time to explain a new UFID (ovs-vswitchd round trips + resolution), microseconds.
    pub resolve_p50_us: u64,
    pub resolve_max_us: u64,
    /// UFIDs queued at first sight.
    #[serde(default)]
    pub queued: u64,
    /// UFIDs not queued because the queue was full (queued again when seen again).
    #[serde(default)]
    pub queue_full: u64,
    /// Flows whose match was captured (one dump-flows) while they waited.
    #[serde(default)]
    pub captured: u64,
    /// Flows gone before their turn, explained by re-translating the captured match.
    #[serde(default)]
    pub after_expiry: u64,
    /// Explanations dropped to stay within the bound (oldest first).
    #[serde(default)]
    pub evicted: u64,
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
    /// Matches of queued flows, captured before they could expire: (datapath, flow).
    captured: FastMap<Uuid, (String, DpFlow)>,
    last_capture: Option<Instant>,
}

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
            last_capture: None,
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
        self.capture_if_behind();
        while self.budget >= 2.0 {
            // First seen, first explained: the rest is younger still.
            if self
                .queue
                .front()
                .is_none_or(|(_, seen)| seen.elapsed() < self.settle)
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

    /// When more UFIDs wait than the budget explains within a second, their flows may expire
    /// before their turn: one `dpctl/dump-flows` per datapath keeps their matches.
    fn capture_if_behind(&mut self) {
        let behind = self.queue.len() as f64 > self.per_sec.max(2.0) / 2.0;
        let due = self
            .last_capture
            .is_none_or(|t| t.elapsed() >= CAPTURE_EVERY);
        if !behind || !due || self.budget < 1.0 {
            return;
        }
        let Backend::Live { ovs, .. } = &mut self.backend else {
            return;
        };
        self.last_capture = Some(Instant::now());
        let before = ovs.requests();
        let dps = ovs.datapaths().unwrap_or_default();
        for dp in dps {
            let Ok((flows, _malformed)) = ovs.dump_flows(&dp) else {
                continue;
            };
            for f in flows {
                if matches!(self.cache.get(&f.ufid), Some(Some(Entry::Queued)))
                    && self.captured.len() < QUEUE_MAX
                    && !self.captured.contains_key(&f.ufid)
                {
                    self.stats.captured += 1;
                    self.captured.insert(f.ufid, (dp.clone(), f));
                }
            }
        }
        let spent = ovs.requests() - before;
        self.budget -= spent as f64;
        self.stats.ovs_requests += spent;
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
        let captured = self.captured.remove(&ufid);
        let mut after_expiry = false;
        let result = match ovs.get_flow(ufid) {
            Ok((dp, flow)) => Ok((dp, flow, None)),
            // Gone before its turn, but its match was kept: the rules it would hit now.
            Err(VswitchdError::UfidNotFound { .. }) if captured.is_some() => {
                let (dp, flow) = captured.expect("matched just above");
                after_expiry = true;
                let mut rules = ovs.rules_trace(&dp, &flow);
                rules.error = Some(format!(
                    "{AFTER_EXPIRY}: re-translated with ofproto/trace from \
                     its match captured at first sight{}",
                    rules
                        .error
                        .take()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
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
        self.budget -= spent as f64;
        self.stats.ovs_requests += spent;
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
                Entry::Explained(Arc::new(e))
            }
            Err(err) => {
                self.stats.failed += 1;
                Entry::Failed(Box::new(Failure {
                    error: err.to_string(),
                    retry_at: Instant::now() + self.retry_after,
                }))
            }
        };
        self.cache.insert(ufid, Some(entry));
        self.evict_over_bound();
    }

    /// Drops the oldest explanations beyond [`Self::max_explained`] (counted). A UFID evicted
    /// and seen again is explained again.
    fn evict_over_bound(&mut self) {
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
mod tests {
    use super::*;
    use crate::{
        ovn::schema::{NB_DB, NB_TABLES, SB_DB, SB_TABLES},
        ovs::unixctl::UnixctlError,
        ovsdb::Replica,
    };

    /// An ovs-vswitchd that knows every UFID and answers in no time, counting what it is asked.
    struct Busy {
        calls: std::rc::Rc<std::cell::Cell<u64>>,
    }
    impl Appctl for Busy {
        fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError> {
            self.calls.set(self.calls.get() + 1);
            Ok(match method {
                "list-commands" => "The available commands are:\n  ofproto/detrace UFID [pmd=PMD-ID]\n".into(),
                "dpctl/dump-dps" => "system@ovs-system\n".into(),
                "dpctl/get-flow" => format!(
                    "{}, recirc_id(0),in_port(2),eth_type(0x0800),ipv4(frag=no), packets:3, bytes:180, used:0.1s, actions:3\n",
                    params[1]
                ),
                "ofproto/detrace" => "cookie=0x1234, duration=1s, n_packets=3, n_bytes=180, priority=100,in_port=2,actions=output:3\n".into(),
                other => panic!("unexpected {other}"),
            })
        }
    }

    /// A cache over [`Busy`] and empty replicas, with its call counter.
    fn busy_cache(per_sec: f64) -> (ExplainCache<Busy>, std::rc::Rc<std::cell::Cell<u64>>) {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let ovs = Vswitchd::new(Busy {
            calls: calls.clone(),
        })
        .unwrap();
        let ovn = OvnReplicas::from_replicas(
            Replica::new(SB_DB, SB_TABLES),
            Replica::new(NB_DB, NB_TABLES),
        );
        (ExplainCache::new(Backend::Live { ovs, ovn }, per_sec), calls)
    }

    fn summary(ufid: Uuid, label: &str) -> Explained {
        Explained {
            summary: crate::explain::FlowSummary {
                ufid,
                datapath: "system@ovs-system".into(),
                match_compact: "recirc_id(0)".into(),
                actions: "drop".into(),
                label: label.into(),
                objects: Vec::new(),
                stages: Vec::new(),
                drop_culprit: crate::explain::culprit::Culprit {
                    kind: crate::explain::culprit::CulpritKind::Acl,
                    id: "x".into(),
                    name: "a".into(),
                    detail: String::new(),
                    nb_table: Some("ACL".into()),
                    datapath: None,
                    flow_desc: None,
                },
                details: Vec::new(),
                rules_error: None,
            },
            full: serde_json::Value::Null,
            summary_json: Default::default(),
        }
    }

    /// A recording's explanations: served borrowed (no reference taken) or owned, the same
    /// ones; unknown UFIDs stay pending and are never asked for.
    #[test]
    fn summary_json_is_the_summary_serialized_once() {
        let e = summary(Uuid(7), "ACL drop-9999");
        let text = e.summary_json().get().to_string();
        assert_eq!(text, serde_json::to_string(&e.summary).unwrap());
        assert!(text.contains("ACL drop-9999"), "{text}");
        // Made once: the second call hands out the same text.
        assert!(std::ptr::eq(e.summary_json(), e.summary_json()));
        // A recording (serialized Explained) does not carry it; read back, it is made again.
        let back: Explained = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert!(!serde_json::to_string(&e).unwrap().contains("summary_json"));
        assert_eq!(back.summary_json().get(), text);
    }

    #[test]
    fn recorded_lookups_borrow_or_share_the_same_explanation() {
        let mut cache = ExplainCache::<Busy>::new(Backend::Recorded, 1.0);
        let (a, b) = (Uuid(0xa << 96 | 1), Uuid(0xb << 96 | 1));
        cache.insert(summary(a, "LB lb0"));
        cache.insert(summary(b, "ACL drop"));
        let held = match cache.get(a) {
            Lookup::Explained(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(Arc::strong_count(&held), 2, "get shares the cached one");
        match cache.lookup(a) {
            LookupRef::Explained(e) => {
                assert!(Arc::ptr_eq(e, &held));
                assert_eq!(Arc::strong_count(e), 2, "lookup takes no reference");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(cache.lookup(b), LookupRef::Explained(e) if e.summary.label == "ACL drop")
        );
        assert!(matches!(cache.lookup(Uuid(7)), LookupRef::Pending));
        assert!(matches!(cache.get(Uuid(7)), Lookup::Pending));
        assert_eq!(cache.explained().count(), 2);
        assert_eq!(cache.stats.deferred, 0, "a recording defers nothing");
        // Warming (prefetching) answers nothing and changes nothing, known or not.
        for n in 0..100 {
            cache.warm(if n % 2 == 0 { a } else { Uuid(n) });
        }
        assert!(matches!(cache.lookup(a), LookupRef::Explained(e) if Arc::ptr_eq(e, &held)));
        assert_eq!(Arc::strong_count(&held), 2);
        assert!(matches!(cache.lookup(Uuid(7)), LookupRef::Pending));
        assert_eq!(cache.explained().count(), 2);
    }

    /// An ovs-vswitchd where every flow is gone: the failure is kept (borrowed by `lookup`,
    /// copied by `get`) and not asked again before its retry time.
    struct Gone {
        calls: std::rc::Rc<std::cell::Cell<u64>>,
    }
    impl Appctl for Gone {
        fn call(&mut self, method: &str, _: &[&str]) -> Result<String, UnixctlError> {
            self.calls.set(self.calls.get() + 1);
            Ok(match method {
                "list-commands" => "The available commands are:\n  ofproto/detrace UFID\n".into(),
                "dpctl/dump-dps" => "system@ovs-system\n".into(),
                _ => String::new(),
            })
        }
    }

    #[test]
    fn failures_are_kept_until_their_retry_time() {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let ovs = Vswitchd::new(Gone {
            calls: calls.clone(),
        })
        .unwrap();
        let ovn = OvnReplicas::from_replicas(
            Replica::new(SB_DB, SB_TABLES),
            Replica::new(NB_DB, NB_TABLES),
        );
        let mut cache = ExplainCache::new(Backend::Live { ovs, ovn }, 1000.0);
        let u = Uuid(0xdead << 96 | 1);
        let first = match cache.lookup(u) {
            LookupRef::Failed { error, retry_at } => {
                assert!(retry_at > Instant::now());
                error.to_string()
            }
            other => panic!("{other:?}"),
        };
        assert!(!first.is_empty());
        assert_eq!(cache.stats.failed, 1);
        let asked = calls.get();
        match cache.get(u) {
            Lookup::Failed { error, .. } => assert_eq!(error, first),
            other => panic!("{other:?}"),
        }
        assert!(matches!(cache.lookup(u), LookupRef::Failed { .. }));
        // Warming never asks ovs-vswitchd, even for a UFID it has never seen.
        cache.warm(u);
        for n in 1..20u128 {
            cache.warm(Uuid(0xbeef << 96 | n));
        }
        assert_eq!(calls.get(), asked, "not asked again before retry_at");
        assert_eq!(cache.stats.ovs_requests + 1, calls.get());
        assert!(matches!(
            cache.lookup(Uuid(0xbeef << 96 | 1)),
            LookupRef::Failed { .. }
        ));
        assert!(calls.get() > asked, "a lookup asks");
        assert_eq!(cache.stats.ovs_requests + 1, calls.get());
        assert_eq!(cache.stats.failed, 2);
        assert!(cache.cached(&u).is_none());
    }

    /// An ovs-vswitchd (captures from OVS 3.5 / OVN 25.03) whose flows have all expired by the
    /// time they are asked for one by one: only the one-request dump of every flow still has
    /// them.
    struct Expired {
        calls: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    }
    impl Appctl for Expired {
        fn call(&mut self, method: &str, _: &[&str]) -> Result<String, UnixctlError> {
            self.calls.borrow_mut().push(method.to_string());
            let f = crate::testutil::fixture;
            match method {
                "list-commands" => Ok(f("ovs-3.5/list-commands.txt")),
                "dpctl/dump-dps" => Ok(f("ovs-3.5/dump-dps.txt")),
                "dpctl/dump-flows" => Ok(f("ovs-3.5/dump-flows-m.txt")),
                "dpctl/get-flow" => Err(UnixctlError::Remote {
                    method: method.into(),
                    message: f("ovs-3.5/error-get-flow-bogus-ufid.txt")
                        .lines()
                        .next()
                        .unwrap()
                        .into(),
                }),
                "ofproto/trace" => Ok(f("ovs-3.5/trace-drop9999-recirc-m.txt")),
                other => panic!("unexpected {other}"),
            }
        }
    }

    fn fixture_replicas() -> OvnReplicas {
        use crate::testutil::replica;
        OvnReplicas::from_replicas(
            replica(SB_DB, SB_TABLES, "ovs-3.5/ovsdb/sb-monitor-initial.json"),
            replica(NB_DB, NB_TABLES, "ovs-3.5/ovsdb/nb-monitor-initial.json"),
        )
    }

    /// UFIDs seen while the budget is short are queued, their matches captured with one dump;
    /// a flow gone before its turn is re-translated from its captured match, names the ACL
    /// that dropped it and says it was explained after expiry.
    #[test]
    fn queued_flows_are_explained_after_they_expire() {
        let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let ovs = Vswitchd::new(Expired {
            calls: calls.clone(),
        })
        .unwrap();
        let mut cache = ExplainCache::new(
            Backend::Live {
                ovs,
                ovn: fixture_replicas(),
            },
            4.0,
        );
        cache.settle = Duration::ZERO;
        let drop9999: Uuid = "e666129a-7f03-4f7f-b983-c5bae899c5c9".parse().unwrap();
        let vip: Uuid = "3adc8747-c077-47b6-a171-37601f35e511".parse().unwrap();
        let never_captured = Uuid(0x1234 << 96 | 1);
        for u in [drop9999, vip, never_captured, drop9999] {
            cache.seen(u);
        }
        assert_eq!(cache.queued(), 3, "seen twice, queued once");
        assert_eq!(cache.stats.queued, 3);
        assert!(matches!(cache.peek(&drop9999), LookupRef::Pending));
        cache.pump();
        assert_eq!(
            calls
                .borrow()
                .iter()
                .filter(|m| *m == "dpctl/dump-flows")
                .count(),
            1,
            "{:?}",
            calls.borrow()
        );
        assert_eq!(cache.stats.captured, 2, "the two queued flows in the dump");
        let LookupRef::Explained(e) = cache.peek(&drop9999) else {
            panic!("{:?}", cache.peek(&drop9999))
        };
        let c = &e.summary.drop_culprit;
        assert_eq!(
            (c.kind, c.name.as_str()),
            (crate::explain::culprit::CulpritKind::Acl, "drop-9999"),
            "{c:?}"
        );
        assert!(
            e.summary
                .rules_error
                .as_deref()
                .is_some_and(|r| r.contains("captured at first sight")),
            "{:?}",
            e.summary.rules_error
        );
        assert_eq!(cache.stats.after_expiry, 1);
        // The budget ran out: the rest waits in order, asked for nothing more.
        let asked = calls.borrow().len();
        cache.pump();
        assert_eq!(calls.borrow().len(), asked, "no budget, no request");
        assert_eq!(cache.queued(), 2);
        // A second later there is budget again: the VIP flow (captured) is explained, the
        // one never captured fails with the reason.
        std::thread::sleep(Duration::from_millis(1100));
        cache.pump();
        std::thread::sleep(Duration::from_millis(600));
        cache.pump();
        assert_eq!(cache.queued(), 0);
        assert!(matches!(cache.peek(&vip), LookupRef::Explained(_)));
        match cache.peek(&never_captured) {
            LookupRef::Failed { error, .. } => {
                assert!(error.contains("not a current datapath flow"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.stats.after_expiry, 2);
        assert_eq!(cache.stats.ovs_requests + 1, calls.borrow().len() as u64);
    }

    /// A queued UFID waits until its flow's xlate cache can exist (`settle`), then is
    /// explained by the pump without anyone looking it up.
    #[test]
    fn queued_flows_settle_before_they_are_asked_for() {
        let (mut cache, calls) = busy_cache(100.0);
        cache.settle = Duration::from_millis(200);
        let u = Uuid(0xfeed << 96 | 2);
        cache.seen(u);
        let asked = calls.get();
        cache.pump();
        assert_eq!(calls.get(), asked, "too young to ask");
        assert!(matches!(cache.peek(&u), LookupRef::Pending));
        std::thread::sleep(Duration::from_millis(250));
        cache.pump();
        assert!(matches!(cache.peek(&u), LookupRef::Explained(_)));
        assert_eq!(cache.queued(), 0);
    }

    /// Explanations are kept after their flows have gone, up to the bound; beyond it the
    /// oldest go first, counted, and are explained again when seen again.
    #[test]
    fn explanations_are_bounded_and_evictions_counted() {
        let (mut cache, _calls) = busy_cache(1000.0);
        cache.max_explained = 3;
        cache.settle = Duration::ZERO;
        let u = |n: u128| Uuid(n << 64 | 1);
        for n in 1..=5 {
            assert!(matches!(cache.lookup(u(n)), LookupRef::Explained(_)));
        }
        assert_eq!(cache.explained().count(), 3);
        assert_eq!(cache.stats.evicted, 2);
        assert!(matches!(cache.peek(&u(1)), LookupRef::Pending));
        assert!(matches!(cache.peek(&u(5)), LookupRef::Explained(_)));
        cache.seen(u(1));
        assert_eq!(
            cache.queued(),
            1,
            "an evicted UFID seen again is queued again"
        );
        cache.pump();
        assert!(matches!(cache.peek(&u(1)), LookupRef::Explained(_)));
        assert_eq!(cache.explained().count(), 3);
    }

    /// The full chain is kept for recordings only; the summary either way.
    #[test]
    fn full_chain_only_when_kept() {
        for keep in [true, false] {
            let (mut cache, _calls) = busy_cache(100.0);
            cache.keep_full = keep;
            let u = Uuid(0xfeed << 96 | 1);
            let LookupRef::Explained(e) = cache.lookup(u) else {
                panic!("not explained")
            };
            assert_eq!(e.summary.ufid, u);
            assert_eq!(e.summary.actions, "3");
            assert_eq!(e.full.is_object(), keep, "{keep}");
        }
    }

    /// Flow churn: a new UFID on every lookup, as fast as the loop goes. The requests sent to
    /// ovs-vswitchd stay within the configured rate (plus one burst), the rest is deferred.
    #[test]
    fn request_rate_stays_bounded_under_churn() {
        let per_sec = 50.0;
        let (mut cache, calls) = busy_cache(per_sec);
        let start = Instant::now();
        let mut n = 0u128;
        while start.elapsed() < Duration::from_millis(1000) {
            n += 1;
            cache.get(Uuid(n << 64 | 1));
        }
        let secs = start.elapsed().as_secs_f64();
        let sent = cache.stats.ovs_requests as f64;
        assert!(
            sent <= per_sec * secs + per_sec + 3.0,
            "{sent} requests in {secs:.2}s at {per_sec}/s"
        );
        assert!(sent >= per_sec * secs * 0.5, "the budget is used: {sent}");
        assert_eq!(
            cache.stats.ovs_requests + 1,
            calls.get(),
            "every request counted (+ list-commands)"
        );
        assert!(cache.stats.deferred > 0 && cache.stats.explained > 10);
        assert!(cache.stats.resolve_max_us > 0);
        // An explained UFID is served from the cache without asking again.
        let before = calls.get();
        let first = Uuid(1 << 64 | 1);
        assert!(matches!(cache.get(first), Lookup::Explained(_)));
        assert_eq!(calls.get(), before);
    }
}
