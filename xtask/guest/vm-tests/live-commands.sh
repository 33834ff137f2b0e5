#!/bin/bash
# Live tracing end to end in the lab guest (kernel datapath, lab topology and traffic up), as a
# user runs it: drops, watch, top and record/replay on exact packet counts, and loss reporting.
#
# Exact counts need a flow nothing else touches: this test adds its own ACL (UDP 7777 to the
# server, dropped) and its own UDP load balancer, warms their datapath flows up (the first packet
# of a new flow goes through ovs-vswitchd, not the kernel flow), then sends exactly N and M.
. /mnt/host/guest/vmtest.sh
N=40 M=30
SERVER=10.244.2.5 UDPVIP=10.244.1.43

ovn-nbctl --name=vmtest-drop-7777 acl-add sw-backend to-lport 1003 'outport == "server" && udp.dst == 7777' drop
ovn-nbctl set ACL "$(ovn-nbctl --bare --columns=_uuid find ACL name=vmtest-drop-7777)" log=false
ovn-nbctl lb-add lb-udp $UDPVIP:5000 $SERVER:5000 udp -- ls-lb-add sw-client lb-udp -- lr-lb-add gw lb-udp
ovn-nbctl --wait=hv sync || fail "ovn-nbctl sync"
ACL_UUID=$(ovn-nbctl --bare --columns=_uuid find ACL name=vmtest-drop-7777)

# A UDP sink on the server so the VIP traffic is delivered, not answered with ICMP errors.
ip netns exec server python3 -c '
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0",5000))
while True: s.recv(2048)' </dev/null >/dev/null 2>&1 &
SINK=$!
trap 'kill $SINK 2>/dev/null; rm -rf $T' EXIT

# send DST PORT COUNT: COUNT UDP datagrams from a fixed source port, 20 ms apart.
send() {
  ip netns exec client python3 -c "
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 40000 + int(sys.argv[2]) % 1000))
for i in range(int(sys.argv[3])):
    s.sendto(b'detrace-vmtest', (sys.argv[1], int(sys.argv[2]))); time.sleep(0.02)
" "$1" "$2" "$3"
}
warm() { send "$1" "$2" 3; sleep 1; send "$1" "$2" 2; sleep 1; }

# Waits for "ready" on a command's stdout file.

# --- drops: exactly N dropped by the test ACL, attributed to it and to nothing else
warm $SERVER 7777
# --per-packet: the sample packet comes from the per-packet events (flow-table-counts.sh tests
# the default, counting from the kernel's flow table).
"$D" drops --per-packet --ready --format json --duration 8 >$T/drops.out 2>$T/drops.err &
P=$!
wait_ready $T/drops.out drops
send $SERVER 7777 $N
wait $P || fail "detrace drops exited $?: $(tail -5 $T/drops.err)"
grep -v '^ready' $T/drops.out > $T/drops.json
python3 - "$T/drops.json" "$ACL_UUID" "$N" <<'PY' || fail "drops: $(cat $T/drops.json; tail -3 $T/drops.err)"
import json, sys
groups = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
acl, n = sys.argv[2], int(sys.argv[3])
mine = [g for g in groups if g["culprit"]["id"] == acl]
assert len(mine) == 1, f"one group for the ACL, got {mine}"
g = mine[0]
assert g["culprit"]["kind"] == "acl" and g["culprit"]["name"] == "vmtest-drop-7777", g["culprit"]
assert g["drops"] == n, f"{g['drops']} drops attributed to the ACL, sent {n}"
assert "7777" in g["culprit"]["detail"] and "drop" in g["culprit"]["detail"], g["culprit"]
assert g["sample"]["dport"] == 7777, g.get("sample")
# Nothing else got our packets: no other group's sample is UDP 7777.
others = [x for x in groups if x is not g and (x.get("sample") or {}).get("dport") == 7777]
assert not others, others
print(f"drops: {g['drops']} drops -> ACL {g['culprit']['name']} ({g['culprit']['id']}); reasons {g['reasons']}")
PY
ok "drops attributes exactly $N drops to ACL vmtest-drop-7777"

# --- watch: M packets to the UDP VIP with their recirculation path, ct/NAT and the LB mapping
warm $UDPVIP 5000
"$D" watch --ready --format json --duration 6 --dst $UDPVIP --proto udp >$T/watch.out 2>$T/watch.err &
P=$!
wait_ready $T/watch.out watch
send $UDPVIP 5000 $M
wait $P || fail "detrace watch exited $?: $(tail -5 $T/watch.err)"
grep -v '^ready' $T/watch.out > $T/watch.json
python3 - "$T/watch.json" "$M" <<'PY' || fail "watch: $(head -c 3000 $T/watch.json; tail -3 $T/watch.err)"
import json, sys
pk = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
m = int(sys.argv[2])
assert len(pk) == m, f"watch showed {len(pk)} packets, sent {m}"
for p in pk:
    assert p["packet"]["dst"] == "10.244.1.43" and p["packet"]["dport"] == 5000, p["packet"]
    assert p["verdict"] == "output", p
    assert len(p["path"]) >= 2, f"no recirculation: {p['path']}"
    acts = " ".join(x["explanation"]["actions"] for x in p["path"] if x.get("explanation"))
    assert "ct(" in acts and "nat" in acts, acts
    # After the load balancer's DNAT, a later pass sees the backend address.
    assert any(x["packet"].get("dst") == "10.244.2.5" for x in p["path"]), p["path"]
    details = [d for x in p["path"] if x.get("explanation") for d in x["explanation"]["details"]]
    assert any(d.startswith("LB lb-udp:") and "10.244.1.43:5000 -> 10.244.2.5:5000" in d for d in details), details
print(f"watch: {len(pk)} packets, {len(pk[0]['path'])} passes each, e.g. " + " | ".join(x['explanation']['actions'] for x in pk[0]['path'] if x.get('explanation')))
PY
ok "watch shows $M VIP packets with recirculations, ct/NAT and LB lb-udp's VIP -> backend"

# --- top: the VIP flows count M
warm $UDPVIP 5000
"$D" top --ready --format json --interval 2 --duration 5 --sort packets --limit 500 >$T/top.out 2>$T/top.err &
P=$!
wait_ready $T/top.out top
send $UDPVIP 5000 $M
wait $P || fail "detrace top exited $?: $(tail -5 $T/top.err)"
grep -v '^ready' $T/top.out | tail -1 > $T/top.json
python3 - "$T/top.json" "$M" <<'PY' || fail "top: $(head -c 3000 $T/top.json)"
import json, sys
t = json.load(open(sys.argv[1])); m = int(sys.argv[2])
lb = [r for r in t["flows"] if "LB lb-udp" in r["label"]]
assert lb, [r["label"] for r in t["flows"]]
assert max(r["packets"] for r in lb) == m, [(r["label"], r["packets"]) for r in lb]
objs = [o for o in t["objects"] if o["label"] == "Load_Balancer lb-udp"]
assert objs and objs[0]["packets"] >= m, t["objects"]
print(f"top: lb-udp flows {[r['packets'] for r in lb]}")
PY
ok "top counts $M packets on the lb-udp flows"

# --- record / replay: the same packets offline, no daemons involved
warm $UDPVIP 5000
"$D" record --ready -o $T/rec.jsonl --duration 5 --dst $UDPVIP >$T/rec.out 2>$T/rec.err &
P=$!
wait_ready $T/rec.out record
send $UDPVIP 5000 $M
wait $P || fail "detrace record exited $?: $(tail -5 $T/rec.err)"
n=$(OVS_RUNDIR=/nonexistent OVN_SB_DB=unix:/nonexistent "$D" replay $T/rec.jsonl --format json | wc -l)
[ "$n" = "$M" ] || fail "replay printed $n packets, recorded $M"
"$D" replay $T/rec.jsonl --as top | grep -q 'LB lb-udp' || fail "replay --as top does not name lb-udp"
ok "record/replay: $M packets back without the daemons"
# Kept as a capture (tests/fixtures/lab/record-lab-6.12.jsonl: the static binary replays it).
[ -d /mnt/host/results ] && cp $T/rec.jsonl /mnt/host/results/record-lab.jsonl

# --- loss: a tiny ring and heavy traffic must report lost events, not hide them
"$D" watch --ready --format json --duration 4 --ring-size 4096 --rate-limit 0 >$T/loss.out 2>$T/loss.err &
P=$!
wait_ready $T/loss.out "watch (tiny ring)"
ip netns exec client ping -f -c 3000 -q $SERVER >/dev/null 2>&1
wait $P || fail "detrace watch (tiny ring) exited $?"
grep -q 'LOST' $T/loss.err || fail "no lost events reported with a 4 KiB ring: $(tail -3 $T/loss.err)"
ok "lost events reported: $(grep -o '[0-9]* LOST' $T/loss.err | tail -1)"

# --- attach/detach times (printed by every live command)
grep -h 'probes attached in\|probes detached in' $T/*.err | head -4
