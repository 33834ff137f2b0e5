//! The eBPF maps user space reads: per-UFID aggregates (FLOW_STATS), counters (COUNTERS) and
//! the event ring buffer (EVENTS), each summed over CPUs where the kernel keeps it per CPU.

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use detrace_common::{
    COUNTER_SLOTS, DROP_REASON_SLOTS, FlowKey, FlowStats, MAP_COUNTERS, MAP_EVENTS, MAP_FLOW_STATS,
    MAP_OTHER_DROPS, MAP_REMOVED_STATS, RemovedStats,
};

use super::{error::ProbeError, ring::EventReader};

fn map_err(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// Per-UFID aggregates, summed over CPUs.
pub(super) fn flow_stats(ebpf: &Ebpf) -> Result<Vec<([u32; 4], FlowStats)>, ProbeError> {
    let err = map_err(MAP_FLOW_STATS);
    let map = ebpf.map(MAP_FLOW_STATS).ok_or(ProbeError::NoMap {
        name: MAP_FLOW_STATS,
    })?;
    let map: PerCpuHashMap<&MapData, FlowKey, FlowStats> =
        PerCpuHashMap::try_from(map).map_err(&err)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = item.map_err(&err)?;
        out.push((key.ufid, sum_stats(per_cpu.iter())));
    }
    Ok(out)
}

/// The last stats of removed flows by UFID, summed over CPUs (the drop slot is the flow's).
pub(super) fn removed_stats(ebpf: &Ebpf) -> Result<Vec<([u32; 4], RemovedStats)>, ProbeError> {
    let err = map_err(MAP_REMOVED_STATS);
    let map = ebpf.map(MAP_REMOVED_STATS).ok_or(ProbeError::NoMap {
        name: MAP_REMOVED_STATS,
    })?;
    let map: PerCpuHashMap<&MapData, FlowKey, RemovedStats> =
        PerCpuHashMap::try_from(map).map_err(&err)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = item.map_err(&err)?;
        let mut t = RemovedStats::default();
        for s in per_cpu.iter() {
            t.packets += s.packets;
            t.bytes += s.bytes;
            t.removals += s.removals;
            t.drop_slot = t.drop_slot.max(s.drop_slot);
        }
        out.push((key.ufid, t));
    }
    Ok(out)
}

/// OVS drops counted against no flow, by drop-reason slot, summed over CPUs.
pub(super) fn other_drops(ebpf: &Ebpf) -> Result<[u64; DROP_REASON_SLOTS], ProbeError> {
    let err = map_err(MAP_OTHER_DROPS);
    let map = ebpf.map(MAP_OTHER_DROPS).ok_or(ProbeError::NoMap {
        name: MAP_OTHER_DROPS,
    })?;
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(&err)?;
    let mut out = [0u64; DROP_REASON_SLOTS];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = map.get(&(i as u32), 0).map_err(&err)?.iter().sum();
    }
    Ok(out)
}

/// `Counter` values, summed over CPUs, indexed by `Counter as usize`.
pub(super) fn counters(ebpf: &Ebpf) -> Result<[u64; COUNTER_SLOTS as usize], ProbeError> {
    let err = map_err(MAP_COUNTERS);
    let map = ebpf
        .map(MAP_COUNTERS)
        .ok_or(ProbeError::NoMap { name: MAP_COUNTERS })?;
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(&err)?;
    let mut out = [0u64; COUNTER_SLOTS as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = map.get(&(i as u32), 0).map_err(&err)?.iter().sum();
    }
    Ok(out)
}

/// The event ring buffer, taken out of the object for its reader.
pub(super) fn take_events(ebpf: &mut Ebpf) -> Result<EventReader, ProbeError> {
    let map = ebpf
        .take_map(MAP_EVENTS)
        .ok_or(ProbeError::NoMap { name: MAP_EVENTS })?;
    let ring = RingBuf::try_from(map).map_err(map_err(MAP_EVENTS))?;
    Ok(EventReader::new(ring))
}

/// Sums per-CPU FlowStats.
pub fn sum_stats<'a>(per_cpu: impl Iterator<Item = &'a FlowStats>) -> FlowStats {
    let mut t = FlowStats::default();
    for s in per_cpu {
        t.add(s);
    }
    t
}
