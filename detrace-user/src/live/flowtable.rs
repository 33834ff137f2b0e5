//! Per-flow counts from the kernel's own flow table, with no probe per packet: each read dumps
//! the datapath's flows (packets, bytes, actions; ovs::netlink) and adds what the flows removed
//! since the start had when they went (the removal probe's REMOVED_STATS, per UFID). Counts
//! are from the start of the run, exact: the flows present at the start are taken as a
//! baseline, and a flow created and deleted between two reads is in REMOVED_STATS.
//!
//! For a UFID u: `count = removed(u) - removed_at_start(u) + live(u) - live_at_start(u)`,
//! where live is the flow in the table now (a later flow of the same UFID starts from 0; the
//! baseline flow's count is in `removed` once it went, so the formula holds either way).
//!
//! The dump and the map cannot be read at one instant. A flow dumped and then freed before
//! REMOVED_STATS is read would count twice: REMOVED_STATS is read before and after the dump,
//! and a UFID that lost a flow in between has its dumped value ignored this once (its flow is
//! gone or new; the next read has it right). A flow freed but whose RCU callback has not run
//! yet is in neither for a moment: each count is kept at least at what was reported before,
//! so counts never go back; the next read catches up.
//!
//! A flow's packets also include those ovs-vswitchd executed with its actions after the upcall
//! that installed it (the probes' EXEC_STATS, once per upcall): the kernel's stats miss them.
//! A flow gone from the table for [`RETIRE_AFTER`] with its count unchanged is retired: its
//! last stats are handed out once ([`Retirement::take`]), then forgotten here and in
//! the probes' maps (REMOVED_STATS, EXEC_STATS), so that what a run keeps follows the flows
//! that exist, not every flow met since the start (the maps would fill, and each read would
//! walk them all). A UFID that comes back later counts from zero again. Deleting a map entry
//! races with the removal of a new flow of the same UFID created and freed in the
//! milliseconds between the read and the deletion (its count would be lost): a flow lives
//! for at least one revalidation, so this is not expected to happen, and is not detected.
//!
//! Drops: a flow whose actions drop (an explicit `drop`, or none that sends the packet on)
//! drops every packet it counts under those actions, with that reason (the executed ones as
//! `drops_after_upcall`). A flow's actions can change under its UFID (a revalidator's modify:
//! an ACL turned to drop): each read fingerprints them, and a changed flow's counts before the
//! change are handed out like a retired flow's (see [`FlowAccounts::read_at`]'s `tally`).
//! Drops that are no flow's action come from the drop tracepoint and are counted by reason,
//! against no flow (`Counter::DropsNoFlow`).

use std::time::{Duration, Instant};

use detrace_common::{DROP_REASON_SLOTS, FlowStats, RemovedStats};

use crate::{FastMap, ovs::netlink::KernelFlow, uuid::Uuid};

/// What the accounting reads: the kernel (through the probes and netlink), or a test.
pub trait FlowReads {
    /// REMOVED_STATS, summed over CPUs.
    fn removed(&mut self) -> anyhow::Result<FastMap<Uuid, RemovedStats>>;
    /// The flow table now.
    fn dump(&mut self) -> anyhow::Result<Vec<KernelFlow>>;
    /// The probes' per-UFID stats (only `drops_after_upcall` is kept here).
    fn probe_stats(&mut self) -> anyhow::Result<FastMap<Uuid, FlowStats>>;
    /// Deletes retired UFIDs from the probes' per-UFID maps.
    fn forget(&mut self, ufids: &[Uuid]) -> anyhow::Result<()>;
}

/// How long a flow stays in the accounts after it left the kernel's table (its count
/// unchanged meanwhile): longer than the explanation of a flow takes when the budget is short
/// (sinks fold a retired flow with what is known of it then), and than a report interval.
pub const RETIRE_AFTER: Duration = Duration::from_secs(60);

/// The baseline and what was last reported.
#[derive(Debug)]
pub struct FlowAccounts {
    base_removed: FastMap<Uuid, (u64, u64)>,
    base_live: FastMap<Uuid, (u64, u64)>,
    /// What each UFID counted as last read, and since when under its current actions.
    tally: FastMap<Uuid, Tally>,
    /// UFIDs not in the table at the last read: since when, and their removals then.
    gone: FastMap<Uuid, (Instant, u64)>,
    pub retirement: Retirement,
    /// Packets and drops of every flow retired so far.
    retired_totals: (u64, u64),
    /// Reads where a flow went during the dump (its live value ignored once).
    pub raced: u64,
    /// Flows whose actions changed in place: their counts before were handed out as retired.
    pub changed: u64,
    /// Packets and drops over every flow, at the last read.
    pub totals: (u64, u64),
    /// Latency from the probes (`--latency-sample`): they follow a sample of packets.
    pub latency: bool,
}

/// REMOVED_STATS, the live flows (by UFID), and how many went during the dump.
type Read = (FastMap<Uuid, RemovedStats>, FastMap<Uuid, KernelFlow>, u64);

/// One consistent-enough read: REMOVED_STATS around the dump; the dump's value of a UFID that
/// lost a flow during it is left out.
fn read_once(r: &mut impl FlowReads) -> anyhow::Result<Read> {
    let before = r.removed()?;
    let dump = r.dump()?;
    let after = r.removed()?;
    let mut raced = 0;
    let removals = |m: &FastMap<Uuid, RemovedStats>, u: &Uuid| m.get(u).map_or(0, |s| s.removals);
    let mut live = FastMap::default();
    for f in dump {
        let u = Uuid::from_words(f.ufid);
        if removals(&before, &u) == removals(&after, &u) {
            live.insert(u, f);
        } else {
            raced += 1;
            // Its actions are still good to know.
            live.insert(
                u,
                KernelFlow {
                    packets: 0,
                    bytes: 0,
                    ..f
                },
            );
        }
    }
    Ok((after, live, raced))
}

impl FlowAccounts {
    /// Takes the baseline: what the flow table and REMOVED_STATS hold now is not counted.
    pub fn start(r: &mut impl FlowReads) -> anyhow::Result<Self> {
        let (removed, live, _) = read_once(r)?;
        Ok(Self {
            base_removed: removed
                .into_iter()
                .map(|(u, s)| (u, (s.packets, s.bytes)))
                .collect(),
            base_live: live
                .into_iter()
                .map(|(u, f)| (u, (f.packets, f.bytes)))
                .collect(),
            tally: FastMap::default(),
            gone: FastMap::default(),
            retirement: Retirement::new(RETIRE_AFTER),
            retired_totals: (0, 0),
            raced: 0,
            changed: 0,
            totals: (0, 0),
            latency: false,
        })
    }

    /// Cumulative per-UFID stats since [`Self::start`] (or since the UFID's last retirement):
    /// flows that counted anything and are not retired.
    pub fn read(&mut self, r: &mut impl FlowReads) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        self.read_at(r, Instant::now(), &|_| true)
    }

    /// [`Self::read`] at `now` (when UFIDs left the table, for their retirement); a flow due
    /// to retire waits while `may_retire` says no (its explanation still queued).
    pub fn read_at(
        &mut self,
        r: &mut impl FlowReads,
        now: Instant,
        may_retire: &dyn Fn(&Uuid) -> bool,
    ) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        let (removed, live, raced) = read_once(r)?;
        self.raced += raced;
        let probes = r.probe_stats()?;
        // A UFID the probes counted executed packets for is accounted even if its flow was
        // never seen in the table (gone before a read, and REMOVED_STATS full): its packets
        // count, and its EXEC_STATS entry is retired in time.
        let mut ufids: Vec<Uuid> = removed
            .keys()
            .chain(live.keys())
            .chain(probes.keys())
            .copied()
            .collect();
        ufids.sort_unstable();
        ufids.dedup();
        let mut out = Vec::with_capacity(ufids.len());
        let mut retire = Vec::new();
        for u in ufids {
            let rm = removed.get(&u).copied().unwrap_or_default();
            let lv = live.get(&u);
            let (bp, bb) = self.base_removed.get(&u).copied().unwrap_or((0, 0));
            let (lp, lb) = self.base_live.get(&u).copied().unwrap_or((0, 0));
            let packets =
                (rm.packets.saturating_sub(bp) + lv.map_or(0, |f| f.packets)).saturating_sub(lp);
            let bytes =
                (rm.bytes.saturating_sub(bb) + lv.map_or(0, |f| f.bytes)).saturating_sub(lb);
            let slot = lv.map_or(rm.drop_slot, |f| f.drop_slot);
            let stats = self.tally(u, [packets, bytes], slot, lv, probes.get(&u));
            if lv.is_some() {
                self.gone.remove(&u);
            } else {
                let since = self.gone.entry(u).or_insert((now, rm.removals));
                if since.1 != rm.removals {
                    // Another flow of this UFID came and went since.
                    *since = (now, rm.removals);
                } else if self.retirement.due(since.0, now) && may_retire(&u) {
                    retire.push((u, stats));
                    continue;
                }
            }
            if let Some(s) = stats {
                out.push((u.words(), s));
            }
        }
        if !retire.is_empty() {
            let ufids: Vec<Uuid> = retire.iter().map(|(u, _)| *u).collect();
            r.forget(&ufids)?;
            for (u, s) in retire {
                self.base_removed.remove(&u);
                self.base_live.remove(&u);
                self.tally.remove(&u);
                self.gone.remove(&u);
                if let Some(s) = &s {
                    self.retired_totals.0 += s.packets;
                    self.retired_totals.1 += s.drops;
                }
                self.retirement.add(u.words(), s);
            }
        }
        self.totals = out.iter().fold(self.retired_totals, |(p, d), (_, s)| {
            (p + s.packets, d + s.drops)
        });
        Ok(out)
    }

    /// Takes a UFID's counts at this read (kernel packets and bytes since the start, the drop
    /// slot of its actions, its flow in the table if there, the probes' stats); returns its
    /// stats since its current actions began (None: nothing counted).
    ///
    /// A flow whose actions changed in place (a revalidator's modify: same UFID, new actions)
    /// counted up to the last read under the old ones: that part is handed out as a retired
    /// flow's counts are (its sinks fold it with the explanation of the old actions), and the
    /// UFID counts afresh, to be explained again. Packets between the two reads go with the
    /// new actions (which of them came before the change is not known), sampled latencies
    /// with the old. A flow whose explanation was still queued hands its old part out
    /// unexplained: the old actions can no longer be asked about.
    fn tally(
        &mut self,
        u: Uuid,
        kernel: [u64; 2],
        slot: u32,
        live: Option<&KernelFlow>,
        probe: Option<&FlowStats>,
    ) -> Option<FlowStats> {
        let latency = self.latency;
        let t = self.tally.entry(u).or_default();
        let before = t.clone();
        t.update(kernel, slot);
        t.executed(probe);
        let Some(f) = live else {
            return t.stats(latency, probe);
        };
        match before.actions {
            Some(was) if was != f.actions => {
                let old = before.stats(latency, probe);
                t.restart(&before, probe);
                t.actions = Some(f.actions);
                self.changed += 1;
                if let Some(s) = &old {
                    self.retired_totals.0 += s.packets;
                    self.retired_totals.1 += s.drops;
                }
                self.retirement.hand_out(u.words(), old);
            }
            _ => t.actions = Some(f.actions),
        }
        t.stats(latency, probe)
    }

    /// The counts as of the last read, without reading the flow table (gone with its module):
    /// the probes' maps are detrace's own and still read.
    pub fn last_read(
        &mut self,
        r: &mut impl FlowReads,
    ) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        let probes = r.probe_stats()?;
        for (u, t) in &mut self.tally {
            t.executed(probes.get(u));
        }
        let mut out: Vec<_> = self
            .tally
            .iter()
            .filter_map(|(u, t)| Some((u.words(), t.stats(self.latency, probes.get(u))?)))
            .collect();
        out.sort_unstable_by_key(|(w, _)| *w);
        Ok(out)
    }
}

/// What a UFID counted, as last read, and where its current actions began.
#[derive(Clone, Debug, Default)]
struct Tally {
    /// Kernel packets and bytes, and packets and bytes ovs-vswitchd executed after upcalls,
    /// since the start (or the UFID's last retirement); never going back.
    counts: [u64; 4],
    /// The drop its actions make (a drop-reason slot; 0: none), as last read.
    slot: u32,
    /// Its actions' fingerprint when last in the table (None: not seen there yet).
    actions: Option<u64>,
    /// `counts` when its current actions began: below them, the earlier actions' counts.
    from: [u64; 4],
    /// The probes' latency samples when its current actions began (`--latency-sample`).
    latency_from: Option<Box<FlowStats>>,
}

impl Tally {
    /// Its kernel counts and drop slot at this read.
    fn update(&mut self, kernel: [u64; 2], slot: u32) {
        self.counts[0] = self.counts[0].max(kernel[0]);
        self.counts[1] = self.counts[1].max(kernel[1]);
        self.slot = slot;
    }

    /// The packets ovs-vswitchd executed with its actions after the upcall that installed
    /// it, as the probes counted them (EXEC_STATS): counted as the flow's, as per-packet
    /// counting does.
    fn executed(&mut self, probe: Option<&FlowStats>) {
        if let Some(p) = probe {
            self.counts[2] = self.counts[2].max(p.packets);
            self.counts[3] = self.counts[3].max(p.bytes);
        }
    }

    /// Its current actions begin at `before`'s counts (the last read's), and at the probes'
    /// latency samples now.
    fn restart(&mut self, before: &Tally, probe: Option<&FlowStats>) {
        self.from = before.counts;
        self.latency_from = probe.map(|p| Box::new(*p));
    }

    /// Its stats since its current actions began (None: nothing counted).
    fn stats(&self, latency: bool, probe: Option<&FlowStats>) -> Option<FlowStats> {
        let [kp, kb, ep, eb] =
            core::array::from_fn(|i| self.counts[i].saturating_sub(self.from[i]));
        let mut s = flow_stats((kp, kb, self.slot), (ep, eb));
        if let (true, Some(p)) = (latency, probe) {
            let p = match &self.latency_from {
                Some(from) => p.saturating_sub(from),
                None => *p,
            };
            s.latency = p.latency;
            s.latency_sum_ns = p.latency_sum_ns;
        }
        (s.packets > 0 || s.drops > 0).then_some(s)
    }
}

/// Retirement for per-packet counting (FLOW_STATS, filled by the probes at every pass): a
/// UFID whose counters have not moved for `retire_after` is retired as in [`FlowAccounts`]
/// (its flow has expired: ovs-vswitchd removes a flow idle for 10 s by default). If it was
/// only idle, its next packet starts a new entry from zero: counted either way. A packet
/// counted between the read and the deletion of an idle UFID's entry is lost (not detected).
#[derive(Debug)]
pub struct IdleFlows {
    /// Per UFID: its packets + drops at the last change, and when that was.
    seen: FastMap<Uuid, (u64, Instant)>,
    pub retirement: Retirement,
}

impl IdleFlows {
    pub fn new(retire_after: Duration) -> Self {
        Self {
            seen: FastMap::default(),
            retirement: Retirement::new(retire_after),
        }
    }

    /// The flows of `stats` not retired now; `forget` deletes the retired ones' entries.
    pub fn read_at(
        &mut self,
        stats: Vec<([u32; 4], FlowStats)>,
        now: Instant,
        may_retire: &dyn Fn(&Uuid) -> bool,
        forget: impl FnOnce(&[Uuid]) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
        let mut out = Vec::with_capacity(stats.len());
        let mut retire = Vec::new();
        for (w, s) in stats {
            let u = Uuid::from_words(w);
            let count = s.packets + s.drops;
            let e = self.seen.entry(u).or_insert((count, now));
            if e.0 != count {
                *e = (count, now);
            } else if self.retirement.due(e.1, now) && may_retire(&u) {
                retire.push((w, s));
                continue;
            }
            out.push((w, s));
        }
        if !retire.is_empty() {
            let ufids: Vec<Uuid> = retire.iter().map(|(w, _)| Uuid::from_words(*w)).collect();
            forget(&ufids)?;
            for u in &ufids {
                self.seen.remove(u);
            }
            for (w, s) in retire {
                self.retirement.add(w, Some(s));
            }
        }
        // UFIDs no longer in the map (deleted elsewhere) are not kept.
        if self.seen.len() > 2 * out.len() + 1024 {
            let present: rustc_hash::FxHashSet<Uuid> =
                out.iter().map(|(w, _)| Uuid::from_words(*w)).collect();
            self.seen.retain(|u, _| present.contains(u));
        }
        Ok(out)
    }
}

/// Retirement as both countings do it ([`FlowAccounts`], [`IdleFlows`]): after how long, how
/// many so far, and the retired flows' last stats not taken yet.
#[derive(Debug)]
pub struct Retirement {
    /// See [`RETIRE_AFTER`].
    pub after: Duration,
    /// Flows retired so far.
    pub count: u64,
    pending: Vec<([u32; 4], FlowStats)>,
}

impl Retirement {
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            count: 0,
            pending: Vec::new(),
        }
    }

    /// Whether a flow gone (or still) since `since` is due at `now`.
    fn due(&self, since: Instant, now: Instant) -> bool {
        now.saturating_duration_since(since) >= self.after
    }

    /// A flow retired, with its last stats (None: it counted nothing).
    fn add(&mut self, ufid: [u32; 4], stats: Option<FlowStats>) {
        self.count += 1;
        self.hand_out(ufid, stats);
    }

    /// Counts handed out as a retired flow's, the flow not retired (its actions changed).
    fn hand_out(&mut self, ufid: [u32; 4], stats: Option<FlowStats>) {
        if let Some(s) = stats {
            self.pending.push((ufid, s));
        }
    }

    /// The flows retired since the last call, with their last stats (each given once).
    pub fn take(&mut self) -> Vec<([u32; 4], FlowStats)> {
        std::mem::take(&mut self.pending)
    }
}

/// A flow's [`FlowStats`] from its kernel counts, the drop its actions make (slot 0: none) and
/// the packets executed with its actions after their upcall (packets, bytes).
fn flow_stats((packets, bytes, slot): (u64, u64, u32), exec: (u64, u64)) -> FlowStats {
    let mut s = FlowStats {
        packets: packets + exec.0,
        bytes: bytes + exec.1,
        ..FlowStats::default()
    };
    let slot = slot as usize;
    if slot != 0 && slot < DROP_REASON_SLOTS {
        // Every packet of a flow that drops is dropped by it, executed ones included.
        s.drops_after_upcall = exec.0;
        s.drops = s.packets;
        s.drop_reasons[slot] = s.drops;
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;

    type DuringDump = Box<dyn FnOnce(&mut Fake)>;

    /// A kernel to script: the flow table, REMOVED_STATS, and what happens during a dump.
    #[derive(Default)]
    struct Fake {
        table: FastMap<[u32; 4], KernelFlow>,
        removed: FastMap<[u32; 4], RemovedStats>,
        executed: FastMap<[u32; 4], u64>,
        /// Run once, right after the next dump was taken (a flow going meanwhile).
        during_dump: Option<DuringDump>,
        /// UFIDs deleted from the maps by retirement, in order.
        forgotten: Vec<[u32; 4]>,
    }

    impl Fake {
        fn hit(&mut self, u: [u32; 4], n: u64, drop_slot: u32) {
            let f = self.table.entry(u).or_insert(KernelFlow {
                ufid: u,
                drop_slot,
                ..KernelFlow::default()
            });
            f.packets += n;
            f.bytes += 100 * n;
        }
        /// OVS_FLOW_CMD_SET with new actions (a revalidator's modify): same UFID, same stats.
        fn modify(&mut self, u: [u32; 4], actions: u64, drop_slot: u32) {
            let f = self.table.get_mut(&u).unwrap();
            (f.actions, f.drop_slot) = (actions, drop_slot);
        }
        /// ovs_flow_tbl_remove, then the RCU callback (the removal probe).
        fn remove(&mut self, u: [u32; 4]) {
            if let Some(f) = self.table.remove(&u) {
                let r = self.removed.entry(u).or_default();
                r.packets += f.packets;
                r.bytes += f.bytes;
                r.removals += 1;
                r.drop_slot = f.drop_slot;
            }
        }
    }

    impl FlowReads for Fake {
        fn removed(&mut self) -> anyhow::Result<FastMap<Uuid, RemovedStats>> {
            Ok(self
                .removed
                .iter()
                .map(|(u, s)| (Uuid::from_words(*u), *s))
                .collect())
        }
        fn dump(&mut self) -> anyhow::Result<Vec<KernelFlow>> {
            let d = self.table.values().copied().collect();
            if let Some(f) = self.during_dump.take() {
                f(self);
            }
            Ok(d)
        }
        fn probe_stats(&mut self) -> anyhow::Result<FastMap<Uuid, FlowStats>> {
            Ok(self
                .executed
                .iter()
                .map(|(u, n)| {
                    let s = FlowStats {
                        packets: *n,
                        bytes: 100 * *n,
                        ..FlowStats::default()
                    };
                    (Uuid::from_words(*u), s)
                })
                .collect())
        }
        fn forget(&mut self, ufids: &[Uuid]) -> anyhow::Result<()> {
            for u in ufids {
                self.removed.remove(&u.words());
                self.executed.remove(&u.words());
            }
            self.forgotten.extend(ufids.iter().map(|u| u.words()));
            Ok(())
        }
    }

    fn get(v: &[([u32; 4], FlowStats)], u: [u32; 4]) -> FlowStats {
        v.iter()
            .find(|(w, _)| *w == u)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }

    impl FlowAccounts {
        /// A read where every flow due to retire may.
        fn read_at_all(
            &mut self,
            r: &mut Fake,
            now: Instant,
        ) -> anyhow::Result<Vec<([u32; 4], FlowStats)>> {
            self.read_at(r, now, &|_| true)
        }
    }

    const A: [u32; 4] = [1, 0, 0, 0];
    const B: [u32; 4] = [2, 0, 0, 0];
    const C: [u32; 4] = [3, 0, 0, 0];

    #[test]
    fn counts_from_the_start_across_removals() {
        let mut k = Fake::default();
        k.hit(A, 50, 0); // before the start: not counted
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 10, 0);
        assert_eq!(get(&acc.read(&mut k).unwrap(), A).packets, 10);
        // del-flows mid-interval, then the flow comes back (same UFID, from 0).
        k.hit(A, 5, 0);
        k.remove(A);
        k.hit(A, 7, 0);
        let v = acc.read(&mut k).unwrap();
        assert_eq!((get(&v, A).packets, get(&v, A).bytes), (22, 2200));
        // A flow that appears and vanishes between two reads, dropping: counted, as drops.
        k.hit(B, 4, 3);
        k.remove(B);
        let v = acc.read(&mut k).unwrap();
        let b = get(&v, B);
        assert_eq!((b.packets, b.drops, b.drop_reasons[3]), (4, 4, 4));
        assert_eq!(get(&v, A).packets, 22);
    }

    #[test]
    fn a_flow_removed_during_the_dump_is_not_counted_twice() {
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 10, 0);
        assert_eq!(get(&acc.read(&mut k).unwrap(), A).packets, 10);
        k.hit(A, 3, 0);
        k.during_dump = Some(Box::new(|k: &mut Fake| k.remove(A)));
        let v = acc.read(&mut k).unwrap();
        assert_eq!(get(&v, A).packets, 13, "dumped 13 and then removed with 13");
        assert_eq!(acc.raced, 1);
        // Freed but its RCU callback not run yet: in neither; the count does not go back.
        k.hit(C, 2, 0);
        let f = k.table.remove(&C).unwrap();
        assert_eq!(get(&acc.read(&mut k).unwrap(), C).packets, 0);
        k.table.insert(C, f);
        k.remove(C);
        assert_eq!(get(&acc.read(&mut k).unwrap(), C).packets, 2);
    }

    #[test]
    fn drops_of_drop_flows_and_after_upcall() {
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 6, 3); // explicit drop
        k.hit(B, 9, 0); // forwards
        k.executed.insert(A, 1); // its first packet, executed by ovs-vswitchd
        k.executed.insert(B, 2); // executed with B's actions: B's packets, not drops
        let v = acc.read(&mut k).unwrap();
        let a = get(&v, A);
        assert_eq!(
            (a.drops, a.drops_after_upcall, a.drop_reasons[3]),
            (7, 1, 7)
        );
        assert_eq!(get(&v, B).drops, 0);
    }

    /// A flow allowed, then (an ACL changed) dropping, its actions modified in place: the
    /// packets before the change are handed out with the old actions (as retired: folded with
    /// their explanation), not counted as drops; those after count afresh under the new ones.
    /// Without the split, all 10 + 4 would read as drops of the new actions.
    #[test]
    fn a_flow_whose_actions_change_in_place_counts_apart() {
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 10, 0);
        k.executed.insert(A, 1);
        let v = acc.read(&mut k).unwrap();
        assert_eq!((get(&v, A).packets, get(&v, A).drops), (11, 0));
        k.modify(A, 7, 3);
        k.hit(A, 4, 3);
        // Split at the last read's counts: the 4 since go with the new actions.
        let v = acc.read(&mut k).unwrap();
        let gone = acc.retirement.take();
        assert_eq!(gone.len(), 1);
        let (u, old) = gone[0];
        assert_eq!((u, old.packets, old.drops), (A, 11, 0), "{old:?}");
        let a = get(&v, A);
        assert_eq!((a.packets, a.drops, a.drops_after_upcall), (4, 4, 0));
        assert_eq!((acc.changed, acc.retirement.count), (1, 0));
        k.hit(A, 5, 3);
        let v = acc.read(&mut k).unwrap();
        let a = get(&v, A);
        assert_eq!((a.packets, a.drops, a.drop_reasons[3]), (9, 9, 9));
        assert_eq!(
            acc.totals,
            (20, 9),
            "the handed-out part stays in the totals"
        );
        assert!(acc.retirement.take().is_empty(), "split once");
        // Gone and back with yet other actions (an ovs-vswitchd restart): split again.
        k.remove(A);
        acc.read(&mut k).unwrap();
        k.hit(A, 2, 0);
        k.modify(A, 9, 0);
        let v = acc.read(&mut k).unwrap();
        let gone = acc.retirement.take();
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].1.packets, gone[0].1.drops), (9, 9));
        assert_eq!((get(&v, A).packets, get(&v, A).drops), (2, 0));
        assert_eq!(acc.totals, (22, 9));
    }

    /// The module gone (the table unreadable): the counts as last read, the probes' executed
    /// packets (detrace's own map) still added.
    #[test]
    fn last_read_without_the_table() {
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 6, 3);
        k.hit(B, 9, 0);
        let read = acc.read(&mut k).unwrap();
        k.hit(A, 100, 3); // never read: the table went
        k.executed.insert(A, 1);
        let last = acc.last_read(&mut k).unwrap();
        assert_eq!(last.len(), read.len());
        assert_eq!((get(&last, A).packets, get(&last, A).drops), (7, 7));
        assert_eq!(get(&last, B).packets, 9);
    }

    /// A flow gone from the table for RETIRE_AFTER, its count unchanged, is handed out once
    /// with its last stats and forgotten here and in the maps; back later, it counts from 0.
    /// The totals keep what retired flows counted.
    #[test]
    fn gone_flows_retire_once_and_come_back_from_zero() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 6, 3);
        k.hit(B, 9, 0);
        k.executed.insert(A, 1);
        acc.read_at_all(&mut k, at(0)).unwrap();
        k.remove(A);
        // Gone at 1 s; still accounted until 61 s.
        let v = acc.read_at_all(&mut k, at(1)).unwrap();
        assert_eq!(get(&v, A).drops, 7);
        let v = acc.read_at_all(&mut k, at(60)).unwrap();
        assert_eq!(get(&v, A).packets, 7);
        assert!(acc.retirement.take().is_empty());
        let v = acc.read_at_all(&mut k, at(61)).unwrap();
        assert_eq!(get(&v, A).packets, 0, "retired: not in the read any more");
        assert_eq!(get(&v, B).packets, 9, "B is in the table: never retired");
        let gone = acc.retirement.take();
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].0, gone[0].1.packets, gone[0].1.drops), (A, 7, 7));
        assert!(acc.retirement.take().is_empty(), "given once");
        assert_eq!(k.forgotten, vec![A]);
        assert!(!k.removed.contains_key(&A) && !k.executed.contains_key(&A));
        assert_eq!(
            acc.totals,
            (16, 7),
            "the totals keep the retired flow's counts"
        );
        assert_eq!(acc.retirement.count, 1);
        // The UFID comes back: from zero.
        k.hit(A, 2, 3);
        let v = acc.read_at_all(&mut k, at(62)).unwrap();
        assert_eq!(get(&v, A).packets, 2);
        assert_eq!(acc.totals, (18, 9));
    }

    /// A UFID whose flow comes and goes again while it waits for retirement starts waiting
    /// anew; one whose flow is back in the table is not retired.
    #[test]
    fn retirement_waits_for_the_last_departure() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 1, 0);
        k.remove(A);
        k.hit(C, 1, 0);
        k.remove(C);
        acc.read_at_all(&mut k, at(0)).unwrap();
        // A comes and goes between two reads (another removal); C comes back and stays.
        k.hit(A, 4, 0);
        k.remove(A);
        k.hit(C, 5, 0);
        acc.read_at_all(&mut k, at(30)).unwrap();
        let v = acc.read_at_all(&mut k, at(70)).unwrap();
        assert_eq!(get(&v, A).packets, 5, "gone again at 30 s: retires at 90 s");
        assert_eq!(get(&v, C).packets, 6);
        assert!(acc.retirement.take().is_empty());
        acc.read_at_all(&mut k, at(90)).unwrap();
        let gone = acc.retirement.take();
        assert_eq!(
            gone.iter()
                .map(|(u, s)| (*u, s.packets))
                .collect::<Vec<_>>(),
            vec![(A, 5)]
        );
    }

    /// A flow whose explanation still waits in the queue does not retire (folded now, it
    /// would stay unexplained for good): it stays in the reads until it may.
    #[test]
    fn a_flow_waiting_for_its_explanation_does_not_retire() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut k = Fake::default();
        let mut acc = FlowAccounts::start(&mut k).unwrap();
        k.hit(A, 4, 3);
        k.remove(A);
        acc.read_at_all(&mut k, at(0)).unwrap();
        let queued = |u: &Uuid| *u == Uuid::from_words(A);
        let v = acc.read_at(&mut k, at(600), &|u| !queued(u)).unwrap();
        assert_eq!(get(&v, A).drops, 4, "still counted while it waits");
        assert!(acc.retirement.take().is_empty() && k.forgotten.is_empty());
        acc.read_at_all(&mut k, at(601)).unwrap();
        assert_eq!(acc.retirement.take().len(), 1);
        // Per-packet counting alike.
        let mut idle = IdleFlows::new(Duration::from_secs(60));
        let s = FlowStats {
            packets: 2,
            ..FlowStats::default()
        };
        idle.read_at(vec![(A, s)], at(0), &|_| true, |_| Ok(()))
            .unwrap();
        let v = idle
            .read_at(vec![(A, s)], at(600), &|u| !queued(u), |_| Ok(()))
            .unwrap();
        assert_eq!(v.len(), 1);
        assert!(idle.retirement.take().is_empty());
    }

    /// Per-packet counting: a UFID idle for RETIRE_AFTER is retired (given once, its entry
    /// deleted); one still counting is not; back later, it is a new entry.
    #[test]
    fn idle_per_packet_flows_retire() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let st = |n: u64| FlowStats {
            packets: n,
            ..FlowStats::default()
        };
        let mut idle = IdleFlows::new(Duration::from_secs(60));
        let mut deleted = Vec::new();
        fn forget(d: &mut Vec<Uuid>) -> impl FnOnce(&[Uuid]) -> anyhow::Result<()> + '_ {
            move |u| {
                d.extend_from_slice(u);
                Ok(())
            }
        }
        idle.read_at(
            vec![(A, st(3)), (B, st(1))],
            at(0),
            &|_| true,
            forget(&mut deleted),
        )
        .unwrap();
        idle.read_at(
            vec![(A, st(3)), (B, st(2))],
            at(30),
            &|_| true,
            forget(&mut deleted),
        )
        .unwrap();
        let v = idle
            .read_at(
                vec![(A, st(3)), (B, st(2))],
                at(60),
                &|_| true,
                forget(&mut deleted),
            )
            .unwrap();
        assert_eq!(v.iter().map(|(w, _)| *w).collect::<Vec<_>>(), vec![B]);
        assert_eq!(deleted, vec![Uuid::from_words(A)]);
        let gone = idle.retirement.take();
        assert_eq!((gone.len(), gone[0].0, gone[0].1.packets), (1, A, 3));
        assert!(idle.retirement.take().is_empty());
        // B still moved 30 s ago; A back from zero is a new entry.
        let v = idle
            .read_at(
                vec![(A, st(1)), (B, st(2))],
                at(89),
                &|_| true,
                forget(&mut deleted),
            )
            .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(idle.retirement.count, 1);
    }
}
