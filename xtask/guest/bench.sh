# Mode "bench" (cargo xtask bench): datapath throughput between two namespaces through the OVS
# kernel datapath (OVN router, ACL with conntrack, in the path), without detrace and with it,
# alternating A B A B... Results: /mnt/host/results/bench.txt, one line per run:
#   <mode> <rep> <tcp bits/s> <udp packets/s>
. /mnt/host/guest/lib.sh
DETRACE=/mnt/host/detrace
R=/mnt/host/results
mkdir -p $R
SECS=${BENCH_SECONDS:-5} REPS=${BENCH_REPS:-3}
FLOOR_FLAGS="--events --matching-only --dst 10.244.9.9 --noop"
start_ovs; mark ovs-up
start_ovn; mark ovn-up
topology; mark topology-up
# No background traffic loop here: only the benchmark's own packets.
ip netns exec server iperf3 -s -D -I /tmp/iperf3.pid || die "iperf3 server"
for i in $(seq 60); do ip netns exec client nc -z -w1 $SERVER_IP 5201 && break; sleep 1; done
# Warm-up: the first seconds of traffic in a fresh guest run far slower under TCG (code
# translation caches, conntrack and megaflows being set up), so both tests once, unrecorded.
ip netns exec client iperf3 -c $SERVER_IP -t $SECS >/dev/null || die "iperf3 warm-up"
ip netns exec client iperf3 -c $SERVER_IP -u -l 64 -b 0 -t $SECS >/dev/null || die "iperf3 udp warm-up"

tcp() { ip netns exec client iperf3 -c $SERVER_IP -t $SECS -J | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]))'; }
udp() { ip netns exec client iperf3 -c $SERVER_IP -u -l 64 -b 0 -t $SECS -J | python3 -c '
import json,sys; e=json.load(sys.stdin)["end"]["sum"]; print(int((e["packets"]-e["lost_packets"])/e["seconds"]))'; }

# Starts detrace for a mode in the background (its stderr to the results), waits until attached.
start_mode() {
  case $1 in
    base) return 0 ;;
    top) $DETRACE top --ready --interval 1 --format json >/tmp/d.out 2>>$R/detrace-$1.err & ;;
    drops) $DETRACE drops --ready --interval 1 --format json >/tmp/d.out 2>>$R/detrace-$1.err & ;;
    top-ls64) $DETRACE top --latency-sample 64 --ready --interval 1 --format json >/tmp/d.out 2>>$R/detrace-$1.err & ;;
    top-pp) $DETRACE top --per-packet --ready --interval 1 --format json >/tmp/d.out 2>>$R/detrace-$1.err & ;;
    watch-none) $DETRACE watch --ready --dst 10.244.9.9 --format json >/tmp/d.out 2>>$R/detrace-$1.err & ;;
    watch-all) $DETRACE watch --ready --format json >/tmp/d.out 2>>$R/detrace-$1.err & ;;
    # watch-none's programs at the same hooks, each returning at once (`probes --noop`): what
    # the hooks themselves cost, the floor for any program there.
    floor-none) $DETRACE probes --attach 100000 --max-events 0 $FLOOR_FLAGS >/tmp/d.out 2>>$R/detrace-$1.err & ;;
  esac
  DPID=$!
  for i in $(seq 100); do grep -q '^ready\|"attached"' /tmp/d.out 2>/dev/null && return 0; sleep 0.1; done
  die "detrace $1 did not attach: $(tail -3 $R/detrace-$1.err)"
}
# detrace's own CPU time (utime + stime, clock ticks) during the mode's runs: from once it is
# attached (startup and attach excluded) to the end of its runs.
ticks() { [ -n "${DPID:-}" ] && awk '{print $14 + $15}' /proc/$DPID/stat || echo 0; }
stop_mode() {
  [ "$1" = base ] && return 0
  echo "$1 $2 $(( $(ticks) - TICKS0 )) $(getconf CLK_TCK) $(( $(date +%s%N) - T0 ))" >> $R/cpu.txt
  kill -INT $DPID; wait $DPID
}

# Where the attach time goes, on a quiet guest (no traffic yet): phases of three attaches of
# each mode's probes (top/drops: flow table; top --latency-sample 64; top --per-packet; watch),
# and inside the phases each parallel part (BTF, each program's load = verification, attach).
for i in 1 2 3; do
  for m in top lat64 per-packet watch; do
    case $m in
      top) f="--flow-table";; lat64) f="--flow-table --latency-sample 64";;
      per-packet) f="";; watch) f="--events --matching-only --port 4444";;
    esac
    $DETRACE probes --attach 0.5 --max-events 0 $f 2>>$R/detrace-probes.err | python3 -c '
import json, sys
a = [json.loads(l) for l in sys.stdin if "attached" in l][0]
ms, hooks = a["attach_ms"], " ".join(f"{k}:{v}" for k, v in a["hooks"].items())
print(f"{sys.argv[1]}: attach {ms:.0f} ms ({hooks}):", ", ".join(f"{k} {v:.0f}" for k, v in a["phases_ms"].items()))
print("  parts:", ", ".join(f"{k} {v:.0f}" for k, v in a["parts_ms"].items()))' $m
  done
done > $R/phases.txt
: > $R/bench.txt; : > $R/cpu.txt
# Modes alternate A B C D, and the order rotates by one each repetition (B C D A, ...) so that
# no mode always runs right after the same other one (the guest's speed drifts over a run).
# top and drops count from the kernel's flow table (their default: no per-packet probe);
# top-ls64 adds --latency-sample 64; top-pp is top --per-packet, every packet through the probes.
MODES="base top drops top-ls64 top-pp watch-none floor-none watch-all"
NMODES=$(echo $MODES | wc -w)
for rep in $(seq $REPS); do
  set -- $MODES
  for i in $(seq $(( (rep - 1) % NMODES ))); do set -- "$@" "$1"; shift; done
  for mode in "$@"; do
    mark bench mode=$mode rep=$rep
    DPID=
    start_mode $mode
    T0=$(date +%s%N) TICKS0=$(ticks)
    t=$(tcp); u=$(udp)
    stop_mode $mode $rep
    echo "$mode $rep $t $u" | tee -a $R/bench.txt
  done
done
{ cat $R/phases.txt; grep -h 'attached in\|detached in' $R/detrace-*.err; } > $R/attach.txt
# detrace's user-space share of one (guest) CPU during its runs, median per mode.
python3 - $R/cpu.txt >> $R/attach.txt <<'PY'
import statistics, sys
by = {}
for l in open(sys.argv[1]):
    mode, rep, ticks, hz, ns = l.split()
    by.setdefault(mode, []).append(int(ticks) / int(hz) / (int(ns) / 1e9))
for mode, v in by.items():
    print(f"detrace process CPU during {mode} runs (once attached): median {100 * statistics.median(v):.1f}% of one CPU")
PY

# Probe cost, a figure TCG's drift does not blur: the kernel's BPF run-time statistics
# (`detrace probes --attach --cost`, the same programs in each mode's configuration) give the
# CPU time spent inside the probes per packet; the guest's busy CPU time per packet without
# detrace (/proc/stat, iperf3 and the whole datapath included) is what it compares to.
# Excluded: the kprobe/tracepoint dispatch around the programs.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
: > $R/cost.txt
b0=$(busy); pps=$(udp); b1=$(busy)
python3 -c "
hz, secs, pps, b = $(getconf CLK_TCK), $SECS, $pps, $b1 - $b0
print(f'base udp-64B {pps} pps, guest CPU {b / hz * 1e9 / (pps * secs):.0f} ns per packet')" | tee -a $R/cost.txt
for mode in top top-ls64 top-pp watch-none floor-none watch-all; do
  case $mode in
    top) flags=--flow-table ;; top-ls64) flags="--flow-table --latency-sample 64" ;;
    top-pp) flags= ;; watch-none) flags="--events --matching-only --dst 10.244.9.9" ;;
    watch-all) flags="--events --matching-only" ;; floor-none) flags=$FLOOR_FLAGS ;;
  esac
  # The flood outlasts the attach (seconds on a loaded TCG guest) and the SECS measured after it.
  ip netns exec client iperf3 -c $SERVER_IP -u -l 64 -b 0 -t $((SECS + 6)) -J > /tmp/cost-udp.json &
  IPID=$!
  sleep 1
  $DETRACE probes --attach $SECS --cost $flags --max-events 0 > $R/cost-$mode.jsonl 2>>$R/detrace-$mode.err
  wait $IPID
  # Packets during the attach: iperf3's received rate over the attached seconds (the probes of
  # the flow-table modes see no packet to count).
  python3 - $mode $R/cost-$mode.jsonl $R/cost.txt /tmp/cost-udp.json $SECS <<'PY'
import json, re, sys
mode, path, base = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
lines = [json.loads(l) for l in open(path)]
c = [l for l in lines if l["type"] == "counters"][0]
cost = [l for l in lines if l["type"] == "cost"]
e = json.load(open(sys.argv[4]))["end"]["sum"]
pkts = max(int((e["packets"] - e["lost_packets"]) / e["seconds"] * float(sys.argv[5])), 1)
per = sum(p["time_ns"] for p in cost) / pkts
base_ns = float(re.search(r"CPU (\d+) ns per packet", base).group(1))
progs = ", ".join(f"{p['program']} {p['avg_ns']:.0f} ns x {p['runs'] / pkts:.2f}" for p in cost if p["runs"])
print(f"{mode:<10} probes {per:.0f} ns per packet = {100 * per / base_ns:.1f}% of the base's CPU per packet ({pkts} packets; {progs})")
PY
done | tee -a $R/cost.txt
kill $(cat /tmp/iperf3.pid) 2>/dev/null
sync
touch $R/done
mark bench-done
