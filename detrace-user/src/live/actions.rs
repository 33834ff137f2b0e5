//! Per-packet counting's watch on the flows' actions (counting from the flow table splits a
//! changed flow itself: live::flowtable).

use std::time::{Duration, Instant};

use crate::{FastMap, ovs::netlink::KernelFlow, uuid::Uuid};

/// Per-packet counting's watch on the flows' actions: the probes count each drop as it
/// happens, but a UFID is explained once, so a flow whose actions change in place (a
/// revalidator's modify) would keep the explanation of its old actions. Each read of the
/// kernel's table (fingerprints only) says which UFIDs changed, for their explanations to be
/// made again. A UFID absent from the table is remembered for `forget_after` (a restarted
/// ovs-vswitchd may reinstall it with other actions), then forgotten.
#[derive(Debug)]
pub struct ActionWatch {
    /// Per UFID: its actions' fingerprint, and when its flow was last in the table.
    seen: FastMap<Uuid, (u64, Instant)>,
    forget_after: Duration,
    /// Changes seen so far.
    pub changed: u64,
}

impl ActionWatch {
    pub fn new(forget_after: Duration) -> Self {
        Self {
            seen: FastMap::default(),
            forget_after,
            changed: 0,
        }
    }

    /// The UFIDs of `table` (the flow table at `now`) whose actions differ from those they
    /// had when last seen.
    pub fn changes(&mut self, table: &[KernelFlow], now: Instant) -> Vec<Uuid> {
        let after = self.forget_after;
        self.seen
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < after);
        let mut out = Vec::new();
        for f in table {
            let u = Uuid::from_words(f.ufid);
            if let Some((was, _)) = self.seen.insert(u, (f.actions, now))
                && was != f.actions
            {
                out.push(u);
            }
        }
        self.changed += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u32; 4] = [1, 0, 0, 0];
    const B: [u32; 4] = [2, 0, 0, 0];

    /// Per-packet counting: a UFID whose actions changed is said once (its explanation to be
    /// made again), also when it comes back with other actions after it left the table; one
    /// gone for longer than `forget_after` is new when it comes back.
    #[test]
    fn per_packet_flows_whose_actions_change_are_said() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let flow = |u: [u32; 4], actions| KernelFlow {
            ufid: u,
            actions,
            ..KernelFlow::default()
        };
        let mut w = ActionWatch::new(Duration::from_secs(60));
        assert!(w.changes(&[flow(A, 1), flow(B, 2)], at(0)).is_empty());
        assert!(w.changes(&[flow(A, 1), flow(B, 2)], at(1)).is_empty());
        assert_eq!(
            w.changes(&[flow(A, 5), flow(B, 2)], at(2)),
            [Uuid::from_words(A)]
        );
        assert!(w.changes(&[flow(A, 5)], at(3)).is_empty());
        // B, gone for 10 s, reinstalled with other actions.
        assert_eq!(
            w.changes(&[flow(A, 5), flow(B, 3)], at(12)),
            [Uuid::from_words(B)]
        );
        // A, gone for longer than forget_after: new.
        assert!(w.changes(&[flow(B, 3)], at(13)).is_empty());
        assert!(w.changes(&[flow(A, 9), flow(B, 3)], at(80)).is_empty());
        assert_eq!(w.changed, 2);
    }
}
