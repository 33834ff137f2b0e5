//! What the cache answers: a flow's explanation, the state of a lookup, the counts.

use std::{sync::Arc, time::Instant};

use serde::Serialize;

use crate::explain::FlowSummary;

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
    /// Flows whose match was captured while they waited (at first sight with one get-flow, or
    /// with one dump-flows for all when the queue was behind).
    #[serde(default)]
    pub captured: u64,
    /// Flows gone before their turn, explained by re-translating the captured match.
    #[serde(default)]
    pub after_expiry: u64,
    /// Explanations dropped to stay within the bound (oldest first).
    #[serde(default)]
    pub evicted: u64,
}
