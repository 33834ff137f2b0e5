#!/bin/bash
# top and drops by default count from the kernel's own flow table (no program runs per packet):
# in the lab guest (kernel datapath, lab topology and traffic up), their counts must equal the
# packets sent, across `ovs-dpctl del-flows` in the middle of an interval and flows that appear
# and vanish between two reads (their last stats caught by the flow-removal probe).
#
# Own objects, so that nothing else touches the counted flows: a UDP load balancer lb-ft
# (10.244.1.44:5001 -> server:5001) and an ACL dropping UDP 7781 to the server.
. /mnt/host/guest/vmtest.sh
SERVER=10.244.2.5 VIP=10.244.1.44 DPORT=7781
N1=20 N2=15

ovn-nbctl --name=vmtest-ft-7781 acl-add sw-backend to-lport 1003 "outport == \"server\" && udp.dst == $DPORT" drop
ACL_UUID=$(ovn-nbctl --bare --columns=_uuid find ACL name=vmtest-ft-7781)
# Not logged: a logged drop goes to ovn-controller instead of being dropped in the datapath.
ovn-nbctl set ACL "$ACL_UUID" log=false
ovn-nbctl lb-add lb-ft $VIP:5001 $SERVER:5001 udp -- ls-lb-add sw-client lb-ft -- lr-lb-add gw lb-ft
ovn-nbctl --wait=hv sync || fail "ovn-nbctl sync"

ip netns exec server python3 -c '
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0",5001))
while True: s.recv(2048)' </dev/null >/dev/null 2>&1 &
SINK=$!
cleanup() {
  kill $SINK 2>/dev/null
  ovn-nbctl --if-exists lb-del lb-ft
  ovn-nbctl acl-del sw-backend to-lport 1003 "outport == \"server\" && udp.dst == $DPORT" 2>/dev/null
  rm -rf $T
}
trap cleanup EXIT

# send DST PORT COUNT [FIRST_PAUSE]: COUNT datagrams from a fixed source port, 20 ms apart (the
# first followed by FIRST_PAUSE s: a packet that finds no flow goes up to ovs-vswitchd, and the
# next ones must find the flows it installs).
send() {
  ip netns exec client python3 -c "
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 41000 + int(sys.argv[2]) % 1000))
for i in range(int(sys.argv[3])):
    s.sendto(b'detrace-ft', (sys.argv[1], int(sys.argv[2]))); time.sleep(float(sys.argv[4]) if i == 0 else 0.02)
" "$1" "$2" "$3" "${4:-0.02}"
}
warm() { send "$1" "$2" 3 1; sleep 1; send "$1" "$2" 2; sleep 1; }

# No program of the per-packet hooks may be loaded while top/drops run by default; the
# flow-removal probe must be.
check_programs() {
  local progs
  progs=$(bpftool prog show 2>/dev/null | grep -o 'name [a-z_]*' | sort -u | tr '\n' ' ')
  case "$progs" in
    *fentry_flow_sta*|*fentry_vport_se*|*fentry_dp_upcal*)
      fail "$1: a per-packet probe is loaded: $progs" ;;
  esac
  case "$progs" in
    *fentry_flow_fre*|*rcu_free_flow_c*) ;;
    *) fail "$1: the flow-removal probe is not loaded: $progs" ;;
  esac
  echo "$1: loaded programs: $progs"
}

# The kernel's own counts: snapshots of the datapath flows (ufid -> packets), one right after
# detrace is ready (S0) and one right before each flush and at the end. Every flush empties the
# table, so each incarnation of a UFID ends in exactly one later snapshot: the kernel's count
# since S0 is their sum minus S0's.
snap() { ovs-appctl dpctl/dump-flows -m > "$T/snap.$1"; }
# After a flush ovs-vswitchd keeps its own record of each flow (ukey) until a revalidator round
# notices the flow has gone; until then a packet that misses is executed without installing
# anything (not followed by any probe). Let that settle: two whole revalidator rounds (the
# first may have begun before the flush), then a second.
# OVS 3.1.0 (bookworm) never notices: after `ovs-dpctl del-flows` it went on executing every
# packet of the flushed flows from userspace without reinstalling them (measured: the
# recreated UFIDs counted 0 in the kernel after two revalidator rounds; detrace said so as
# "executes without an install"). Its flush is therefore the one ovs-vswitchd knows of,
# `revalidator/purge` (each flow deleted by UFID, its ukey with it): the same mid-interval
# deletions in the kernel, which the removal probe must catch the same way.
flush() {
  snap "$1"
  if [ "${DETRACE_PROFILE:-trixie}" = bookworm ]; then
    ovs-appctl revalidator/purge || fail "revalidator/purge"
  else
    ovs-dpctl del-flows || fail "ovs-dpctl del-flows"
  fi
  ovs-appctl revalidator/wait && ovs-appctl revalidator/wait || fail "revalidator/wait"
  sleep 1
}

# top_check OUT N X SNAPS...: every lb-ft flow (the VIP or UDP port 5001 in the kernel's flow
# dump: top cannot name a flow that came and went between two of its reads) counts what the
# kernel counted across flushes, plus at most X packets ovs-vswitchd executed with its actions
# after an upcall (the first packet after each flush: the kernel's stats miss those, detrace
# counts them, as with per-packet counting); the first pass's flow counts N, every packet sent.
top_check() {
  python3 - "$@" <<'PY'
import json, re, sys
t = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{'][-1]
n, x = int(sys.argv[2]), int(sys.argv[3])
mine = set()
def snap(path):
    out = {}
    for line in open(path):
        u, p = re.search(r'ufid:([0-9a-f-]{36})', line), re.search(r'packets:(\d+)', line)
        if u and p:
            out[u.group(1)] = int(p.group(1))
            if re.search(r'=5001\b|=10\.244\.1\.44\b', line):
                mine.add(u.group(1))
    return out
s0, rest = snap(sys.argv[4]), [snap(p) for p in sys.argv[5:]]
rows = {r["key"].removeprefix("ufid:"): r for r in t["flows"]}
assert mine, "no lb-ft flow in the kernel's dumps"
counts = {}
for u in sorted(mine):
    want = sum(s.get(u, 0) for s in rest) - s0.get(u, 0)
    got = rows[u]["packets"] if u in rows else 0
    assert want <= got <= want + x, f"ufid:{u} ({rows.get(u, {}).get('label')}): top {got}, the kernel {want} (+ up to {x} executed)"
    counts[u] = got
lat = int(__import__("os").environ.get("LAT", "0"))
top_count = max(counts.values())
# Without a flush, a flow the revalidators let expire meanwhile comes back through an upcall:
# then its first packet is an executed one too.
assert top_count == n or (lat and n <= top_count <= n + x), f"top counts {top_count} on the first lb-ft flow, sent {n}: {counts}"
named = [r["label"] for u, r in rows.items() if u in mine]
k = t["kernel"]
if lat:
    assert k["latency_sample"] == lat, k
    # A packet's latency counts on its last flow (not always one of ours); over all flows, 1
    # packet in `lat` has one, and a packet makes several passes (hits).
    sampled = sum(r["latency"]["count"] for r in t["flows"])
    assert 0 < sampled < k["hits"] / lat, f"{sampled} packets with a latency, {k['hits']} hits, 1 in {lat} sampled"
    print(f"latency sampled 1 in {lat}: {sampled} packets with a latency over {k['hits']} hits; p50 of the busiest flow {max(t['flows'], key=lambda r: r['latency']['count'])['latency']['p50_ns']} ns")
else:
    assert k["flows_removed"] > 0, f"no flow removal caught: {k}"
print(f"top: lb-ft flows {sorted(counts.values(), reverse=True)}, each as the kernel counted ({named[:3]}); kernel {dict((x, k[x]) for x in ('hits', 'flows_removed', 'drops'))}")
PY
}

# --- top, interval 2 s: del-flows in the middle of an interval, the flows recreated, counted on
warm $VIP 5001
"$D" top --ready --format json --interval 2 --duration 16 --sort packets --limit 1000 >$T/top.out 2>$T/top.err &
P=$!
wait_ready $T/top.out top
snap a0
check_programs top
send $VIP 5001 $N1
flush a1
# The first packet after the flush goes up (and is counted by no kernel flow); 1 s later the
# flows are back (the first pass's with the same UFID).
send $VIP 5001 1 1
send $VIP 5001 $N2
snap a2
wait $P || fail "detrace top exited $?: $(tail -5 $T/top.err)"
top_check $T/top.out $((N1 + 1 + N2)) 1 $T/snap.a0 $T/snap.a1 $T/snap.a2 || fail "top: $(tail -c 3000 $T/top.out; tail -3 $T/top.err)"
grep 'kernel:' $T/top.err
ok "top counts $N1 + 1 + $N2 packets on the lb-ft flows across a del-flows mid-interval"

# --- top, one read at the end: the flows appear and vanish between the two reads
warm $VIP 5001
"$D" top --ready --format json --interval 60 --duration 18 --sort packets --limit 1000 >$T/top2.out 2>$T/top2.err &
P=$!
wait_ready $T/top2.out "top (one read)"
snap b0
send $VIP 5001 $N1
flush b1
send $VIP 5001 1 1
send $VIP 5001 $N2
flush b2
wait $P || fail "detrace top exited $?: $(tail -5 $T/top2.err)"
top_check $T/top2.out $((N1 + 1 + N2)) 1 $T/snap.b0 $T/snap.b1 $T/snap.b2 || fail "top (one read): $(tail -c 3000 $T/top2.out; tail -3 $T/top2.err)"
ok "top counts $N1 + 1 + $N2 packets of flows deleted before it read them"

# --- top --latency-sample 2: counts still from the flow table, latency from a sample, said
warm $VIP 5001
"$D" top --ready --format json --interval 2 --duration 8 --sort packets --limit 1000 --latency-sample 2 >$T/top3.out 2>$T/top3.err &
P=$!
wait_ready $T/top3.out "top --latency-sample"
snap d0
send $VIP 5001 $N1
snap d1
wait $P || fail "detrace top --latency-sample exited $?: $(tail -5 $T/top3.err)"
LAT=2 top_check $T/top3.out $N1 1 $T/snap.d0 $T/snap.d1 || fail "top --latency-sample: $(tail -c 3000 $T/top3.out; tail -3 $T/top3.err)"
grep 'kernel:' $T/top3.err
ok "top --latency-sample 2 counts $N1 packets and measures latency on a sample"

# --- drops: the ACL's drops exactly, in the kernel and after upcalls, across two flushes
warm $SERVER $DPORT
"$D" drops --ready --format json --interval 1 --duration 90 --retire-after 3 >$T/drops.out 2>$T/drops.err &
P=$!
wait_ready $T/drops.out drops
check_programs drops
# until_acl N: until the ACL's group counts N drops (explained: a flow flushed before its
# explanation stays counted but unexplained, said; what this checks is the count across
# flushes and retirement, not how fast explanations come), at most 30 s.
until_acl() {
  for i in $(seq 60); do [ "$(group_drops $T/drops.out "$ACL_UUID")" -ge "$1" ] && return 0; sleep 0.5; done
  fail "drops: the ACL's group never reached $1 drops: $(tail -c 2000 $T/drops.out)"
}
send $SERVER $DPORT $N1
until_acl $N1
flush c1
# No warm-up: the first packet is dropped by ovs-vswitchd's execute of the installed drop flow.
send $SERVER $DPORT $N2 1
until_acl $((N1 + N2))
flush c2
sleep 5  # the flushed flows retire (gone for more than --retire-after 3)
kill -INT $P
wait $P || fail "detrace drops exited $?: $(tail -5 $T/drops.err)"
python3 - "$T/drops.out" "$ACL_UUID" $((N1 + N2)) <<'PY' || fail "drops: $(tail -c 3000 $T/drops.out; tail -3 $T/drops.err)"
import json, sys
groups = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{']
acl, n = sys.argv[2], int(sys.argv[3])
last = [g for g in groups if g["final"]]
mine = [g for g in last if g["culprit"]["id"] == acl]
assert len(mine) == 1, f"one group for the ACL in the last report, got {[g['culprit'] for g in last]}"
assert len({g["report"] for g in groups}) > 1, "reports every second"
g = mine[0]
assert g["culprit"]["kind"] == "acl" and g["culprit"]["name"] == "vmtest-ft-7781", g["culprit"]
assert g["drops"] == n, f"{g['drops']} drops ({g['in_kernel']} in the kernel, {g['after_upcall']} after upcall), sent {n}"
assert g["after_upcall"] >= 1, f"no drop after upcall: {g}"
assert g["reasons"].get(__import__("os").environ["OVN_DROP_REASON"]) == n, g["reasons"]
print(f"drops: {g['drops']} -> ACL {g['culprit']['name']}: {g['in_kernel']} in the kernel, {g['after_upcall']} after upcall, reasons {g['reasons']}")
PY
grep 'kernel:' $T/drops.err
# Both flushes' flows retired before the end (--retire-after 3): the group kept their drops.
grep 'kernel:' $T/drops.err | grep -q ' flows retired' || fail "drops: no flow retired: $(grep kernel: $T/drops.err)"
ok "drops attributes exactly $((N1 + N2)) drops to ACL vmtest-ft-7781 across two flushes and the flows' retirement"

# --- top --retire-after 2: the flows flushed in the middle retire (forgotten, in the kernel's
# maps too) before the run ends; the load balancer's row still counts every packet sent, and
# the flows' UFIDs come back counting from zero.
warm $VIP 5001
"$D" top --ready --format json --interval 1 --duration 120 --sort packets --limit 1000 --retire-after 2 >$T/top4.out 2>$T/top4.err &
P=$!
wait_ready $T/top4.out "top --retire-after"
send $VIP 5001 $N1
# Flushed once explained (lb-ft's row counts the burst): this checks what retirement keeps, not
# how fast explanations come (a recirculated flow flushed before its turn stays unexplained,
# and says so). Seconds on a loaded CI host: the explanation queue starts with every flow the
# lab's traffic hits.
lb_row() {
  python3 - "$T/top4.out" <<'PY'
import json, sys
rows = []
for l in open(sys.argv[1]):
    try:
        rows = json.loads(l)["objects"]
    except (ValueError, KeyError, TypeError):
        pass  # not a report, or one being written
print(max([r["packets"] for r in rows if r["key"].startswith("Load_Balancer ") and "lb-ft" in r["label"]], default=0))
PY
}
for i in $(seq 60); do [ "$(lb_row)" -ge $N1 ] && break; sleep 0.5; done
[ "$(lb_row)" -ge $N1 ] || fail "top --retire-after: lb-ft's row never counted the $N1 packets: $(tail -c 2000 $T/top4.out)"
flush e1
sleep 4  # gone for longer than --retire-after, read twice a second meanwhile
send $VIP 5001 1 1
send $VIP 5001 $N2
# Until the new flows are explained too (the row the check reads), or 30 s.
for i in $(seq 60); do [ "$(lb_row)" -ge $((N1 + 1 + N2)) ] && break; sleep 0.5; done
kill -INT $P
wait $P || fail "detrace top --retire-after exited $?: $(tail -5 $T/top4.err)"
python3 - "$T/top4.out" $((N1 + 1 + N2)) <<'PY' || fail "top --retire-after: $(tail -c 3000 $T/top4.out; tail -3 $T/top4.err)"
import json, sys
t = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{'][-1]
n = int(sys.argv[2])
k = t["kernel"]
assert k["flows_retired"] > 0, f"no flow retired: {k}"
lb = [r for r in t["objects"] if r["key"].startswith("Load_Balancer ") and "lb-ft" in r["label"]]
assert len(lb) == 1, f"one row for lb-ft: {[r['label'] for r in t['objects']]}"
# Each packet once; the first after the flush went up and was executed with the flow's
# actions (counted, as the per-packet probes count it); so may the first of the burst.
got = lb[0]["packets"]
assert n <= got <= n + 1, f"lb-ft counts {got}, sent {n}: {lb[0]}"
print(f"top --retire-after: lb-ft {got} packets (sent {n}), {k['flows_retired']} flows retired, {len(t['flows'])} flows listed")
PY
grep 'kernel:' $T/top4.err
ok "top --retire-after 2 keeps all $((N1 + 1 + N2)) packets in lb-ft's row across retired flows"
grep -h 'probes attached in' $T/*.err

# --- watch matching nothing: packets the filter rejects are decided at their first pass and
# followed no further (no hit counted for them).
warm $VIP 5001
"$D" watch --ready --format json --duration 5 --dst 10.244.9.9 >$T/wn.out 2>$T/wn.err &
P=$!
wait_ready $T/wn.out "watch (matching nothing)"
send $VIP 5001 $N1
wait $P || fail "detrace watch exited $?: $(tail -5 $T/wn.err)"
[ "$(grep -vc '^ready' $T/wn.out)" = 0 ] || fail "watch --dst 10.244.9.9 printed packets: $(head -3 $T/wn.out)"
# Only packets ovs-vswitchd executed after an upcall (the lab's background traffic; once per
# upcall, not per packet) may have passes followed: a few each, not the 3 of each of ours.
python3 - "$(grep 'kernel:' $T/wn.err)" $N1 <<'PY' || fail "rejected packets were followed: $(grep kernel: $T/wn.err)"
import re, sys
line, n = sys.argv[1], int(sys.argv[2])
hits = int(re.search(r"(\d+) hits", line).group(1))
executes = int(re.search(r"(\d+) executes", line).group(1)) if "executes" in line else 0
assert hits <= 4 * executes and hits < n, f"{hits} hits followed ({executes} executes), {n} packets sent"
PY
grep 'kernel:' $T/wn.err
ok "watch matching nothing follows no packet past its first pass"
