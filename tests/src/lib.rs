//! Integration-test harness: real OVS/OVN daemons on this host (userspace datapath), network
//! namespaces as pods, and the real `detrace` binary.
//!
//! Everything a lab creates is named with the `dt-` prefix and removed on drop: the processes it
//! started (by pidfile), its namespaces and links, its run directory.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod pki;

/// Skips (returns None) when the platform lacks what the lab needs, printing why; when
/// DETRACE_REQUIRE_HOST_LAB=1 (set by `cargo xtask test`) a missing piece is a failure.
pub fn host_lab_available() -> Option<()> {
    let required = std::env::var("DETRACE_REQUIRE_HOST_LAB").is_ok_and(|v| v == "1");
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for bin in [
        "ovs-vswitchd",
        "ovsdb-server",
        "ovn-northd",
        "ovn-controller",
        "ip",
        "nc",
        "ovn-detrace",
    ] {
        if which(bin).is_none() {
            missing.push(bin.to_string());
        }
    }
    if missing.is_empty() {
        return Some(());
    }
    let msg = format!(
        "host lab needs: {} (run `cargo xtask test` as root)",
        missing.join(", ")
    );
    if required {
        panic!("{msg}");
    }
    eprintln!("SKIP: {msg}");
    None
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

pub(crate) fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Runs a command, failing with its output when it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The pods: (name, switch, mac, ip/len, gateway).
pub const PODS: &[(&str, &str, &str, &str, &str)] = &[
    ("p1", "sw0", "50:54:00:00:00:11", "10.0.0.11/24", "10.0.0.1"),
    ("p2", "sw0", "50:54:00:00:00:12", "10.0.0.12/24", "10.0.0.1"),
    ("p3", "sw1", "50:54:00:00:00:13", "20.0.0.13/24", "20.0.0.1"),
];
/// A pod whose port security lists only its own MAC and IP (added by `add_drop_causes`).
pub const PORTSEC_POD: (&str, &str, &str, &str, &str) =
    ("p4", "sw0", "50:54:00:00:00:14", "10.0.0.14/24", "10.0.0.1");
pub const PORTSEC: &str = "50:54:00:00:00:14 10.0.0.14";
/// The address p4 sends from that its port security does not list.
pub const PORTSEC_SPOOFED_IP: &str = "10.0.0.24";
/// lr0's policy drops traffic to this address.
pub const POLICY_DROP_IP: &str = "20.0.0.99";
/// VIPs of load balancers without backends: one drops, one rejects.
pub const LB_EMPTY_VIP: &str = "10.0.0.200";
pub const LB_REJECT_VIP: &str = "10.0.0.201";
pub const VIP: &str = "10.0.0.100";
pub const DROP_PORT: u16 = 9999;
pub const ACL_DROP_NAME: &str = "drop-9999";

/// An address on sw0's subnet that p1 sends to a MAC nobody has.
pub const NO_L2_DST_IP: &str = "10.0.0.77";

/// One TCP segment with chosen flags over a raw socket (the kernel adds the IP header).
const RAW_TCP: &str = r#"
import socket, struct, sys, time
src, dst, dport, flags, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
bits = sum({"F": 1, "S": 2, "R": 4, "P": 8, "A": 16}[c] for c in flags)
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
h = struct.pack("!HHIIBBHHH", 40000, dport, 1000, 2000, 5 << 4, bits, 64240, 0, 0)
ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(h))
h = h[:16] + struct.pack("!H", csum(ph + h)) + h[18:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
for _ in range(n):
    s.sendto(h, (dst, 0)); time.sleep(0.3)
"#;

/// OVS + OVN + topology, torn down on drop.
pub struct HostLab {
    pub dir: PathBuf,
    children: Vec<Child>,
    pub ovs_rundir: PathBuf,
    pub ovn_rundir: PathBuf,
}

impl HostLab {
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OVS_RUNDIR".into(), self.ovs_rundir.display().to_string()),
            (
                "OVS_LOGDIR".into(),
                self.dir.join("log").display().to_string(),
            ),
            (
                "OVS_DBDIR".into(),
                self.dir.join("db").display().to_string(),
            ),
            (
                "OVS_SYSCONFDIR".into(),
                self.dir.join("etc").display().to_string(),
            ),
            ("OVN_RUNDIR".into(), self.ovn_rundir.display().to_string()),
            (
                "OVN_LOGDIR".into(),
                self.dir.join("log").display().to_string(),
            ),
            (
                "OVN_DBDIR".into(),
                self.dir.join("db").display().to_string(),
            ),
            (
                "OVN_SYSCONFDIR".into(),
                self.dir.join("etc").display().to_string(),
            ),
            ("OVN_NB_DB".into(), self.nb_db()),
            ("OVN_SB_DB".into(), self.sb_db()),
        ]
    }

    pub fn nb_db(&self) -> String {
        format!("unix:{}", self.ovn_rundir.join("ovnnb_db.sock").display())
    }

    pub fn sb_db(&self) -> String {
        format!("unix:{}", self.ovn_rundir.join("ovnsb_db.sock").display())
    }

    /// A command with the lab's environment.
    pub fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = cmd(program, args);
        c.envs(self.env());
        c
    }

    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        sh(&mut self.cmd(program, args))
    }

    pub fn in_pod(&self, pod: &str, args: &[&str]) -> Command {
        let ns = format!("dt-{pod}");
        let mut c = cmd("ip", &["netns", "exec", &ns]);
        c.args(args);
        c
    }

    /// Brings up OVS (userspace datapath), OVN, and the topology of the seed talk in small:
    /// sw0 (p1, p2) -- lr0 -- sw1 (p3), LB VIP 10.0.0.100:80 -> p2:8080,p3:8080 on sw0 and lr0,
    /// ACL drop-9999 (to p2, tcp 9999) on sw0, TCP servers on the backends.
    pub fn start() -> anyhow::Result<HostLab> {
        cleanup_leftovers();
        let dir = PathBuf::from(format!("/tmp/detrace-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["run/ovs", "run/ovn", "log", "db", "etc"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut lab = HostLab {
            ovs_rundir: dir.join("run/ovs"),
            ovn_rundir: dir.join("run/ovn"),
            dir,
            children: Vec::new(),
        };
        lab.start_ovs()?;
        lab.start_ovn()?;
        lab.topology()?;
        Ok(lab)
    }

    fn start_ovs(&mut self) -> anyhow::Result<()> {
        let db = self.dir.join("db/conf.db");
        let rd = self.ovs_rundir.display().to_string();
        let log = self.dir.join("log").display().to_string();
        self.run(
            "ovsdb-tool",
            &[
                "create",
                &db.display().to_string(),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        )?;
        self.run(
            "ovsdb-server",
            &[
                &db.display().to_string(),
                &format!("--remote=punix:{rd}/db.sock"),
                &format!("--pidfile={rd}/ovsdb-server.pid"),
                &format!("--unixctl={rd}/ovsdb-server.ctl"),
                &format!("--log-file={log}/ovsdb-server.log"),
                "--detach",
            ],
        )?;
        self.run("ovs-vsctl", &["--no-wait", "init"])?;
        self.run(
            "ovs-vswitchd",
            &[
                &format!("unix:{rd}/db.sock"),
                &format!("--pidfile={rd}/ovs-vswitchd.pid"),
                &format!("--log-file={log}/ovs-vswitchd.log"),
                "--detach",
            ],
        )?;
        Ok(())
    }

    fn start_ovn(&mut self) -> anyhow::Result<()> {
        let rd = self.ovn_rundir.display().to_string();
        let ovs_rd = self.ovs_rundir.display().to_string();
        let log = self.dir.join("log").display().to_string();
        for db in ["nb", "sb"] {
            let file = self
                .dir
                .join(format!("db/ovn{db}.db"))
                .display()
                .to_string();
            self.run(
                "ovsdb-tool",
                &[
                    "create",
                    &file,
                    &format!("/usr/share/ovn/ovn-{db}.ovsschema"),
                ],
            )?;
            self.run(
                "ovsdb-server",
                &[
                    &file,
                    &format!("--remote=punix:{rd}/ovn{db}_db.sock"),
                    &format!("--pidfile={rd}/ovn{db}_db.pid"),
                    &format!("--unixctl={rd}/ovn{db}_db.ctl"),
                    &format!("--log-file={log}/ovsdb-server-{db}.log"),
                    "--detach",
                ],
            )?;
        }
        self.run("ovn-nbctl", &["--no-wait", "init"])?;
        self.run(
            "ovn-northd",
            &[
                &format!("--ovnnb-db={}", self.nb_db()),
                &format!("--ovnsb-db={}", self.sb_db()),
                &format!("--pidfile={rd}/ovn-northd.pid"),
                &format!("--log-file={log}/ovn-northd.log"),
                "--detach",
            ],
        )?;
        self.run(
            "ovs-vsctl",
            &[
                "--may-exist",
                "add-br",
                "br-int",
                "--",
                "set",
                "bridge",
                "br-int",
                "datapath_type=netdev",
                "fail-mode=secure",
                "other-config:disable-in-band=true",
            ],
        )?;
        self.run(
            "ovs-vsctl",
            &[
                "set",
                "open",
                ".",
                "external_ids:system-id=chassis-1",
                &format!("external_ids:ovn-remote={}", self.sb_db()),
                "external_ids:ovn-encap-type=geneve",
                "external_ids:ovn-encap-ip=127.0.0.1",
                "external_ids:ovn-bridge-datapath-type=netdev",
            ],
        )?;
        self.run(
            "ovn-controller",
            &[
                &format!("unix:{ovs_rd}/db.sock"),
                &format!("--pidfile={rd}/ovn-controller.pid"),
                &format!("--log-file={log}/ovn-controller.log"),
                "--detach",
            ],
        )?;
        Ok(())
    }

    fn topology(&mut self) -> anyhow::Result<()> {
        let nb = |args: &[&str]| self.run("ovn-nbctl", args);
        nb(&[
            "ls-add", "sw0", "--", "ls-add", "sw1", "--", "lr-add", "lr0",
        ])?;
        nb(&[
            "lrp-add",
            "lr0",
            "lr0-sw0",
            "00:00:00:00:ff:01",
            "10.0.0.1/24",
        ])?;
        nb(&[
            "lrp-add",
            "lr0",
            "lr0-sw1",
            "00:00:00:00:ff:02",
            "20.0.0.1/24",
        ])?;
        for (sw, lrp) in [("sw0", "lr0-sw0"), ("sw1", "lr0-sw1")] {
            let lsp = format!("{sw}-lr0");
            nb(&[
                "lsp-add",
                sw,
                &lsp,
                "--",
                "lsp-set-type",
                &lsp,
                "router",
                "--",
                "lsp-set-addresses",
                &lsp,
                "router",
                "--",
                "lsp-set-options",
                &lsp,
                &format!("router-port={lrp}"),
            ])?;
        }
        for p in PODS {
            self.add_pod(*p)?;
        }
        nb(&[
            "lb-add",
            "lb0",
            &format!("{VIP}:80"),
            "10.0.0.12:8080,20.0.0.13:8080",
            "tcp",
        ])?;
        nb(&["ls-lb-add", "sw0", "lb0", "--", "lr-lb-add", "lr0", "lb0"])?;
        // `acl-add --name` turns ACL logging on, which turns the drop into a controller action:
        // set the name on the row instead.
        nb(&[
            "acl-add",
            "sw0",
            "to-lport",
            "1002",
            &format!("outport == \"p2\" && tcp.dst == {DROP_PORT}"),
            "drop",
        ])?;
        let acl = nb(&["--bare", "--columns=_uuid", "find", "ACL", "priority=1002"])?;
        nb(&["set", "ACL", acl.trim(), &format!("name={ACL_DROP_NAME}")])?;
        nb(&[
            "acl-add",
            "sw0",
            "to-lport",
            "1001",
            "outport == \"p2\" && ip4",
            "allow-related",
        ])?;
        nb(&["--wait=hv", "sync"])?;
        // TCP servers on the backends, and the port the ACL drops.
        for (pod, port) in [("p2", 8080u16), ("p3", 8080), ("p2", DROP_PORT)] {
            let script = format!(
                "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('0.0.0.0',{port}));s.listen(64)\nwhile True:\n c,a=s.accept();c.sendall(b'{pod}\\n');c.close()\n"
            );
            let child = self
                .in_pod(pod, &["/usr/bin/python3", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.children.push(child);
        }
        Ok(())
    }

    /// A logical switch port and its pod: a netns with a veth into br-int.
    fn add_pod(
        &self,
        (pod, sw, mac, ip, gw): (&str, &str, &str, &str, &str),
    ) -> anyhow::Result<()> {
        let addr = format!("{mac} {}", ip.split('/').next().unwrap_or(ip));
        self.run(
            "ovn-nbctl",
            &["lsp-add", sw, pod, "--", "lsp-set-addresses", pod, &addr],
        )?;
        self.attach_pod(pod, pod, mac, ip, Some(gw))
    }

    /// A pod (netns `dt-<pod>`, IPv6 off) plugged into the existing logical port `iface_id`.
    pub fn attach_pod(
        &self,
        pod: &str,
        iface_id: &str,
        mac: &str,
        ip: &str,
        gw: Option<&str>,
    ) -> anyhow::Result<()> {
        let ns = format!("dt-{pod}");
        let veth = format!("dt-v-{pod}");
        sh(&mut cmd("ip", &["netns", "add", &ns]))?;
        sh(&mut cmd(
            "ip",
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        ))?;
        let mut steps = vec![
            vec!["link", "set", "eth0", "address", mac],
            vec!["addr", "add", ip, "dev", "eth0"],
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", "eth0", "up"],
        ];
        if let Some(gw) = gw {
            steps.push(vec!["route", "add", "default", "via", gw]);
        }
        for a in steps {
            let mut c = cmd("ip", &["-n", &ns]);
            c.args(a);
            sh(&mut c)?;
        }
        // The userspace datapath does not fill in checksums that veth offload left out.
        sh(&mut cmd(
            "ip",
            &["netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off"],
        ))?;
        sh(&mut cmd("ip", &["link", "set", &veth, "up"]))?;
        self.run(
            "ovs-vsctl",
            &[
                "add-port",
                "br-int",
                &veth,
                "--",
                "set",
                "interface",
                &veth,
                &format!("external_ids:iface-id={iface_id}"),
            ],
        )?;
        Ok(())
    }

    /// One object per drop cause on top of the base topology: pod p4 with port security, a
    /// router policy that drops 20.0.0.99, load balancers without backends (drop, reject).
    /// The pods get the neighbour entries that let their packets reach the deciding stage.
    pub fn add_drop_causes(&mut self) -> anyhow::Result<()> {
        self.add_pod(PORTSEC_POD)?;
        let nb = |args: &[&str]| self.run("ovn-nbctl", args);
        nb(&["lsp-set-port-security", PORTSEC_POD.0, PORTSEC])?;
        nb(&[
            "lr-policy-add",
            "lr0",
            "1000",
            &format!("ip4.dst == {POLICY_DROP_IP}"),
            "drop",
        ])?;
        for (name, vip, extra) in [
            ("lb-empty", LB_EMPTY_VIP, None),
            ("lb-reject", LB_REJECT_VIP, Some("options:reject=true")),
        ] {
            let mut args = vec![
                "create".to_string(),
                "Load_Balancer".into(),
                format!("name={name}"),
                "protocol=tcp".into(),
                format!("vips={{\"{vip}:80\"=\"\"}}"),
            ];
            args.extend(extra.map(str::to_string));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            nb(&a)?;
            nb(&["ls-lb-add", "sw0", name])?;
        }
        nb(&["--wait=hv", "sync"])?;
        let ip_n = |pod: &str, args: &[&str]| {
            let mut c = cmd("ip", &["-n", &format!("dt-{pod}")]);
            c.args(args);
            sh(&mut c)
        };
        ip_n(
            "p4",
            &[
                "addr",
                "add",
                &format!("{PORTSEC_SPOOFED_IP}/24"),
                "dev",
                "eth0",
            ],
        )?;
        ip_n(
            "p4",
            &[
                "neigh",
                "replace",
                "10.0.0.12",
                "lladdr",
                "50:54:00:00:00:12",
                "dev",
                "eth0",
            ],
        )?;
        // Nobody answers ARP for a VIP only on a switch: send to the router's MAC.
        for vip in [LB_EMPTY_VIP, LB_REJECT_VIP] {
            ip_n(
                "p1",
                &[
                    "neigh",
                    "replace",
                    vip,
                    "lladdr",
                    "00:00:00:00:ff:01",
                    "dev",
                    "eth0",
                ],
            )?;
        }
        // A MAC nobody has on sw0: no L2 destination.
        ip_n(
            "p1",
            &[
                "neigh",
                "replace",
                NO_L2_DST_IP,
                "lladdr",
                "50:54:00:00:00:99",
                "dev",
                "eth0",
            ],
        )?;
        Ok(())
    }

    /// Sends TCP segments with the given flags (e.g. "SA": SYN+ACK, which conntrack cannot start
    /// a connection with, so ct.inv) from a pod, `count` times 0.3 s apart.
    pub fn send_tcp_flags(
        &self,
        from: &str,
        src: &str,
        dst: &str,
        port: u16,
        flags: &str,
        count: u32,
    ) -> anyhow::Result<Child> {
        Ok(self
            .in_pod(
                from,
                &[
                    "/usr/bin/python3",
                    "-c",
                    RAW_TCP,
                    src,
                    dst,
                    &port.to_string(),
                    flags,
                    &count.to_string(),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?)
    }

    /// One TCP connection attempt from a pod; true when the server answered.
    pub fn connect(&self, from: &str, ip: &str, port: u16) -> bool {
        let out: Option<Output> = self
            .in_pod(
                from,
                &["timeout", "4", "nc", "-w", "2", ip, &port.to_string()],
            )
            .stdin(Stdio::null())
            .output()
            .ok();
        out.is_some_and(|o| o.status.success() && !o.stdout.is_empty())
    }

    /// Waits until `from` reaches `ip:port` (OVN programs flows asynchronously).
    pub fn wait_connect(
        &self,
        from: &str,
        ip: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.connect(from, ip, port) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(300));
        }
        bail!("{from} cannot reach {ip}:{port} within {timeout:?}")
    }

    pub fn ping(&self, from: &str, ip: &str) -> bool {
        self.in_pod(from, &["ping", "-c", "1", "-W", "2", ip])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn log_tail(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("log").join(name))
            .map(|s| {
                s.lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

fn kill_pidfile(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(pid) = text.trim().parse::<i32>()
    {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
}

/// Removes what an earlier, interrupted run left: only our `dt-` namespaces and links.
fn cleanup_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or("");
            if ns.starts_with("dt-") {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    for (pod, ..) in PODS.iter().chain([&PORTSEC_POD]) {
        let _ = Command::new("ip")
            .args(["link", "del", &format!("dt-v-{pod}")])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for HostLab {
    fn drop(&mut self) {
        // For debugging a failure by hand: keep the lab up for N seconds (env printed first).
        if let Some(secs) = std::env::var("DETRACE_LAB_HOLD")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            let env: Vec<String> = self
                .env()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!("lab held for {secs} s: export {}", env.join(" "));
            thread::sleep(Duration::from_secs(secs));
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in [
            self.ovn_rundir.join("ovn-controller.pid"),
            self.ovn_rundir.join("ovn-northd.pid"),
            self.ovn_rundir.join("ovnnb_db.pid"),
            self.ovn_rundir.join("ovnsb_db.pid"),
            self.ovs_rundir.join("ovs-vswitchd.pid"),
            self.ovs_rundir.join("ovsdb-server.pid"),
        ] {
            kill_pidfile(&f);
        }
        thread::sleep(Duration::from_millis(300));
        // The userspace datapath's tap devices (br-int, ovs-netdev) go with its process.
        cleanup_leftovers();
        if std::env::var_os("DETRACE_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Background traffic (a pod's packet trains), killed when dropped.
pub struct Trains(pub Vec<Child>);

impl Drop for Trains {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the `detrace` under test against `lab`'s daemons (its environment), stdin closed.
pub fn run_detrace(lab: &HostLab, args: &[&str]) -> std::process::Output {
    Command::new(detrace_bin())
        .args(args)
        .envs(lab.env())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run detrace")
}

/// `detrace explain --all --format json` on `lab`: one JSON object per flow. Panics (the test
/// fails) when detrace fails or prints a line that is not JSON.
pub fn explain_all(lab: &HostLab) -> Vec<serde_json::Value> {
    let out = run_detrace(lab, &["explain", "--all", "--format", "json"]);
    assert!(
        out.status.success(),
        "detrace explain --all failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// Path of the `detrace` binary built by cargo for these tests.
pub fn detrace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DETRACE_BIN") {
        return PathBuf::from(p);
    }
    // target/debug/deps/<test> -> target/debug/detrace
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join("detrace")
}
