#!/bin/bash
# The fault matrix in the lab guest: a full disk while recording, stdout closed under a live
# command, no root, no openvswitch module, no BTF. Named to run late (only
# zzz-module-unload.sh, which takes the datapath down, comes after); it changes nothing that
# outlives it (the tmpfs and the hiding mounts are its own, the last two in a private mount
# namespace), so later tests would not notice either.
. /mnt/host/guest/vmtest.sh
SERVER=10.244.2.5
TRAFFIC=
cleanup() {
  [ -n "$TRAFFIC" ] && kill $TRAFFIC 2>/dev/null
  mountpoint -q $T/small && umount $T/small
  rm -rf $T
}
trap cleanup EXIT
# Steady traffic through the datapath for a live command to see.
traffic() {
  ip netns exec client ping -q -i 0.01 -w "$1" $SERVER >/dev/null 2>&1 &
  TRAFFIC=$!
}
# Nothing of detrace's left in the kernel (bpftool where the guest has it).
nothing_attached() {
  if grep -q ovs_dp_process_packet /sys/kernel/debug/kprobes/list 2>/dev/null; then
    fail "$1: a kprobe is still on ovs_dp_process_packet"
  fi
  if command -v bpftool >/dev/null; then
    left=$(bpftool prog show | grep -cE 'ovs_dp_process|ovs_vport_send|kfree_skb|ovs_flow_stats')
    [ "$left" = 0 ] || fail "$1: $left detrace programs still loaded"
  fi
  pgrep -x detrace >/dev/null && fail "$1: a detrace process is still running"
  return 0
}
no_crash() { grep -qiE 'panicked|backtrace' "$1" && fail "$2: $(cat "$1")"; return 0; }

# --- stdout closed (`| head -1`): quiet exit 0, probes detached
traffic 20
start=$(date +%s)
"$D" watch --format json --duration 30 2>$T/pipe.err | head -1 >$T/pipe.out
rc=${PIPESTATUS[0]}
took=$(( $(date +%s) - start ))
kill $TRAFFIC 2>/dev/null; wait $TRAFFIC 2>/dev/null; TRAFFIC=
[ "$rc" = 0 ] || fail "watch | head -1: detrace exited $rc: $(cat $T/pipe.err)"
[ -s $T/pipe.out ] || fail "watch | head -1: no line: $(cat $T/pipe.err)"
[ "$took" -lt 25 ] || fail "watch | head -1: ran on for ${took}s after head left"
grep -qiE 'error|broken pipe' $T/pipe.err && fail "watch | head -1: error text: $(cat $T/pipe.err)"
no_crash $T/pipe.err "watch | head -1"
grep -q 'probes detached' $T/pipe.err || fail "watch | head -1: no detach line: $(cat $T/pipe.err)"
nothing_attached "watch | head -1"
ok "watch | head -1: rc 0 after ${took}s, no error text, nothing left attached"

# --- a full disk while recording: a clear error, the file so far replays (256k, not less: the
# recording's first explanations, full chains, take tens of kB before the first packet)
mkdir $T/small
mount -t tmpfs -o size=256k tmpfs $T/small || fail "mounting a small tmpfs"
traffic 25
start=$(date +%s)
"$D" record -o $T/small/rec.jsonl --duration 30 >$T/full.out 2>$T/full.err
rec_rc=$?
took=$(( $(date +%s) - start ))
kill $TRAFFIC 2>/dev/null; wait $TRAFFIC 2>/dev/null; TRAFFIC=
[ "$rec_rc" != 0 ] || fail "record on a full disk exited 0 after ${took}s: $(tail -3 $T/full.err; ls -l $T/small)"
grep -q 'the disk is full' $T/full.err || fail "record on a full disk: $(cat $T/full.err)"
no_crash $T/full.err "record on a full disk"
nothing_attached "record on a full disk"
size=$(stat -c %s $T/small/rec.jsonl)
OVS_RUNDIR=/nonexistent "$D" replay $T/small/rec.jsonl --format json >$T/replay.out 2>$T/replay.err
rc=$?
[ "$rc" = 0 ] || fail "replay of the partial recording exited $rc: $(cat $T/replay.err)"
no_crash $T/replay.err "replay of the partial recording"
n=$(wc -l < $T/replay.out)
[ "$n" -gt 0 ] || fail "replay of the partial recording showed no packet: $(cat $T/replay.err)"
ok "record on a full disk: rc $rec_rc after ${took}s, '$(grep -o 'writing.*' $T/full.err | head -1)'; the $size bytes replay: $n packets; $(grep -o 'the last line is cut off' $T/replay.err || echo 'ended on a whole line')"
umount $T/small

# --- not root: the message names the capabilities
for cmd in "probes --attach 1" "watch --duration 1" "record -o /tmp/detrace-nobody.jsonl --duration 1"; do
  out=$(cd / && setpriv --reuid=65534 --regid=65534 --clear-groups "$D" $cmd 2>&1) &&
    fail "$cmd worked as nobody"
  for cap in CAP_BPF CAP_PERFMON CAP_SYS_ADMIN root; do
    echo "$out" | grep -q $cap || fail "$cmd as nobody does not name $cap: $out"
  done
  echo "$out" | grep -qiE 'panicked' && fail "$cmd as nobody: $out"
done
[ -e /tmp/detrace-nobody.jsonl ] && fail "record as nobody created its file"
ok "as nobody: $(echo "$out" | head -1)"

# --- no openvswitch module: hidden (not unloaded: the lab's OVS holds it) behind an empty
# /sys/module in a private mount namespace, which is all detrace looks at.
out=$(unshare -m sh -c 'mount -t tmpfs none /sys/module && exec "$0" probes --attach 1' "$D" 2>&1) &&
  fail "probes --attach worked without the openvswitch module"
echo "$out" | grep -q 'modprobe openvswitch' || fail "no module: $out"
echo "$out" | grep -qi panicked && fail "no module: $out"
ok "no openvswitch module: $(echo "$out" | tail -1)"

# --- no BTF: /sys/kernel/btf empty, then with vmlinux but no module BTF
out=$(unshare -m sh -c 'mount -t tmpfs none /sys/kernel/btf && exec "$0" probes --attach 1' "$D" 2>&1) &&
  fail "probes --attach worked without /sys/kernel/btf"
echo "$out" | grep -q 'CONFIG_DEBUG_INFO_BTF' || fail "no BTF: $out"
ok "no /sys/kernel/btf: $(echo "$out" | tail -1)"
cp /sys/kernel/btf/vmlinux $T/vmlinux
out=$(unshare -m sh -c 'mount -t tmpfs none /sys/kernel/btf && touch /sys/kernel/btf/vmlinux &&
  mount --bind "$1" /sys/kernel/btf/vmlinux && exec "$0" probes --attach 1' "$D" $T/vmlinux 2>&1) &&
  fail "probes --attach worked without module BTF"
echo "$out" | grep -q 'CONFIG_DEBUG_INFO_BTF_MODULES' || fail "no module BTF: $out"
ok "no module BTF: $(echo "$out" | tail -1)"
nothing_attached "the error paths"
