#!/bin/bash
# Kernel-level check in the lab guest (run by `cargo xtask integration-test vm`, lab topology and
# traffic up): what detrace's live tracing needs from the kernel and OVS is there, the chain
# datapath flow -> ofproto/detrace -> cookie -> SB Logical_Flow -> NB ACL / Load_Balancer holds
# on the kernel datapath, and `detrace explain --all --format json` resolves the lab's flows.
# OVS before 3.4 (the bookworm profile's 3.1) has no ofproto/detrace: the chain goes through
# `ofproto/trace` of the datapath flow's match instead, as detrace's own fallback does.
. /mnt/host/guest/vmtest.sh

# --- kernel features the eBPF side relies on
[ -r /sys/kernel/btf/vmlinux ] || fail "no /sys/kernel/btf/vmlinux"
[ -r /sys/kernel/btf/openvswitch ] || fail "no module BTF at /sys/kernel/btf/openvswitch"
ok "vmlinux and openvswitch BTF"
K=/sys/kernel/tracing/kprobe_events
for fn in ovs_dp_process_packet ovs_flow_tbl_lookup_stats ovs_execute_actions; do
  echo "p:detrace_vmtest/$fn $fn" >> $K || fail "cannot place a kprobe on $fn"
  echo "-:detrace_vmtest/$fn" >> $K
done
ok "kprobes on openvswitch functions"
ovs-appctl dpctl/show | grep -q 'system@ovs-system' || fail "br-int is not on the kernel datapath"
if ovs-appctl list-commands | grep -q 'ofproto/detrace'; then
  HOW=ofproto/detrace
else
  # trixie's OVS 3.5 has it: its absence there is a broken lab, not an older OVS.
  [ "${DETRACE_PROFILE:-trixie}" = trixie ] && fail "this OVS has no ofproto/detrace"
  HOW=ofproto/trace
fi
ok "rules of a datapath flow through $HOW ($(ovs-vswitchd --version | head -1))"

# The OpenFlow rules' cookies behind the datapath flow $1 (ufid), one per line.
cookies_of() {
  local out
  if [ $HOW = ofproto/detrace ]; then
    out=$(ovs-appctl ofproto/detrace "$1" 2>&1)
    echo "$out" | grep -o 'cookie=0x[0-9a-f]*' | cut -c10-
  else
    # The flow's match: between "ufid:..., " and ", packets:".
    local m
    m=$(ovs-appctl dpctl/dump-flows -m | grep -F "$1," | sed 's/^ufid:[0-9a-f-]*, //; s/, packets:.*//')
    [ -n "$m" ] || return 0
    out=$(ovs-appctl ofproto/trace ovs-system "$m" 2>&1)
    echo "$out" | grep -o 'cookie 0x[0-9a-f]*' | cut -c10-
  fi
  [ -n "$out" ] && printf '%s\n' "$out" > /tmp/explain-kernel.last
}

# --- the chain by hand, with OVS/OVN's own tools. Cookies come from ofproto/detrace, which only
# answers once the flow's xlate cache is filled (first revalidation): retry, bounded.
nb_names_for_flow() { # $1 = dpctl match fragment; prints "table name" of NB rows reached
  local i u out c hint
  for i in $(seq 20); do
    u=$(ovs-appctl dpctl/dump-flows -m | grep -- "$1" | grep -o 'ufid:[0-9a-f-]*' | head -1)
    if [ -n "$u" ]; then
      out=$(cookies_of "$u")
      if [ -n "$out" ]; then
        for c in $(echo "$out" | sort -u); do
          c=$(printf '%08x' 0x$c)
          hint=$(ovn-sbctl --bare get Logical_Flow "$c" external_ids:stage-hint 2>/dev/null | tr -d '"')
          [ -n "$hint" ] || continue
          ovn-nbctl --bare --columns=name list ACL "$hint" 2>/dev/null | sed 's/^/acl /'
          ovn-nbctl --bare --columns=name list Load_Balancer "$hint" 2>/dev/null | sed 's/^/lb /'
        done
        return 0
      fi
    fi
    sleep 1
  done
  echo "no resolvable flow for '$1' (last ufid '$u'; $HOW said: $(cat /tmp/explain-kernel.last 2>/dev/null))" >&2
  return 1
}
acl=$(nb_names_for_flow 'dst=9999') || fail "the ACL drop flow could not be traced"
echo "$acl" | grep -qx 'acl drop-9999' || fail "dropped tcp/9999 flow does not lead to ACL drop-9999: $acl"
ok "tcp/9999 datapath flow -> $HOW -> Logical_Flow -> ACL drop-9999"
lb=$(nb_names_for_flow 'dst=10.244.1.42') || fail "the VIP flow could not be traced"
echo "$lb" | grep -qx 'lb lb0' || fail "VIP flow does not lead to Load_Balancer lb0: $lb"
ok "VIP datapath flow -> $HOW -> Logical_Flow -> Load_Balancer lb0"

# --- detrace itself
if ! "$DETRACE_BIN" explain --help >/dev/null 2>&1; then
  echo "SKIP: $("$DETRACE_BIN" --version 2>&1) has no 'explain' subcommand yet"
  exit 0
fi
out=$("$DETRACE_BIN" explain --all --format json) || fail "detrace explain --all --format json exited $?"
echo "$out" | head -c 4000; echo
echo "$out" | grep -q 'drop-9999' || fail "detrace's JSON does not mention ACL drop-9999"
echo "$out" | grep -q 'lb0' || fail "detrace's JSON does not mention load balancer lb0"
ok "detrace explain --all --format json resolves the ACL and the load balancer"
