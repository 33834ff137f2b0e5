//! Fills the offset fields of `Config` from BTF and from the kfree_skb tracepoint's format.

use std::path::Path;

use detrace_common::Config;

use super::{btf::Btf, error::ProbeError};

/// (config field setter, struct, member path, expected size): sizes are what the probes read;
/// a kernel whose layout differs is refused with the member named rather than misread.
type Setter = fn(&mut Config, u32);
const MEMBERS: &[(Setter, &str, &str, u32)] = &[
    (
        |c, v| c.off_key_recirc_id = v,
        "sw_flow_key",
        "recirc_id",
        4,
    ),
    (
        |c, v| c.off_key_in_port = v,
        "sw_flow_key",
        "phy.in_port",
        2,
    ),
    (|c, v| c.off_key_eth_type = v, "sw_flow_key", "eth.type", 2),
    (|c, v| c.off_key_ip_proto = v, "sw_flow_key", "ip.proto", 1),
    (
        |c, v| c.off_key_ipv4_src = v,
        "sw_flow_key",
        "ipv4.addr.src",
        4,
    ),
    (
        |c, v| c.off_key_ipv4_dst = v,
        "sw_flow_key",
        "ipv4.addr.dst",
        4,
    ),
    (
        |c, v| c.off_key_ipv6_src = v,
        "sw_flow_key",
        "ipv6.addr.src",
        16,
    ),
    (
        |c, v| c.off_key_ipv6_dst = v,
        "sw_flow_key",
        "ipv6.addr.dst",
        16,
    ),
    (|c, v| c.off_key_tp_src = v, "sw_flow_key", "tp.src", 2),
    (|c, v| c.off_key_tp_dst = v, "sw_flow_key", "tp.dst", 2),
    (|c, v| c.off_skb_len = v, "sk_buff", "len", 4),
    (|c, v| c.off_skb_head = v, "sk_buff", "head", 8),
    (|c, v| c.off_skb_data = v, "sk_buff", "data", 8),
    (
        |c, v| c.off_skb_network_header = v,
        "sk_buff",
        "network_header",
        2,
    ),
    (
        |c, v| c.off_skb_transport_header = v,
        "sk_buff",
        "transport_header",
        2,
    ),
    (|c, v| c.off_vport_port_no = v, "vport", "port_no", 2),
    (|c, v| c.off_upcall_cmd = v, "dp_upcall_info", "cmd", 1),
];

/// Sets every `off_*` field but the tracepoint's.
pub fn from_btf(btf: &Btf, cfg: &mut Config) -> Result<(), ProbeError> {
    let get = |ty: &str, path: &str, size: u32| -> Result<u32, ProbeError> {
        let m = btf
            .member(ty, path)
            .map_err(|source| ProbeError::BtfMember {
                what: format!("{ty}.{path}"),
                source,
            })?;
        if m.size != size {
            return Err(ProbeError::Layout {
                what: format!("{ty}.{path}"),
                size: m.size,
                want: size,
            });
        }
        Ok(m.offset)
    };
    // struct sw_flow { ... struct sw_flow_id id; ... } (net/openvswitch/flow.h)
    let id = btf
        .member("sw_flow", "id")
        .map_err(|source| ProbeError::BtfMember {
            what: "sw_flow.id".into(),
            source,
        })?
        .offset;
    cfg.off_flow_ufid_len = id + get("sw_flow_id", "ufid_len", 4)?;
    cfg.off_flow_ufid = id + get("sw_flow_id", "ufid", 16)?;
    // The probe reads ufid_len and the ufid in one 24-byte read from ufid_len: the ufid must
    // follow it within 8 bytes (it does: 8, the union holding it also holds a pointer).
    let gap = cfg.off_flow_ufid.wrapping_sub(cfg.off_flow_ufid_len);
    if gap != 4 && gap != 8 {
        return Err(ProbeError::Layout {
            what: "the gap from sw_flow_id.ufid_len to sw_flow_id.ufid".into(),
            size: gap,
            want: 8,
        });
    }
    // struct sw_flow { ... struct sw_flow_key key; ... }: the flow's masked key.
    cfg.off_flow_key = btf
        .member("sw_flow", "key")
        .map_err(|source| ProbeError::BtfMember {
            what: "sw_flow.key".into(),
            source,
        })?
        .offset;
    for (set, ty, path, size) in MEMBERS {
        set(cfg, get(ty, path, *size)?);
    }
    removal_offsets(btf, cfg, &get)
}

/// What the flow-removal probe reads (detrace-ebpf/src/probes/removal.rs): the per-CPU stats
/// and the actions of a `struct sw_flow` (net/openvswitch/flow.h).
fn removal_offsets(
    btf: &Btf,
    cfg: &mut Config,
    get: &dyn Fn(&str, &str, u32) -> Result<u32, ProbeError>,
) -> Result<(), ProbeError> {
    let at = |ty: &str, path: &str| {
        btf.member(ty, path)
            .map(|m| m.offset)
            .map_err(|source| ProbeError::BtfMember {
                what: format!("{ty}.{path}"),
                source,
            })
    };
    // The RCU callback gets &flow->rcu: the flow itself only while rcu comes first.
    let rcu = at("sw_flow", "rcu")?;
    if rcu != 0 {
        return Err(ProbeError::Layout {
            what: "the offset of sw_flow.rcu".into(),
            size: rcu,
            want: 0,
        });
    }
    cfg.off_flow_stats = at("sw_flow", "stats")?;
    cfg.off_flow_sf_acts = get("sw_flow", "sf_acts", 8)?;
    cfg.off_stats_packet_count = get("sw_flow_stats", "packet_count", 8)?;
    // packet_count and byte_count in one read.
    let bytes = get("sw_flow_stats", "byte_count", 8)?;
    if bytes != cfg.off_stats_packet_count + 8 {
        return Err(ProbeError::Layout {
            what: "the gap from sw_flow_stats.packet_count to byte_count".into(),
            size: bytes.wrapping_sub(cfg.off_stats_packet_count),
            want: 8,
        });
    }
    cfg.off_acts_len = get("sw_flow_actions", "actions_len", 4)?;
    cfg.off_acts_actions = at("sw_flow_actions", "actions")?;
    Ok(())
}

/// A field of a tracepoint record: offset and size, from its tracefs `format` file.
fn tp_field(format: &str, name: &str) -> Option<(u32, u32)> {
    format.lines().find_map(|line| {
        let mut decl = None;
        let (mut off, mut size) = (None, None);
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = d
                    .split_whitespace()
                    .last()
                    .map(|w| w.split('[').next().unwrap_or(w));
            } else if let Some(v) = part.strip_prefix("offset:") {
                off = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        (decl == Some(name)).then_some(())?;
        Some((off?, size?))
    })
}

/// Sets the skb:kfree_skb record offsets (skbaddr, reason) from `<tracefs>/events/skb/kfree_skb/format`.
pub fn from_tracefs(tracefs: &Path, cfg: &mut Config) -> Result<(), ProbeError> {
    let path = tracefs.join("events/skb/kfree_skb/format");
    let text = std::fs::read_to_string(&path).map_err(|source| ProbeError::TracepointFormat {
        path: path.clone(),
        source,
    })?;
    let field = |name: &'static str, size: u32| match tp_field(&text, name) {
        Some((off, s)) if s == size => Ok(off),
        Some((_, s)) => Err(ProbeError::Layout {
            what: format!("skb:kfree_skb field {name}"),
            size: s,
            want: size,
        }),
        None => Err(ProbeError::TracepointField {
            path: path.clone(),
            field: name,
        }),
    };
    cfg.off_tp_kfree_skbaddr = field("skbaddr", 8)?;
    // `reason` appeared in Linux 5.17 (enum skb_drop_reason).
    cfg.off_tp_kfree_reason = field("reason", 4)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /sys/kernel/tracing/events/skb/kfree_skb/format, captured in the lab guest (6.12.117).
    const FORMAT_6_12: &str = include_str!("../../../tests/fixtures/lab/kfree_skb-6.12.format");

    /// Every offset the probes read, from the lab kernel's BTF (6.12.117).
    #[test]
    fn offsets_of_the_lab_kernel() {
        use std::io::Read as _;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/btf");
        let read = |name: &str| std::fs::read(format!("{dir}/{name}")).expect("BTF fixture");
        let mut vmlinux = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&read("vmlinux-6.12.117.btf.zst")[..])
            .expect("zstd frame")
            .read_to_end(&mut vmlinux)
            .expect("decompressing vmlinux BTF");
        let btf = Btf::parse_split(vmlinux, read("openvswitch-6.12.117.btf")).expect("lab BTF");
        let mut cfg = Config::default();
        from_btf(&btf, &mut cfg).expect("offsets");
        // sw_flow: rcu_head (16) + 2 x { hlist_node[2], u32 } (2 x 40) + int = 100, key at 104.
        assert_eq!(cfg.off_flow_key, 104);
        assert!(cfg.off_flow_ufid_len > cfg.off_flow_key);
        // The probes' one-read paths: the ufid 8 bytes after ufid_len (union with a pointer),
        // recirc_id 8 bytes after phy.in_port (mac_proto, tun_proto, ovs_flow_hash between).
        assert_eq!(cfg.off_flow_ufid - cfg.off_flow_ufid_len, 8);
        assert_eq!(cfg.off_key_recirc_id - cfg.off_key_in_port, 8);
        // sk_buff: head and the header offsets are distinct members of one struct.
        let skb = [
            cfg.off_skb_len,
            cfg.off_skb_head,
            cfg.off_skb_network_header,
            cfg.off_skb_transport_header,
        ];
        assert!(skb.iter().all(|&o| o > 0), "{skb:?}");
        assert_eq!(cfg.off_skb_network_header, cfg.off_skb_transport_header + 2);
        // The removal probe's reads: sw_flow ends with sf_acts and the stats array.
        assert_eq!(cfg.off_flow_stats, cfg.off_flow_sf_acts + 8);
        assert_eq!(cfg.off_stats_packet_count, 0);
        assert!(cfg.off_acts_actions > cfg.off_acts_len, "{cfg:?}");
    }

    #[test]
    fn kfree_skb_format() {
        assert_eq!(tp_field(FORMAT_6_12, "skbaddr"), Some((8, 8)));
        assert_eq!(tp_field(FORMAT_6_12, "reason"), Some((36, 4)));
        assert_eq!(tp_field(FORMAT_6_12, "protocol"), Some((32, 2)));
        assert_eq!(tp_field(FORMAT_6_12, "nope"), None);
    }
}
