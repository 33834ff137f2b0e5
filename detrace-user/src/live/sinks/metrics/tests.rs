#![allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
use super::*;
use crate::{
    explain::{FlowSummary, ObjectName, culprit::Culprit},
    live::{
        clock::{Clock, Ports},
        explainer::{Backend, ExplainCache, Explained},
    },
    ovn::platform::{Platform, PlatformKind, PlatformRef},
};

struct NoOvs;
impl Appctl for NoOvs {
    fn call(&mut self, _: &str, _: &[&str]) -> Result<String, crate::ovs::unixctl::UnixctlError> {
        unreachable!("a recording asks nothing")
    }
}

fn pod() -> PlatformRef {
    PlatformRef {
        platform: Platform::OvnKubernetes,
        kind: PlatformKind::Pod,
        namespace: Some("prod".into()),
        name: "client".into(),
        direction: None,
        rule: None,
        detail: None,
    }
}

fn explained(u: Uuid, drop: bool) -> Explained {
    let mut c = Culprit::unexplained(u, "");
    if drop {
        c.kind = crate::explain::culprit::CulpritKind::Acl;
        c.name = "NP:prod:Ingress".into();
        c.platform = Some(PlatformRef {
            kind: PlatformKind::DefaultDeny,
            name: String::new(),
            ..pod()
        });
    }
    Explained {
        summary: FlowSummary {
            ufid: u,
            datapath: "system@ovs-system".into(),
            match_compact: "recirc_id(0)".into(),
            actions: if drop { "drop" } else { "2" }.into(),
            label: String::new(),
            objects: vec![ObjectName {
                table: "Logical_Switch_Port".into(),
                uuid: Uuid(9),
                name: "prod_client".into(),
                platform: Some(pod()),
            }],
            stages: Vec::new(),
            drop_culprit: c,
            details: Vec::new(),
            rules_error: None,
        },
        full: serde_json::Value::Null,
        summary_json: Default::default(),
    }
}

fn stats(packets: u64, drops: u64) -> FlowStats {
    let mut s = FlowStats {
        packets,
        bytes: packets * 100,
        drops,
        ..FlowStats::default()
    };
    s.drop_reasons[0] = drops;
    // Every packet ended, in the 1-2 us bucket.
    s.latency[10] = packets;
    s.latency_sum_ns = packets * 1500;
    s
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no {start} in\n{text}"))
}

/// Deltas are attributed once a flow is explained, counters only grow, expired flows keep
/// what they gave; drops carry their culprit, its platform object and the reason.
#[test]
fn the_ledger_attributes_each_delta_once() {
    let (out, drop) = (Uuid(1), Uuid(2));
    let mut cache: ExplainCache<NoOvs> = ExplainCache::new(Backend::Recorded, 1.0);
    cache.insert(explained(out, false));
    let (clock, ports) = (Clock::new(), Ports::new());
    let mut l = Ledger::default();
    l.hold = std::time::Duration::ZERO;
    let flows = |a: FlowStats, b: FlowStats| -> FastMap<Uuid, FlowStats> {
        [(out, a), (drop, b)].into_iter().collect()
    };
    {
        let view = View {
            cache: &cache,
            clock: &clock,
            ports: &ports,
        };
        // The dropping flow is not explained yet: its 5 packets wait in the kernel counter.
        l.update(&view, &flows(stats(10, 0), stats(5, 5)));
    }
    cache.insert(explained(drop, true));
    let view = View {
        cache: &cache,
        clock: &clock,
        ports: &ports,
    };
    l.update(&view, &flows(stats(12, 0), stats(7, 7)));
    // Its drops went back for a read (its flow reinstalled with actions that did not drop,
    // ovs-vswitchd restarting), then on: each drop once (was: the 7 again).
    l.update(&view, &flows(stats(12, 0), stats(7, 0)));
    // The output flow expired: what it gave stays.
    l.update(&view, &[(drop, stats(8, 8))].into_iter().collect());
    let text = render(&l, &Health::default());
    let pod = "{platform=\"ovn-kubernetes\",kind=\"pod\",namespace=\"prod\",name=\"client\"}";
    assert_eq!(
        line(&text, &format!("detrace_platform_packets_total{pod}"))
            .rsplit(' ')
            .next(),
        Some("20")
    );
    assert_eq!(
        line(&text, &format!("detrace_platform_drops_total{pod}"))
            .rsplit(' ')
            .next(),
        Some("8")
    );
    let d = line(&text, "detrace_drops_total{");
    assert!(
        d.contains("culprit_kind=\"acl\"") && d.contains("platform_kind=\"default_deny\""),
        "{d}"
    );
    assert!(
        d.contains("culprit=\"NP:prod:Ingress\"") && d.ends_with(" 8"),
        "{d}"
    );
    assert!(
        text.contains("detrace_object_packets_total{table=\"Logical_Switch_Port\""),
        "{text}"
    );
    assert_eq!(
        line(
            &text,
            &format!("detrace_platform_latency_seconds_count{pod}")
        )
        .rsplit(' ')
        .next(),
        Some("20")
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// The flow after a recirculation explained before the one that recirculates into it: held
/// until both are known, each packet counts once for the load balancer they both name.
#[test]
fn a_recirculation_explained_out_of_order_counts_once() {
    let (parent, child) = (Uuid(10), Uuid(11));
    let lb = ObjectName {
        table: "Load_Balancer".into(),
        uuid: Uuid(99),
        name: "lb0".into(),
        platform: None,
    };
    let flow = |u: Uuid, m: &str, a: &str| {
        let mut e = explained(u, false);
        e.summary.match_compact = m.into();
        e.summary.actions = a.into();
        e.summary.objects = vec![lb.clone()];
        e
    };
    let mut cache: ExplainCache<NoOvs> = ExplainCache::new(Backend::Recorded, 1.0);
    cache.insert(flow(child, "recirc_id(0x5),in_port(2)", "3"));
    let (clock, ports) = (Clock::new(), Ports::new());
    let mut l = Ledger::default();
    l.hold = std::time::Duration::from_millis(100);
    let flows: FastMap<Uuid, FlowStats> = [(parent, stats(10, 0)), (child, stats(10, 0))]
        .into_iter()
        .collect();
    l.update(
        &View {
            cache: &cache,
            clock: &clock,
            ports: &ports,
        },
        &flows,
    );
    cache.insert(flow(
        parent,
        "recirc_id(0),in_port(2)",
        "ct(zone=1,nat),recirc(0x5)",
    ));
    let view = View {
        cache: &cache,
        clock: &clock,
        ports: &ports,
    };
    l.update(&view, &flows);
    std::thread::sleep(std::time::Duration::from_millis(150));
    l.update(&view, &flows);
    let text = render(&l, &Health::default());
    let row = line(
        &text,
        "detrace_object_packets_total{table=\"Load_Balancer\"",
    );
    assert!(row.ends_with(" 10"), "{row}");
}

/// A flow retired from the kernel's accounts gives what it did since its last attribution,
/// even before its hold was over, and is forgotten; its UFID back later counts from zero, on
/// top of what it gave.
#[test]
fn retired_flows_give_their_last_counts() {
    let u = Uuid(3);
    let mut cache: ExplainCache<NoOvs> = ExplainCache::new(Backend::Recorded, 1.0);
    cache.insert(explained(u, false));
    let (clock, ports) = (Clock::new(), Ports::new());
    let view = View {
        cache: &cache,
        clock: &clock,
        ports: &ports,
    };
    let mut l = Ledger::default();
    let one = |s| -> FastMap<Uuid, FlowStats> { [(u, s)].into_iter().collect() };
    // Explained, its hold (3 s) not over: nothing attributed yet.
    l.update(&view, &one(stats(10, 0)));
    l.retire(&view, &one(stats(15, 0)));
    let packets = |l: &Ledger| {
        let text = render(l, &Health::default());
        let pod = "{platform=\"ovn-kubernetes\",kind=\"pod\",namespace=\"prod\",name=\"client\"}";
        line(&text, &format!("detrace_platform_packets_total{pod}"))
            .rsplit(' ')
            .next()
            .map(str::to_string)
    };
    assert_eq!(packets(&l).as_deref(), Some("15"));
    l.hold = std::time::Duration::ZERO;
    l.update(&view, &one(stats(2, 0)));
    assert_eq!(packets(&l).as_deref(), Some("17"));
}
