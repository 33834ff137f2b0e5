//! Every host path detrace reads, in one place: what a node must offer, and what a container
//! deployment must mount (deploy/kubernetes/daemonset.yaml is checked against [`HOST_PATHS`]).

/// ovs-vswitchd's run directory (its pidfile and unixctl socket), as ovs-appctl defaults it.
pub const OVS_RUNDIR: &str = "/var/run/openvswitch";
/// OVN's run directory (the NB and SB database sockets), as ovn-nbctl defaults it.
pub const OVN_RUNDIR: &str = "/var/run/ovn";
/// The kernel's BTF, and the openvswitch module's (split on vmlinux's).
pub const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";
pub const BTF_OPENVSWITCH: &str = "/sys/kernel/btf/openvswitch";
/// tracefs (the kfree_skb tracepoint's format; mounted here when it is nowhere).
pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const TRACEFS_OLD: &str = "/sys/kernel/debug/tracing";
/// Whether the openvswitch module is loaded.
pub const OVS_MODULE: &str = "/sys/module/openvswitch";
/// The kprobe PMU (kprobes available).
pub const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";
/// Kernel symbols (which datapath functions exist to hook).
pub const KALLSYMS: &str = "/proc/kallsyms";

/// How a container gets a host path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A hostPath volume at the same path.
    HostPath,
    /// The container's own /sys or /proc show the host's (sysfs and procfs are the kernel's).
    Runtime,
}

/// (path, how a container gets it, what for).
pub const HOST_PATHS: &[(&str, Source, &str)] = &[
    (
        OVS_RUNDIR,
        Source::HostPath,
        "ovs-vswitchd's pidfile and unixctl socket",
    ),
    (
        OVN_RUNDIR,
        Source::HostPath,
        "the OVN NB and SB database sockets",
    ),
    (
        "/sys/kernel/btf",
        Source::HostPath,
        "vmlinux and openvswitch BTF: struct offsets",
    ),
    (
        TRACEFS,
        Source::HostPath,
        "tracefs: the skb:kfree_skb tracepoint",
    ),
    (
        OVS_MODULE,
        Source::Runtime,
        "is the openvswitch module loaded",
    ),
    (KPROBE_PMU, Source::Runtime, "kprobes available"),
    (
        KALLSYMS,
        Source::Runtime,
        "which openvswitch functions exist",
    ),
];

/// The deployment files match what detrace reads and needs: the DaemonSet mounts exactly the
/// host paths of [`HOST_PATHS`] marked hostPath (each at the same path), its capabilities are
/// the ones the probes need, its arguments parse, its probes ask the agent's routes.
#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use std::collections::BTreeSet;

    use super::{HOST_PATHS, Source};
    use yaml_rust2::{Yaml, YamlLoader};

    fn daemonset() -> Yaml {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/kubernetes/daemonset.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        YamlLoader::load_from_str(&text)
            .unwrap()
            .into_iter()
            .find(|d| d["kind"].as_str() == Some("DaemonSet"))
            .expect("a DaemonSet document")
    }

    fn strs(y: &Yaml) -> Vec<String> {
        y.as_vec()
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn daemonset_mounts_exactly_the_host_paths_detrace_reads() {
        let ds = daemonset();
        let spec = &ds["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        // volume name -> host path
        let volumes: Vec<(String, String)> = spec["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["hostPath"]["path"]
                        .as_str()
                        .expect("hostPath volumes only")
                        .to_string(),
                )
            })
            .collect();
        let mounts: BTreeSet<(String, String)> = c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|m| {
                let name = m["name"].as_str().unwrap();
                let host = &volumes
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("a mount of a volume")
                    .1;
                (host.clone(), m["mountPath"].as_str().unwrap().to_string())
            })
            .collect();
        let wanted: BTreeSet<(String, String)> = HOST_PATHS
            .iter()
            .filter(|(_, s, _)| *s == Source::HostPath)
            .map(|(p, _, _)| (p.to_string(), p.to_string()))
            .collect();
        assert_eq!(
            mounts, wanted,
            "DaemonSet mounts (host path, mount path) vs detrace's"
        );
        assert_eq!(
            volumes.len(),
            wanted.len(),
            "a volume nothing mounts: {volumes:?}"
        );

        let caps = strs(&c["securityContext"]["capabilities"]["add"]);
        for cap in ["BPF", "PERFMON"] {
            assert!(
                caps.iter().any(|c| c == cap),
                "capability {cap} missing: {caps:?}"
            );
        }
        assert_eq!(c["securityContext"]["runAsUser"].as_i64(), Some(0));
        // The arguments are the serve command's, and the probes ask its routes.
        let args = strs(&c["args"]);
        assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
        let port = c["ports"][0]["containerPort"].as_i64().unwrap();
        assert!(
            args.iter().any(|a| a.ends_with(&format!(":{port}"))),
            "{args:?} vs port {port}"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                c[probe]["httpGet"]["path"].as_str(),
                Some("/healthz"),
                "{probe}"
            );
        }
        // The env names the run directories detrace reads by default.
        let env: Vec<(String, String)> = c["env"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(env.contains(&("OVS_RUNDIR".into(), super::OVS_RUNDIR.into())));
        assert!(env.contains(&("OVN_RUNDIR".into(), super::OVN_RUNDIR.into())));
    }

    #[test]
    fn the_serve_arguments_parse() {
        use clap::Parser as _;
        let ds = daemonset();
        let mut argv = vec!["detrace".to_string()];
        argv.extend(strs(
            &ds["spec"]["template"]["spec"]["containers"][0]["args"],
        ));
        let cli =
            crate::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        assert!(matches!(cli.command, crate::cli::Command::Serve(_)));
    }
}
