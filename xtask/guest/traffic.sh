# The lab's traffic, run inside the client pod's namespace: connections to the load balancer
# VIP, direct ones to the backend, pings, and attempts on the port the ACL drops. Loops until the
# guest powers off; counts go to /tmp/traffic.stats for the curious.
VIP=10.244.1.42 SERVER=10.244.2.5
vip=0 direct=0 blocked=0 leaked=0 ping=0
while :; do
  for i in 1 2 3; do
    nc -w1 $VIP 80 </dev/null 2>/dev/null | grep -q server-8080 && vip=$((vip + 1))
  done
  nc -w1 $SERVER 8080 </dev/null 2>/dev/null | grep -q server-8080 && direct=$((direct + 1))
  ping -c1 -W1 $SERVER >/dev/null 2>&1 && ping=$((ping + 1))
  # Must time out: the ACL drops it. Success would mean the ACL is not applied.
  if nc -w1 $SERVER 9999 </dev/null 2>/dev/null | grep -q server-9999; then
    leaked=$((leaked + 1))
  else
    blocked=$((blocked + 1))
  fi
  echo "vip_ok=$vip direct_ok=$direct ping_ok=$ping port9999_blocked=$blocked port9999_leaked=$leaked" \
    > /tmp/traffic.stats
  sleep 0.5
done
