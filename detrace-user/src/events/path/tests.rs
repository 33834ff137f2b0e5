//! Path assembly on synthetic events and on events recorded in the lab.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]

use detrace_common::EventKind;

use super::*;
use crate::events::tests::wire;

fn ev(kind: EventKind, skb: u64, ts: u64, ufid: u32, recirc: u32, reason: u32) -> PacketEvent {
    let mut w = wire(
        kind,
        skb,
        ts,
        if ufid == 0 { [0; 4] } else { [ufid, 0, 0, 1] },
        recirc,
    );
    w.reason = reason;
    w.latency_ns = if kind == EventKind::Pass {
        0
    } else {
        ts.saturating_sub(100)
    };
    PacketEvent::decode(&w).unwrap()
}

#[test]
fn recirculations_join_into_one_trace() {
    let mut a = PathAssembler::new(16, 1_000_000_000);
    let mut out = Vec::new();
    // Two packets interleaved on two skbs; the first recirculates twice then is output.
    for e in [
        ev(EventKind::Pass, 1, 100, 0xa, 0, 0),
        ev(EventKind::Pass, 2, 110, 0xb, 0, 0),
        ev(EventKind::Pass, 1, 120, 0xc, 0x25, 0),
        ev(EventKind::Pass, 1, 130, 0xd, 0x28, 0),
        ev(EventKind::Output, 1, 140, 0, 0, 7),
        ev(EventKind::Drop, 2, 150, 0xb, 0, 0x30003),
    ] {
        a.push(&e, &mut out);
    }
    assert_eq!(out.len(), 2);
    let ids: Vec<u32> = out[0]
        .passes
        .iter()
        .map(|p| (p.ufid.0 >> 96) as u32)
        .collect();
    assert_eq!(ids, vec![0xa, 0xc, 0xd]);
    assert_eq!(out[0].passes[1].recirc_id, 0x25);
    assert_eq!(out[0].verdict, Verdict::Output { port: 7 });
    assert_eq!(out[0].latency_ns, 40);
    assert_eq!(
        out[1].verdict,
        Verdict::Drop {
            reason: 0x30003,
            reason_name: "OVS_DROP_EXPLICIT".into()
        }
    );
    assert_eq!(out[1].last_ufid().map(|u| (u.0 >> 96) as u32), Some(0xb));
    assert_eq!(a.open_len(), 0);
}

/// A new conversation's first packet in the lab: a miss (its only kernel pass), then
/// ovs-vswitchd executes it with the flow it installed, whose drop action frees it; the
/// next packet hits that flow in the kernel.
#[test]
fn a_drop_after_upcall_is_a_trace_of_the_installed_flow() {
    let mut a = PathAssembler::new(16, 1_000_000_000);
    let mut out = Vec::new();
    let mut executed = ev(EventKind::Drop, 5, 200, 0xe, 0x7, 0x30003);
    executed.after_upcall = true;
    // An earlier packet left open under the executed skb's address ended unseen.
    a.push(&ev(EventKind::Pass, 5, 50, 0xa, 0, 0), &mut out);
    a.push(&ev(EventKind::Upcall, 4, 100, 0, 0, 1), &mut out);
    a.push(&executed, &mut out);
    a.push(&ev(EventKind::Pass, 6, 300, 0xe, 0x7, 0), &mut out);
    a.push(&ev(EventKind::Drop, 6, 310, 0xe, 0x7, 0x30003), &mut out);
    let v: Vec<(bool, Option<u32>, &Verdict)> = out
        .iter()
        .map(|t| {
            (
                t.after_upcall,
                t.last_ufid().map(|u| (u.0 >> 96) as u32),
                &t.verdict,
            )
        })
        .collect();
    let drop = Verdict::Drop {
        reason: 0x30003,
        reason_name: "OVS_DROP_EXPLICIT".into(),
    };
    // The miss and the execute are one packet: shown once, ending in the installed flow.
    assert_eq!(
        v,
        vec![
            (false, Some(0xa), &Verdict::Unknown),
            (true, Some(0xe), &drop),
            (false, Some(0xe), &drop),
        ]
    );
    assert_eq!((a.stats.orphan_ends, a.stats.unfinished), (0, 1));
    assert_eq!(a.stats.traces, 3);
    assert_eq!(a.held_len(), 0);
    assert_eq!(out[1].passes[0].recirc_id, 0x7);
    assert!(out[1].passes[0].executed);
    assert_eq!(out[1].ts_ns, 100, "the packet's trip starts at its miss");
    assert_eq!(out[1].latency_ns, 100, "through ovs-vswitchd to its drop");
    // Replayed, the executed packet counts as a packet and a drop of its flow, as the probes
    // count it live.
    let mut t = crate::aggregate::FlowTable::default();
    out.iter().for_each(|tr| t.add_trace(tr));
    let s = t.stats()[&Uuid::from_words([0xe, 0, 0, 1])];
    assert_eq!((s.packets, s.drops, s.drops_after_upcall), (2, 2, 1));
    // The mark is written only when set: old recordings read back unchanged.
    let json = serde_json::to_string(&out[2]).unwrap();
    assert!(
        !json.contains("after_upcall") && !json.contains("executed"),
        "{json}"
    );
    let json = serde_json::to_string(&out[1]).unwrap();
    assert!(json.contains("\"after_upcall\":true"), "{json}");
    let back: PacketTrace = serde_json::from_str(&json).unwrap();
    assert_eq!(back, out[1]);
}

/// A packet that hits a flow, misses at its recirculation, and comes back from
/// ovs-vswitchd recirculated again (a pass of an skb never seen, with its fields): one
/// trace, ended in the kernel. Another miss whose packet never comes back is released as it
/// was when the run ends.
#[test]
fn a_miss_and_its_continuation_are_one_packet() {
    let mut a = PathAssembler::new(16, 1_000_000_000);
    let mut out = Vec::new();
    a.push(&ev(EventKind::Pass, 1, 100, 0xa, 0, 0), &mut out);
    a.push(&ev(EventKind::Upcall, 1, 110, 0xa, 0x5, 1), &mut out);
    a.push(&ev(EventKind::Upcall, 3, 120, 0, 0, 1), &mut out);
    assert!(out.is_empty());
    assert_eq!(a.held_len(), 2);
    // Executed as skb 2: ct, then recirculated to a flow the kernel has.
    a.push(&ev(EventKind::Pass, 2, 300, 0xb, 0x6, 0), &mut out);
    a.push(&ev(EventKind::Output, 2, 310, 0, 0, 4), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let t = &out[0];
    let ids: Vec<u32> = t.passes.iter().map(|p| (p.ufid.0 >> 96) as u32).collect();
    assert_eq!(ids, vec![0xa, 0xb]);
    assert_eq!(t.verdict, Verdict::Output { port: 4 });
    assert!(!t.after_upcall, "its end was a kernel pass's doing");
    assert_eq!((t.ts_ns, t.latency_ns), (100, 210));
    // The second miss: the same fields, but its continuation never came.
    assert_eq!(a.held_len(), 1);
    a.release_held(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].verdict, Verdict::Upcall { cmd: 1 });
    assert_eq!(a.stats.traces, 2);
    assert_eq!(a.held_len(), 0);
}

/// A new conversation through two new flows: the miss at its first pass, the executed
/// packet recirculated into a second miss (its upcall marked after-upcall), executed again
/// and dropped. One packet, one trace, both executed flows in its path.
#[test]
fn two_upcalls_in_a_row_are_one_packet() {
    let mut a = PathAssembler::new(16, 1_000_000_000);
    let mut out = Vec::new();
    a.push(&ev(EventKind::Upcall, 1, 100, 0, 0, 1), &mut out);
    let mut up2 = ev(EventKind::Upcall, 2, 200, 0xa, 0x5, 1);
    up2.after_upcall = true;
    a.push(&up2, &mut out);
    assert!(out.is_empty());
    assert_eq!(a.held_len(), 1, "the second upcall continues the first");
    let mut drop = ev(EventKind::Drop, 3, 300, 0xb, 0x5, 0x30003);
    drop.after_upcall = true;
    a.push(&drop, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let t = &out[0];
    let path: Vec<(u32, bool)> = t
        .passes
        .iter()
        .map(|p| ((p.ufid.0 >> 96) as u32, p.executed))
        .collect();
    assert_eq!(path, vec![(0xa, true), (0xb, true)]);
    assert!(t.after_upcall && matches!(t.verdict, Verdict::Drop { .. }));
    assert_eq!((t.ts_ns, t.latency_ns), (100, 200));
    assert_eq!(a.held_len(), 0);
}

/// With the execute seen (its event carries the installed flow and the packet's fields
/// as it went up): the trip goes on under the executed skb, through the kernel passes that
/// follow, to its end; an end right after an execute is the executed flow's doing.
#[test]
fn an_execute_continues_the_trip_that_went_up() {
    let mut a = PathAssembler::new(16, 1_000_000_000);
    let mut out = Vec::new();
    a.push(&ev(EventKind::Pass, 1, 100, 0xa, 0, 0), &mut out);
    a.push(&ev(EventKind::Upcall, 1, 110, 0xa, 0x5, 1), &mut out);
    let mut exec = ev(EventKind::Execute, 7, 200, 0xe, 0x5, 0);
    exec.after_upcall = true;
    a.push(&exec, &mut out);
    a.push(&ev(EventKind::Pass, 7, 210, 0xf, 0x6, 0), &mut out);
    a.push(&ev(EventKind::Output, 7, 220, 0xf, 0x6, 3), &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let path: Vec<(u32, bool)> = out[0]
        .passes
        .iter()
        .map(|p| ((p.ufid.0 >> 96) as u32, p.executed))
        .collect();
    assert_eq!(path, vec![(0xa, false), (0xe, true), (0xf, false)]);
    assert_eq!(out[0].verdict, Verdict::Output { port: 3 });
    assert!(!out[0].after_upcall, "ended by a kernel pass");
    assert_eq!(out[0].latency_ns, 120);
    // An execute whose actions drop at once: the installed flow decided.
    a.push(&ev(EventKind::Upcall, 2, 300, 0, 0, 1), &mut out);
    let mut exec = ev(EventKind::Execute, 8, 400, 0xe, 0x5, 0);
    exec.after_upcall = true;
    a.push(&exec, &mut out);
    let mut drop = ev(EventKind::Drop, 8, 410, 0xe, 0x5, 0x30003);
    drop.after_upcall = true;
    a.push(&drop, &mut out);
    assert_eq!(out.len(), 2);
    assert!(out[1].after_upcall && matches!(out[1].verdict, Verdict::Drop { .. }));
    assert_eq!(out[1].passes.len(), 1);
    assert_eq!((a.held_len(), a.open_len(), a.stats.traces), (0, 0, 2));
}

/// On a kernel without OVS drop reasons a flow installed with no actions ends the packet
/// whose miss installed it (nothing is executed): the install's event (no skb, the flow's
/// masked key) ends the oldest held trip that missed at its input port and recirc_id with
/// fields the masked key agrees with.
#[test]
fn a_drop_at_install_ends_the_trip_that_missed_into_the_flow() {
    use std::net::{IpAddr, Ipv4Addr};
    let ip = |d: u8| Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, d)));
    let mut a = PathAssembler::new(16, 1_000_000_000);
    let mut out = Vec::new();
    // Three packets go up: A and B at recirc 5 of port 3 (A first, to .42; B to .43), C like
    // A but from port 4.
    a.push(&ev(EventKind::Pass, 1, 100, 0xa, 0, 0), &mut out);
    a.push(&ev(EventKind::Upcall, 1, 110, 0xa, 0x5, 1), &mut out);
    let mut pass_b = ev(EventKind::Pass, 2, 120, 0xa, 0, 0);
    pass_b.packet.dst = ip(43);
    a.push(&pass_b, &mut out);
    let mut up_b = ev(EventKind::Upcall, 2, 130, 0xa, 0x5, 1);
    up_b.packet.dst = ip(43);
    a.push(&up_b, &mut out);
    let mut up_c = ev(EventKind::Upcall, 3, 140, 0, 0x5, 1);
    up_c.in_port = 4;
    a.push(&up_c, &mut out);
    assert_eq!((out.len(), a.held_len()), (0, 3));
    let install = |ts: u64, ufid: u32, recirc: u32, dst: Option<IpAddr>| {
        let mut e = ev(EventKind::Drop, 0, ts, ufid, recirc, 0x3000e);
        e.after_upcall = true;
        e.at_install = true;
        e.len = 0;
        e.latency_ns = 0;
        // The masked key: source and ports wildcarded.
        e.packet.src = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        e.packet.sport = 0;
        e.packet.dport = 0;
        e.packet.dst = dst;
        e
    };
    // A flow for .43 at recirc 5: B's, although A went up first.
    a.push(&install(200, 0xd, 0x5, ip(43)), &mut out);

    assert_eq!(out.len(), 1, "{out:?}");
    let t = &out[0];
    assert_eq!(t.packet.dst, ip(43));
    assert_eq!(
        t.verdict,
        Verdict::Drop {
            reason: 0x3000e,
            reason_name: "no actions".into()
        }
    );
    assert!(t.after_upcall);
    let path: Vec<(u32, bool)> = t
        .passes
        .iter()
        .map(|p| ((p.ufid.0 >> 96) as u32, p.executed))
        .collect();
    assert_eq!(path, vec![(0xa, false), (0xd, true)]);
    assert_eq!(t.passes[1].packet.dst, ip(43), "the packet as it went up");
    assert_eq!(t.latency_ns, 80);
    // No trip missed at recirc 6 of port 3: nothing ends, nothing is held longer.
    a.push(&install(210, 0xd, 0x6, None), &mut out);
    assert_eq!((out.len(), a.held_len(), a.stats.orphan_ends), (1, 2, 0));
    // A flow matching 10.244.2.0/24 (a prefix mask): D's, to 10.244.2.5, not A's.
    let mut up_d = ev(EventKind::Upcall, 4, 150, 0, 0x5, 1);
    up_d.packet.dst = Some(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 5)));
    a.push(&up_d, &mut out);
    a.push(
        &install(
            215,
            0xd,
            0x5,
            Some(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 0))),
        ),
        &mut out,
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1].packet.dst, up_d.packet.dst);
    // A flow that wildcards every field: the oldest of port 3 at recirc 5 (A, not C).
    a.push(&install(220, 0xd, 0x5, None), &mut out);
    assert_eq!(out.len(), 3);
    assert_eq!((out[2].packet.dst, out[2].in_port), (ip(42), 3));
    assert_eq!(a.held_len(), 1, "C is still held");
    assert_eq!(a.open_len(), 0);
    // Two trips with the same fields held from port 4, missed at recirc 0 then at recirc 7:
    // a flow installed at recirc 7 ends the second, which is not its queue's first.
    let mut up_e = ev(EventKind::Upcall, 5, 300, 0, 0x7, 1);
    up_e.in_port = 4;
    a.push(&up_e, &mut out);
    let mut drop = install(310, 0xd, 0x7, None);
    drop.in_port = 4;
    a.push(&drop, &mut out);
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(out[3].ts_ns, 300);
    assert_eq!(a.held_len(), 1, "C (recirc 5) is still held");
    // C is released as it was when its time comes, its stale neighbour skipped.
    a.expire(300 + HOLD_NS, &mut out);
    assert_eq!((out.len(), a.held_len()), (5, 0));
    assert_eq!(out[4].ts_ns, 140);
}

#[test]
fn misses_orphans_reuse_timeouts_and_bounds() {
    let mut a = PathAssembler::new(2, 1000);
    let mut out = Vec::new();
    a.push(&ev(EventKind::Upcall, 9, 10, 0, 0, 1), &mut out);
    assert!(out.is_empty(), "held for its continuation");
    a.expire(10 + HOLD_NS / 2, &mut out);
    assert!(out.is_empty(), "still held");
    a.expire(10 + HOLD_NS, &mut out);
    assert_eq!(out.pop().unwrap().verdict, Verdict::Upcall { cmd: 1 });
    assert_eq!(a.held_len(), 0);
    a.push(&ev(EventKind::Drop, 8, 20, 0, 0, 0x30003), &mut out);
    assert_eq!(a.stats.orphan_ends, 1);
    assert!(out.is_empty());
    // skb 1 reused by a new packet before its end was seen.
    a.push(&ev(EventKind::Pass, 1, 30, 0xa, 0, 0), &mut out);
    a.push(&ev(EventKind::Pass, 1, 40, 0xb, 0, 0), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].verdict, Verdict::Unknown);
    assert_eq!(a.stats.unfinished, 1);
    // Table of 2: a third packet evicts the oldest.
    a.push(&ev(EventKind::Pass, 2, 50, 0xa, 0, 0), &mut out);
    a.push(&ev(EventKind::Pass, 3, 60, 0xa, 0, 0), &mut out);
    assert_eq!(a.stats.evicted, 1);
    assert_eq!(a.open_len(), 2);
    // Timeout closes the rest.
    a.expire(10_000, &mut out);
    assert_eq!(a.open_len(), 0);
    assert_eq!(a.stats.traces as usize, out.len() + 1);
}

/// A packet whose end never comes holds the front of the start order while thousands of
/// others come and go behind it: the order stays bounded, and both the old packet and the
/// eviction bound still work.
#[test]
fn start_order_stays_bounded_behind_a_stuck_packet() {
    let mut a = PathAssembler::new(8, u64::MAX);
    let mut out = Vec::new();
    a.push(&ev(EventKind::Pass, 1, 10, 0xa, 0, 0), &mut out);
    for i in 0..10_000u64 {
        let skb = 100 + i % 5;
        a.push(&ev(EventKind::Pass, skb, 20 + 2 * i, 0xb, 0, 0), &mut out);
        a.push(&ev(EventKind::Output, skb, 21 + 2 * i, 0, 0, 2), &mut out);
        assert!(a.order_len() <= 16, "{} at {i}", a.order_len());
    }
    assert_eq!(out.len(), 10_000);
    assert!(out.iter().all(|t| t.verdict == Verdict::Output { port: 2 }));
    assert_eq!(a.open_len(), 1);
    // The stuck packet is still the oldest: the next packets over the bound evict it first.
    for skb in 200..208 {
        a.push(&ev(EventKind::Pass, skb, 50_000 + skb, 0xc, 0, 0), &mut out);
    }
    assert_eq!(a.stats.evicted, 1);
    let evicted = out.last().unwrap();
    assert_eq!((evicted.ts_ns, &evicted.verdict), (10, &Verdict::Unknown));
    assert_eq!(a.open_len(), 8);
}

/// Raw events recorded in the lab (Linux 6.12, OVS 3.5 kernel datapath): tests/fixtures/lab.
#[derive(serde::Deserialize)]
struct WireKey {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    eth_type: u16,
    proto: u8,
    ip_version: u8,
}
#[derive(serde::Deserialize)]
struct Wire {
    kind: u32,
    cpu: u32,
    ts_ns: u64,
    skb: u64,
    ufid: [u32; 4],
    recirc_id: u32,
    in_port: u32,
    reason: u32,
    len: u32,
    latency_ns: u64,
    key: WireKey,
    /// Absent in events recorded before it existed.
    #[serde(default)]
    flags: u32,
}

pub(crate) fn lab_events() -> Vec<PacketEvent> {
    crate::testutil::fixture_raw("lab/events-lab-6.12.jsonl")
        .lines()
        .map(|l| {
            let w: Wire = serde_json::from_str(l).unwrap();
            let k = detrace_common::PacketKey {
                src: w.key.src,
                dst: w.key.dst,
                sport: w.key.sport,
                dport: w.key.dport,
                eth_type: w.key.eth_type,
                proto: w.key.proto,
                ip_version: w.key.ip_version,
            };
            let e = detrace_common::Event {
                kind: w.kind,
                cpu: w.cpu,
                ts_ns: w.ts_ns,
                skb: w.skb,
                ufid: w.ufid,
                recirc_id: w.recirc_id,
                in_port: w.in_port,
                reason: w.reason,
                len: w.len,
                latency_ns: w.latency_ns,
                key: k,
                flags: w.flags,
                _pad: 0,
            };
            PacketEvent::decode(&e).unwrap()
        })
        .collect()
}

#[test]
fn lab_capture_assembles_into_packets() {
    let events = lab_events();
    let mut a = PathAssembler::new(1024, u64::MAX);
    let mut out = Vec::new();
    for e in &events {
        a.push(e, &mut out);
    }
    a.release_held(&mut out);
    let ends = events.iter().filter(|e| e.kind != Kind::Pass).count();
    // Every end closes a packet (but ends of packets never seen); a packet whose end was not
    // seen is closed, as unfinished, when its skb starts a new packet.
    assert_eq!(
        out.len() as u64,
        ends as u64 - a.stats.orphan_ends + a.stats.unfinished,
        "{:?}",
        a.stats
    );
    assert!(
        out.iter().filter(|t| t.verdict == Verdict::Unknown).count() as u64 == a.stats.unfinished
    );
    let flows = crate::testutil::fixture_raw("lab/events-lab-6.12.flows.txt");
    // The ACL drop: OVS_DROP_EXPLICIT, attributed to the flow matching tcp dst 9999.
    let drop = out
        .iter()
        .find(|t| matches!(t.verdict, Verdict::Drop { .. }))
        .unwrap();
    assert_eq!(
        drop.verdict,
        Verdict::Drop {
            reason: 0x30003,
            reason_name: "OVS_DROP_EXPLICIT".into()
        }
    );
    assert_eq!(drop.packet.dport, 9999);
    let last = drop.last_ufid().unwrap().to_string();
    let line = flows.lines().find(|l| l.contains(&last)).unwrap();
    assert!(line.contains("dst=9999"), "{line}");
    // A VIP connection: first pass to the VIP, later passes (after DNAT) to the backend.
    let vip = out
        .iter()
        .find(|t| {
            t.packet.dst.map(|d| d.to_string()) == Some("10.244.1.42".into())
                && t.passes.len() >= 2
                && matches!(t.verdict, Verdict::Output { .. })
        })
        .unwrap();
    assert_eq!(vip.passes[0].recirc_id, 0);
    assert!(vip.passes[1..].iter().all(|p| p.recirc_id != 0));
    assert!(
        vip.passes
            .iter()
            .any(|p| p.packet.dst.map(|d| d.to_string()) == Some("10.244.2.5".into())),
        "{vip:#?}"
    );
    assert_eq!(vip.verdict, Verdict::Output { port: 3 });
    assert!(vip.latency_ns > 0);
    // The miss after a recirculation ends its packet as an upcall.
    assert!(
        out.iter()
            .any(|t| t.verdict == Verdict::Upcall { cmd: 1 } && !t.passes.is_empty())
    );
}
