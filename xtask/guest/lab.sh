# Mode "lab" (cargo xtask lab): bring the lab up, explain its most telling flows, then show the
# live commands (watch, drops, top) on its traffic, round after round, for DURATION seconds.
. /mnt/host/guest/lib.sh
DETRACE=/mnt/host/detrace
lab_up
echo "### $($DETRACE --version 2>&1)  |  ovs-vswitchd $(ovs-vswitchd --version | head -1 | awk '{print $NF}')  |  ovn $(ovn-controller --version | head -1 | awk '{print $NF}')  |  kernel $(uname -r)"

# The flows of the talk's story: the ACL drop and the VIP, explained in full; every flow in brief.
explain_story() {
  local drop vip
  drop=$(ovs-appctl dpctl/dump-flows -m | grep 'dst=9999' | grep 'actions:drop' | grep -o 'ufid:[0-9a-f-]*' | head -1)
  vip=$(ovs-appctl dpctl/dump-flows -m | grep "recirc_id(0)" | grep "dst=$VIP" | grep -o 'ufid:[0-9a-f-]*' | head -1)
  for u in $drop $vip; do
    echo "### detrace explain $u"
    $DETRACE explain "$u"
  done
  echo "### detrace explain --all (summary line; the full chain of every flow: run it in --shell)"
  # Its exit code goes to the host (`explain-end rc=`), which prints the last one at the end.
  $DETRACE explain --all > /tmp/explain-all.txt
  local rc=$?
  tail -1 /tmp/explain-all.txt
  return $rc
}

end=$((SECONDS + ${DURATION:-60})) n=1
while :; do
  mark explain-begin pass=$n
  echo "### round $n; traffic: $(cat /tmp/traffic.stats 2>/dev/null)"
  explain_story
  mark explain-end rc=$?
  echo "### detrace watch --dst $VIP --duration 6   (live packets to the load balancer VIP)"
  $DETRACE watch --dst $VIP --duration 6 | head -40
  echo "### detrace watch --port 9999 --duration 5   (live packets the ACL drops)"
  $DETRACE watch --port 9999 --duration 5 | head -20
  echo "### detrace drops --duration 8"
  $DETRACE drops --duration 8
  echo "### detrace top --duration 8 --interval 4 --limit 8"
  $DETRACE top --duration 8 --interval 4 --limit 8 | cat   # not a terminal: plain periodic tables
  n=$((n + 1))
  [ $SECONDS -ge $end ] && break
done
mark lab-done
