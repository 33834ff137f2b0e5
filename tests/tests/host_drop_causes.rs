#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on what it did not expect"
)]
//! `detrace explain` names the object behind each kind of drop, on real OVS 3.1 / OVN 23.03
//! daemons (userspace datapath) on this host: port security, a router policy, load balancers
//! without backends, no L2 destination, conntrack invalid, no route, ARP unresolved, TTL expired.
//! Traffic stays between the pods' namespaces and the isolated br-int.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use detrace_tests::{
    HostLab, LB_EMPTY_VIP, LB_REJECT_VIP, NO_L2_DST_IP, POLICY_DROP_IP, PORTSEC,
    PORTSEC_SPOOFED_IP, Trains, explain_all, host_lab_available, run_detrace,
};

fn ping(lab: &HostLab, from: &str, extra: &[&str], dst: &str) -> Child {
    let mut args = vec!["ping", "-c", "30", "-i", "0.2", "-W", "1"];
    args.extend_from_slice(extra);
    args.push(dst);
    lab.in_pod(from, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping")
}

fn syns(lab: &HostLab, dst: &str) -> Child {
    // nc retries its SYN while the VIP stays silent (drop) or until it is refused (reject).
    lab.in_pod(
        "p1",
        &[
            "sh",
            "-c",
            &format!("for i in 1 2 3 4 5 6; do timeout 1 nc -w 1 {dst} 80; sleep 0.3; done"),
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("nc")
}

#[test]
fn explain_names_the_culprit_of_each_drop() {
    if host_lab_available().is_none() {
        return;
    }
    let mut lab = HostLab::start().expect("lab up");
    lab.add_drop_causes().expect("drop causes");
    lab.wait_connect("p1", "10.0.0.12", 8080, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\novn-controller log:\n{}",
                lab.log_tail("ovn-controller.log")
            )
        });
    let trains = Trains(vec![
        ping(&lab, "p4", &["-I", PORTSEC_SPOOFED_IP], "10.0.0.12"),
        ping(&lab, "p1", &[], POLICY_DROP_IP),
        ping(&lab, "p1", &[], NO_L2_DST_IP),
        ping(&lab, "p1", &[], "30.0.0.1"),
        ping(&lab, "p1", &[], "20.0.0.50"),
        ping(&lab, "p1", &["-t", "1"], "20.0.0.13"),
        syns(&lab, LB_EMPTY_VIP),
        syns(&lab, LB_REJECT_VIP),
        lab.send_tcp_flags("p1", "10.0.0.11", "10.0.0.12", 8080, "SA", 20)
            .expect("raw tcp"),
    ]);
    std::thread::sleep(Duration::from_millis(2000));
    let flows = explain_all(&lab);
    drop(trains);

    // (what the flow's match contains, kind, name, datapath, nb_table)
    let expected: &[(&str, &str, &str, &str, Option<&str>)] = &[
        (
            &format!("src={PORTSEC_SPOOFED_IP}"),
            "port_security",
            "p4",
            "sw0",
            Some("Logical_Switch_Port"),
        ),
        (
            &format!("dst={POLICY_DROP_IP}"),
            "router_policy",
            &format!("priority 1000 (ip4.dst == {POLICY_DROP_IP})"),
            "lr0",
            Some("Logical_Router_Policy"),
        ),
        (
            &format!("dst={LB_EMPTY_VIP}"),
            "lb_no_backends",
            "lb-empty",
            "sw0",
            Some("Load_Balancer"),
        ),
        (
            &format!("dst={LB_REJECT_VIP}"),
            "lb_no_backends",
            "lb-reject",
            "sw0",
            Some("Load_Balancer"),
        ),
        (
            &format!("dst={NO_L2_DST_IP}"),
            "no_l2_destination",
            "ls_in_l2_unknown",
            "sw0",
            None,
        ),
        ("dst=30.0.0.1", "no_route", "lr_in_ip_routing", "lr0", None),
        (
            "dst=20.0.0.50",
            "neighbor_unresolved",
            "lr_in_arp_request",
            "lr0",
            None,
        ),
        (
            "dst=20.0.0.13",
            "ttl_expired",
            "lr_in_ip_input lr0-sw0",
            "lr0",
            None,
        ),
        (
            "ct_state(0x30/0x3f)",
            "ct_invalid",
            "ls_in_acl",
            "sw0",
            None,
        ),
    ];
    let mut missing = Vec::new();
    for (needle, kind, name, dp, table) in expected {
        let found = flows.iter().any(|f| {
            let c = &f["drop_culprit"];
            f["match"].as_str().unwrap_or("").contains(needle)
                && c["kind"] == *kind
                && c["name"] == *name
                && c["datapath"] == *dp
                && c["nb_table"].as_str() == *table
                && c.get("flow_desc").is_some()
                && c["id"].as_str().is_some_and(|s| !s.is_empty())
        });
        if !found {
            missing.push(format!("{kind} {name} on {dp} (flow matching {needle})"));
        }
    }
    let seen: Vec<String> = flows
        .iter()
        .map(|f| format!("{} {} -> {}", f["match"], f["actions"], f["drop_culprit"]))
        .collect();
    assert!(
        missing.is_empty(),
        "detrace did not name: {missing:#?}\nflows:\n{}",
        seen.join("\n")
    );

    // A pass that outputs dropped nothing, even when a flooded copy dies on a router port.
    for f in &flows {
        if f["actions"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .any(|a| a.starts_with("dt-v-"))
        {
            assert!(f["drop_culprit"].is_null(), "{f}");
        }
    }

    // The port-security drop in text: the port and its addresses, not the shared stage.
    let ps = flows
        .iter()
        .find(|f| f["drop_culprit"]["kind"] == "port_security")
        .unwrap();
    assert_eq!(
        ps["drop_culprit"]["detail"],
        format!("port_security \"{PORTSEC}\"")
    );
    let out = run_detrace(
        &lab,
        &["explain", &format!("ufid:{}", ps["ufid"].as_str().unwrap())],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "dropped by port security: LSP p4 (port_security \"{PORTSEC}\") on sw0"
        )),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
