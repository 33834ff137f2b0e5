//! What detrace asks ovs-vswitchd, over unixctl: the datapath flows and, for each, the OpenFlow
//! rules that built it (`ofproto/detrace` where OVS has it, `ofproto/trace` otherwise).

use std::{thread, time::Duration};

use super::{
    DpFlow, OfRule, RuleSource,
    dpflow::DpFlowError,
    ofrule::{DetraceMiss, parse_detrace, parse_trace},
    unixctl::{Appctl, UnixctlError},
};
use crate::uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum VswitchdError {
    #[error(transparent)]
    Unixctl(#[from] UnixctlError),
    #[error("ovs-vswitchd has no datapath (no bridge has a port yet?)")]
    NoDatapath,
    #[error(
        "ufid:{ufid} is not a current datapath flow (looked in {dps}); flows expire after ~10 s idle"
    )]
    UfidNotFound { ufid: Uuid, dps: String },
    #[error("malformed flow from dpctl/get-flow: {0}")]
    BadFlow(#[from] DpFlowError),
}

/// Parses the `port N: NAME [(type)]` lines of `dpctl/show`.
pub fn parse_port_names(text: &str) -> std::collections::BTreeMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let (n, rest) = l.trim().strip_prefix("port ")?.split_once(": ")?;
            Some((n.parse().ok()?, rest.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// Bounded retry while the flow's xlate cache is not filled yet ("Cache was not found": the
/// cache fills at the first revalidation after the flow sees packets, up to ~500 ms).
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 6,
            delay: Duration::from_millis(300),
        }
    }
}

/// The rules behind one flow, or why there are none.
#[derive(Clone, Debug, Default)]
pub struct FlowRules {
    pub source: Option<RuleSource>,
    pub rules: Vec<OfRule>,
    pub error: Option<String>,
    pub attempts: u32,
    /// detrace answered "Cache was not found" to the last attempt.
    pub cache_miss: bool,
}

pub struct Vswitchd<A: Appctl> {
    ctl: Counted<A>,
    has_detrace: bool,
    /// `dpctl/dump-dps`, asked once per daemon (and again when a flow is not found).
    dps: Option<Vec<String>>,
    /// The daemon's generation (see [`Appctl::generation`]) what we know was learnt from.
    generation: u64,
    pub retry: Retry,
}

/// Counts every request sent, so callers can bound the load they put on ovs-vswitchd.
struct Counted<A> {
    inner: A,
    requests: u64,
}

impl<A: Appctl> Counted<A> {
    fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError> {
        self.requests += 1;
        self.inner.call(method, params)
    }
}

fn detect_detrace(cmds: &str) -> bool {
    cmds.lines()
        .any(|l| l.split_whitespace().next() == Some("ofproto/detrace"))
}

impl<A: Appctl> Vswitchd<A> {
    /// Detects what this ovs-vswitchd can do from `list-commands` (never from version strings).
    pub fn new(ctl: A) -> Result<Self, VswitchdError> {
        let mut ctl = Counted {
            inner: ctl,
            requests: 0,
        };
        let has_detrace = detect_detrace(&ctl.call("list-commands", &[])?);
        let generation = ctl.inner.generation();
        Ok(Self {
            ctl,
            has_detrace,
            dps: None,
            generation,
            retry: Retry::default(),
        })
    }

    /// The daemon restarted since we last looked (a reconnection happened): what it can do
    /// and which datapaths it has are asked again. True when it did.
    pub fn follow_restart(&mut self) -> Result<bool, VswitchdError> {
        let now = self.ctl.inner.generation();
        if now == self.generation {
            return Ok(false);
        }
        self.dps = None;
        self.has_detrace = detect_detrace(&self.ctl.call("list-commands", &[])?);
        // Only once that answered: a failed ask is tried again at the next call.
        self.generation = self.ctl.inner.generation();
        Ok(true)
    }

    /// Changes when ovs-vswitchd was reconnected to after a restart.
    pub fn generation(&self) -> u64 {
        self.ctl.inner.generation()
    }

    pub fn has_detrace(&self) -> bool {
        self.has_detrace
    }

    /// Unixctl requests sent so far.
    pub fn requests(&self) -> u64 {
        self.ctl.requests
    }

    /// Datapath names, e.g. `system@ovs-system`, `netdev@ovs-netdev`, asked once.
    pub fn datapaths(&mut self) -> Result<Vec<String>, VswitchdError> {
        self.follow_restart()?;
        if let Some(d) = &self.dps {
            return Ok(d.clone());
        }
        let out = self.ctl.call("dpctl/dump-dps", &[])?;
        let dps: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if dps.is_empty() {
            return Err(VswitchdError::NoDatapath);
        }
        self.dps = Some(dps.clone());
        Ok(dps)
    }

    /// Datapath port numbers -> names, from `dpctl/show` (`  port 2: v-client`).
    pub fn port_names(&mut self) -> Result<std::collections::BTreeMap<u32, String>, VswitchdError> {
        Ok(parse_port_names(&self.ctl.call("dpctl/show", &[])?))
    }

    /// Every flow of a datapath, with names (`-m`); malformed lines come back as errors.
    pub fn dump_flows(
        &mut self,
        dp: &str,
    ) -> Result<(Vec<DpFlow>, Vec<DpFlowError>), VswitchdError> {
        let out = self.ctl.call("dpctl/dump-flows", &["-m", dp])?;
        Ok(DpFlow::parse_dump(&out))
    }

    /// The flow with this UFID, and the datapath that holds it.
    ///
    /// `dpctl/get-flow` counts `-m` against its two arguments, so `-m DP ufid:X` is refused:
    /// with one datapath ask `-m ufid:X`; with several, search each datapath's dump.
    pub fn get_flow(&mut self, ufid: Uuid) -> Result<(String, DpFlow), VswitchdError> {
        let dps = self.datapaths()?;
        let arg = format!("ufid:{ufid}");
        if let [dp] = dps.as_slice() {
            match self.ctl.call("dpctl/get-flow", &["-m", &arg]) {
                Ok(out) => {
                    if let Some(line) = out.lines().find(|l| l.starts_with("ufid:")) {
                        return Ok((dp.clone(), DpFlow::parse(line)?));
                    }
                }
                // "getting flow (No such file or directory)": not there (any more).
                Err(UnixctlError::Remote { message, .. }) if message.contains("No such file") => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            for dp in &dps {
                let (flows, _) = self.dump_flows(dp)?;
                if let Some(f) = flows.into_iter().find(|f| f.ufid == ufid) {
                    return Ok((dp.clone(), f));
                }
            }
        }
        Err(VswitchdError::UfidNotFound {
            ufid,
            dps: dps.join(", "),
        })
    }

    /// The OpenFlow rules behind `flow` in datapath `dp`. Never fails as a whole: a flow that
    /// vanished or an unexpected reply is reported in `error` and the caller goes on.
    pub fn rules(&mut self, dp: &str, flow: &DpFlow) -> FlowRules {
        if let Err(e) = self.follow_restart() {
            return FlowRules {
                error: Some(e.to_string()),
                ..Default::default()
            };
        }
        if !self.has_detrace {
            return self.rules_trace(dp, flow);
        }
        // A flow that never saw a packet has no xlate cache and never will: don't wait for it.
        let attempts = if flow.packets == 0 {
            1
        } else {
            self.retry.attempts.max(1)
        };
        let found = self.rules_detrace(flow.ufid, attempts);
        if found.error.is_some() && found.rules.is_empty() && found.cache_miss {
            // Better the rules this packet would hit now than none: say which method gave them.
            let mut traced = self.rules_trace(dp, flow);
            traced.error = Some(format!(
                "{}; rules below are re-translated with ofproto/trace",
                found.error.unwrap_or_default()
            ));
            traced.attempts += found.attempts;
            return traced;
        }
        found
    }

    fn rules_detrace(&mut self, ufid: Uuid, attempts: u32) -> FlowRules {
        let arg = format!("ufid:{ufid}");
        let mut out = FlowRules {
            source: Some(RuleSource::Detrace),
            ..Default::default()
        };
        for attempt in 1..=attempts {
            out.attempts = attempt;
            let text = match self.ctl.call("ofproto/detrace", &[&arg]) {
                Ok(text) => text,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            };
            match parse_detrace(&text) {
                Ok(rules) => {
                    out.rules = rules;
                    out.error = None;
                    out.cache_miss = false;
                    return out;
                }
                Err(DetraceMiss::CacheNotFound(m)) => {
                    out.error = Some(format!("ofproto/detrace: {m} (tried {attempt}x)"));
                    out.cache_miss = true;
                    if attempt < attempts {
                        thread::sleep(self.retry.delay);
                    }
                }
                Err(DetraceMiss::UfidNotFound(m)) => {
                    out.error = Some(format!("ofproto/detrace: {m}: the flow is gone"));
                    return out;
                }
            }
        }
        out
    }

    /// OVS < 3.4: re-translate the flow's match with `ofproto/trace <dp> <match>`. The trace takes
    /// the datapath's name without its type (`ovs-netdev`, not `netdev@ovs-netdev`), and resumes
    /// recirculated flows from their frozen state.
    pub fn rules_trace(&mut self, dp: &str, flow: &DpFlow) -> FlowRules {
        let dp_name = dp.split_once('@').map_or(dp, |(_, n)| n);
        let mut out = FlowRules {
            source: Some(RuleSource::Trace),
            attempts: 1,
            ..Default::default()
        };
        match self
            .ctl
            .call("ofproto/trace", &[dp_name, &flow.match_traceable()])
        {
            Ok(text) => {
                out.rules = parse_trace(&text);
                if out.rules.is_empty() {
                    out.error = Some("ofproto/trace printed no rule".into());
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    #[test]
    fn port_names_from_the_lab() {
        let ports = super::parse_port_names(&crate::testutil::fixture_raw(
            "lab/events-lab-6.12.dpctl-show.txt",
        ));
        assert_eq!(ports.get(&2).map(String::as_str), Some("v-client"));
        assert_eq!(ports.get(&3).map(String::as_str), Some("v-server"));
        assert_eq!(ports.get(&1).map(String::as_str), Some("br-int"));
        assert_eq!(ports.len(), 4);
    }
}
