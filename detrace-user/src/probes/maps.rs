//! The eBPF maps user space reads: per-UFID aggregates (FLOW_STATS), counters (COUNTERS) and
//! the event ring buffer (EVENTS), each summed over CPUs where the kernel keeps it per CPU.

use std::{collections::BTreeSet, net::IpAddr};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
};
use detrace_common::{
    AddrKey, COUNTER_SLOTS, DROP_REASON_SLOTS, ExecStats, FILTER_ADDRS_MAX, FlowKey, FlowStats,
    MAP_COUNTERS, MAP_EVENTS, MAP_EXEC_STATS, MAP_FILTER_ADDRS, MAP_FLOW_STATS, MAP_OTHER_DROPS,
    MAP_REMOVED_STATS, RemovedStats,
};

use super::{error::ProbeError, ring::EventReader};

fn map_err(name: &'static str) -> impl Fn(MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// Every entry of a per-CPU hash map keyed by UFID, its per-CPU values folded by `sum`.
fn per_ufid<V: aya::Pod, T>(
    ebpf: &Ebpf,
    name: &'static str,
    sum: impl Fn(&[V]) -> T,
) -> Result<Vec<([u32; 4], T)>, ProbeError> {
    let err = map_err(name);
    let map = ebpf.map(name).ok_or(ProbeError::NoMap { name })?;
    let map: PerCpuHashMap<&MapData, FlowKey, V> = PerCpuHashMap::try_from(map).map_err(&err)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, per_cpu) = item.map_err(&err)?;
        out.push((key.ufid, sum(&per_cpu)));
    }
    Ok(out)
}

/// Per-UFID aggregates, summed over CPUs.
pub(super) fn flow_stats(ebpf: &Ebpf) -> Result<Vec<([u32; 4], FlowStats)>, ProbeError> {
    let mut out = per_ufid(ebpf, MAP_FLOW_STATS, |v: &[FlowStats]| sum_stats(v.iter()))?;
    add_executed(ebpf, &mut out)?;
    Ok(out)
}

/// The last stats of removed flows by UFID, summed over CPUs (the drop slot is the flow's).
pub(super) fn removed_stats(ebpf: &Ebpf) -> Result<Vec<([u32; 4], RemovedStats)>, ProbeError> {
    per_ufid(ebpf, MAP_REMOVED_STATS, |v: &[RemovedStats]| {
        let mut t = RemovedStats::default();
        for s in v {
            t.packets += s.packets;
            t.bytes += s.bytes;
            t.removals += s.removals;
            t.drop_slot = t.drop_slot.max(s.drop_slot);
        }
        t
    })
}

/// Deletes the entries of `ufids` from the per-UFID maps that keep a flow after it went
/// (REMOVED_STATS, EXEC_STATS, and FLOW_STATS when per-packet probes fill it): what user space
/// has taken their last counts from. A UFID a map does not hold is no error.
pub(super) fn forget_flows(ebpf: &mut Ebpf, ufids: &[[u32; 4]]) -> Result<(), ProbeError> {
    forget_in::<RemovedStats>(ebpf, MAP_REMOVED_STATS, ufids)?;
    forget_in::<ExecStats>(ebpf, MAP_EXEC_STATS, ufids)?;
    forget_in::<FlowStats>(ebpf, MAP_FLOW_STATS, ufids)
}

fn forget_in<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    ufids: &[[u32; 4]],
) -> Result<(), ProbeError> {
    let err = map_err(name);
    let Some(map) = ebpf.map_mut(name) else {
        return Ok(());
    };
    let mut map: PerCpuHashMap<&mut MapData, FlowKey, V> =
        PerCpuHashMap::try_from(map).map_err(&err)?;
    for u in ufids {
        remove_quiet(&mut map, &FlowKey { ufid: *u }).map_err(&err)?;
    }
    Ok(())
}

/// Removes `key`; absent is fine.
fn remove_quiet<V: aya::Pod>(
    map: &mut PerCpuHashMap<&mut MapData, FlowKey, V>,
    key: &FlowKey,
) -> Result<(), MapError> {
    match map.remove(key) {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
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

/// Adds to each flow the packets ovs-vswitchd executed with its actions after an upcall
/// (EXEC_STATS): its packets are all it acted on, not only its kernel hits.
fn add_executed(ebpf: &Ebpf, out: &mut Vec<([u32; 4], FlowStats)>) -> Result<(), ProbeError> {
    let executed = per_ufid(ebpf, MAP_EXEC_STATS, |v: &[ExecStats]| {
        v.iter()
            .fold((0, 0), |(p, b), e| (p + e.packets, b + e.bytes))
    })?;
    let index: std::collections::HashMap<[u32; 4], usize> =
        out.iter().enumerate().map(|(i, (u, _))| (*u, i)).collect();
    for (ufid, (packets, bytes)) in executed {
        let s = match index.get(&ufid) {
            Some(&i) => &mut out[i].1,
            None => {
                out.push((ufid, FlowStats::default()));
                &mut out.last_mut().expect("just pushed").1
            }
        };
        s.packets += packets;
        s.bytes += bytes;
    }
    Ok(())
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

/// An address as the probes' packet keys hold it (IPv4 in the first 4 bytes).
pub fn addr_key(a: IpAddr) -> AddrKey {
    match a {
        IpAddr::V4(v4) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&v4.octets());
            AddrKey { addr, version: 4 }
        }
        IpAddr::V6(v6) => AddrKey {
            addr: v6.octets(),
            version: 6,
        },
    }
}

/// Makes the FILTER_ADDRS set `addrs`: removes what left, adds what came.
pub(super) fn set_filter_addrs(
    ebpf: &mut Ebpf,
    addrs: &BTreeSet<IpAddr>,
) -> Result<(), ProbeError> {
    if addrs.len() > FILTER_ADDRS_MAX as usize {
        return Err(ProbeError::Filter {
            why: format!(
                "{} addresses selected: at most {FILTER_ADDRS_MAX} can be filtered in the kernel",
                addrs.len()
            ),
        });
    }
    let err = map_err(MAP_FILTER_ADDRS);
    let map = ebpf.map_mut(MAP_FILTER_ADDRS).ok_or(ProbeError::NoMap {
        name: MAP_FILTER_ADDRS,
    })?;
    let mut map: HashMap<&mut MapData, AddrKey, u8> = HashMap::try_from(map).map_err(&err)?;
    let want: Vec<AddrKey> = addrs.iter().map(|a| addr_key(*a)).collect();
    let have: Vec<AddrKey> = map.keys().collect::<Result<_, _>>().map_err(&err)?;
    for k in have.iter().filter(|k| !want.contains(k)) {
        map.remove(k).map_err(&err)?;
    }
    for k in want.iter().filter(|k| !have.contains(k)) {
        map.insert(k, 1, 0).map_err(&err)?;
    }
    Ok(())
}
