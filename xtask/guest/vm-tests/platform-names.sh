#!/bin/bash
# Platform names, in the lab guest (kernel datapath, OVS 3.5 / OVN 25.03): Northbound rows
# written exactly as ovn-kubernetes and Neutron write them (guest/platform_nb.py), pods and VMs
# in network namespaces, N packets per case, each packet a new conversation (a new source
# port: with conntrack, OVN lets an established conversation's later packets through without
# evaluating the ACLs again, so a policy decides new conversations only), then:
# - drops names the NetworkPolicy default deny of namespace prod, the EgressFirewall of dev
#   (rule 0) and Neutron's security-group default drop, each with exactly the packets it
#   dropped, the platform object first; their matches name port groups by their owners;
# - top's platform rows count each packet once: Service prod/web, NetworkPolicy
#   prod/allow-web, pods prod/client, prod/web-0, dev/tester, the security groups and ports;
# - watch --pod prod/db and watch --namespace dev --verdict drop show exactly their packets,
#   and a pod created while watch --namespace runs is picked up (the filter follows the NB).
. /mnt/host/guest/vmtest.sh
G=/mnt/host/guest
NETNS="pclient pdb pweb dtest dlate nvm1 nvm2"
SINKS=
cleanup() {
  for p in $SINKS; do kill $p 2>/dev/null; done
  for n in $NETNS; do ip netns del $n 2>/dev/null; done
  rm -rf $T
}
trap cleanup EXIT

python3 $G/platform_nb.py >$T/facts || fail "writing the platform rows: $(cat $T/facts)"
. $T/facts

# netns NAME PORT MAC IP/LEN [GATEWAY]: a pod or VM on its logical port (IPv6 off: no router
# solicitations or MLD reports to blur the counts).
netns() {
  local n=$1 port=$2 mac=$3 ip=$4 gw=${5:-}
  ip netns add $n
  ip netns exec $n sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
  ip link add v-$n type veth peer name eth0 netns $n
  ip -n $n link set eth0 address $mac
  ip -n $n addr add $ip dev eth0
  ip -n $n link set lo up; ip -n $n link set eth0 up
  [ -n "$gw" ] && ip -n $n route add default via $gw
  ip link set v-$n up
  ovs-vsctl add-port br-int v-$n -- set interface v-$n external_ids:iface-id=$port
}
netns pclient prod_client 0a:58:0a:f4:08:0a 10.244.8.10/24 10.244.8.1
netns pdb prod_db 0a:58:0a:f4:08:0b 10.244.8.11/24 10.244.8.1
netns pweb prod_web-0 0a:58:0a:f4:08:0c 10.244.8.12/24 10.244.8.1
netns dtest dev_tester 0a:58:0a:f4:08:0d 10.244.8.13/24 10.244.8.1
netns nvm1 $VM1 fa:16:3e:00:50:11 10.0.50.11/24
netns nvm2 $VM2 fa:16:3e:00:50:12 10.0.50.12/24
ovn-nbctl --wait=hv sync || fail "ovn-nbctl --wait=hv sync"
# Static neighbours: no ARP before the counted packets.
ip -n pclient neigh replace 10.244.8.1 lladdr 0a:58:0a:f4:08:01 dev eth0
ip -n pclient neigh replace 10.244.8.11 lladdr 0a:58:0a:f4:08:0b dev eth0
ip -n dtest neigh replace 10.244.8.12 lladdr 0a:58:0a:f4:08:0c dev eth0
ip -n nvm1 neigh replace 10.0.50.12 lladdr fa:16:3e:00:50:12 dev eth0
ip -n nvm2 neigh replace 10.0.50.11 lladdr fa:16:3e:00:50:11 dev eth0
# UDP sinks where packets are let through (no ICMP port unreachable back).
for s in "pweb 8080" "nvm1 7000"; do
  set -- $s
  ip netns exec $1 python3 -c '
import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
while True: s.recv(2048)' $2 </dev/null >/dev/null 2>&1 &
  SINKS="$SINKS $!"
done

# send NETNS DST PORT COUNT: COUNT UDP datagrams, each from a new socket (a new conversation);
# the first alone (its flows are installed through an upcall), the rest 1 s later, 20 ms apart.
send() {
  ip netns exec "$1" python3 -c "
import socket, sys, time
for i in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b'detrace-platform', (sys.argv[1], int(sys.argv[2]))); s.close()
    time.sleep(1.0 if i == 0 else 0.02)
" "$2" "$3" "$4" || fail "send from $1 to $2:$3"
}

"$D" drops --ready --format json --duration 40 >$T/d.out 2>$T/d.err &
PD=$!
"$D" top --ready --format json --interval 5 --duration 40 --sort packets --limit 1000 >$T/t.out 2>$T/t.err &
PT=$!
"$D" watch --ready --format json --duration 40 --pod prod/db >$T/wp.out 2>$T/wp.err &
PW=$!
"$D" watch --ready --format json --duration 40 --namespace dev --verdict drop >$T/wn.out 2>$T/wn.err &
PN=$!
"$D" drops --ready --duration 40 --namespace dev >$T/dn.out 2>$T/dn.err &
PDN=$!
for f in d t wp wn dn; do wait_ready $T/$f.out $f; done
send pclient 10.96.0.10 80 20      # Service prod/web -> web-0:8080, allowed by prod/allow-web
send pclient 10.244.8.11 5432 15   # prod/db: isolated, nothing allows it (default deny)
send dtest 10.244.8.12 9000 12     # dev's EgressFirewall rule 0
send nvm1 10.0.50.12 7001 10       # security group db allows no web: neutron_pg_drop
send nvm2 10.0.50.11 7000 8        # security group web's ingress rule (UDP 7000)
# A dev pod born while `watch --namespace dev` runs: the filter picks it up.
ovn-nbctl lsp-add node1 dev_late -- lsp-set-addresses dev_late "0a:58:0a:f4:08:0e 10.244.8.14" \
  -- set Logical_Switch_Port dev_late external_ids:namespace=dev external_ids:pod=true
netns dlate dev_late 0a:58:0a:f4:08:0e 10.244.8.14/24 10.244.8.1
ovn-nbctl --wait=hv sync
PG=$(ovn-nbctl --bare --columns=_uuid find Port_Group name=$DEV_PG)
ovn-nbctl add Port_Group $PG ports "$(ovn-nbctl --bare --columns=_uuid find Logical_Switch_Port name=dev_late)"
ovn-nbctl --wait=hv sync
ip -n dlate neigh replace 10.244.8.12 lladdr 0a:58:0a:f4:08:0c dev eth0
sleep 2  # the filter is refreshed every second
send dlate 10.244.8.12 9000 6      # the EgressFirewall again, from the new pod
for p in $PD $PT $PW $PN $PDN; do wait $p || fail "a live command exited $?: $(tail -n 3 $T/*.err)"; done

python3 - $T <<'PY' || fail "$(tail -n 5 $T/*.err)"
import json, os, sys
t = sys.argv[1]
lines = lambda f: [json.loads(l) for l in open(os.path.join(t, f)) if l.strip() and not l.startswith("ready")]

# drops: each group names its platform object first, with exactly the packets it dropped.
groups = lines("d.out")
def group(kind, **want):
    mine = [g for g in groups if (g["culprit"].get("platform") or {}).get("kind") == kind
            and all(g["culprit"]["platform"].get(k) == v for k, v in want.items())]
    assert len(mine) == 1, f"one {kind} {want} group: {mine}\nall: {[g['culprit'] for g in groups]}"
    return mine[0]
deny = group("default_deny", namespace="prod", direction="ingress")
assert deny["drops"] == 15, deny
assert deny["culprit"]["platform"]["platform"] == "ovn-kubernetes", deny
assert "(default deny of namespace prod)" in deny["culprit"]["detail"], deny["culprit"]["detail"]
assert "allow-web, deny-db" in deny["culprit"]["platform"]["detail"], deny["culprit"]
ef = group("egress_firewall", namespace="dev", name="default", rule="0")
assert ef["drops"] == 12 + 6, ef
assert ef["culprit"]["name"] == "EF:dev:0" and "(namespace dev)" in ef["culprit"]["detail"], ef
sg = group("security_group_default_drop", direction="ingress")
assert sg["drops"] == 10 and sg["culprit"]["platform"]["platform"] == "neutron", sg
ours = {id(g) for g in (deny, ef, sg)}
for g in groups:
    if id(g) not in ours:
        assert (g.get("sample") or {}).get("dport") not in (5432, 9000, 7001), f"another group holds ours: {g}"
for g in (deny, ef, sg):
    print(f"drops: {g['drops']} by {g['culprit']['platform']} -> {g['culprit']['kind']} {g['culprit']['name']}")

# top: the last report's platform rows, each packet once.
top = lines("t.out")[-1]
rows = {r["key"]: r for r in top["platform"]}
# A pod counts the packets from it and those to it that reached its port's pipeline (the
# egress pipeline names the destination port, dropped there or not).
want = {
    "ovn-kubernetes Service prod/web": 20,
    "ovn-kubernetes NetworkPolicy prod/allow-web": 20,
    "ovn-kubernetes default deny of namespace prod": 15,
    "ovn-kubernetes EgressFirewall dev/default": 12 + 6,
    "ovn-kubernetes pod prod/client": 20 + 15,
    "ovn-kubernetes pod prod/web-0": 20 + 12 + 6,
    "ovn-kubernetes pod prod/db": 15,
    "ovn-kubernetes pod dev/tester": 12,
    "ovn-kubernetes pod dev/late": 6,
    "neutron security group a1b2c3d4-1111-2222-3333-444455556666": 10 + 8,
    "neutron security group b2c3d4e5-2222-3333-4444-555566667777": 8,
    "neutron security groups' default drop neutron_pg_drop": 10,
    "neutron port vm-web": 10 + 8,
    "neutron port 4a1f3c9b-6b55-4c1f-8e2f-8d4a2c3b0f21": 8 + 10,
}
bad = {k: (rows.get(k) or {}).get("packets") for k, n in want.items() if (rows.get(k) or {}).get("packets") != n}
assert not bad, f"top platform rows off: {bad} (want {want})\nrows: {[(k, r['packets']) for k, r in rows.items()]}"
print("top:", ", ".join(f"{k} {n}" for k, n in want.items()))

# watch --pod prod/db: exactly the 15 packets to db, each dropped by the default deny.
wp = lines("wp.out")
assert len(wp) == 15, f"watch --pod prod/db showed {len(wp)} packets, 15 sent: {[p.get('packet') for p in wp]}"
assert all(p["verdict"] == "drop" for p in wp), [p["verdict"] for p in wp]
assert all((p.get("culprit") or {}).get("platform", {}).get("kind") == "default_deny" for p in wp), wp[0].get("culprit")
# watch --namespace dev --verdict drop: the 12 + the 6 of the pod born meanwhile.
wn = lines("wn.out")
assert len(wn) == 18, f"watch --namespace dev --verdict drop showed {len(wn)}, 18 dropped"
assert sum(1 for p in wn if p["packet"]["src"] == "10.244.8.14") == 6, [p["packet"]["src"] for p in wn]
print(f"watch: --pod prod/db {len(wp)} of 15; --namespace dev --verdict drop {len(wn)} of 18 (6 from the pod born meanwhile)")
PY
[ -z "$FAILED" ] && ok "drops, top and watch name pods, NetworkPolicies, Services and security groups, exact counts"

grep -q '18 drops  EgressFirewall dev/default (rule 0) -> ACL EF:dev:0' $T/dn.out \
  || FAILED="drops --namespace dev (text) does not name the EgressFirewall with 18: $(cat $T/dn.out)"
grep -q -- '--namespace dev: 10.244.8.13 10.244.8.14' $T/wn.err \
  || FAILED="${FAILED:+$FAILED; }watch did not say the new pod's address: $(cat $T/wn.err)"
[ -z "$FAILED" ] && ok "text output puts the platform object first; the filter followed the new pod"
if grep -h 'not counted' $T/*.err; then FAILED="${FAILED:+$FAILED; }flow updates were not counted"; fi
echo "--- drops --namespace dev:"; cat $T/dn.out
echo "--- watch --namespace dev stderr:"; cat $T/wn.err
[ -z "$FAILED" ] || fail "$FAILED"
