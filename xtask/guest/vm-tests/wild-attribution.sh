#!/bin/bash
# Drop attribution on a node's timing, in the lab guest (kernel datapath, OVS 3.5 / OVN 25.03):
# - each drop cause has its own topology element, gets exactly N packets with no warm-up (the
#   first packet of each goes through an upcall), and `drops` reports 30 s later, long after
#   the flows expired: each group names its object and holds exactly N, no other holds any;
# - watch, top and drops run through restarts of ovs-vswitchd, both OVN databases, ovn-northd
#   and ovn-controller and a datapath flush: they end at --duration with rc 0, say on stderr
#   what happened, and explain flows created afterwards.
# The daemons are reached through non-default paths (OVS_RUNDIR, OVN_SB_DB, OVN_NB_DB).
. /mnt/host/guest/vmtest.sh
SERVER=10.244.2.5
SINK=
cleanup() {
  [ -n "$SINK" ] && kill $SINK 2>/dev/null
  ip netns del wildps 2>/dev/null
  rm -rf $T
}
trap cleanup EXIT

mkdir -p $T/run
ln -s /var/run/openvswitch $T/run/ovs
ln -s /var/run/ovn $T/run/ovn
export OVS_RUNDIR=$T/run/ovs OVN_SB_DB=unix:$T/run/ovn/ovnsb_db.sock \
  OVN_NB_DB=unix:$T/run/ovn/ovnnb_db.sock

nbctl() { ovn-nbctl "$@" || fail "ovn-nbctl $*"; }
uuid() { ovn-nbctl --bare --columns=_uuid find "$@"; }

# send NETNS SRC DST PORT COUNT: COUNT UDP datagrams from one socket (one flow). The first goes
# through an upcall; the rest follow 1 s later, 20 ms apart, once its flows are installed (a
# packet that misses while another upcall of its flow is in flight is executed by ovs-vswitchd
# without an install of its own: counted apart, not followed; see the closing line).
send() {
  ip netns exec "$1" python3 -c "
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[4])):
    s.sendto(b'detrace-wild', (sys.argv[2], int(sys.argv[3]))); time.sleep(1.0 if i == 0 else 0.02)
" "$2" "$3" "$4" "$5" || fail "send from $1 to $3:$4"
}

# --- the causes, each its own element
nbctl --name=wild-acl-7778 acl-add sw-backend to-lport 1003 \
  'outport == "server" && udp.dst == 7778' drop
nbctl set ACL "$(uuid ACL name=wild-acl-7778)" log=false
nbctl lr-policy-add gw 1000 'ip4.dst == 10.244.2.99' drop
nbctl create Load_Balancer name=wild-lb-empty protocol=udp 'vips={"10.244.1.50:6000"=""}' >/dev/null
nbctl ls-lb-add sw-client wild-lb-empty
# The pod is born without IPv6: its router solicitations and MLD reports from a link-local
# address would be refused by the same port security and blur the count.
ovn-nbctl lsp-add sw-client wildps -- lsp-set-addresses wildps "00:00:00:00:31:20 10.244.1.6"
ip netns add wildps
ip netns exec wildps sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
ip link add v-wildps type veth peer name eth0 netns wildps
ip -n wildps link set eth0 address 00:00:00:00:31:20
ip -n wildps addr add 10.244.1.6/24 dev eth0
ip -n wildps link set lo up; ip -n wildps link set eth0 up
ip -n wildps route add default via 10.244.1.1
ip link set v-wildps up
ovs-vsctl add-port br-int v-wildps -- set interface v-wildps external_ids:iface-id=wildps
nbctl lsp-set-port-security wildps "00:00:00:00:31:20 10.244.1.6"
nbctl --wait=hv sync
# A forged source address on the port-security pod; static neighbours so that no ARP (which
# port security would refuse too, or nobody answers for a VIP) precedes the counted packets.
ip -n wildps addr add 10.244.1.77/32 dev eth0
ip -n wildps neigh replace 10.244.1.1 lladdr 00:00:00:00:31:00 dev eth0
ip netns exec client ping -c1 -W2 10.244.1.1 >/dev/null
ip -n client neigh replace 10.244.1.50 lladdr 00:00:00:00:31:00 dev eth0
ACL=$(uuid ACL name=wild-acl-7778)
POLICY=$(uuid Logical_Router_Policy priority=1000)
LB=$(uuid Load_Balancer name=wild-lb-empty)
LSP=$(uuid Logical_Switch_Port name=wildps)

# --- drops reported 30 s after a burst: every flow has expired by then
"$D" drops --ready --format json --duration 32 >$T/drops.out 2>$T/drops.err &
P=$!
wait_ready $T/drops.out drops
send client 10.244.1.4 $SERVER 7778 25
send client 10.244.1.4 10.244.2.99 6001 20
send wildps 10.244.1.77 $SERVER 7780 12
send client 10.244.1.4 10.244.1.50 6000 10
wait $P || fail "detrace drops exited $?: $(tail -5 $T/drops.err)"
left=$(ovs-appctl dpctl/dump-flows | grep -cE 'dst=(7778|7780|6000|6001)|10\.244\.2\.99')
[ "$left" = 0 ] || fail "$left of the causes' flows still exist: the report did not come after expiry"
grep -v '^ready' $T/drops.out >$T/drops.json
FAILED=
python3 - $T/drops.json "$ACL" "$POLICY" "$LB" "$LSP" <<'PY' || FAILED="drops after expiry: $(cat $T/drops.json; tail -3 $T/drops.err)"
import json, sys
groups = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
acl, policy, lb, lsp = sys.argv[2:6]
want = [  # kind, NB uuid, NB table, n, destination port, name check
    ("acl", acl, "ACL", 25, 7778, lambda c: c["name"] == "wild-acl-7778"),
    ("router_policy", policy, "Logical_Router_Policy", 20, 6001, lambda c: "10.244.2.99" in c["name"] + c["detail"]),
    ("port_security", lsp, "Logical_Switch_Port", 12, 7780, lambda c: "wildps" in c["name"] and "10.244.1.6" in c["detail"]),
    ("lb_no_backends", lb, "Load_Balancer", 10, 6000, lambda c: c["name"] == "wild-lb-empty"),
]
ports = {w[4] for w in want}
for kind, uuid, table, n, dport, named in want:
    mine = [g for g in groups if g["culprit"]["id"] == uuid]
    assert len(mine) == 1, f"{kind}: one group for {uuid}, got {mine}\nall: {groups}"
    g = mine[0]; c = g["culprit"]
    assert c["kind"] == kind and c["nb_table"] == table and named(c), f"{kind}: {c}"
    assert c["datapath"], f"{kind}: no logical datapath: {c}"
    assert g["drops"] == n, f"{kind}: {g['drops']} drops, sent {n}: {g}"
    assert (g.get("sample") or {}).get("dport") in (None, dport), g
    print(f"drops: {kind} {c['name']} on {c['datapath']}: {g['drops']} of {n}; {g.get('notes', [])}")
# Nothing else holds any of them.
ours = {w[1] for w in want}
for g in groups:
    if g["culprit"]["id"] not in ours:
        assert (g.get("sample") or {}).get("dport") not in ports, f"another group holds ours: {g}"
        assert g["culprit"]["kind"] != "unexplained" or (g.get("sample") or {}).get("dport") not in ports, g
PY
[ -z "$FAILED" ] && ok "drops names the ACL, the router policy, port security and the LB without backends, exact counts, after expiry"

# --- restarts under watch, top and drops
ip netns exec server python3 -c '
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0",5000))
while True: s.recv(2048)' </dev/null >/dev/null 2>&1 &
SINK=$!
"$D" watch --ready --format json --duration 40 --proto udp --dst 10.244.1.44 >$T/w.out 2>$T/w.err &
PW=$!
"$D" top --ready --format json --interval 3 --duration 40 --sort packets --limit 1000 >$T/t.out 2>$T/t.err &
PT=$!
"$D" drops --ready --format json --duration 40 >$T/d.out 2>$T/d.err &
PD=$!
wait_ready $T/w.out watch; wait_ready $T/t.out top; wait_ready $T/d.out drops

stop_pidfile() { # pidfile: kill the daemon it names and wait until it is gone
  local p; p=$(cat "$1") || fail "no $1"
  kill "$p"
  for i in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  fail "$1 ($p) did not exit"
}
stop_pidfile /var/run/openvswitch/ovs-vswitchd.pid
ovs-vswitchd -vconsole:off --pidfile --log-file --detach || fail "restarting ovs-vswitchd"
for db in sb nb; do
  stop_pidfile /var/run/ovn/ovn${db}_db.pid
  ovsdb-server /var/lib/ovn/ovn${db}_db.db --remote=punix:/var/run/ovn/ovn${db}_db.sock \
    --pidfile=/var/run/ovn/ovn${db}_db.pid --unixctl=/var/run/ovn/ovn${db}_db.ctl \
    -vconsole:off --log-file=/var/log/ovn/ovsdb-server-$db.log --detach || fail "ovsdb-server $db"
done
stop_pidfile /var/run/ovn/ovn-northd.pid
ovn-northd -vconsole:off --pidfile --log-file --detach || fail "restarting ovn-northd"
stop_pidfile /var/run/ovn/ovn-controller.pid
ovn-controller -vconsole:off --pidfile --log-file --detach || fail "restarting ovn-controller"
ovs-appctl dpctl/del-flows || fail "dpctl/del-flows"
nbctl --wait=hv sync
# Created after every restart: only a detrace that followed them can name these.
nbctl lb-add wild-lb-after 10.244.1.44:5001 $SERVER:5000 udp -- ls-lb-add sw-client wild-lb-after \
  -- lr-lb-add gw wild-lb-after
nbctl --name=wild-after-7779 acl-add sw-backend to-lport 1003 \
  'outport == "server" && udp.dst == 7779' drop
nbctl set ACL "$(uuid ACL name=wild-after-7779)" log=false
nbctl --wait=hv sync
AFTER_ACL=$(uuid ACL name=wild-after-7779)
ip -n client neigh replace 10.244.1.44 lladdr 00:00:00:00:31:00 dev eth0
send client 10.244.1.4 10.244.1.44 5001 15
send client 10.244.1.4 $SERVER 7779 15
for p in $PW $PT $PD; do wait $p || fail "a live command exited $? through the restarts: $(tail -n 3 $T/*.err)"; done
for e in w t d; do
  grep -q 'ovs-vswitchd: connection lost' $T/$e.err || fail "$e: the ovs-vswitchd restart was not said: $(cat $T/$e.err)"
  grep -q 'ovs-vswitchd: reconnected' $T/$e.err || fail "$e: no recovery from the ovs-vswitchd restart said: $(cat $T/$e.err)"
  for db in OVN_Southbound OVN_Northbound; do
    grep -q "$db: connection lost" $T/$e.err || fail "$e: the $db restart was not said: $(cat $T/$e.err)"
    grep -q "$db: reconnected" $T/$e.err || fail "$e: no recovery of $db said: $(cat $T/$e.err)"
  done
done
python3 - $T "$AFTER_ACL" <<'PY' || fail "after the restarts: $(tail -n 3 $T/*.err)"
import json, sys, os
t, acl = sys.argv[1], sys.argv[2]
lines = lambda f: [json.loads(l) for l in open(os.path.join(t, f)) if l.strip() and not l.startswith("ready")]
pk = lines("w.out")
for p in pk:  # one line per packet, for the log
    print(p["verdict"], "after_upcall" if p.get("after_upcall") else "", [(x["recirc_id"], x.get("executed", False), bool(x.get("explanation"))) for x in p["path"]])
named = [p for p in pk if any(d.startswith("LB wild-lb-after:") for x in p["path"] if x.get("explanation") for d in x["explanation"]["details"])]
assert len(pk) == 15 and len(named) >= 14, f"watch: {len(pk)} packets shown, 15 sent; {len(named)} name LB wild-lb-after"
g = [g for g in lines("d.out") if g["culprit"]["id"] == acl]
assert len(g) == 1 and g[0]["drops"] == 15 and g[0]["culprit"]["name"] == "wild-after-7779", g
top = lines("t.out")[-1]
assert any("LB wild-lb-after" in r["label"] for r in top["flows"]), [r["label"] for r in top["flows"]]
print(f"after restarts: watch {len(named)}/{len(pk)} packets name LB wild-lb-after; drops 15 -> ACL wild-after-7779; top names the LB")
PY
ok "watch, top and drops outlive ovs-vswitchd, NB/SB, northd and controller restarts and a flow flush"
echo "--- what watch said on stderr:"; grep -v '^$' $T/w.err
[ -z "$FAILED" ] || fail "$FAILED"
