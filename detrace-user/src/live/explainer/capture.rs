//! Matches of queued flows captured before they can go (see [`ExplainCache::capture_fresh`]
//! and [`ExplainCache::capture_if_behind`]), and the re-translation of a flow gone before its
//! turn from its captured match.

use std::time::{Duration, Instant};

use super::{AFTER_EXPIRY, Backend, CAPTURE_EVERY, Entry, ExplainCache, QUEUE_MAX};
use crate::ovs::{
    DpFlow,
    unixctl::Appctl,
    vswitchd::{FlowRules, Vswitchd, VswitchdError},
};

/// A flow's match as ovs-vswitchd printed it while the flow existed.
pub(super) struct Captured {
    pub dp: String,
    pub flow: DpFlow,
    /// The ovs-vswitchd it came from ([`Vswitchd::generation`]).
    pub generation: u64,
}

impl Captured {
    /// Whether re-translating the match still means what it meant: a recirculated flow's
    /// `recirc_id` names a frozen state of the ovs-vswitchd that installed it; a restarted one
    /// numbers its recirculations afresh (the id would resume some other state, or none).
    pub fn still_means(&self, generation: u64) -> bool {
        self.generation == generation
            || self.flow.match_full.split(',').any(|f| f == "recirc_id(0)")
    }
}

impl<A: Appctl> ExplainCache<A> {
    /// More UFIDs wait than the budget explains within a second.
    pub(super) fn behind(&self) -> bool {
        self.queue.len() as f64 > self.per_sec.max(2.0) / 2.0
    }

    /// When the queue is behind, its flows may expire before their turn: one
    /// `dpctl/dump-flows` per datapath keeps their matches (at most every [`CAPTURE_EVERY`]).
    pub(super) fn capture_if_behind(&mut self) {
        let due = self
            .last_capture
            .is_none_or(|t| t.elapsed() >= CAPTURE_EVERY);
        if !due || self.budget < 1.0 {
            return;
        }
        let Backend::Live { ovs, .. } = &mut self.backend else {
            return;
        };
        self.last_capture = Some(Instant::now());
        let before = ovs.requests();
        let generation = ovs.generation();
        let dps = ovs.datapaths().unwrap_or_default();
        let mut dumped = !dps.is_empty();
        for dp in dps {
            let Ok((flows, _malformed)) = ovs.dump_flows(&dp) else {
                dumped = false;
                continue;
            };
            for f in flows {
                if matches!(self.cache.get(&f.ufid), Some(Some(Entry::Queued)))
                    && self.captured.len() < QUEUE_MAX
                    && !self.captured.contains_key(&f.ufid)
                {
                    self.stats.captured += 1;
                    let dp = dp.clone();
                    self.captured.insert(
                        f.ufid,
                        Captured {
                            dp,
                            flow: f,
                            generation,
                        },
                    );
                }
            }
        }
        if dumped {
            // What waits now was in the dump, or had gone already.
            self.fresh.clear();
        }
        let spent = ovs.requests() - before;
        self.charge(spent);
    }

    /// While the queue keeps up, each new UFID's match is captured at once with one
    /// `dpctl/get-flow` (the explanation after its settling time asks for it again, the flow's
    /// counters having moved): a flow flushed or evicted within the settling time, or while
    /// older UFIDs are explained, is still re-translated from its match. A recirculated flow
    /// re-translates only while ovs-vswitchd keeps its recirculation state (its first pass's
    /// flow always). One datapath only: with several, `get-flow` dumps them all. A UFID queued
    /// `settle` ago or more is explained in this pump: not captured first.
    pub(super) fn capture_fresh(&mut self, settle: Duration) {
        let Backend::Live { ovs, .. } = &mut self.backend else {
            return;
        };
        if self.fresh.is_empty() || self.budget < 1.0 {
            return;
        }
        let before = ovs.requests();
        let generation = ovs.generation();
        let one_dp = match ovs.datapaths().as_deref() {
            Ok([_]) => true,
            Ok(_) => {
                self.fresh.clear();
                false
            }
            // ovs-vswitchd away: tried again at the next pump.
            Err(_) => false,
        };
        while one_dp && self.budget - (ovs.requests() - before) as f64 >= 1.0 {
            let Some((u, queued)) = self.fresh.pop_front() else {
                break;
            };
            if !matches!(self.cache.get(&u), Some(Some(Entry::Queued)))
                || self.captured.contains_key(&u)
                || self.captured.len() >= QUEUE_MAX
                || queued.elapsed() >= settle
            {
                continue;
            }
            match ovs.get_flow(u) {
                Ok((dp, flow)) => {
                    self.stats.captured += 1;
                    self.captured.insert(
                        u,
                        Captured {
                            dp,
                            flow,
                            generation,
                        },
                    );
                }
                // Gone already: its turn says so.
                Err(VswitchdError::UfidNotFound { .. }) => {}
                // ovs-vswitchd away: tried again at the next pump.
                Err(e) => {
                    tracing::debug!("capturing ufid:{u}: {e}");
                    self.fresh.push_front((u, queued));
                    break;
                }
            }
        }
        let spent = ovs.requests() - before;
        self.charge(spent);
    }
}

/// The rules a flow gone before its turn would hit now: `ofproto/trace` of its captured match,
/// saying so in the rules' error.
pub(super) fn retranslate<A: Appctl>(ovs: &mut Vswitchd<A>, dp: &str, flow: &DpFlow) -> FlowRules {
    let mut rules = ovs.rules_trace(dp, flow);
    rules.error = Some(format!(
        "{AFTER_EXPIRY}: re-translated with ofproto/trace from its match captured at first \
         sight{}",
        rules
            .error
            .take()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    ));
    rules
}
