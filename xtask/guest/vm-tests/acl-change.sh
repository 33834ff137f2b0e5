#!/bin/bash
# An ACL changed from allow to drop while its traffic's datapath flows live, in the lab guest
# (kernel datapath, lab topology and traffic up). ovs-vswitchd's revalidators then change the
# flows' actions in place (a modify: same UFID, new actions) where the translation changed and
# the megaflow did not. `drops` (counting from the kernel's flow table) must count against the
# ACL exactly the packets sent after the change, not those its flow forwarded before; `top`
# must keep the packets of before and after apart, and both say the flows that changed.
#
# Own objects: an ACL on UDP 7783 to the server (allow-related, then drop) and a UDP sink there.
. /mnt/host/guest/vmtest.sh
SERVER=10.244.2.5 PORT=7783
N1=15 N2=12
MATCH="outport == \"server\" && udp.dst == $PORT"

ovn-nbctl --name=vmtest-chg-$PORT acl-add sw-backend to-lport 1003 "$MATCH" allow-related
ACL=$(ovn-nbctl --bare --columns=_uuid find ACL name=vmtest-chg-$PORT)
# Not logged: a logged drop goes to ovn-controller instead of being dropped in the datapath.
ovn-nbctl set ACL "$ACL" log=false
ovn-nbctl --wait=hv sync || fail "ovn-nbctl sync"

ip netns exec server python3 -c "
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', $PORT))
while True: s.recv(2048)" </dev/null >/dev/null 2>&1 &
SINK=$!
cleanup() {
  kill $SINK $P $Q $W 2>/dev/null
  ovn-nbctl acl-del sw-backend to-lport 1003 "$MATCH" 2>/dev/null
  rm -rf $T
}
P= Q= W=
trap cleanup EXIT

# send BASE COUNT [FIRST_PAUSE]: COUNT datagrams, 20 ms apart (the first followed by FIRST_PAUSE
# s, so that the next find the flows its upcall installed), each a new conversation (source
# port BASE+i): OVN's ACLs decide a conversation's first packets, conntrack lets the later ones
# of an established conversation through, so each packet here meets the ACL's flow.
send() {
  ip netns exec client python3 -c "
import socket, sys, time
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[1]) + i))
    s.sendto(b'detrace-chg', ('$SERVER', $PORT)); s.close()
    time.sleep(float(sys.argv[3]) if i == 0 else 0.02)
" "$1" "$2" "${3:-0.02}"
}
# flows TAG: the datapath flows of this conversation (ufid and actions), kept for the log.
flows() {
  ovs-appctl dpctl/dump-flows -m | grep "dst=$PORT\b" | sed -E 's/.*ufid:([0-9a-f-]+).* actions:(.*)/\1 \2/' \
    | sort > $T/flows.$1
}

# The flows exist (and are explained as forwarding) before detrace starts.
send 42000 3 1
sleep 1
"$D" drops --ready --format json --interval 1 --duration 120 >$T/drops.out 2>$T/drops.err &
P=$!
wait_ready $T/drops.out drops
"$D" top --ready --format json --interval 1 --duration 120 --sort packets --limit 1000 >$T/top.out 2>$T/top.err &
Q=$!
wait_ready $T/top.out top
# Per-packet: every packet of ours, its verdict and culprit.
"$D" watch --ready --format json --duration 120 --port $PORT >$T/watch.out 2>$T/watch.err &
W=$!
wait_ready $T/watch.out watch
send 43000 $N1
sleep 2
flows before
ovn-nbctl set ACL "$ACL" action=drop || fail "set the ACL to drop"
ovn-nbctl --wait=hv sync || fail "ovn-nbctl sync"
ovs-appctl revalidator/wait && ovs-appctl revalidator/wait || fail "revalidator/wait"
flows after
echo "datapath flows of udp/$PORT before the change (ufid actions):"; cat $T/flows.before
echo "after:"; cat $T/flows.after
# Same UFID, other actions: the case this test is about.
MODIFIED=$(join $T/flows.before $T/flows.after | awk '$2 != $3' | wc -l)
[ "$MODIFIED" -gt 0 ] || fail "no flow of udp/$PORT was modified in place (the same UFID with new actions): nothing tested"
# The live commands read the flows' actions once a second.
sleep 2
send 44000 $N2

for i in $(seq 60); do
  [ "$(group_drops $T/drops.out "$ACL")" -ge $N2 ] && break
  sleep 0.5
done
sleep 2
kill -INT $P $Q $W
wait $P || fail "detrace drops exited $?: $(tail -5 $T/drops.err)"
wait $Q || fail "detrace top exited $?: $(tail -5 $T/top.err)"
wait $W || fail "detrace watch exited $?: $(tail -5 $T/watch.err)"
P= Q= W=

python3 - $T/drops.out $ACL $N2 <<'PY' || fail "drops: $(tail -c 3000 $T/drops.out; tail -3 $T/drops.err)"
import json, os, sys
groups = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{']
acl, n2 = sys.argv[2], int(sys.argv[3])
last = [g for g in groups if g["final"]]
mine = [g for g in last if g["culprit"]["id"] == acl]
assert len(mine) == 1, f"one group for the ACL in the last report, got {[g['culprit'] for g in last]}"
g = mine[0]
# Without the split, its flows' packets from before the change would count as drops too.
assert g["drops"] == n2, f"the ACL's drops: {g['drops']}, sent after the change {n2}: {g}"
assert g["reasons"].get(os.environ["OVN_DROP_REASON"]) == n2, g["reasons"]
print(f"drops: {g['drops']} -> ACL {g['culprit']['name']} (sent after the change {n2}); other groups {[(x['culprit'].get('name'), x['drops'], x['culprit'].get('kind'), x['culprit'].get('detail')) for x in last if x is not g]}")
PY
grep -E 'kernel:|changed' $T/drops.err | tail -2
grep -q 'flows changed actions in place' $T/drops.err || fail "drops does not say a flow changed: $(tail -3 $T/drops.err)"
python3 - $T/top.out <<'PY' || fail "top: $(tail -3 $T/top.err)"
import json, sys
t = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{'][-1]
k = t["kernel"]
assert k["flows_changed"] > 0, f"top: no flow changed: {k}"
print(f"top: {k['flows_changed']} flows changed in place, kernel {dict((x, k[x]) for x in ('flows_removed', 'flows_retired'))}")
PY
python3 - $T/watch.out $ACL $N1 $N2 <<'PY' || fail "watch: $(tail -c 3000 $T/watch.out; tail -3 $T/watch.err)"
import json, sys
pk = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{']
acl, n1, n2 = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ours = [p for p in pk if p["packet"].get("dport") == 7783]
out = [p for p in ours if p["verdict"] == "output"]
drop = [p for p in ours if p["verdict"] != "output"]
assert (len(out), len(drop)) == (n1, n2), f"watch: {len(out)} forwarded, {len(drop)} not (sent {n1}, then {n2} after the change): {[p['verdict'] for p in ours]}"
blamed = [p.get("culprit", {}).get("id") for p in drop]
assert blamed == [acl] * n2, f"the dropped packets' culprits: {blamed}"
print(f"watch: {len(out)} forwarded before the change, {len(drop)} dropped after it, each naming the ACL")
PY
grep 'kernel:' $T/watch.err | tail -1
ok "an ACL changed from allow to drop on live flows: $N2 drops to it (not the $N1 forwarded before), $MODIFIED flows modified in place"
