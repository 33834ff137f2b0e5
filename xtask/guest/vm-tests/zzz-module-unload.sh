#!/bin/bash
# The openvswitch module unloaded under a running detrace. fentry programs hold a reference on
# the module they are attached to, so the kernel refuses the unload while one is attached;
# kprobes hold none: the module goes, and its kprobes with it. detrace must then notice (it
# checks once a second), say so, and end cleanly with its counts up to the unload.
#
# Runs last (after zz-faults.sh): it takes the lab's datapath down (ovs-vswitchd stopped, the
# datapath deleted, the module unloaded) and only reloads the module at the end.
. /mnt/host/guest/vmtest.sh
PF= PK=
cleanup() {
  for p in $PF $PK; do kill -INT $p 2>/dev/null; done
  [ -d /sys/module/openvswitch ] || modprobe openvswitch
  rm -rf $T
}
trap cleanup EXIT

"$D" top --ready --format json --interval 1 --duration 120 >$T/f.out 2>$T/f.err &
PF=$!
"$D" top --ready --kprobes --format json --interval 1 --duration 120 >$T/k.out 2>$T/k.err &
PK=$!
wait_ready $T/f.out "top (fentry)"
wait_ready $T/k.out "top --kprobes"
ip netns exec client ping -q -c 5 -i 0.2 10.244.2.5 >/dev/null 2>&1 || fail "ping through the lab"

# The datapath down: ovs-vswitchd stopped (it would recreate it), the datapath deleted, the
# vport modules (which use openvswitch) unloaded.
pid=$(cat /var/run/openvswitch/ovs-vswitchd.pid)
kill $pid
for i in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -0 $pid 2>/dev/null && fail "ovs-vswitchd still runs 10 s after SIGTERM"
ovs-dpctl del-dp ovs-system || fail "ovs-dpctl del-dp"
for m in $(lsmod | awk '$1 ~ /^vport_/ {print $1}'); do rmmod "$m" || fail "rmmod $m"; done

# While the fentry programs are attached, the kernel keeps the module.
rmmod openvswitch 2>$T/rmmod.err && fail "the module unloaded under attached fentry programs"
grep -qi 'in use' $T/rmmod.err || fail "rmmod with fentry attached: $(cat $T/rmmod.err)"
kill -0 $PF 2>/dev/null || fail "top (fentry) ended when the datapath went: $(tail -5 $T/f.err)"
kill -0 $PK 2>/dev/null || fail "top --kprobes ended when the datapath went: $(tail -5 $T/k.err)"
kill -INT $PF
wait $PF; rc=$?; PF=
[ $rc = 0 ] || fail "top (fentry) exited $rc on SIGINT: $(tail -5 $T/f.err)"
ok "fentry attached: rmmod refused ($(head -1 $T/rmmod.err)); both tops survived the datapath's deletion"

# With kprobes only, the unload goes through; detrace notices and ends with its report.
rmmod openvswitch || fail "rmmod once the fentry programs were gone: $(grep -E '^openvswitch' /proc/modules)"
for i in $(seq 100); do kill -0 $PK 2>/dev/null || break; sleep 0.1; done
kill -0 $PK 2>/dev/null && fail "top --kprobes still runs 10 s after the module went: $(tail -5 $T/k.err)"
wait $PK; rc=$?; PK=
[ $rc = 0 ] || fail "top --kprobes exited $rc after the unload: $(tail -5 $T/k.err)"
grep -q 'openvswitch module was unloaded' $T/k.err || fail "no word of the unload: $(cat $T/k.err)"
grep -qiE 'panicked|backtrace' $T/k.err && fail "top --kprobes: $(cat $T/k.err)"
grep -q '"flows"' $T/k.out || fail "no last report after the unload: $(tail -c 500 $T/k.out)"
grep -q openvswitch /sys/kernel/debug/kprobes/list 2>/dev/null && fail "kprobes left: $(cat /sys/kernel/debug/kprobes/list)"
modprobe openvswitch || fail "modprobe openvswitch"
ok "kprobes: the module unloaded under top, which said '$(grep -o 'the openvswitch module was unloaded[^;]*' $T/k.err)' and ended rc 0 with its report"
