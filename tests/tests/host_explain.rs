#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on what it did not expect"
)]
//! `detrace explain` against real OVS 3.1 / OVN 23.03 daemons (userspace datapath) on this
//! host, after real traffic; compared with ovn-detrace on the same flows.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use detrace_tests::{
    ACL_DROP_NAME, DROP_PORT, HostLab, VIP, detrace_bin, explain_all, host_lab_available,
    run_detrace,
};
use serde_json::Value;

fn objects(flow: &Value) -> Vec<(String, String)> {
    flow["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["table"].as_str().unwrap_or("").to_string(),
                o["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// NB rows of the flow, with their fields, from every rule's SB candidates.
fn nb_rows(flow: &Value) -> Vec<Value> {
    let mut v = Vec::new();
    for r in flow["rules"].as_array().into_iter().flatten() {
        for c in r["sb"].as_array().into_iter().flatten() {
            v.extend(c["nb"].as_array().into_iter().flatten().cloned());
        }
    }
    v
}

/// Generates the lab's traffic: LB VIP, direct, routed, and the dropped port.
fn traffic(lab: &HostLab) {
    for _ in 0..3 {
        assert!(
            lab.connect("p1", VIP, 80),
            "p1 -> VIP {VIP}:80 must be served by a backend"
        );
        assert!(lab.connect("p1", "10.0.0.12", 8080));
    }
    assert!(lab.ping("p1", "20.0.0.13"), "routed ping p1 -> p3");
    assert!(
        !lab.connect("p1", "10.0.0.12", DROP_PORT),
        "the ACL must drop tcp/{DROP_PORT}"
    );
}

#[test]
fn explain_names_the_ovn_objects_behind_every_flow() {
    if host_lab_available().is_none() {
        return;
    }
    let lab = HostLab::start().expect("lab up");
    lab.wait_connect("p1", "10.0.0.12", 8080, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\novn-controller log:\n{}",
                lab.log_tail("ovn-controller.log")
            )
        });
    traffic(&lab);
    // Keep the dropped connection's SYNs retransmitting while we look.
    let mut blocked = lab
        .in_pod(
            "p1",
            &[
                "timeout",
                "8",
                "nc",
                "-w",
                "6",
                "10.0.0.12",
                &DROP_PORT.to_string(),
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("nc");
    std::thread::sleep(Duration::from_millis(500));

    let dump = lab
        .run("ovs-appctl", &["dpctl/dump-flows", "-m"])
        .expect("dump-flows");
    let flows = explain_all(&lab);
    let ufids_dumped: BTreeSet<String> = dump
        .lines()
        .filter_map(|l| l.strip_prefix("ufid:"))
        .map(|l| l.split(',').next().unwrap_or("").to_string())
        .collect();
    let ufids_explained: BTreeSet<String> = flows
        .iter()
        .map(|f| f["ufid"].as_str().unwrap_or("").to_string())
        .collect();
    // Flows come and go between the two dumps; most of what we saw must be explained.
    let common = ufids_dumped.intersection(&ufids_explained).count();
    assert!(
        common * 10 >= ufids_dumped.len() * 8,
        "explained {common} of {} dumped flows",
        ufids_dumped.len()
    );
    for f in &flows {
        if !f["rules_error"].is_null() {
            let t = lab.run(
                "ovs-appctl",
                &[
                    "ofproto/trace",
                    "ovs-netdev",
                    f["match_full"].as_str().unwrap(),
                ],
            );
            eprintln!("TRACE of {}:\n{t:?}", f["ufid"]);
        }
        assert_eq!(
            f["rules_source"], "trace",
            "OVS 3.1 has no ofproto/detrace: {f}"
        );
        assert!(
            f["rules_error"].is_null(),
            "{}: {} (match {})",
            f["ufid"],
            f["rules_error"],
            f["match_full"]
        );
        assert!(!f["rules"].as_array().unwrap().is_empty());
    }

    // The dropped port's flow names the ACL, its match and its action.
    let drop_flow = flows
        .iter()
        .find(|f| {
            f["match"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("dst={DROP_PORT}"))
                && f["actions"] == "drop"
        })
        .unwrap_or_else(|| {
            let ours: Vec<String> = flows
                .iter()
                .map(|f| format!("{} {}", f["match"], f["actions"]))
                .collect();
            panic!(
                "no drop flow for tcp/{DROP_PORT} in detrace's {ours:#?}\ndump-flows had:\n{dump}"
            )
        });
    let acl = nb_rows(drop_flow)
        .into_iter()
        .find(|o| o["table"] == "ACL" && o["fields"]["name"] == ACL_DROP_NAME)
        .unwrap_or_else(|| panic!("drop flow does not name ACL {ACL_DROP_NAME}: {drop_flow}"));
    assert_eq!(acl["fields"]["action"], "drop");
    assert_eq!(
        acl["fields"]["match"],
        format!("outport == \"p2\" && tcp.dst == {DROP_PORT}")
    );
    assert_eq!(acl["fields"]["priority"], 1002);
    assert!(
        acl["owners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "Logical_Switch sw0")
    );

    // VIP traffic names the load balancer and its VIP -> backends mapping.
    let vip_flows: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["match"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("dst={VIP}"))
                && f["recirc_id"] == 0
        })
        .collect();
    assert!(!vip_flows.is_empty(), "no VIP flow in {dump}");
    for f in &vip_flows {
        let lb = nb_rows(f)
            .into_iter()
            .find(|o| o["table"] == "Load_Balancer")
            .unwrap_or_else(|| panic!("VIP flow does not name the load balancer: {f}"));
        assert_eq!(lb["fields"]["name"], "lb0");
        assert_eq!(
            lb["fields"]["vips"][format!("{VIP}:80")],
            "10.0.0.12:8080,20.0.0.13:8080"
        );
    }

    // A pod's ingress flow names its Logical_Switch_Port.
    let p1_flow = flows
        .iter()
        .find(|f| f["in_port"] == "dt-v-p1" && f["recirc_id"] == 0)
        .expect("a recirc_id(0) flow from p1");
    assert!(
        objects(p1_flow).contains(&("Logical_Switch_Port".into(), "p1".into())),
        "{p1_flow}"
    );

    // One UFID at a time, in text: the same chain, readable.
    let ufid = drop_flow["ufid"].as_str().unwrap();
    let out = run_detrace(&lab, &["explain", &format!("ufid:{ufid}")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("NB ACL {ACL_DROP_NAME}")), "{text}");
    assert!(text.contains("SB Logical_Flow"), "{text}");

    compare_with_ovn_detrace(&lab, &flows);
    errors_are_clear(&lab);
    let _ = blocked.kill();
    let _ = blocked.wait();
}

/// Parses the NB objects ovn-detrace prints (`* ACL: ...`, `* Load Balancer: lb0 ...`, ...) as
/// (detrace table, key) pairs, where key is the name, or for ACLs the match.
fn ovn_detrace_objects(text: &str) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for line in text.lines().map(str::trim_start) {
        let Some(rest) = line.strip_prefix("* ") else {
            continue;
        };
        let (kind, body) = rest.split_once(": ").unwrap_or((rest, ""));
        let first_word = body.split_whitespace().next().unwrap_or("").to_string();
        let entry = match kind {
            "ACL" => {
                let m = body
                    .split("match=(")
                    .nth(1)
                    .and_then(|m| m.rsplit_once("), "))
                    .map(|(m, _)| m);
                ("ACL", m.unwrap_or("").to_string())
            }
            "Load Balancer" => ("Load_Balancer", first_word),
            "Logical Switch Port" => ("Logical_Switch_Port", first_word),
            "Logical Router Port" => ("Logical_Router_Port", first_word),
            _ => continue,
        };
        set.insert((entry.0.to_string(), entry.1));
    }
    set
}

fn compare_with_ovn_detrace(lab: &HostLab, flows: &[Value]) {
    let mut compared = 0;
    for f in flows {
        let trace = lab
            .cmd(
                "ovs-appctl",
                &[
                    "ofproto/trace",
                    "ovs-netdev",
                    f["match_full"].as_str().unwrap(),
                ],
            )
            .output()
            .unwrap();
        if !trace.status.success() {
            continue; // the flow's recirculation state is gone since detrace ran
        }
        // Only the flow's own pass: what follows the first ==== line is other flows.
        let text = String::from_utf8_lossy(&trace.stdout);
        let first_pass = text.split("\n====").next().unwrap_or("").to_string();
        let mut child = lab
            .cmd(
                "/usr/bin/python3",
                &[
                    "/usr/bin/ovn-detrace",
                    &format!("--ovnnb={}", lab.nb_db()),
                    &format!("--ovnsb={}", lab.sb_db()),
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ovn-detrace");
        {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(first_pass.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ovn-detrace failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = ovn_detrace_objects(&String::from_utf8_lossy(&out.stdout));
        let ours: BTreeSet<(String, String)> = nb_rows(f)
            .iter()
            .map(|o| {
                let t = o["table"].as_str().unwrap_or("").to_string();
                let key = if t == "ACL" {
                    o["fields"]["match"].as_str()
                } else {
                    o["fields"]["name"].as_str()
                };
                (t, key.unwrap_or("").to_string())
            })
            .collect();
        let missing: Vec<_> = theirs.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "ovn-detrace finds {missing:?} that detrace misses for {}",
            f["ufid"]
        );
        compared += 1;
    }
    assert!(
        compared * 2 >= flows.len(),
        "compared only {compared} of {} flows",
        flows.len()
    );
    eprintln!(
        "ovn-detrace comparison: {compared} flows, detrace found every NB object ovn-detrace found"
    );
}

fn errors_are_clear(lab: &HostLab) {
    let expect_err = |args: &[&str], env: &[(&str, &str)], needle: &str| {
        let mut c = Command::new(detrace_bin());
        c.args(args).envs(lab.env()).envs(env.iter().copied());
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    expect_err(
        &["explain", "ufid:00000000-0000-0000-0000-000000000000"],
        &[],
        "is not a current datapath flow",
    );
    expect_err(&["explain", "ufid:nope"], &[], "is not a UFID");
    expect_err(
        &["explain", "--all"],
        &[("OVS_RUNDIR", "/nonexistent")],
        "is ovs-vswitchd running",
    );
    let nb = lab.nb_db();
    expect_err(
        &["explain", "--all", "--sb-db", &nb],
        &[],
        "does not serve OVN_Southbound",
    );
    expect_err(
        &["explain", "--all", "--sb-db", "unix:/nonexistent.sock"],
        &[],
        "cannot connect to unix:/nonexistent.sock",
    );
}
