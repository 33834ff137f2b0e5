//! The kernel datapath's flow table read over generic netlink, the way ovs-vswitchd's
//! revalidators read it: an `OVS_FLOW_CMD_GET` dump of the `ovs_flow` family with the key and
//! mask left out (`OVS_UFID_F_OMIT_KEY | OVS_UFID_F_OMIT_MASK`): per flow, its UFID, stats, last
//! use and TCP flags, and its actions (to tell a flow that drops).
//!
//! Hand-written on libc rather than through a netlink crate: what is needed is three requests
//! (resolve two families, list the datapaths, dump the flows) and a flat attribute walk, about
//! the size of the glue a crate would still need, with no new dependency in the binary.
//! The layouts are include/uapi/linux/{netlink,genetlink,openvswitch}.h.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use detrace_common::DropScan;

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Generic netlink message header (`struct genlmsghdr`) and `struct ovs_header` sizes.
const GENL_HDRLEN: usize = 4;
const OVS_HDRLEN: usize = 4;
const NLMSG_HDRLEN: usize = 16;

const OVS_DATAPATH_FAMILY: &str = "ovs_datapath";
const OVS_FLOW_FAMILY: &str = "ovs_flow";
const OVS_DP_CMD_GET: u8 = 3;
const OVS_DATAPATH_VERSION: u8 = 2;
/// enum ovs_datapath_attr.
const OVS_DP_ATTR_NAME: u16 = 1;
const OVS_DP_ATTR_STATS: u16 = 3;
const OVS_FLOW_CMD_GET: u8 = 3;
const OVS_FLOW_VERSION: u8 = 1;
/// enum ovs_flow_attr.
const OVS_FLOW_ATTR_ACTIONS: u16 = 2;
const OVS_FLOW_ATTR_STATS: u16 = 3;
const OVS_FLOW_ATTR_TCP_FLAGS: u16 = 4;
const OVS_FLOW_ATTR_USED: u16 = 5;
const OVS_FLOW_ATTR_UFID: u16 = 9;
const OVS_FLOW_ATTR_UFID_FLAGS: u16 = 10;
const OVS_UFID_F_OMIT_KEY: u32 = 1 << 0;
const OVS_UFID_F_OMIT_MASK: u32 = 1 << 1;

/// One datapath flow as the kernel counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFlow {
    /// `sw_flow_id.ufid` words, as the probes read them.
    pub ufid: [u32; 4],
    pub packets: u64,
    pub bytes: u64,
    /// Last use, milliseconds of CLOCK_MONOTONIC (0: never used).
    pub used_ms: u64,
    pub tcp_flags: u8,
    /// The drop its actions make, as a drop-reason slot (0: none; see
    /// [`detrace_common::DropScan`]).
    pub drop_slot: u32,
    /// A fingerprint of its actions (FNV-1a of their netlink attributes): ovs-vswitchd's
    /// revalidators change a flow's actions in place (same UFID) when its translation changes.
    pub actions: u64,
}

/// A datapath's lookup counters (`struct ovs_dp_stats`): what `ovs-dpctl show` prints as
/// `lookups: hit:H missed:M lost:L` and `flows: F`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathStats {
    pub ifindex: i32,
    pub name: String,
    pub hit: u64,
    pub missed: u64,
    /// Upcalls that never reached ovs-vswitchd (its socket full, or no handler for the CPU):
    /// the kernel dropped those packets.
    pub lost: u64,
    pub flows: u64,
}

/// A generic netlink socket with the OVS families resolved.
pub struct FlowTable {
    fd: OwnedFd,
    seq: u32,
    dp_family: u16,
    flow_family: u16,
    buf: Vec<u8>,
}

impl FlowTable {
    /// Opens the socket and resolves the families (the openvswitch module must be loaded).
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut t = Self {
            fd,
            seq: 0,
            dp_family: 0,
            flow_family: 0,
            buf: vec![0; 1 << 16],
        };
        t.dp_family = t.family(OVS_DATAPATH_FAMILY)?;
        t.flow_family = t.family(OVS_FLOW_FAMILY)?;
        Ok(t)
    }

    fn family(&mut self, name: &str) -> io::Result<u16> {
        let mut attrs = Vec::new();
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &cname);
        let mut id = None;
        self.request(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            1,
            None,
            &attrs,
            false,
            |_, a| {
                if let Some(v) = find_attr(a, CTRL_ATTR_FAMILY_ID) {
                    id = v.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
                }
            },
        )?;
        id.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("generic netlink family {name} not found (is openvswitch loaded?)"),
            )
        })
    }

    /// The ifindex of every OVS datapath.
    pub fn datapaths(&mut self) -> io::Result<Vec<i32>> {
        Ok(self.datapath_stats()?.iter().map(|d| d.ifindex).collect())
    }

    /// Every OVS datapath with its name and lookup counters.
    pub fn datapath_stats(&mut self) -> io::Result<Vec<DatapathStats>> {
        let mut out = Vec::new();
        let fam = self.dp_family;
        self.request(
            fam,
            OVS_DP_CMD_GET,
            OVS_DATAPATH_VERSION,
            Some(0),
            &[],
            true,
            |h, a| out.push(parse_datapath(h, a)),
        )?;
        Ok(out)
    }

    /// Every flow of every datapath, with its stats (flows without a UFID are left out).
    pub fn dump(&mut self) -> io::Result<Vec<KernelFlow>> {
        let mut out = Vec::new();
        for dp in self.datapaths()? {
            let mut attrs = Vec::new();
            let flags = OVS_UFID_F_OMIT_KEY | OVS_UFID_F_OMIT_MASK;
            put_attr(&mut attrs, OVS_FLOW_ATTR_UFID_FLAGS, &flags.to_ne_bytes());
            let fam = self.flow_family;
            let r = self.request(
                fam,
                OVS_FLOW_CMD_GET,
                OVS_FLOW_VERSION,
                Some(dp),
                &attrs,
                true,
                |_, a| {
                    if let Some(f) = parse_flow(a) {
                        out.push(f);
                    }
                },
            );
            match r {
                // Deleted since it was listed: no flows left in it (their last stats are the
                // removal probe's).
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                r => r?,
            }
        }
        Ok(out)
    }

    /// Sends one request and hands each reply's ovs_header ifindex (when `ovs` is set) and
    /// attributes to `each`, until the dump's end or the ack.
    #[expect(
        clippy::too_many_arguments,
        reason = "the fields of one request, used once each"
    )]
    fn request(
        &mut self,
        family: u16,
        cmd: u8,
        version: u8,
        ovs: Option<i32>,
        attrs: &[u8],
        dump: bool,
        mut each: impl FnMut(i32, &[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        let msg = message(family, flags, self.seq, cmd, version, ovs, attrs);
        // SAFETY: msg is a valid buffer of msg.len() bytes; an unbound, unconnected netlink
        // socket sends to the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let ovs_len = if ovs.is_some() { OVS_HDRLEN } else { 0 };
        loop {
            // SAFETY: buf is a valid, writable buffer of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = usize::try_from(n).unwrap_or(0);
            if replies(&self.buf[..n], self.seq, ovs_len, &mut each)? {
                return Ok(());
            }
        }
    }
}

/// A generic netlink request: nlmsghdr, genlmsghdr, the ovs_header when `ovs` is set, attributes.
fn message(
    family: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    ovs: Option<i32>,
    attrs: &[u8],
) -> Vec<u8> {
    let hdr_len = NLMSG_HDRLEN + GENL_HDRLEN + if ovs.is_some() { OVS_HDRLEN } else { 0 };
    let mut msg = Vec::with_capacity(hdr_len + attrs.len());
    msg.extend_from_slice(&((hdr_len + attrs.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[cmd, version, 0, 0]);
    if let Some(ifindex) = ovs {
        msg.extend_from_slice(&ifindex.to_ne_bytes());
    }
    msg.extend_from_slice(attrs);
    msg
}

fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// The messages of one datagram, replies to request `seq`: each one's ovs_header ifindex
/// (`ovs_len` 4) and attributes to `each`. True once the request is done (dump end, ack).
fn replies(
    mut rest: &[u8],
    seq: u32,
    ovs_len: usize,
    each: &mut impl FnMut(i32, &[u8]),
) -> io::Result<bool> {
    let payload_off = NLMSG_HDRLEN + GENL_HDRLEN + ovs_len;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let msg_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(bad("netlink message length"));
        }
        let msg = &rest[..len];
        rest = &rest[align(len).min(rest.len())..];
        if msg_seq != seq {
            continue;
        }
        match ty {
            // An ack (0), an error, or a dump that failed midway (a negative errno after DONE).
            NLMSG_ERROR | NLMSG_DONE => {
                let code = i32_at(msg, NLMSG_HDRLEN).unwrap_or(0);
                if code < 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                return Ok(true);
            }
            _ => {
                let attrs = msg
                    .get(payload_off..)
                    .ok_or_else(|| bad("generic netlink message"))?;
                let ifindex = match ovs_len {
                    0 => 0,
                    _ => i32_at(msg, payload_off - OVS_HDRLEN).unwrap_or(0),
                };
                each(ifindex, attrs);
            }
        }
    }
    Ok(false)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed {what}"))
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = (4 + data.len()) as u16;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align(out.len()), 0);
}

/// Each (type, payload) of a flat attribute list; stops at the first malformed one.
fn attrs(mut a: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if a.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([a[0], a[1]]) as usize;
        let ty = u16::from_ne_bytes([a[2], a[3]]) & 0x3fff;
        if len < 4 || len > a.len() {
            return None;
        }
        let payload = &a[4..len];
        a = &a[align(len).min(a.len())..];
        Some((ty, payload))
    })
}

fn find_attr(a: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(a).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

fn u64_at(p: &[u8], off: usize) -> Option<u64> {
    let b: [u8; 8] = p.get(off..off + 8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(b))
}

/// One flow of a dump: its attributes (net/openvswitch/datapath.c ovs_flow_cmd_fill_info).
/// Stats and used are left out by the kernel while zero; the actions are always there (key
/// and mask are omitted, actions are not).
pub fn parse_flow(a: &[u8]) -> Option<KernelFlow> {
    let mut f = KernelFlow::default();
    let mut ufid = false;
    for (ty, p) in attrs(a) {
        match ty {
            OVS_FLOW_ATTR_UFID if p.len() == 16 => {
                for (w, c) in f.ufid.iter_mut().zip(p.chunks_exact(4)) {
                    *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                }
                ufid = true;
            }
            OVS_FLOW_ATTR_STATS => {
                f.packets = u64_at(p, 0)?;
                f.bytes = u64_at(p, 8)?;
            }
            OVS_FLOW_ATTR_USED => f.used_ms = u64_at(p, 0)?,
            OVS_FLOW_ATTR_TCP_FLAGS => f.tcp_flags = *p.first()?,
            OVS_FLOW_ATTR_ACTIONS => {
                let mut scan = DropScan::default();
                for (t, v) in attrs(p) {
                    let arg = v
                        .get(..4)
                        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    scan.push(t, arg);
                }
                f.drop_slot = scan.slot();
                f.actions = fingerprint(p);
            }
            _ => {}
        }
    }
    ufid.then_some(f)
}

/// enum ovs_action_attr and ovs_userspace_attr: the arguments ovs-vswitchd numbers afresh.
const OVS_ACTION_ATTR_USERSPACE: u16 = 2;
const OVS_ACTION_ATTR_RECIRC: u16 = 7;
const OVS_USERSPACE_ATTR_PID: u16 = 1;

/// A fingerprint of a flow's actions (FNV-1a, 64 bits, over their netlink attributes), blind
/// to the numbers ovs-vswitchd allocates afresh when the meaning stays: a recirculation's id
/// (renumbered when a flushed flow, or one of a restarted daemon, is installed again; the
/// flow after it has another UFID anyway, its match holding the id) and the netlink port of a
/// userspace action (a handler's socket, new after a restart).
fn fingerprint(actions: &[u8]) -> u64 {
    fn fnv(h: u64, bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }
    let attr = |h: u64, t: u16, v: &[u8]| fnv(fnv(h, &t.to_ne_bytes()), &v.len().to_ne_bytes());
    attrs(actions).fold(0xcbf2_9ce4_8422_2325, |h, (t, v)| match t {
        OVS_ACTION_ATTR_RECIRC => attr(h, t, &[]),
        OVS_ACTION_ATTR_USERSPACE => attrs(v).fold(attr(h, t, &[]), |h, (u, w)| {
            let w = if u == OVS_USERSPACE_ATTR_PID {
                &[][..]
            } else {
                w
            };
            fnv(attr(h, u, w), w)
        }),
        _ => fnv(attr(h, t, v), v),
    })
}

/// One `OVS_DP_CMD_GET` reply: the name and `ovs_dp_stats` (hit, missed, lost, flows: four
/// u64). A reply without stats reads as zeros.
pub fn parse_datapath(ifindex: i32, a: &[u8]) -> DatapathStats {
    let mut d = DatapathStats {
        ifindex,
        ..DatapathStats::default()
    };
    for (t, p) in attrs(a) {
        match t {
            OVS_DP_ATTR_NAME => {
                let name = p.split(|&b| b == 0).next().unwrap_or_default();
                d.name = String::from_utf8_lossy(name).into_owned();
            }
            OVS_DP_ATTR_STATS => {
                let at = |i: usize| u64_at(p, i * 8).unwrap_or(0);
                (d.hit, d.missed, d.lost, d.flows) = (at(0), at(1), at(2), at(3));
            }
            _ => {}
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_msg(ufid: [u8; 16], stats: Option<(u64, u64)>, actions: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        put_attr(&mut a, OVS_FLOW_ATTR_UFID, &ufid);
        if let Some((p, b)) = stats {
            let mut s = p.to_ne_bytes().to_vec();
            s.extend_from_slice(&b.to_ne_bytes());
            put_attr(&mut a, OVS_FLOW_ATTR_STATS, &s);
        }
        put_attr(&mut a, OVS_FLOW_ATTR_USED, &1234u64.to_ne_bytes());
        put_attr(&mut a, OVS_FLOW_ATTR_TCP_FLAGS, &[0x12]);
        put_attr(&mut a, OVS_FLOW_ATTR_ACTIONS, actions);
        a
    }

    #[test]
    fn parses_a_flow_and_its_drop() {
        let ufid: [u8; 16] = core::array::from_fn(|i| i as u8);
        // drop: OVS_ACTION_ATTR_DROP (24) with error 0.
        let mut drop = Vec::new();
        put_attr(&mut drop, 24, &0u32.to_ne_bytes());
        let f = parse_flow(&flow_msg(ufid, Some((40, 2800)), &drop)).expect("a flow");
        assert_eq!(
            (f.packets, f.bytes, f.used_ms, f.tcp_flags),
            (40, 2800, 1234, 0x12)
        );
        assert_eq!(f.ufid[0], u32::from_ne_bytes([0, 1, 2, 3]));
        assert_eq!(f.drop_slot, 3);
        // output:2 does not drop; no stats attribute is zero packets.
        let mut out = Vec::new();
        put_attr(&mut out, 1, &2u32.to_ne_bytes());
        let f = parse_flow(&flow_msg(ufid, None, &out)).expect("a flow");
        assert_eq!((f.packets, f.drop_slot), (0, 0));
        // Actions told apart: output:2, output:3 and the drop each their own fingerprint.
        let mut out3 = Vec::new();
        put_attr(&mut out3, 1, &3u32.to_ne_bytes());
        let g = parse_flow(&flow_msg(ufid, None, &out3)).expect("a flow");
        let d = parse_flow(&flow_msg(ufid, None, &drop)).expect("a flow");
        assert!(f.actions != g.actions && f.actions != d.actions && g.actions != d.actions);
        let again = parse_flow(&flow_msg(ufid, Some((1, 2)), &out)).expect("a flow");
        assert_eq!(
            again.actions, f.actions,
            "the same actions, the same fingerprint"
        );
        // ct(zone=8),recirc(0x5) and the same reinstalled as recirc(0x9): the same; a
        // userspace action to another handler's socket (pid) too, not to another cookie.
        let (ct, recirc, userspace) = (12, OVS_ACTION_ATTR_RECIRC, OVS_ACTION_ATTR_USERSPACE);
        let acts = |id: u32, pid: u32, cookie: u8| {
            let (mut a, mut u) = (Vec::new(), Vec::new());
            put_attr(&mut a, ct, &8u16.to_ne_bytes());
            put_attr(&mut a, recirc, &id.to_ne_bytes());
            put_attr(&mut u, OVS_USERSPACE_ATTR_PID, &pid.to_ne_bytes());
            put_attr(&mut u, 2, &[cookie; 8]);
            put_attr(&mut a, userspace, &u);
            parse_flow(&flow_msg(ufid, None, &a))
                .expect("a flow")
                .actions
        };
        assert_eq!(acts(5, 100, 1), acts(9, 200, 1));
        assert_ne!(acts(5, 100, 1), acts(5, 100, 2));
        assert_ne!(acts(5, 100, 1), f.actions);
        // No actions at all: OVS_DROP_LAST_ACTION.
        assert_eq!(
            parse_flow(&flow_msg(ufid, None, &[])).map(|f| f.drop_slot),
            Some(1)
        );
        // No UFID: left out.
        let mut a = Vec::new();
        put_attr(&mut a, OVS_FLOW_ATTR_USED, &1u64.to_ne_bytes());
        assert_eq!(parse_flow(&a), None);
    }

    #[test]
    fn parses_a_datapath_and_its_lookups() {
        let mut a = Vec::new();
        put_attr(&mut a, OVS_DP_ATTR_NAME, b"ovs-system\0");
        let stats: Vec<u8> = [7u64, 36, 36, 2]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        put_attr(&mut a, OVS_DP_ATTR_STATS, &stats);
        let d = parse_datapath(5, &a);
        assert_eq!(
            (d.ifindex, d.name.as_str(), d.hit, d.missed, d.lost, d.flows),
            (5, "ovs-system", 7, 36, 36, 2)
        );
        // A truncated stats attribute reads what it has; no stats at all is zeros.
        let mut a = Vec::new();
        put_attr(&mut a, OVS_DP_ATTR_STATS, &stats[..12]);
        assert_eq!(parse_datapath(1, &a).hit, 7);
        assert_eq!(parse_datapath(1, &a).missed, 0);
        assert_eq!(parse_datapath(1, &[]).lost, 0);
    }
}
