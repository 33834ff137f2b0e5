#!/usr/bin/env python3
"""Northbound rows written exactly as the platforms write them, for detrace's platform names.

- ovn-kubernetes (go-controller/pkg/libovsdb/ops/db_object_ids.go and db_object_types.go;
  ovn/gress_policy.go, base_network_controller_policy.go, egressfirewall.go,
  ovn/controller/services): node switch `node1` behind `ovn_cluster_router`; pods
  `<namespace>_<pod>` with `namespace` and `pod=true`; port groups and address sets named
  `a<FNV-1a 64 of their k8s.ovn.org/id>`; NetworkPolicy prod/allow-web (ingress rule 0: UDP 8080
  from the pods app=client), prod/deny-db (selects db, allows nothing), the default deny of
  namespace prod, the EgressFirewall of dev (rule 0: deny UDP 9000 to 10.244.8.0/24), and
  Service prod/web (10.96.0.10:80/UDP -> web-0:8080).
- OpenStack Neutron ML2/OVN (neutron/common/ovn/acl.py, ovn_client.py): network `private`
  (`neutron-<id>`), two VM ports named by their port ids, security groups web (egress all,
  ingress UDP 7000 from anywhere) and db (egress all, ingress from db), each a `pg_<id>` port
  group with one ACL per rule, and `neutron_pg_drop`.

Only ovn-nbctl. Used by the lab guest (vm-tests/platform-names.sh) and to capture
tests/fixtures/platform/. Pods 10.244.8.0/24, VMs 10.0.50.0/24. Prints the facts the tests need
as KEY=VALUE lines.
"""
import subprocess
import sys

CTL = "default-network-controller"


def nbctl(*args):
    return subprocess.run(["ovn-nbctl", *args], check=True, capture_output=True, text=True).stdout.strip()


def fnv(s):
    """ovn-kubernetes' HashForOVN."""
    x = 0xcbf29ce484222325
    for b in s.encode():
        x ^= b
        x = (x * 0x100000001b3) & (2**64 - 1)
    return "a%d" % x


def ids(owner, name, *kv):
    """(k8s.ovn.org/id, external_ids arguments) of a DbObjectIDs object: the id joins the
    controller, the owner type and every value, in the type's key order."""
    oid = ":".join([CTL, owner, name] + [v for _, v in kv])
    ext = {"k8s.ovn.org/owner-controller": CTL, "k8s.ovn.org/owner-type": owner,
           "k8s.ovn.org/name": name, "k8s.ovn.org/id": oid, **dict(kv)}
    return oid, [E(k, v) for k, v in ext.items()]


def E(key, value):
    """One external_ids key, both sides quoted (keys and values hold ':', '/', '{'...)."""
    q = lambda t: '"%s"' % t.replace("\\", "\\\\").replace('"', '\\"')
    return "external_ids:%s=%s" % (q(key), q(value))


def lsp(name):
    return nbctl("--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name=" + name)


def port_group(name, ports, ext):
    cols = ["name=" + name] + ext
    if ports:
        cols.append("ports=" + ",".join(lsp(p) for p in ports))
    nbctl("create", "Port_Group", *cols)


def address_set(name, addrs, ext):
    nbctl("create", "Address_Set", "name=" + name, 'addresses="%s"' % ",".join(addrs), *ext)


def acl(pg, direction, prio, match, action, ext, name=None, meter="acl-logging"):
    cols = ["direction=" + direction, "priority=%d" % prio, 'match="%s"' % match.replace('"', '\\"'),
            "action=" + action] + ext
    if name:
        cols.append('name="%s"' % name)
    if meter:
        cols += ["meter=" + meter, "log=false"]
    nbctl("--id=@a", "create", "ACL", *cols, "--", "add", "Port_Group", pg, "acls", "@a")


def ovn_kubernetes(out):
    nbctl("lr-add", "ovn_cluster_router", "--", "set", "Logical_Router", "ovn_cluster_router",
          E("k8s-cluster-router", "yes"))
    nbctl("lrp-add", "ovn_cluster_router", "rtos-node1", "0a:58:0a:f4:08:01", "10.244.8.1/24")
    nbctl("ls-add", "node1")
    nbctl("lsp-add", "node1", "stor-node1", "--", "lsp-set-type", "stor-node1", "router",
          "--", "lsp-set-addresses", "stor-node1", "router",
          "--", "lsp-set-options", "stor-node1", "router-port=rtos-node1")
    pods = {"prod": [("client", 10), ("db", 11), ("web-0", 12)], "dev": [("tester", 13)]}
    for ns, members in pods.items():
        for pod, n in members:
            port, mac, ip = "%s_%s" % (ns, pod), "0a:58:0a:f4:08:%02x" % n, "10.244.8.%d" % n
            nbctl("lsp-add", "node1", port, "--", "lsp-set-addresses", port, "%s %s" % (mac, ip),
                  "--", "lsp-set-port-security", port, "%s %s" % (mac, ip),
                  "--", "set", "Logical_Switch_Port", port, E("namespace", ns), E("pod", "true"))
        oid, ext = ids("Namespace", ns)
        port_group(fnv(oid), ["%s_%s" % (ns, p) for p, _ in members], ext)
        oid, ext = ids("Namespace", ns, ("ip-family", "v4"))
        address_set(fnv(oid), ["10.244.8.%d" % n for _, n in members], ext)
    # NetworkPolicy prod/allow-web: web-0 accepts UDP 8080 from the pods app=client of prod.
    oid, ext = ids("NetworkPolicy", "prod:allow-web")
    np_pg = fnv(oid)
    port_group(np_pg, ["prod_web-0"], ext)
    sel = "prod_LS{ML:{app: client,},}"
    oid, ext = ids("PodSelector", sel, ("ip-family", "v4"))
    sel_as = fnv(oid)
    address_set(sel_as, ["10.244.8.10"], ext)
    _, ext = ids("NetworkPolicy", "prod:allow-web", ("direction", "Ingress"), ("gress-index", "0"),
                 ("port-policy-protocol", "udp"), ("ip-block-index", "-1"))
    acl(np_pg, "to-lport", 1001, "ip4.src == {$%s} && udp && udp.dst==8080 && outport == @%s" % (sel_as, np_pg),
        "allow-related", ext, name="NP:prod:allow-web:Ingress:0")
    # NetworkPolicy prod/deny-db selects db and allows nothing.
    oid, ext = ids("NetworkPolicy", "prod:deny-db")
    port_group(fnv(oid), ["prod_db"], ext)
    # The default deny of prod: the pods policies select are isolated; ARP/ND still allowed.
    oid, ext = ids("NetpolNamespace", "prod", ("direction", "Ingress"))
    deny_pg = fnv(oid)
    port_group(deny_pg, ["prod_web-0", "prod_db"], ext)
    _, ext = ids("NetpolNamespace", "prod", ("direction", "Ingress"), ("type", "defaultDeny"))
    acl(deny_pg, "to-lport", 1000, "outport == @" + deny_pg, "drop", ext, name="NP:prod:Ingress")
    _, ext = ids("NetpolNamespace", "prod", ("direction", "Ingress"), ("type", "arpAllow"))
    acl(deny_pg, "to-lport", 1001, "outport == @%s && (arp || nd)" % deny_pg, "allow", ext,
        name="NP:prod:Ingress")
    # The EgressFirewall of dev, rule 0, on the namespace's port group.
    dev_pg = fnv("%s:Namespace:dev" % CTL)
    _, ext = ids("EgressFirewall", "dev", ("rule-index", "0"))
    acl(dev_pg, "to-lport", 10000,
        "(ip4.dst == 10.244.8.0/24) && inport == @%s && ((udp && ( udp.dst == 9000 )))" % dev_pg,
        "drop", ext, name="EF:dev:0")
    # Service prod/web.
    lb = "Service_prod/web_UDP_cluster"
    nbctl("create", "Load_Balancer", "name=" + lb, "protocol=udp", 'vips={"10.96.0.10:80"="10.244.8.12:8080"}',
          "options:reject=true", "options:event=false", "options:skip_snat=false",
          E("k8s.ovn.org/kind", "Service"), E("k8s.ovn.org/owner", "prod/web"))
    nbctl("ls-lb-add", "node1", lb, "--", "lr-lb-add", "ovn_cluster_router", lb)
    out.update(NP_PG=np_pg, DENY_PG=deny_pg, DEV_PG=dev_pg, SEL_AS=sel_as)


NET = "6b1c7f38-2f7c-4c34-9d5e-2a9f1f0c1a11"
SG_WEB = "a1b2c3d4-1111-2222-3333-444455556666"
SG_DB = "b2c3d4e5-2222-3333-4444-555566667777"
VM1 = "3f0e2b8a-5a44-4b0e-9d1e-7c3f1b2a9e10"
VM2 = "4a1f3c9b-6b55-4c1f-8e2f-8d4a2c3b0f21"


def neutron(out):
    ls = "neutron-" + NET
    nbctl("ls-add", ls, "--", "set", "Logical_Switch", ls, E("neutron:network_name", "private"),
          E("neutron:mtu", "1442"), E("neutron:revision_number", "2"))
    for port, mac, ip, name, sg, dev in [(VM1, "fa:16:3e:00:50:11", "10.0.50.11", "vm-web", SG_WEB, 1),
                                         (VM2, "fa:16:3e:00:50:12", "10.0.50.12", "", SG_DB, 2)]:
        nbctl("lsp-add", ls, port, "--", "lsp-set-addresses", port, "%s %s" % (mac, ip),
              "--", "lsp-set-port-security", port, "%s %s" % (mac, ip),
              "--", "set", "Logical_Switch_Port", port,
              E("neutron:port_name", name), E("neutron:device_owner", "compute:nova"),
              E("neutron:device_id", "9a1d0000-0000-4000-8000-00000000000%d" % dev),
              E("neutron:network_name", ls), E("neutron:cidrs", "%s/24" % ip),
              E("neutron:security_group_ids", sg), E("neutron:revision_number", "4"))
    pg_web, pg_db = "pg_" + SG_WEB.replace("-", "_"), "pg_" + SG_DB.replace("-", "_")
    port_group(pg_web, [VM1], [E("neutron:security_group_id", SG_WEB)])
    port_group(pg_db, [VM2], [E("neutron:security_group_id", SG_DB)])
    port_group("neutron_pg_drop", [VM1, VM2], [])

    def rule(pg, direction, match, rid):
        acl(pg, direction, 1002, match, "allow-related",
            [E("neutron:security_group_rule_id", rid)], meter=None)
    rule(pg_web, "from-lport", "inport == @%s && ip4" % pg_web, "0d5e0000-0000-4000-8000-000000000001")
    rule(pg_web, "to-lport", "outport == @%s && ip4 && ip4.src == 0.0.0.0/0 && udp && udp.dst == 7000" % pg_web,
         "0d5e0000-0000-4000-8000-000000000002")
    rule(pg_db, "from-lport", "inport == @%s && ip4" % pg_db, "0d5e0000-0000-4000-8000-000000000003")
    rule(pg_db, "to-lport", "outport == @%s && ip4 && ip4.src == $%s_ip4" % (pg_db, pg_db),
         "0d5e0000-0000-4000-8000-000000000004")
    acl("neutron_pg_drop", "to-lport", 1001, "outport == @neutron_pg_drop && ip", "drop", [], meter=None)
    acl("neutron_pg_drop", "from-lport", 1001, "inport == @neutron_pg_drop && ip", "drop", [], meter=None)
    out.update(PG_WEB=pg_web, PG_DB=pg_db, VM1=VM1, VM2=VM2, SG_WEB=SG_WEB, SG_DB=SG_DB)


def kube_ovn(out):
    """kube-ovn (pkg/ovs/ovn-nb-acl.go, pkg/controller/network_policy.go): pod `web-0.demo`,
    NetworkPolicy demo/allow-web's port group `allow.web.demo` (np=<ns>/<np>), its address set,
    and its ACLs (only `parent` and `vendor`)."""
    ko = [E("vendor", "kube-ovn")]
    nbctl("ls-add", "ovn-default")
    nbctl("lsp-add", "ovn-default", "web-0.demo", "--", "lsp-set-addresses", "web-0.demo",
          "00:00:00:aa:bb:cc 10.16.0.5", "--", "set", "Logical_Switch_Port", "web-0.demo",
          E("pod", "demo/web-0"), E("ls", "ovn-default"), *ko)
    pg = "allow.web.demo"
    port_group(pg, ["web-0.demo"], [E("np", "demo/allow-web")] + ko)
    allow = "allow.web.demo.ingress.allow.ipv4.0"
    address_set(allow, ["10.16.0.9"], [E("np", "demo/allow-web/ingress")] + ko)
    parent = [E("parent", pg)] + ko
    acl(pg, "to-lport", 2001, "outport == @%s && ip && ip4.src == $%s && tcp && tcp.dst == 80" % (pg, allow),
        "allow-related", parent, name="np/allow-web.demo/ingress/ipv4/0", meter=None)
    acl(pg, "to-lport", 2000, "outport == @%s && ip" % pg, "drop", parent, name="demo/allow-web", meter=None)


if __name__ == "__main__":
    facts = {}
    ovn_kubernetes(facts)
    neutron(facts)
    if "--kube-ovn" in sys.argv:
        kube_ovn(facts)
    for k, v in facts.items():
        print("%s=%s" % (k, v))
    sys.stdout.flush()
