# Mode "lab" (cargo xtask lab): bring the lab up, then show `detrace explain --all` every
# INTERVAL seconds for DURATION seconds.
. /mnt/host/guest/lib.sh
DETRACE=/mnt/host/detrace
lab_up
echo "### $($DETRACE --version 2>&1)  |  ovs-vswitchd $(ovs-vswitchd --version | head -1 | awk '{print $NF}')  |  ovn $(ovn-controller --version | head -1 | awk '{print $NF}')  |  kernel $(uname -r)"
end=$((SECONDS + ${DURATION:-60})) n=1
while :; do
  mark explain-begin pass=$n
  echo "### detrace explain --all (pass $n; traffic: $(cat /tmp/traffic.stats 2>/dev/null))"
  $DETRACE explain --all
  rc=$?
  echo "### detrace explain --all exited $rc"
  mark explain-end rc=$rc
  n=$((n + 1))
  left=$((end - SECONDS))
  [ $left -le 0 ] && break
  sleep $((left < ${INTERVAL:-20} ? left : ${INTERVAL:-20}))
done
mark lab-done
