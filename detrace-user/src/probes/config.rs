//! The load-time configuration of the probes ([`Config`], a global of the eBPF object): what
//! to trace ([`ProbeOptions`], [`Filter`]) and this kernel's struct offsets (BTF and tracefs,
//! see [`super::offsets`]).

use std::{collections::BTreeSet, io, net::IpAddr, path::Path};

use detrace_common::{
    Config, FILTER_ADDRS, FILTER_DST, FILTER_HOST, FILTER_IN_PORT, FILTER_PORT, FILTER_PROTO,
    FILTER_SRC,
};

use super::{btf::Btf, error::ProbeError, offsets};

use crate::paths::{BTF_OPENVSWITCH, BTF_VMLINUX};

/// What to trace and how.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Per-packet events through the ring buffer (counting in FLOW_STATS/COUNTERS is always on).
    pub events: bool,
    /// Ring buffer size in bytes (power of two, >= 4096); ignored without `events`.
    pub ring_bytes: u32,
    /// Max events per second per CPU; 0: unlimited.
    pub rate_limit: u32,
    pub filter: Filter,
    /// Have the kernel time every program run ([`Probes::program_costs`]); this costs two
    /// clock reads per run, so it is off unless asked for.
    pub cost: bool,
    /// Hook the datapath with kprobes even where fentry would attach.
    pub kprobes_only: bool,
    /// Count per packet in the probes (FLOW_STATS, latency). Without it (and without
    /// `events`), no probe runs per packet: counts come from the kernel's flow table, and the
    /// probes catch the last stats of removed flows (REMOVED_STATS).
    pub per_packet: bool,
    /// Counting from the flow table: also follow 1 packet in this many for its latency (0:
    /// none). Ignored with `per_packet` or `events` (every packet is followed).
    pub latency_sample: u32,
    /// With events and a filter: follow only the matching packets (see
    /// [`Config::matching_only`]); the per-flow counts are then of those packets only.
    pub matching_only: bool,
    /// Benchmarks only: the datapath hooks' programs return at once (see [`Config::noop`]).
    pub noop: bool,
}

impl ProbeOptions {
    /// Counts come from the kernel's flow table (the removal probe is attached).
    pub fn flow_table(&self) -> bool {
        !self.per_packet && !self.events
    }

    /// Per-packet probes are attached: asked for, needed by the events, or sampling latency.
    pub fn per_packet_probes(&self) -> bool {
        !self.flow_table() || self.latency_sample > 0
    }
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            events: false,
            ring_bytes: 1 << 20,
            rate_limit: 0,
            filter: Filter::default(),
            cost: false,
            kprobes_only: false,
            per_packet: true,
            latency_sample: 0,
            matching_only: false,
            noop: false,
        }
    }
}

/// Which packets produce events, decided on each packet's first datapath pass (before any NAT)
/// and kept for its later passes. All set fields must match.
#[derive(Default, Clone, Debug)]
pub struct Filter {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// Either address.
    pub host: Option<IpAddr>,
    /// Either port.
    pub port: Option<u16>,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Datapath port number of the first pass.
    pub in_port: Option<u32>,
    /// Either address in this set (kept current with [`super::loader::Probes::set_filter_addrs`]):
    /// a pod's or a namespace's addresses. An empty set matches nothing.
    pub addrs: Option<BTreeSet<IpAddr>>,
}

impl Filter {
    fn apply(&self, cfg: &mut Config) -> Result<(), ProbeError> {
        let mut version = None;
        let mut addr = |a: IpAddr| -> Result<[u8; 16], ProbeError> {
            let (v, bytes) = match a {
                IpAddr::V4(a) => {
                    let mut b = [0; 16];
                    b[..4].copy_from_slice(&a.octets());
                    (4u8, b)
                }
                IpAddr::V6(a) => (6u8, a.octets()),
            };
            if version.is_some_and(|old| old != v) {
                return Err(ProbeError::Filter {
                    why: "addresses of both IPv4 and IPv6: no packet can match".into(),
                });
            }
            version = Some(v);
            Ok(bytes)
        };
        if self.src.is_some() && self.host.is_some() {
            return Err(ProbeError::Filter {
                why: "give either a source address or a host address, not both".into(),
            });
        }
        if let Some(a) = self.src {
            cfg.filter_src = addr(a)?;
            cfg.filter_flags |= FILTER_SRC;
        }
        if let Some(a) = self.host {
            cfg.filter_src = addr(a)?;
            cfg.filter_flags |= FILTER_HOST;
        }
        if let Some(a) = self.dst {
            cfg.filter_dst = addr(a)?;
            cfg.filter_flags |= FILTER_DST;
        }
        cfg.filter_ip_version = version.unwrap_or(0);
        if let Some(p) = self.port {
            cfg.filter_port = p;
            cfg.filter_flags |= FILTER_PORT;
        }
        if let Some(p) = self.proto {
            cfg.filter_proto = p;
            cfg.filter_flags |= FILTER_PROTO;
        }
        if let Some(p) = self.in_port {
            cfg.filter_in_port = p;
            cfg.filter_flags |= FILTER_IN_PORT;
        }
        if self.addrs.is_some() {
            cfg.filter_flags |= FILTER_ADDRS;
        }
        Ok(())
    }
}

fn read_btf(path: &str, hint: &'static str) -> Result<Vec<u8>, ProbeError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            ProbeError::NoBtf {
                path: path.into(),
                hint,
            }
        } else {
            ProbeError::BtfRead {
                path: path.into(),
                source,
            }
        }
    })
}

/// Builds the load-time configuration (offsets from BTF and tracefs, filter, rate limit); the
/// kernel's BTF comes back too, for the fentry targets.
pub(super) fn config(opts: &ProbeOptions, tracefs: &Path) -> Result<(Config, Btf), ProbeError> {
    let vmlinux = read_btf(
        BTF_VMLINUX,
        "this kernel was built without CONFIG_DEBUG_INFO_BTF",
    )?;
    let module = read_btf(
        BTF_OPENVSWITCH,
        "this kernel has no module BTF (CONFIG_DEBUG_INFO_BTF_MODULES), or openvswitch is not loaded",
    )?;
    let btf = Btf::parse_split(vmlinux, module).map_err(|source| ProbeError::BtfParse {
        path: BTF_OPENVSWITCH.into(),
        source,
    })?;
    let mut cfg = Config::default();
    offsets::from_btf(&btf, &mut cfg)?;
    offsets::from_tracefs(tracefs, &mut cfg)?;
    cfg.events_enabled = u32::from(opts.events);
    cfg.rate_limit = opts.rate_limit;
    if opts.flow_table() {
        cfg.latency_sample = opts.latency_sample;
        cfg.flow_table = 1;
    }
    cfg.matching_only = u32::from(opts.matching_only && opts.events);
    cfg.noop = u32::from(opts.noop);
    cfg.no_drop_reasons = u32::from(!has_ovs_drop_reasons(&btf)?);
    cfg.nr_cpus = aya::util::nr_cpus()
        .map_err(|(path, source)| ProbeError::BtfRead {
            path: path.into(),
            source,
        })?
        .try_into()
        .unwrap_or(u32::MAX);
    opts.filter.apply(&mut cfg)?;
    Ok((cfg, btf))
}

/// Whether the openvswitch module frees packets with its own drop reasons (Linux >= 6.4,
/// net/openvswitch/drop.h `enum ovs_drop_reason`, in the module's BTF). Without them a flow
/// that drops frees its packets as consumed: the probes must decide the drop themselves.
fn has_ovs_drop_reasons(btf: &Btf) -> Result<bool, ProbeError> {
    let found = btf
        .split_enum("ovs_drop_reason")
        .map_err(|source| ProbeError::BtfParse {
            path: BTF_OPENVSWITCH.into(),
            source,
        })?;
    if !found {
        tracing::info!(
            "this kernel has no OVS drop reasons (before 6.4): drops of flows whose actions \
             send the packet nowhere are decided at the flow hit, reason \"no actions\""
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn filter_to_config() {
        let mut cfg = Config::default();
        Filter {
            host: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 4))),
            port: Some(9999),
            proto: Some(6),
            ..Filter::default()
        }
        .apply(&mut cfg)
        .expect("valid filter");
        assert_eq!(cfg.filter_flags, FILTER_HOST | FILTER_PORT | FILTER_PROTO);
        assert_eq!(&cfg.filter_src[..4], &[10, 244, 1, 4]);
        assert_eq!(&cfg.filter_src[4..], &[0; 12]);
        assert_eq!(cfg.filter_ip_version, 4);
        assert_eq!((cfg.filter_port, cfg.filter_proto), (9999, 6));
    }

    #[test]
    fn filter_rejects_nonsense() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let both = Filter {
            src: Some(v4),
            dst: Some(v6),
            ..Filter::default()
        };
        assert!(both.apply(&mut Config::default()).is_err());
        let src_host = Filter {
            src: Some(v4),
            host: Some(v4),
            ..Filter::default()
        };
        assert!(src_host.apply(&mut Config::default()).is_err());
    }
}
