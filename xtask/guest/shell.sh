# Mode "shell" (cargo xtask lab --shell): bring the lab up, then an interactive shell on the
# serial console; leaving it powers the guest off.
. /mnt/host/guest/lib.sh
lab_up
cat <<'MSG'
### detrace lab: OVS on the kernel datapath + OVN, traffic looping in netns "client".
###   /mnt/host/detrace explain --all      ovs-appctl dpctl/dump-flows -m
###   ovs-appctl ofproto/detrace ufid:...  ovn-nbctl show      cat /tmp/traffic.stats
###   ip netns exec client nc -w1 10.244.1.42 80
### `exit` powers the guest off.
MSG
export PATH=/mnt/host:$PATH PS1='detrace-lab# '
# A session with the serial port as controlling terminal, so Ctrl-C reaches the shell's jobs.
setsid -c bash --norc -i </dev/ttyS0 >/dev/ttyS0 2>&1
