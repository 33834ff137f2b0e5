#!/bin/bash
# Drops after an upcall, in the lab guest (kernel datapath, lab topology and traffic up): a new
# conversation's first packet misses the datapath flow table, ovs-vswitchd installs a flow for it
# and executes it with that flow's actions (OVS_PACKET_CMD_EXECUTE), whose drop action frees it.
# That drop must count against the installed flow (hence the ACL), shown apart as after upcall.
#
# Unlike live-commands.sh, no warm-up: this test's own ACL (UDP 7780 to the server, dropped) has
# never seen a packet when exactly N are sent, so the first takes the upcall path.
. /mnt/host/guest/vmtest.sh
trap 'rm -rf $T' EXIT
N=12
SERVER=10.244.2.5 PORT=7780

ovn-nbctl --name=vmtest-drop-7780 acl-add sw-backend to-lport 1003 "outport == \"server\" && udp.dst == $PORT" drop
ACL_UUID=$(ovn-nbctl --bare --columns=_uuid find ACL name=vmtest-drop-7780)
# --name turns logging on, and a logged drop sends each packet to ovn-controller (a userspace()
# action) instead of dropping it in the datapath.
ovn-nbctl set ACL "$ACL_UUID" log=false
ovn-nbctl --wait=hv sync || fail "ovn-nbctl sync"
ovs-appctl dpctl/dump-flows | grep -q "dst=$PORT" && fail "a datapath flow for udp/$PORT exists before the test sent anything"

"$D" drops --ready --format json --duration 10 >$T/drops.out 2>$T/drops.err &
P=$!
wait_ready $T/drops.out drops
# The same packets one by one, for the log.
"$D" watch --ready --format json --duration 9 --port $PORT >$T/watch.out 2>$T/watch.err &
W=$!
wait_ready $T/watch.out watch
# Exactly N datagrams from one source port: the first upcalls; the rest, 1 s later (so that a
# slow emulated guest has installed its flows: a second packet that misses before that goes
# up too, and ovs-vswitchd executes it without installing anything - counted apart as
# "executes without an install", not followed), hit the flows installed for it, 50 ms apart.
ip netns exec client python3 -c "
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 40780))
for i in range(int(sys.argv[2])):
    s.sendto(b'detrace-upcall', ('$SERVER', int(sys.argv[1]))); time.sleep(1.0 if i == 0 else 0.05)
" $PORT $N
wait $P || fail "detrace drops exited $?: $(tail -5 $T/drops.err)"
wait $W
echo "--- watch --port $PORT:"; grep -v '^ready' $T/watch.out | cut -c1-600
grep 'kernel:\|assembled' $T/watch.err
echo "--- datapath flows of udp/$PORT:"; ovs-appctl dpctl/dump-flows -m | grep "dst=$PORT"
grep -v '^ready' $T/drops.out > $T/drops.json
cat $T/drops.err | grep -i 'kernel:\|warn' | tail -3
python3 - "$T/drops.json" "$ACL_UUID" "$N" "$PORT" <<'PY' || fail "drops: $(cat $T/drops.json; tail -3 $T/drops.err)"
import json, sys
groups = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
acl, n, port = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mine = [g for g in groups if g["culprit"]["id"] == acl]
assert len(mine) == 1, f"one group for the ACL, got {mine}"
g = mine[0]
assert g["culprit"]["kind"] == "acl" and g["culprit"]["name"] == "vmtest-drop-7780", g["culprit"]
assert g["drops"] == n, f"{g['drops']} drops attributed to the ACL ({g['in_kernel']} in the kernel, {g['after_upcall']} after upcall), sent {n}"
assert g["after_upcall"] >= 1, f"no drop after upcall: {g}"
assert g["in_kernel"] + g["after_upcall"] == n, g
# Nothing else got our packets.
others = [x for x in groups if x is not g and (x.get("sample") or {}).get("dport") == port]
assert not others, others
print(f"drops: {g['drops']} -> ACL {g['culprit']['name']}: {g['in_kernel']} in the kernel, {g['after_upcall']} after upcall; flows {g['flows']}")
PY
ok "drops attributes exactly $N drops to ACL vmtest-drop-7780, the first packet's after its upcall"
grep 'kernel:' $T/drops.err | grep -q 'after upcalls:' || fail "the loss report does not show the after-upcall counters: $(grep kernel: $T/drops.err)"
grep 'kernel:' $T/drops.err
