#!/bin/bash
# `detrace serve`, the node agent, in the lab guest: known traffic (each packet a new
# conversation) through a Service's load balancer (written as ovn-kubernetes writes it) and to
# an ACL that drops; ovs-vswitchd restarted in the middle; a scrape of /metrics shows exactly
# the packets per OVN object and per platform object, the drops per culprit and reason, and the
# reconnection; /healthz answers; SIGTERM ends it with its probes detached.
. /mnt/host/guest/vmtest.sh
SERVER=10.244.2.5 VIP=10.244.1.61 PORT=19476
P= SINK=
cleanup() {
  [ -n "$P" ] && kill $P 2>/dev/null
  [ -n "$SINK" ] && kill $SINK 2>/dev/null
  rm -rf $T
}
trap cleanup EXIT
nbctl() { ovn-nbctl "$@" >/dev/null || fail "ovn-nbctl $*"; }

nbctl --name=serve-drop-7790 acl-add sw-backend to-lport 1003 'outport == "server" && udp.dst == 7790' drop
nbctl set ACL "$(ovn-nbctl --bare --columns=_uuid find ACL name=serve-drop-7790)" log=false
nbctl create Load_Balancer name=Service_serve/web_UDP_cluster protocol=udp \
  "vips={\"$VIP:6100\"=\"$SERVER:5100\"}" external_ids:k8s.ovn.org/kind=Service \
  external_ids:k8s.ovn.org/owner=serve/web
nbctl ls-lb-add sw-client Service_serve/web_UDP_cluster -- lr-lb-add gw Service_serve/web_UDP_cluster
nbctl --wait=hv sync
ip -n client neigh replace $VIP lladdr 00:00:00:00:31:00 dev eth0
ip netns exec server python3 -c '
import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5100))
while True: s.recv(2048)' </dev/null >/dev/null 2>&1 &
SINK=$!

progs_before=$(bpftool prog show | grep -c 'name .*\(dp_process\|vport_send\|kfree_skb\|flow_stats\|dp_upcall\)')
"$D" serve --ready --listen 127.0.0.1:$PORT --interval 2 >$T/s.out 2>$T/s.err &
P=$!
for i in $(seq 150); do grep -q '^ready' $T/s.out && break; sleep 0.1; done
grep -q '^ready' $T/s.out || fail "serve did not get ready: $(cat $T/s.err)"

send() { # DST PORT COUNT: each datagram from a new socket; the first alone (its upcall)
  ip netns exec client python3 -c "
import socket, sys, time
for i in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b'detrace-serve', (sys.argv[1], int(sys.argv[2]))); s.close()
    time.sleep(1.0 if i == 0 else 0.02)
" "$@" || fail "send to $1:$2"
}
scrape() { # PATH: body, or the HTTP error
  python3 -c "
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen('http://127.0.0.1:$PORT' + sys.argv[1], timeout=5).read().decode(), end='')
except urllib.error.HTTPError as e:
    print(f'HTTP {e.code}: {e.read().decode()}', end='')
" "$1"
}

metric() { # NAME LABEL-SUBSTRING: the value of the one series of NAME whose labels hold it
  scrape /metrics | grep "^$1{" | grep -F "$2" | awk '{print $NF}' | head -1
}
send $SERVER 7790 14
send $VIP 6100 11
# Explained while ovs-vswitchd still knows the flows (after its restart, a recirculation id of
# the old daemon means nothing to the new one: such flows cannot be re-translated).
for i in $(seq 40); do
  [ "$(metric detrace_drops_total 'culprit="serve-drop-7790"')" = 14 ] \
    && [ "$(metric detrace_object_packets_total 'name="Service_serve/web_UDP_cluster"')" = 11 ] && break
  sleep 0.5
done
BEFORE=$(metric detrace_drops_total 'culprit="serve-drop-7790"')
# ovs-vswitchd restarted under the agent: it reconnects, and what comes after still counts.
pid=$(cat /var/run/openvswitch/ovs-vswitchd.pid)
kill $pid; for i in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
ovs-vswitchd -vconsole:off --pidfile --log-file --detach || fail "restarting ovs-vswitchd"
ovn-nbctl --wait=hv sync >/dev/null
# The new daemon numbers its recirculations afresh while the old one's flows are still in the
# kernel until its revalidators delete them: a packet recirculated by a new flow into an old
# flow of the same recirc_id goes where that old flow sends it (OVS's doing, not detrace's:
# the likely cause of a run on OVS 3.1 that counted 18 of 19 drops, with 2 drops on flows that
# vanished unexplained). Let two revalidator rounds clear them first.
ovs-appctl revalidator/wait && ovs-appctl revalidator/wait || fail "revalidator/wait"
# The packets after the restart one by one, for the log when a count is off.
"$D" watch --ready --format json --duration 15 --port 7790 >$T/w.out 2>$T/w.err &
W=$!
for i in $(seq 150); do grep -q '^ready' $T/w.out && break; sleep 0.1; done
send $SERVER 7790 5
# Every flow explained and attributed: a few report intervals, longer on a loaded host (at
# most 30 s; the check below says what is missing).
for i in $(seq 60); do
  [ "$(metric detrace_drops_total 'culprit="serve-drop-7790"')" = 19 ] && break
  sleep 0.5
done
sleep 2  # one more read (--interval 2): nothing beyond the 19 either
scrape /metrics >$T/metrics
kill -INT $W 2>/dev/null; wait $W
[ "$(scrape /healthz)" = ok ] || fail "/healthz: $(scrape /healthz)"
scrape /nope | grep -q 'HTTP 404' || fail "/nope was not a 404"
kill -0 $P 2>/dev/null || fail "serve exited: $(cat $T/s.err)"

python3 - $T/metrics <<'PY' || fail "drops before the restart: $BEFORE of 14; coverage: $(ovs-appctl coverage/show | grep -E 'upcall|ukey|revalidat|dumped|handler_duplicate|flow_put|flow_del' | tr -s ' ' | tr '\n' ';'); watch after the restart: $(grep -v '^ready' $T/w.out | cut -c1-600 | tr '\n' ';') $(tail -3 $T/w.err | tr '\n' ';'); serve errors: $(grep -i 'fail\|error\|unexpl' $T/s.err | tail -5); vswitchd warnings: $(grep -E 'WARN|ERR' /var/log/openvswitch/ovs-vswitchd.log | tail -8); metrics: $(grep -vE '^#|object_(bytes|drops)' $T/metrics); $(cat $T/s.err); flows: $(ovs-appctl dpctl/dump-flows | grep -E '10.244.1.61|dst=5100')"
import os, re, sys
text = open(sys.argv[1]).read()
def value(metric, **labels):
    rows = []
    for line in text.splitlines():
        m = re.match(r'(\w+)\{(.*)\} (\S+)$', line) or re.match(r'(\w+)() (\S+)$', line)
        if not m or m.group(1) != metric:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        if all(got.get(k) == v for k, v in labels.items()):
            rows.append(float(m.group(3)))
    assert len(rows) == 1, f"{metric}{labels}: {len(rows)} series"
    return rows[0]
assert text.rstrip().endswith("# EOF"), "not an OpenMetrics exposition"
checks = [
    (value("detrace_drops_total", culprit="serve-drop-7790", culprit_kind="acl", reason=os.environ["OVN_DROP_REASON"]), 19),
    (value("detrace_object_packets_total", table="ACL", name="serve-drop-7790"), 19),
    (value("detrace_object_drops_total", table="ACL", name="serve-drop-7790"), 19),
    (value("detrace_object_packets_total", table="Load_Balancer", name="Service_serve/web_UDP_cluster"), 11),
    (value("detrace_platform_packets_total", platform="ovn-kubernetes", kind="service", namespace="serve", name="web"), 11),
    (value("detrace_ovs_reconnects_total"), 1),
]
for got, want in checks:
    assert got == want, f"got {got}, want {want}: {checks}"
assert "ufid" not in text, "a flow's UFID in the labels"
print("metrics: drops 19 -> ACL serve-drop-7790 (OVS_DROP_EXPLICIT); ACL 19 packets; LB and Service serve/web 11 packets; 1 ovs-vswitchd reconnection")
PY
ok "serve: exact packets per OVN and platform object, drops per culprit and reason, through an ovs-vswitchd restart"

kill -TERM $P
for i in $(seq 100); do kill -0 $P 2>/dev/null || break; sleep 0.1; done
kill -0 $P 2>/dev/null && fail "serve still runs 10 s after SIGTERM"
wait $P; rc=$?; P=
[ $rc = 0 ] || fail "serve exited $rc after SIGTERM: $(tail -3 $T/s.err)"
grep -q 'probes detached' $T/s.err || fail "no detach said: $(cat $T/s.err)"
progs_after=$(bpftool prog show | grep -c 'name .*\(dp_process\|vport_send\|kfree_skb\|flow_stats\|dp_upcall\)')
[ "$progs_after" = "$progs_before" ] || fail "$progs_after probe programs left after SIGTERM (before: $progs_before)"
ok "SIGTERM: rc 0, probes detached"
echo "--- serve stderr:"; cat $T/s.err
