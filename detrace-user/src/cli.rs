//! The command line. Doc comments here are the help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Defined where they are used (the library does not depend on the command line).
pub use crate::{aggregate::SortKey, live::render::Format};

#[derive(Parser, Debug)]
#[command(
    name = "detrace",
    version,
    about = "Trace Open vSwitch datapath flows back to the OVN objects that made them",
    long_about = "Trace Open vSwitch datapath flows back to the OVN objects that made them.\n\n\
        detrace walks UFID -> OpenFlow rules (ofproto/detrace) -> cookies -> OVN Southbound rows -> \
        stage-hints -> Northbound objects (ACLs, load balancers, ports...), talking to ovs-vswitchd \
        and the OVN databases directly, read-only."
)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// When to write colour and terminal codes (auto: on a terminal, unless NO_COLOR is set).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t, global = true)]
    pub color: crate::term::ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Explain datapath flows: the OpenFlow rules, OVN logical flows and Northbound objects
    /// behind each UFID.
    Explain(ExplainArgs),
    /// List the eBPF programs and maps embedded in this binary; with --attach, attach them for
    /// a while and print what they saw (does tracing work on this kernel?).
    Probes(ProbesArgs),
    /// Watch live packets: each packet's path of datapath flows across recirculations, each
    /// flow explained down to OVN objects, its verdict (output port, or drop and why) and its
    /// datapath latency.
    Watch(WatchArgs),
    /// A refreshing table of flows and of OVN objects by hit rate, bytes, drops and latency.
    Top(TopArgs),
    /// Drops grouped by the OVN object responsible (ACL, load balancer, logical flow stage),
    /// with counts, reasons and a sample packet each.
    Drops(DropsArgs),
    /// Record packets with their explanations to a file, for `detrace replay`.
    Record(RecordArgs),
    /// Print or aggregate a recording, without root or daemons.
    Replay(ReplayArgs),
    /// The node agent: packets and drops per OVN and platform object (pods, NetworkPolicies,
    /// Services...), drops by culprit and reason, and detrace's own health, for Prometheus at
    /// http://LISTEN/metrics (and /healthz). Runs until SIGTERM/Ctrl-C.
    Serve(ServeArgs),
    /// Print a shell completion script (e.g. `source <(detrace completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write detrace.1 and detrace-COMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Kernel-side packet filters (all given must match, decided on the packet's first pass).
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Source address.
    #[arg(long)]
    pub src: Option<std::net::IpAddr>,
    /// Destination address.
    #[arg(long)]
    pub dst: Option<std::net::IpAddr>,
    /// Either address.
    #[arg(long)]
    pub host: Option<std::net::IpAddr>,
    /// Either L4 port.
    #[arg(long)]
    pub port: Option<u16>,
    /// IP protocol: tcp, udp, icmp, icmp6 or a number.
    #[arg(long, value_parser = parse_proto)]
    pub proto: Option<u8>,
    /// Datapath input port number (see `ovs-appctl dpctl/show`).
    #[arg(long)]
    pub in_port: Option<u32>,
    /// A pod, as NAMESPACE/NAME: packets from or to its addresses (read from its logical
    /// switch port, kept current while detrace runs). ovn-kubernetes and kube-ovn.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod, conflicts_with = "namespace")]
    pub pod: Option<(String, String)>,
    /// Packets from or to any pod of a namespace (its pods as they come and go).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

fn parse_pod(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: give the pod as NAMESPACE/NAME")),
    }
}

impl FilterArgs {
    /// The kernel-side filter these options ask for.
    pub fn to_filter(&self) -> crate::probes::loader::Filter {
        crate::probes::loader::Filter {
            src: self.src,
            dst: self.dst,
            host: self.host,
            port: self.port,
            proto: self.proto,
            in_port: self.in_port,
            // Resolved from the Northbound database once it is read (see `selector`).
            addrs: None,
        }
    }

    /// Whether any filter is given (then only the events tell which packets it picks).
    pub fn is_set(&self) -> bool {
        self.src.is_some()
            || self.dst.is_some()
            || self.host.is_some()
            || self.port.is_some()
            || self.proto.is_some()
            || self.in_port.is_some()
            || self.pod.is_some()
            || self.namespace.is_some()
    }

    /// The pods to filter on, when --pod or --namespace is given.
    pub fn selector(&self) -> Option<crate::live::select::Selector> {
        use crate::live::select::Selector;
        match (&self.pod, &self.namespace) {
            (Some((namespace, name)), _) => Some(Selector::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            (None, Some(ns)) => Some(Selector::Namespace(ns.clone())),
            (None, None) => None,
        }
    }
}

fn parse_proto(s: &str) -> Result<u8, String> {
    match s {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        "icmp6" => Ok(58),
        "sctp" => Ok(132),
        n => n
            .parse()
            .map_err(|_| format!("unknown protocol {n:?}: use tcp, udp, icmp, icmp6 or a number")),
    }
}

/// What every live command shares.
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// At most this many unixctl requests per second to ovs-vswitchd for explanations.
    #[arg(long, default_value_t = 20.0)]
    pub ovs_rate: f64,
    /// Write a line on stdout once the probes are attached (for scripts and tests).
    #[arg(long)]
    pub ready: bool,
    /// Hook the datapath with kprobes even where fentry attaches (fentry costs less per
    /// packet; this is for comparison, or for a kernel where fentry misbehaves).
    #[arg(long)]
    pub kprobes: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Per-packet event transport.
#[derive(Args, Debug, Clone)]
pub struct EventArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, default_value_t = 4 << 20)]
    pub ring_size: u32,
    /// At most this many events per second per CPU (0: unlimited); the rest are counted.
    #[arg(long, default_value_t = 20000)]
    pub rate_limit: u32,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub events: EventArgs,
    /// Only packets that ended this way (e.g. `--verdict drop`).
    #[arg(long, value_enum)]
    pub verdict: Option<crate::live::sinks::watch::VerdictFilter>,
}

/// How `top` and `drops` count.
#[derive(Args, Debug, Clone)]
pub struct CountArgs {
    /// Count in per-packet probes (a program at every datapath pass and output, with
    /// latency and, for drops, a sample packet) instead of reading the kernel's own flow
    /// stats every interval (no program runs per packet).
    #[arg(long)]
    pub per_packet: bool,
    /// Measure datapath latency on 1 packet in N (decided at its first datapath pass: the
    /// others cost the probes an early return); counts still come from the flow table.
    /// Without it (and without --per-packet) there is no latency.
    #[arg(long, value_name = "N", conflicts_with = "per_packet", value_parser = clap::value_parser!(u32).range(1..))]
    pub latency_sample: Option<u32>,
    /// Seconds a flow gone from the kernel's table stays a flow of its own (in top's table of
    /// flows, drop groups' flow lists): then it is forgotten, its counts kept in the totals of
    /// its OVN and platform objects and drop culprits, so that what a long run keeps follows
    /// the flows that exist, not every flow met since the start. At least 2.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, value_parser = retire_secs)]
    pub retire_after: f64,
}

/// At least 2 s: a flow is retired once its last stats are in, which the kernel's RCU
/// callback delivers moments after the flow left the table; retired before that, its count
/// would come back as a new life of the UFID and be counted twice.
fn retire_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (2.0..=1e7).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds from 2 to 10000000"
        )),
    }
}

impl CountArgs {
    pub fn counting(&self) -> crate::live::kernel::Counting {
        crate::live::kernel::Counting {
            per_packet: self.per_packet,
            latency_sample: self.latency_sample.unwrap_or(0),
            matching_only: false,
            retire_after: std::time::Duration::from_secs_f64(self.retire_after),
        }
    }
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub count: CountArgs,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    #[arg(long, value_enum, default_value_t = SortKey::Rate)]
    pub sort: SortKey,
    /// Rows per table.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Args, Debug)]
pub struct DropsArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub count: CountArgs,
    #[command(flatten)]
    pub events: EventArgs,
    /// Seconds between reports (default: one report at the end).
    #[arg(long)]
    pub interval: Option<f64>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// By default counts come from the kernel's flow table (no program per packet) and
    /// there is no latency; --latency-sample N adds latency histograms from 1 packet in N.
    #[command(flatten)]
    pub count: CountArgs,
    /// Address and port of the HTTP endpoint.
    #[arg(long, default_value = "127.0.0.1:9476")]
    pub listen: String,
    /// Seconds between two reads of the kernel's counters (what a scrape sees).
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub events: EventArgs,
    /// File to write (JSON lines).
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplayAs {
    Watch,
    Top,
    Drops,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A file written by `detrace record`.
    pub file: PathBuf,
    /// How to show it.
    #[arg(long = "as", value_enum, default_value_t = ReplayAs::Watch)]
    pub as_: ReplayAs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// `detrace probes`: without --attach, only lists the embedded programs (no privileges needed).
#[derive(Args, Debug)]
pub struct ProbesArgs {
    /// Attach the probes for SECS seconds (Ctrl-C ends early), then print JSON lines: attach
    /// time, the first --max-events events, counters, per-UFID stats, detach time. Needs root.
    #[arg(long, value_name = "SECS")]
    pub attach: Option<f64>,
    /// Also collect per-packet events (ring buffer).
    #[arg(long)]
    pub events: bool,
    /// How many events to print on stdout.
    #[arg(long, default_value_t = 20)]
    pub max_events: usize,
    /// Write every event read to FILE as JSON lines, with all the wire fields (implies --events).
    #[arg(long, value_name = "FILE")]
    pub events_out: Option<PathBuf>,
    /// Ring buffer size in bytes (power of two, >= 4096).
    #[arg(long, default_value_t = 1 << 20)]
    pub ring_bytes: u32,
    /// Max events per second per CPU (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate_limit: u32,
    /// Read no events for the first SECS seconds (checks that a full ring is counted as lost).
    #[arg(long, value_name = "SECS")]
    pub hold: Option<f64>,
    /// Also print what each eBPF program cost: runs and average time per run, as the kernel
    /// measures it (BPF run-time statistics, enabled for this run only).
    #[arg(long)]
    pub cost: bool,
    /// Hook the datapath with kprobes even where fentry attaches.
    #[arg(long)]
    pub kprobes: bool,
    /// Only the probes of counting from the kernel's flow table (as `top` and `drops` do by
    /// default): flow removals and upcalls, no per-packet probe.
    #[arg(long, conflicts_with_all = ["events", "events_out"])]
    pub flow_table: bool,
    /// With --events: follow only the packets the filter matches (as watch and record do).
    #[arg(long)]
    pub matching_only: bool,
    /// With --flow-table: also the per-packet probes, following 1 packet in N for latency.
    #[arg(long, value_name = "N", requires = "flow_table", value_parser = clap::value_parser!(u32).range(1..))]
    pub latency_sample: Option<u32>,
    /// Benchmarks only: the same programs attached at the same hooks, each returning at once
    /// (what the hooks themselves cost: the floor for any program there). Counts nothing.
    #[arg(long, hide = true)]
    pub noop: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// UFIDs to explain, as `ufid:<uuid>` or `<uuid>` (see `ovs-appctl dpctl/dump-flows -m`).
    #[arg(
        value_name = "UFID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub ufids: Vec<String>,
    /// Explain every current datapath flow.
    #[arg(long)]
    pub all: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// How many times to ask `ofproto/detrace` again while OVS answers "Cache was not found".
    #[arg(long, default_value_t = 6)]
    pub detrace_retries: u32,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Where the daemons are. Defaults follow ovs-appctl and ovn-nbctl/ovn-sbctl.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// ovs-vswitchd's run directory (holds ovs-vswitchd.pid and its unixctl socket).
    #[arg(long, env = "OVS_RUNDIR", default_value = crate::ovs::unixctl::DEFAULT_OVS_RUNDIR)]
    pub ovs_rundir: PathBuf,
    /// OVN's run directory, for the default database sockets.
    #[arg(long, env = "OVN_RUNDIR", default_value = crate::paths::OVN_RUNDIR)]
    pub ovn_rundir: PathBuf,
    /// Southbound database: unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT, comma-separated for a
    /// cluster [default: unix:$OVN_RUNDIR/ovnsb_db.sock].
    #[arg(long, env = "OVN_SB_DB")]
    pub sb_db: Option<String>,
    /// Northbound database [default: unix:$OVN_RUNDIR/ovnnb_db.sock].
    #[arg(long, env = "OVN_NB_DB")]
    pub nb_db: Option<String>,
    /// Private key (PEM) for ssl: databases, as ovn-nbctl's -p.
    #[arg(short = 'p', long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Certificate (PEM) for the private key, as ovn-nbctl's -c.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// CA certificate (PEM) that the databases' certificates must be signed by, as
    /// ovn-nbctl's -C (their host names are not checked, as OVS does not).
    #[arg(short = 'C', long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Seconds to wait for any daemon's answer.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

impl ConnArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(0.1))
    }
    pub fn sb_remote(&self) -> String {
        self.sb_db
            .clone()
            .unwrap_or_else(|| format!("unix:{}", self.ovn_rundir.join("ovnsb_db.sock").display()))
    }
    /// The PKI files for ssl: remotes.
    pub fn ssl(&self) -> crate::ovsdb::SslFiles {
        crate::ovsdb::SslFiles {
            private_key: self.private_key.clone(),
            certificate: self.certificate.clone(),
            ca_cert: self.ca_cert.clone(),
        }
    }
    pub fn nb_remote(&self) -> String {
        self.nb_db
            .clone()
            .unwrap_or_else(|| format!("unix:{}", self.ovn_rundir.join("ovnnb_db.sock").display()))
    }
}
