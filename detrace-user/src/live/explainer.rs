//! Explanations of the UFIDs live traffic hits, cached: each UFID costs ovs-vswitchd a few
//! unixctl requests once, within a bounded request rate; flows that vanish or fail are
//! remembered and retried later, never silently dropped.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    FastMap,
    explain::{FlowSummary, explain},
    ovn::{OvnReplicas, Resolver},
    ovs::{unixctl::Appctl, vswitchd::Vswitchd},
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

/// A flow's explanation: the summary the commands use, and the full chain when it was
/// resolved live (recordings keep it as JSON).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Explained {
    pub summary: FlowSummary,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub full: serde_json::Value,
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
}

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
    cache: FastMap<Uuid, Lookup>,
    /// Token bucket over unixctl requests.
    budget: f64,
    per_sec: f64,
    last: Instant,
    retry_after: Duration,
    pub stats: ExplainStats,
}

impl<A: Appctl> ExplainCache<A> {
    /// `per_sec`: at most this many unixctl requests per second to ovs-vswitchd (its main loop
    /// serves them; a tracer must not slow it down).
    pub fn new(backend: Backend<A>, per_sec: f64) -> Self {
        Self {
            backend,
            cache: FastMap::default(),
            budget: per_sec.max(1.0),
            per_sec: per_sec.max(0.1),
            last: Instant::now(),
            retry_after: Duration::from_secs(5),
            stats: ExplainStats::default(),
        }
    }

    /// Adds an explanation obtained elsewhere (a recording).
    pub fn insert(&mut self, e: Explained) {
        self.cache
            .insert(e.summary.ufid, Lookup::Explained(Arc::new(e)));
    }

    pub fn cached(&self, ufid: &Uuid) -> Option<&Arc<Explained>> {
        match self.cache.get(ufid) {
            Some(Lookup::Explained(e)) => Some(e),
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
        match self.cache.get(&ufid) {
            Some(Lookup::Explained(e)) => return Lookup::Explained(e.clone()),
            Some(l @ Lookup::Failed { retry_at, .. }) if Instant::now() < *retry_at => {
                return l.clone();
            }
            _ => {}
        }
        if matches!(self.backend, Backend::Recorded) {
            return Lookup::Pending;
        }
        self.refill();
        if self.budget < 2.0 {
            self.stats.deferred += 1;
            return Lookup::Pending;
        }
        self.resolve(ufid)
    }

    fn resolve(&mut self, ufid: Uuid) -> Lookup {
        let Backend::Live { ovs, ovn } = &mut self.backend else {
            return Lookup::Pending;
        };
        // get-flow + detrace (+ retries, counted as they happen).
        self.budget -= 2.0;
        self.stats.ovs_requests += 2;
        let result = ovs.get_flow(ufid).map(|(dp, flow)| {
            let rules = ovs.rules(&dp, &flow);
            self.stats.ovs_requests += u64::from(rules.attempts.saturating_sub(1));
            let (sb, nb) = (ovn.sb(), ovn.nb());
            let e = explain(&dp, &flow, rules, &Resolver { sb: &sb, nb: &nb });
            Explained {
                summary: FlowSummary::of(&e),
                full: serde_json::to_value(&e).unwrap_or_default(),
            }
        });
        let lookup = match result {
            Ok(e) => {
                self.stats.explained += 1;
                Lookup::Explained(Arc::new(e))
            }
            Err(err) => {
                self.stats.failed += 1;
                Lookup::Failed {
                    error: err.to_string(),
                    retry_at: Instant::now() + self.retry_after,
                }
            }
        };
        self.cache.insert(ufid, lookup.clone());
        lookup
    }

    /// Every explanation held (for recordings).
    pub fn explained(&self) -> impl Iterator<Item = &Arc<Explained>> {
        self.cache.values().filter_map(|l| match l {
            Lookup::Explained(e) => Some(e),
            _ => None,
        })
    }
}
