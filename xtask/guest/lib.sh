# Sourced by the guest's mode scripts: OVS on the kernel datapath, OVN, the lab topology and its
# traffic. Default OVS/OVN paths on purpose, so plain ovs-appctl / ovn-nbctl / detrace work in
# the guest shell without any environment.
G=/mnt/host/guest
[ -f $G/config.env ] && . $G/config.env
mark() { echo "DETRACE-GUEST $* (guest uptime $(cut -d' ' -f1 /proc/uptime)s)"; }
die() { mark error "$*"; exit 1; }

# The lab profile (xtask/src/lab/profile.rs), from the kernel command line; it must be the
# release the guest runs, or the image and the scripts disagree.
PROFILE=$(sed -n 's/.*detrace\.profile=\([a-z]*\).*/\1/p' /proc/cmdline)
PROFILE=${PROFILE:-trixie}
export DETRACE_PROFILE=$PROFILE
. /etc/os-release
[ "$VERSION_CODENAME" = "$PROFILE" ] || die "profile $PROFILE but the guest is $VERSION_CODENAME"
# The reason an OVN drop (an ACL's, a flow whose actions send the packet nowhere) reads with:
# the kernel's OVS_DROP_EXPLICIT where it has OVS drop reasons (6.4+); on 6.1, which has none,
# detrace's own "no actions" (detrace_common::DROP_NO_ACTIONS, 0x3000e). For the tests.
case $PROFILE in
  bookworm) export OVN_DROP_REASON="no actions" OVN_DROP_CODE=0x3000e ;;
  *) export OVN_DROP_REASON=OVS_DROP_EXPLICIT OVN_DROP_CODE=0x30003 ;;
esac

# Pods: name switch mac ip/len gateway
CLIENT_IP=10.244.1.4 SERVER_IP=10.244.2.5 VIP=10.244.1.42

start_ovs() {
  modprobe openvswitch || die "modprobe openvswitch"
  modprobe veth
  mkdir -p /var/run/openvswitch /var/log/openvswitch /etc/openvswitch
  rm -f /etc/openvswitch/conf.db
  ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
  ovsdb-server /etc/openvswitch/conf.db --remote=punix:/var/run/openvswitch/db.sock \
    --remote=db:Open_vSwitch,Open_vSwitch,manager_options -vconsole:off --pidfile --log-file --detach \
    || die "ovsdb-server"
  ovs-vsctl --no-wait init
  # OVS 3.1.0 (bookworm) started in the guest's first 10 s of uptime computes its per-CPU
  # upcall handlers as 0 ("Overriding n-handler-threads to 0", flapping with 2) and its
  # datapath then loses every upcall for good (`ovs-dpctl show`: lost == missed), with or
  # without other_config:n-handler-threads=2 set beforehand; started later it takes 2 handlers
  # and works (docs/lab.md, "Profiles"). So wait until then.
  if [ "$PROFILE" = bookworm ]; then
    while [ "$(cut -d. -f1 /proc/uptime)" -lt 11 ]; do sleep 0.5; done
  fi
  ovs-vswitchd -vconsole:off --pidfile --log-file --detach || die "ovs-vswitchd"
}

start_ovn() {
  mkdir -p /var/run/ovn /var/log/ovn /var/lib/ovn
  for db in nb sb; do
    rm -f /var/lib/ovn/ovn${db}_db.db
    ovsdb-tool create /var/lib/ovn/ovn${db}_db.db /usr/share/ovn/ovn-$db.ovsschema
    ovsdb-server /var/lib/ovn/ovn${db}_db.db --remote=punix:/var/run/ovn/ovn${db}_db.sock \
      --pidfile=/var/run/ovn/ovn${db}_db.pid --unixctl=/var/run/ovn/ovn${db}_db.ctl \
      -vconsole:off --log-file=/var/log/ovn/ovsdb-server-$db.log --detach || die "ovsdb-server $db"
  done
  ovn-nbctl --no-wait init
  ovn-northd -vconsole:off --pidfile --log-file --detach || die "ovn-northd"
  # One chassis; br-int on the kernel datapath (datapath_type=system) is the point of the lab.
  ovs-vsctl --may-exist add-br br-int -- set bridge br-int datapath_type=system \
    fail-mode=secure other-config:disable-in-band=true
  ovs-vsctl set open . external_ids:system-id=chassis-1 \
    external_ids:ovn-remote=unix:/var/run/ovn/ovnsb_db.sock \
    external_ids:ovn-encap-type=geneve external_ids:ovn-encap-ip=127.0.0.1 \
    external_ids:ovn-bridge-datapath-type=system
  ovn-controller -vconsole:off --pidfile --log-file --detach || die "ovn-controller"
}

add_pod() { # name switch mac ip/len gateway
  local n=$1 sw=$2 mac=$3 ip=$4 gw=$5
  ovn-nbctl lsp-add $sw $n -- lsp-set-addresses $n "$mac ${ip%/*}"
  ip netns add $n
  ip link add v-$n type veth peer name eth0 netns $n
  ip -n $n link set eth0 address $mac
  ip -n $n addr add $ip dev eth0
  ip -n $n link set lo up; ip -n $n link set eth0 up
  ip -n $n route add default via $gw
  ip link set v-$n up
  ovs-vsctl add-port br-int v-$n -- set interface v-$n external_ids:iface-id=$n
}

# Modelled on the seed talk: a client pod on sw-client, router gw, a backend pod behind it on
# sw-backend, load balancer lb0 (VIP on the client's subnet, answered by the router), and an ACL
# that drops TCP 9999 towards the backend.
topology() {
  ovn-nbctl ls-add sw-client -- ls-add sw-backend -- lr-add gw
  ovn-nbctl lrp-add gw gw-client 00:00:00:00:31:00 10.244.1.1/24
  ovn-nbctl lrp-add gw gw-backend 00:00:00:00:32:00 10.244.2.1/24
  ovn-nbctl lsp-add sw-client client-gw -- lsp-set-type client-gw router \
    -- lsp-set-addresses client-gw router -- lsp-set-options client-gw router-port=gw-client
  ovn-nbctl lsp-add sw-backend backend-gw -- lsp-set-type backend-gw router \
    -- lsp-set-addresses backend-gw router -- lsp-set-options backend-gw router-port=gw-backend
  add_pod client sw-client 00:00:00:00:31:10 $CLIENT_IP/24 10.244.1.1
  add_pod server sw-backend 00:00:00:00:32:10 $SERVER_IP/24 10.244.2.1
  ovn-nbctl lb-add lb0 $VIP:80 $SERVER_IP:8080 tcp
  ovn-nbctl ls-lb-add sw-client lb0 -- lr-lb-add gw lb0
  ovn-nbctl --name=drop-9999 acl-add sw-backend to-lport 1002 \
    'outport == "server" && tcp.dst == 9999' drop
  ovn-nbctl --name=allow-server acl-add sw-backend to-lport 1001 \
    'outport == "server" && ip4' allow-related
  # `--name` also turns ACL logging on, which makes the drop a controller action (the packet
  # goes to ovn-controller instead of being dropped in the kernel): the lab wants real drops.
  for a in $(ovn-nbctl --bare --columns=_uuid find ACL); do ovn-nbctl set ACL "$a" log=false; done
  ovn-nbctl --wait=hv sync || die "ovn-nbctl --wait=hv sync"
}

# TCP servers in the backend pod (8080 behind the VIP and direct, 9999 that the ACL drops) and
# the client's traffic loop; both live only in the namespaces (the guest has no NIC anyway).
start_traffic() {
  ip netns exec server setsid python3 $G/tcpsrv.py 8080 server-8080 </dev/null >/dev/null 2>&1 &
  ip netns exec server setsid python3 $G/tcpsrv.py 9999 server-9999 </dev/null >/dev/null 2>&1 &
  sleep 1
  ip netns exec client setsid bash $G/traffic.sh </dev/null >/tmp/traffic.log 2>&1 &
}

# Kernel datapath flows idle out after 10 s; wait until the loop's flows (incl. the ACL drop
# and the VIP) are installed.
wait_flows() {
  local i
  for i in $(seq 60); do
    local f; f=$(ovs-appctl dpctl/dump-flows 2>/dev/null)
    if echo "$f" | grep -q 'dst=9999' && echo "$f" | grep -q "dst=$VIP"; then
      mark flows-up n=$(echo "$f" | grep -c .) after=${i}s \
        "$(ovs-dpctl show | grep -o 'lookups:.*')" handlers: \
        "$(grep -o 'n-handler-threads to [0-9]*' /var/log/openvswitch/ovs-vswitchd.log | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
      return 0
    fi
    sleep 1
  done
  ovs-appctl dpctl/dump-flows; ovs-dpctl show | grep -E 'lookups|masks'; tail -5 /tmp/traffic.log
  grep -E 'Overriding n-handler|Setting n-handler' /var/log/openvswitch/ovs-vswitchd.log | tail -3
  die "the traffic's datapath flows did not show up in 60 s"
}

lab_up() {
  local t0=$SECONDS
  mark profile=$PROFILE kernel=$(uname -r)
  start_ovs; mark ovs-up "$(ovs-vswitchd --version | head -1)"
  start_ovn; mark ovn-up
  topology; mark topology-up
  start_traffic
  wait_flows
  mark lab-up setup=$((SECONDS - t0))s
}
