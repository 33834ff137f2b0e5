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
    /// Time to explain a new UFID (ovs-vswitchd round trips + resolution), microseconds.
    pub resolve_p50_us: u64,
    pub resolve_max_us: u64,
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
    latency: Option<hdrhistogram::Histogram<u64>>,
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
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
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
        let t = Instant::now();
        let before = ovs.requests();
        let result = ovs.get_flow(ufid).map(|(dp, flow)| {
            let rules = ovs.rules(&dp, &flow);
            let (sb, nb) = (ovn.sb(), ovn.nb());
            let e = explain(&dp, &flow, rules, &Resolver { sb: &sb, nb: &nb });
            Explained {
                summary: FlowSummary::of(&e),
                full: serde_json::to_value(&e).unwrap_or_default(),
            }
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
            Lookup::Explained(e) => Some(e),
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

    /// Flow churn: a new UFID on every lookup, as fast as the loop goes. The requests sent to
    /// ovs-vswitchd stay within the configured rate (plus one burst), the rest is deferred.
    #[test]
    fn request_rate_stays_bounded_under_churn() {
        let calls = std::rc::Rc::new(std::cell::Cell::new(0));
        let ovs = Vswitchd::new(Busy {
            calls: calls.clone(),
        })
        .unwrap();
        let ovn = OvnReplicas::from_replicas(
            Replica::new(SB_DB, SB_TABLES),
            Replica::new(NB_DB, NB_TABLES),
        );
        let per_sec = 50.0;
        let mut cache = ExplainCache::new(Backend::Live { ovs, ovn }, per_sec);
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
