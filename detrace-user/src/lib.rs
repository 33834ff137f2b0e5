//! detrace: from a datapath flow (UFID) to the OVN objects that shaped it.
//!
//! The data flows through the modules in this order: `ovs` (datapath flows and OpenFlow rules
//! from ovs-vswitchd) -> `ovsdb` (replicas of the OVN databases) -> `ovn` (cookie and stage-hint
//! resolution) -> `explain` (the joined chain and its rendering) -> `cmd` (the commands).

pub mod aggregate;
pub mod cli;
pub mod cmd;
pub mod events;
pub mod explain;
pub mod live;
pub mod ovn;
pub mod ovs;
pub mod ovsdb;
pub mod paths;
pub mod probes;
pub mod term;
pub mod uuid;

#[cfg(test)]
mod testutil;

/// Hash map for hot paths keyed by values no outsider chooses (skb addresses, UFIDs, row
/// UUIDs, cookies): rustc's Fx hash is several times faster than SipHash for such keys.
pub type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;
