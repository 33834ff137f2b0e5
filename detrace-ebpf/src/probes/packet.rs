//! What every hook shares: kernel reads at BTF-given offsets, the packet key, the event filter,
//! the rate-limited ring buffer writer and the per-UFID aggregates.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::FEntryContext,
};
use detrace_common::{
    AddrKey, Counter, EVENT_AFTER_UPCALL, Event, EventKind, FILTER_ADDRS, FILTER_DST, FILTER_HOST,
    FILTER_IN_PORT, FILTER_PORT, FILTER_PROTO, FILTER_SRC, FlowKey, PacketKey, drop_reason_slot,
    latency_bucket,
};

use crate::maps::{
    EVENTS, FLOW_STATS, Inflight, RATE, SCRATCH_EVENT, SCRATCH_INFLIGHT, ZERO_STATS, bump, conf,
};

/// Error value of the `try_` functions: the program's return value after counting it.
pub type Fail = u32;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Result<T, Fail> {
    // SAFETY: bpf_probe_read_kernel copies from any kernel address and fails cleanly on a bad
    // one; T is a plain integer or array type here.
    match unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) } {
        Ok(v) => Ok(v),
        Err(_) => {
            bump(Counter::ProbeErrors);
            Err(0)
        }
    }
}

/// The first `N` arguments of an fentry program's function, as plain numbers. Read from the
/// context directly, the verifier types pointer arguments by BTF (`ptr_sk_buff`, ...) and
/// refuses the arithmetic the probes do on them (offsets from Config, the in-flight slot
/// hash); one kernel read of the context array gives integers, as a kprobe's registers are.
#[inline(always)]
pub fn fentry_args<const N: usize>(ctx: &FEntryContext) -> Result<[u64; N], Fail> {
    read::<[u64; N]>(ctx.as_ptr() as u64, 0)
}

/// A pointer argument of a hooked function; missing or NULL is counted as a probe error.
#[inline(always)]
pub fn nonzero(v: Option<u64>) -> Result<u64, Fail> {
    match v {
        Some(v) if v != 0 => Ok(v),
        _ => {
            bump(Counter::ProbeErrors);
            Err(0)
        }
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// recirc_id and in_port of a `struct sw_flow_key` (the packet's, or a flow's masked one).
#[inline(always)]
pub fn read_pass(key: u64) -> Result<(u32, u32), Fail> {
    let (in_port, recirc) = (conf!(off_key_in_port), conf!(off_key_recirc_id));
    if recirc.wrapping_sub(in_port) == 8 {
        // The usual layout (phy.in_port, mac_proto, tun_proto, ovs_flow_hash, recirc_id): one
        // read for both.
        let b: [u8; 12] = read(key, in_port)?;
        let port = u16::from_ne_bytes([b[0], b[1]]);
        let recirc = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        return Ok((recirc, u32::from(port)));
    }
    let recirc: u32 = read(key, conf!(off_key_recirc_id))?;
    // sw_flow_key.phy.in_port is a u16 (checked by the loader).
    let in_port: u16 = read(key, conf!(off_key_in_port))?;
    Ok((recirc, u32::from(in_port)))
}

/// The packet's fields from a `struct sw_flow_key` (net/openvswitch/flow.h), written in place
/// (into map memory: a PacketKey is too big to move around on the BPF stack).
#[inline(always)]
pub fn read_key(key: u64, k: &mut PacketKey) -> Result<(), Fail> {
    *k = PacketKey::default();
    k.eth_type = u16::from_be(read::<u16>(key, conf!(off_key_eth_type))?);
    // ETH_P_IP / ETH_P_IPV6: only then do the ipv4/ipv6 union members and tp hold addresses
    // and ports (the union is ARP or MPLS otherwise).
    match k.eth_type {
        0x0800 => {
            let s: [u8; 4] = read(key, conf!(off_key_ipv4_src))?;
            let d: [u8; 4] = read(key, conf!(off_key_ipv4_dst))?;
            k.src[..4].copy_from_slice(&s);
            k.dst[..4].copy_from_slice(&d);
            k.ip_version = 4;
        }
        0x86dd => {
            k.src = read(key, conf!(off_key_ipv6_src))?;
            k.dst = read(key, conf!(off_key_ipv6_dst))?;
            k.ip_version = 6;
        }
        _ => return Ok(()),
    }
    k.proto = read(key, conf!(off_key_ip_proto))?;
    k.sport = u16::from_be(read::<u16>(key, conf!(off_key_tp_src))?);
    k.dport = u16::from_be(read::<u16>(key, conf!(off_key_tp_dst))?);
    Ok(())
}

/// The packet's fields from its headers, at a flow hit: `skb` is the packet, `flow_key` the hit
/// flow's masked `struct sw_flow_key` (its eth.type is exact: OVS megaflows always match it).
/// key_extract (net/openvswitch/flow.c) set the skb's network header and, for IP, its transport
/// header; actions that rewrite the packet (ct nat, set) rewrite those headers. The fields are
/// those of [`read_key`] on the datapath's own key: ICMP type and code in the ports, no ports
/// for a later IPv4 fragment. IPv6 with extension headers: the protocol is the flow's (0 when
/// the megaflow does not match it) and no ports.
#[inline(always)]
pub fn read_skb_key(skb: u64, flow_key: u64, k: &mut PacketKey) -> Result<(), Fail> {
    *k = PacketKey::default();
    k.eth_type = u16::from_be(read::<u16>(flow_key, conf!(off_key_eth_type))?);
    if k.eth_type != 0x0800 && k.eth_type != 0x86dd {
        return Ok(());
    }
    let head: u64 = read(skb, conf!(off_skb_head))?;
    let (off_th, off_nh) = (
        conf!(off_skb_transport_header),
        conf!(off_skb_network_header),
    );
    let (nh, th) = if off_nh.wrapping_sub(off_th) == 2 {
        // Adjacent (transport_header, network_header, mac_header): one read.
        let h: [u16; 2] = read(skb, off_th)?;
        (h[1], h[0])
    } else {
        (read::<u16>(skb, off_nh)?, read::<u16>(skb, off_th)?)
    };
    let mut ports = true;
    if k.eth_type == 0x0800 {
        let h: [u8; 20] = read(head, u32::from(nh))?;
        k.ip_version = 4;
        k.proto = h[9];
        k.src[..4].copy_from_slice(&h[12..16]);
        k.dst[..4].copy_from_slice(&h[16..20]);
        // A fragment other than the first has no transport header.
        if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            ports = false;
        }
    } else {
        let h: [u8; 40] = read(head, u32::from(nh))?;
        k.ip_version = 6;
        k.src.copy_from_slice(&h[8..24]);
        k.dst.copy_from_slice(&h[24..40]);
        k.proto = h[6];
        // Hop-by-hop, routing, fragment, destination options, AH, ESP: the upper protocol is
        // further on; take the flow's.
        if matches!(k.proto, 0 | 43 | 44 | 50 | 51 | 60) {
            k.proto = read(flow_key, conf!(off_key_ip_proto))?;
            ports = false;
        }
    }
    // ~0 (typeof(transport_header)) when unset.
    if !ports || th == u16::MAX {
        return Ok(());
    }
    read_l4(head, u32::from(th), k)
}

/// The ports (TCP, UDP, SCTP) or ICMP type and code at `base + th` into `k`, by `k.proto`;
/// nothing for other protocols (IPv6 extension headers among them).
#[inline(always)]
pub fn read_l4(base: u64, th: u32, k: &mut PacketKey) -> Result<(), Fail> {
    match k.proto {
        // TCP, UDP, SCTP: source and destination ports first.
        6 | 17 | 132 => {
            let p: [u8; 4] = read(base, th)?;
            k.sport = u16::from_be_bytes([p[0], p[1]]);
            k.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        // ICMP, ICMPv6: the datapath keys type and code as tp.src and tp.dst.
        1 | 58 => {
            let t: [u8; 2] = read(base, th)?;
            k.sport = u16::from(t[0]);
            k.dport = u16::from(t[1]);
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a0, a1) = (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    );
    let (b0, b1) = (
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    );
    a0 == b0 && a1 == b1
}

/// Whether a packet (as its first pass saw it) passes `Config.filter_*`.
#[inline(always)]
pub fn matches(k: &PacketKey, in_port: u32) -> bool {
    let flags = conf!(filter_flags);
    if flags == 0 {
        return true;
    }
    if flags & (FILTER_SRC | FILTER_DST | FILTER_HOST) != 0 {
        if k.ip_version != conf!(filter_ip_version) {
            return false;
        }
        let want_src = conf!(filter_src);
        if flags & FILTER_SRC != 0 && !addr_eq(&k.src, &want_src) {
            return false;
        }
        if flags & FILTER_HOST != 0 && !addr_eq(&k.src, &want_src) && !addr_eq(&k.dst, &want_src) {
            return false;
        }
        if flags & FILTER_DST != 0 && !addr_eq(&k.dst, &conf!(filter_dst)) {
            return false;
        }
    }
    if flags & FILTER_PORT != 0 {
        let p = conf!(filter_port);
        if k.sport != p && k.dport != p {
            return false;
        }
    }
    if flags & FILTER_PROTO != 0 && k.proto != conf!(filter_proto) {
        return false;
    }
    if flags & FILTER_IN_PORT != 0 && in_port != conf!(filter_in_port) {
        return false;
    }
    if flags & FILTER_ADDRS != 0 && !in_addr_set(k) {
        return false;
    }
    true
}

/// Whether either address of `k` is in the FILTER_ADDRS set.
#[inline(always)]
fn in_addr_set(k: &PacketKey) -> bool {
    if k.ip_version == 0 {
        return false;
    }
    let version = u32::from(k.ip_version);
    // SAFETY: lookups of a plain hash map; the values are not kept past the call.
    unsafe {
        crate::maps::FILTER_ADDRS
            .get(AddrKey {
                addr: k.src,
                version,
            })
            .is_some()
            || crate::maps::FILTER_ADDRS
                .get(AddrKey {
                    addr: k.dst,
                    version,
                })
                .is_some()
    }
}

/// Token bucket of one-second windows per CPU: true when one more event may go out now.
#[inline(always)]
fn rate_ok(ts: u64) -> bool {
    let limit = conf!(rate_limit);
    if limit == 0 {
        return true;
    }
    let Some(r) = RATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run; a BPF program
    // is not preempted by another one on the same CPU for the same hook family.
    let r = unsafe { &mut *r };
    if ts.wrapping_sub(r.window_start) >= 1_000_000_000 {
        r.window_start = ts;
        r.sent = 0;
    }
    if r.sent >= u64::from(limit) {
        return false;
    }
    r.sent += 1;
    true
}

/// This CPU's scratch Event, for the caller to fill and pass to [`emit`].
#[inline(always)]
pub fn scratch_event() -> Result<&'static mut Event, Fail> {
    let p = SCRATCH_EVENT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run; one program
    // at a time uses it on a CPU. kprobes and the tracepoint share the kernel's per-CPU
    // bpf_prog_active guard, so they never nest. An fentry program has only its own recursion
    // guard: the tracepoint could run inside it only if an skb were freed with a drop reason
    // from a hard interrupt on that CPU while the datapath (which runs with bottom halves
    // off) is in one of its hooks; drivers free skbs from interrupts through
    // dev_kfree_skb_irq, which defers the free to a softirq.
    Ok(unsafe { &mut *p })
}

/// Copies an INFLIGHT entry into this CPU's scratch slot (its slot may be taken over next).
#[inline(always)]
pub fn copy_inflight(p: &Inflight) -> Result<&'static Inflight, Fail> {
    let e = SCRATCH_INFLIGHT.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: e is this CPU's scratch slot, valid for the program's run and not overlapping
    // an INFLIGHT slot.
    unsafe {
        *e = *p;
        Ok(&*e)
    }
}

/// Emits the event that ends a packet (drop or output) from its in-flight state: the fields
/// both end hooks share, plus their own `reason` (drop reason / port) and `len`.
#[inline(always)]
pub fn emit_end(
    kind: EventKind,
    e: &Inflight,
    ts: u64,
    reason: u32,
    len: u32,
    latency: u64,
) -> Result<(), Fail> {
    let ev = scratch_event()?;
    ev.kind = kind as u32;
    ev.cpu = cpu();
    ev.ts_ns = ts;
    ev.skb = e.id;
    ev.ufid = e.ufid;
    ev.recirc_id = e.recirc_id;
    ev.in_port = e.in_port;
    ev.reason = reason;
    ev.len = len;
    ev.latency_ns = latency;
    ev.key = e.key;
    ev.flags = upcall_flags(e);
    emit(ev);
    Ok(())
}

/// [`Event::flags`] for an event of the packet whose in-flight entry is `e`.
#[inline(always)]
pub fn upcall_flags(e: &Inflight) -> u32 {
    if e.after_upcall != 0 {
        EVENT_AFTER_UPCALL
    } else {
        0
    }
}

/// Writes one event to the ring buffer (the caller checked `events_enabled` and the filter).
#[inline(always)]
pub fn emit(ev: &Event) {
    if !rate_ok(ev.ts_ns) {
        bump(Counter::EventsRateLimited);
        return;
    }
    // Wake the reader only once a batch waits (a sixteenth of the ring): the default wakes it
    // for every record it has caught up with, which under load is a reschedule of the reader
    // per event. User space also polls (EventReader, every few ms), so a lone event is not
    // left waiting for the next batch.
    let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA))
        >= EVENTS.query(u64::from(BPF_RB_RING_SIZE)) / 16
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // bpf_ringbuf_output copies from map memory: nothing big on the stack.
    match EVENTS.output::<Event>(ev, u64::from(flags)) {
        Ok(()) => bump(Counter::EventsSent),
        Err(_) => bump(Counter::EventsLost),
    }
}

#[inline(always)]
pub fn events_enabled() -> bool {
    conf!(events_enabled) != 0
}

/// Whether FLOW_STATS is kept: per-packet counting, or the flow table's with a latency
/// sample. Counting from the flow table alone reads nothing of it (user space sizes it to one
/// entry then, so that attaching allocates nothing for it).
#[inline(always)]
pub fn flow_stats_kept() -> bool {
    conf!(flow_table) == 0 || conf!(latency_sample) != 0
}

#[inline(always)]
pub fn cpu() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
pub fn has_ufid(ufid: &[u32; 4]) -> bool {
    ufid[0] | ufid[1] | ufid[2] | ufid[3] != 0
}

/// This CPU's FlowStats for a UFID, created (zeroed) on first use.
#[inline(always)]
fn stats_for(ufid: &[u32; 4]) -> Option<*mut detrace_common::FlowStats> {
    let key = FlowKey { ufid: *ufid };
    if let Some(s) = FLOW_STATS.get_ptr_mut(&key) {
        return Some(s);
    }
    let zero = ZERO_STATS.get_ptr(0)?;
    // SAFETY: a pointer to this CPU's slot of ZERO_STATS (never written), valid for the run.
    let zero = unsafe { &*zero };
    if FLOW_STATS
        .insert(&key, zero, u64::from(BPF_NOEXIST))
        .is_err()
    {
        // -EEXIST (another CPU raced us) is fine; a full map is not.
        if let Some(s) = FLOW_STATS.get_ptr_mut(&key) {
            return Some(s);
        }
        bump(Counter::FlowStatsFull);
        return None;
    }
    FLOW_STATS.get_ptr_mut(&key)
}

/// A datapath pass hit this flow.
#[inline(always)]
pub fn count_hit(ufid: &[u32; 4], len: u32) {
    if let Some(s) = stats_for(ufid) {
        // SAFETY: this CPU's value of a per-CPU hash entry, valid for the program's run.
        let s = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += u64::from(len);
    }
}

/// How the packet ended after its last flow hit.
pub enum End {
    Output,
    /// The drop reason, and whether the packet was an executed one (see
    /// [`crate::maps::Inflight::after_upcall`]).
    Drop(u32, bool),
}

/// The packet whose last flow was `ufid` was sent or dropped after `latency` ns in the datapath.
#[inline(always)]
pub fn count_end(ufid: &[u32; 4], end: End, latency: u64) {
    let Some(s) = stats_for(ufid) else {
        return;
    };
    // SAFETY: this CPU's value of a per-CPU hash entry, valid for the program's run.
    let s = unsafe { &mut *s };
    match end {
        End::Output => s.outputs += 1,
        End::Drop(reason, after_upcall) => {
            s.drops += 1;
            if after_upcall {
                s.drops_after_upcall += 1;
            }
            if let Some(c) = s.drop_reasons.get_mut(drop_reason_slot(reason)) {
                *c += 1;
            }
        }
    }
    if let Some(c) = s.latency.get_mut(latency_bucket(latency)) {
        *c += 1;
    }
    s.latency_sum_ns += latency;
}
