#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on what it did not expect"
)]
//! Platform names on real OVS 3.1 / OVN 23.03 daemons (userspace datapath, the `ofproto/trace`
//! fallback): the Northbound rows ovn-kubernetes and Neutron write (xtask/guest/platform_nb.py),
//! pods and VMs in namespaces, traffic each platform object decides; `detrace explain` names
//! the NetworkPolicy default deny, the EgressFirewall rule, Neutron's security-group drop, the
//! Service and the NetworkPolicy that allowed, platform object first.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use detrace_tests::{HostLab, Trains, explain_all, host_lab_available, run_detrace};

/// UDP datagrams from a pod, each from a new socket, 0.2 s apart, until killed.
fn train(lab: &HostLab, pod: &str, dst: &str, port: u16) -> Child {
    let script = "import socket, sys, time\nwhile True:\n s = socket.socket(socket.AF_INET, \
                  socket.SOCK_DGRAM)\n s.sendto(b'x', (sys.argv[1], int(sys.argv[2]))); \
                  s.close(); time.sleep(0.2)\n";
    lab.in_pod(
        pod,
        &["/usr/bin/python3", "-c", script, dst, &port.to_string()],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("python3")
}

/// The flow whose drop culprit's platform object is of `kind`.
fn dropped_by<'a>(flows: &'a [serde_json::Value], kind: &str) -> Option<&'a serde_json::Value> {
    flows
        .iter()
        .find(|f| f["drop_culprit"]["platform"]["kind"] == kind)
}

#[test]
fn explain_names_pods_policies_services_and_security_groups() {
    if host_lab_available().is_none() {
        return;
    }
    let lab = HostLab::start().expect("lab up");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/guest/platform_nb.py");
    let facts = lab
        .run("python3", &[script.to_str().unwrap()])
        .expect("platform rows");
    assert!(facts.contains("DENY_PG=a"), "{facts}");
    let vm = |k: &str| {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let (vm1, vm2) = (vm("VM1"), vm("VM2"));
    let gw = Some("10.244.8.1");
    for (pod, port, mac, ip, gw) in [
        (
            "pc",
            "prod_client",
            "0a:58:0a:f4:08:0a",
            "10.244.8.10/24",
            gw,
        ),
        ("pdb", "prod_db", "0a:58:0a:f4:08:0b", "10.244.8.11/24", gw),
        (
            "pw",
            "prod_web-0",
            "0a:58:0a:f4:08:0c",
            "10.244.8.12/24",
            gw,
        ),
        (
            "dt",
            "dev_tester",
            "0a:58:0a:f4:08:0d",
            "10.244.8.13/24",
            gw,
        ),
        (
            "n1",
            vm1.as_str(),
            "fa:16:3e:00:50:11",
            "10.0.50.11/24",
            None,
        ),
        (
            "n2",
            vm2.as_str(),
            "fa:16:3e:00:50:12",
            "10.0.50.12/24",
            None,
        ),
    ] {
        lab.attach_pod(pod, port, mac, ip, gw).expect("pod");
    }
    lab.run("ovn-nbctl", &["--wait=hv", "sync"]).unwrap();
    let _trains = Trains(vec![
        train(&lab, "pc", "10.96.0.10", 80),
        train(&lab, "pc", "10.244.8.11", 5432),
        train(&lab, "dt", "10.244.8.12", 9000),
        train(&lab, "n1", "10.0.50.12", 7001),
    ]);
    // Flows appear as OVN programs the ports and the trains reach them.
    let deadline = Instant::now() + Duration::from_secs(40);
    let kinds = [
        "default_deny",
        "egress_firewall",
        "security_group_default_drop",
    ];
    let flows = loop {
        std::thread::sleep(Duration::from_secs(2));
        let flows = explain_all(&lab);
        let done = kinds.iter().all(|k| dropped_by(&flows, k).is_some());
        if done || Instant::now() > deadline {
            break flows;
        }
    };
    let culprits: Vec<&serde_json::Value> = flows.iter().map(|f| &f["drop_culprit"]).collect();

    let deny = dropped_by(&flows, "default_deny")
        .unwrap_or_else(|| panic!("no flow dropped by the default deny: {culprits:#?}"));
    let c = &deny["drop_culprit"];
    assert_eq!(c["kind"], "acl", "{c}");
    assert_eq!(c["name"], "NP:prod:Ingress", "{c}");
    assert_eq!(c["platform"]["platform"], "ovn-kubernetes", "{c}");
    assert_eq!(c["platform"]["namespace"], "prod", "{c}");
    assert_eq!(c["platform"]["direction"], "ingress", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("(default deny of namespace prod)"),
        "{c}"
    );

    let ef = &dropped_by(&flows, "egress_firewall")
        .unwrap_or_else(|| panic!("no flow dropped by the EgressFirewall: {culprits:#?}"))["drop_culprit"];
    assert_eq!(
        (&ef["platform"]["namespace"], &ef["platform"]["rule"]),
        (&"dev".into(), &"0".into()),
        "{ef}"
    );

    let sg = &dropped_by(&flows, "security_group_default_drop")
        .unwrap_or_else(|| panic!("no flow dropped by neutron_pg_drop: {culprits:#?}"))["drop_culprit"];
    assert_eq!(sg["platform"]["platform"], "neutron", "{sg}");
    assert_eq!(sg["platform"]["direction"], "ingress", "{sg}");

    // The Service's flows name it; the allowing NetworkPolicy is among some flow's objects.
    let platform_of = |o: &serde_json::Value| {
        let p = &o["platform"];
        format!(
            "{} {}/{}",
            p["kind"].as_str().unwrap_or_default(),
            p["namespace"].as_str().unwrap_or_default(),
            p["name"].as_str().unwrap_or_default()
        )
    };
    let all: Vec<String> = flows
        .iter()
        .flat_map(|f| f["objects"].as_array().cloned().unwrap_or_default())
        .map(|o| platform_of(&o))
        .collect();
    for want in [
        "service prod/web",
        "network_policy prod/allow-web",
        "pod prod/client",
        "pod prod/web-0",
    ] {
        assert!(
            all.iter().any(|p| p == want),
            "no flow names {want}: {all:?}"
        );
    }

    // Text: the platform object first.
    let ufid = ef_ufid(&flows);
    let out = run_detrace(&lab, &["explain", &ufid]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("dropped by EgressFirewall dev/default (rule 0) -> ACL: ACL EF:dev:0"),
        "{text}"
    );
    assert!(text.contains("platform: "), "{text}");
}

fn ef_ufid(flows: &[serde_json::Value]) -> String {
    dropped_by(flows, "egress_firewall").unwrap()["ufid"]
        .as_str()
        .unwrap()
        .to_string()
}
