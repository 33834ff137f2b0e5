#!/bin/bash
# Upcalls the datapath loses, in the lab guest (kernel datapath, lab topology and traffic up).
# A miss whose packet the kernel cannot hand to ovs-vswitchd is dropped before ovs-vswitchd, or
# detrace's explanations, see it: the kernel counts it as `lookups: lost` (ovs-dpctl show). On
# OVS 3.1.0 in per-CPU dispatch mode with too few handlers every first packet of a new flow goes
# that way; here ovs-vswitchd is stopped (SIGSTOP) under a burst of new flows, so its upcall
# sockets fill. detrace must say so on stderr while it runs and count exactly what the kernel
# counted in its closing report (JSON `kernel.datapath_upcalls_lost`).
. /mnt/host/guest/vmtest.sh
VSW=$(cat /var/run/openvswitch/ovs-vswitchd.pid 2>/dev/null) || fail "no ovs-vswitchd pidfile"
# Whatever happens, ovs-vswitchd runs again when the test ends.
trap 'kill -CONT $VSW 2>/dev/null; rm -rf $T' EXIT

lost() { ovs-dpctl show | sed -n 's/.*lookups:.*lost:\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}'; }

# Stopped (SIGINT) once the kernel's count is still: a --duration could end it while a slow
# guest still sends, and the kernel's count would go on without it.
"$D" top --ready --format json --interval 60 --duration 300 >$T/top.out 2>$T/top.err &
P=$!
wait_ready $T/top.out top
L0=$(lost)
# 40000 datagrams while ovs-vswitchd is stopped: it installs no flow for them, so every one
# misses and goes up; its upcall sockets fill (4000 fit in them here) and the kernel loses the
# rest.
kill -STOP $VSW
ip netns exec client python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(40000):
    s.sendto(b'detrace-lost', ('10.244.2.5', 7790))
"
sleep 2
kill -CONT $VSW
# The kernel may lose more while ovs-vswitchd works off its backlog (the server's ICMP port
# unreachable replies to the packets it executes are new flows too): stopped once its count
# has held for 2 s (at most 60 s).
prev=-1
for i in $(seq 30); do
  now=$(lost); [ "$now" = "$prev" ] && break
  prev=$now; sleep 2
done
kill -INT $P
wait $P || fail "detrace top exited $?: $(tail -5 $T/top.err)"
L1=$(lost)
echo "--- ovs-dpctl show after:"; ovs-dpctl show | grep lookups
grep -i 'datapath' $T/top.err | cut -c1-400
[ $((L1 - L0)) -gt 0 ] || fail "the datapath lost no upcall (lost $L0 -> $L1): the test did not make it lose any"
grep -q 'the kernel datapath lost [0-9]* upcalls' $T/top.err || fail "no warning on stderr: $(tail -5 $T/top.err)"
grep -q 'DATAPATH LOST' $T/top.err || fail "the closing line does not say the datapath lost upcalls: $(tail -3 $T/top.err)"
python3 - $T/top.out $((L1 - L0)) <<'PY' || fail "top's report: $(tail -c 1500 $T/top.out)"
import json, sys
t = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and l[0] == '{'][-1]
got, want = t["kernel"]["datapath_upcalls_lost"], int(sys.argv[2])
assert got == want, f"detrace says the datapath lost {got} upcalls, the kernel {want}"
print(f"datapath upcalls lost: detrace {got}, ovs-dpctl show {want}")
PY
ok "the datapath's lost upcalls said while running and counted exactly ($((L1 - L0)))"
