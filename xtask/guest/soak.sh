# Mode "soak" (cargo xtask bench --soak): `detrace top` and `detrace watch` (JSON) side by side
# for SOAK_SECONDS under churn, their memory and fds sampled every SOAK_SAMPLE seconds.
# Churn: the lab's TCP loop (a new connection every ~0.5 s), a pod "churn" opening new UDP
# conversations in bursts then falling silent (xtask/guest/churn.py; flows idle out after
# ~10 s), ACLs added and removed every ~40 s, a load balancer VIP added and removed every ~60 s,
# ovs-vswitchd restarted once at half time (SOAK_RESTART=0: not).
# Results in /mnt/host/results (read by xtask/src/soak.rs):
#   soak-samples.txt  t name rss_kb hwm_kb fds cpu_ticks, and "t dpflows N"
#   soak-{top,watch}.err, soak-{top,watch}.rc  closing lines and exit codes
#   soak-watch.json   what watch printed, counted by churn-count.py
#   soak-churn.txt    packets the churn pod sent into the datapath, churn.py's counts
#   soak-events.txt   ACL / LB / restart events with their time
. /mnt/host/guest/lib.sh
DETRACE=/mnt/host/detrace
R=/mnt/host/results
mkdir -p $R
SECS=${SOAK_SECONDS:-1800} EVERY=${SOAK_SAMPLE:-10} RESTART=${SOAK_RESTART:-1}
CHURN_IP=10.244.1.6 LB_VIP=10.244.1.44
lab_up

# The churn pod, its IPv6 off before its link comes up: nothing leaves it but what churn.py
# sends (and the ARP that needs), so its veth's tx count is what watch must show from it.
ovn-nbctl lsp-add sw-client churn -- lsp-set-addresses churn "00:00:00:00:31:20 $CHURN_IP"
ip netns add churn
ip netns exec churn sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link add v-churn type veth peer name eth0 netns churn
ip -n churn link set eth0 address 00:00:00:00:31:20
ip -n churn addr add $CHURN_IP/24 dev eth0
ip -n churn link set lo up; ip -n churn link set eth0 up
ip -n churn route add default via 10.244.1.1
ip link set v-churn up
ovs-vsctl add-port br-int v-churn -- set interface v-churn external_ids:iface-id=churn
ovn-nbctl --wait=hv sync || die "sync after the churn pod"
# A UDP sink on the server for the churn's ports, so its conversations get no ICMP errors.
ip netns exec server setsid python3 $G/churn.py sink </dev/null >/dev/null 2>&1 &
PORTNO=$(ovs-appctl dpctl/show | sed -n 's/.*port \([0-9]*\): v-churn.*/\1/p')
[ -n "$PORTNO" ] || die "no datapath port for v-churn"
TX0=$(ip netns exec churn cat /sys/class/net/eth0/statistics/tx_packets)
mark soak-begin seconds=$SECS churn_port=$PORTNO

T0=$SECONDS
"$DETRACE" top --ready --format json >/tmp/top.out 2>$R/soak-top.err &
TPID=$!
# watch's output is counted as it comes (30 minutes of explained packets would fill the guest's
# memory); a FIFO as the guest has no /dev/fd for a process substitution.
mkfifo /tmp/watch.fifo
python3 $G/churn.py count $PORTNO $R/soak-churn-seen.jsonl < /tmp/watch.fifo > $R/soak-watch.json &
"$DETRACE" watch --ready --format json >/tmp/watch.fifo 2>$R/soak-watch.err &
WPID=$!
# churn.py count touches /tmp/watch.ready when watch prints "ready".
for i in $(seq 300); do
  grep -q '^ready' /tmp/top.out 2>/dev/null && [ -e /tmp/watch.ready ] && break
  sleep 0.2
done
grep -q '^ready' /tmp/top.out || die "top did not attach: $(tail -3 $R/soak-top.err)"
[ -e /tmp/watch.ready ] || die "watch did not attach: $(tail -3 $R/soak-watch.err)"
mark soak-attached top=$TPID watch=$WPID

# Churn for the duration minus 20 s of quiet at the end (the last flows idle out, watch drains).
ip netns exec churn python3 $G/churn.py send $((SECS - 20)) $R/soak-conversations.txt > $R/soak-churn.txt 2>&1 &
CPID=$!

# Control plane churn: an ACL every ~40 s (switch and port group alternately, the previous one
# removed), the load balancer lb-soak every ~60 s (added, then removed), one restart.
ovn-nbctl pg-add pg-soak server
control() {
  local i=0 lb=0 restarted=0 now
  while [ $((SECONDS - T0)) -lt $((SECS - 30)) ]; do
    sleep 20; i=$((i + 1)); now=$((SECONDS - T0))
    if [ $((i % 2)) = 0 ]; then
      ovn-nbctl acl-del sw-backend to-lport 1010 'outport == "server" && udp.dst == 6150' 2>/dev/null
      ovn-nbctl acl-del pg-soak to-lport 1011 'outport == @pg-soak && udp.dst == 6160' 2>/dev/null
      if [ $((i % 4)) = 0 ]; then
        ovn-nbctl acl-add sw-backend to-lport 1010 'outport == "server" && udp.dst == 6150' drop
      else
        ovn-nbctl acl-add pg-soak to-lport 1011 'outport == @pg-soak && udp.dst == 6160' drop
      fi
      echo "$now acl $(ovn-nbctl --bare --columns=_uuid find ACL priority=1010 | tr '\n' ' ')$(ovn-nbctl --bare --columns=_uuid find ACL priority=1011)" >> $R/soak-events.txt
    fi
    if [ $((i % 3)) = 0 ]; then
      if [ $lb = 0 ]; then
        ovn-nbctl lb-add lb-soak $LB_VIP:7000 $SERVER_IP:7000 udp -- ls-lb-add sw-client lb-soak \
          -- lr-lb-add gw lb-soak && lb=1
      else
        ovn-nbctl lb-del lb-soak && lb=0
      fi
      echo "$now lb $lb" >> $R/soak-events.txt
    fi
    if [ "$RESTART" = 1 ] && [ $restarted = 0 ] && [ $now -ge $((SECS / 2)) ]; then
      ovs-appctl -t ovs-vswitchd exit
      sleep 1
      ovs-vswitchd -vconsole:off --pidfile --log-file --detach && restarted=1
      echo "$now ovs-vswitchd-restart rc=$?" >> $R/soak-events.txt
      mark soak ovs-vswitchd restarted at ${now}s
    fi
  done
}
control &
KPID=$!

# Samples: each detrace's RSS, peak RSS, open fds, CPU ticks; the datapath's flow count.
sample() {
  local t=$((SECONDS - T0)) name pid
  for name in top watch; do
    [ $name = top ] && pid=$TPID || pid=$WPID
    [ -d /proc/$pid ] || continue
    echo "$t $name $(awk '/^VmRSS/{r=$2} /^VmHWM/{h=$2} END{print r, h}' /proc/$pid/status) \
$(ls /proc/$pid/fd | wc -l) $(awk '{print $14 + $15}' /proc/$pid/stat)"
  done
  echo "$t dpflows $(ovs-appctl dpctl/dump-flows 2>/dev/null | grep -c .)"
}
: > $R/soak-samples.txt
next=0
while [ $((SECONDS - T0)) -lt $SECS ]; do
  if [ $((SECONDS - T0)) -ge $next ]; then
    sample >> $R/soak-samples.txt
    next=$((next + EVERY))
    [ $((next % 300)) -lt $EVERY ] && mark soak t=$((SECONDS - T0))s $(tail -3 $R/soak-samples.txt | tr '\n' ' ')
  fi
  kill -0 $TPID 2>/dev/null && kill -0 $WPID 2>/dev/null || break
  sleep 1
done
sample >> $R/soak-samples.txt
wait $CPID
kill $KPID 2>/dev/null; wait $KPID 2>/dev/null
echo "tx $TX0 $(ip netns exec churn cat /sys/class/net/eth0/statistics/tx_packets)" >> $R/soak-churn.txt
kill -INT $TPID $WPID 2>/dev/null
wait $TPID; echo $? > $R/soak-top.rc
wait $WPID; echo $? > $R/soak-watch.rc
# The counter ends when watch's stdout closes; give it a moment to write.
for i in $(seq 50); do [ -s $R/soak-watch.json ] && break; sleep 0.2; done
grep -c '^{' /tmp/top.out > $R/soak-top-tables.txt
tail -1 /tmp/top.out > $R/soak-top-last.json
sync
touch $R/done
mark soak-done
