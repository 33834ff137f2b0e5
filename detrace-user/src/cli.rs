//! The command line. Doc comments here are the help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Explain datapath flows: the OpenFlow rules, OVN logical flows and Northbound objects
    /// behind each UFID.
    Explain(ExplainArgs),
    /// List the eBPF programs and maps embedded in this binary.
    Probes,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable chain.
    Text,
    /// One JSON object per flow, one per line.
    Json,
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
    #[arg(long, env = "OVN_RUNDIR", default_value = "/var/run/ovn")]
    pub ovn_rundir: PathBuf,
    /// Southbound database: unix:PATH or tcp:HOST:PORT, comma-separated for a cluster
    /// [default: unix:$OVN_RUNDIR/ovnsb_db.sock].
    #[arg(long, env = "OVN_SB_DB")]
    pub sb_db: Option<String>,
    /// Northbound database [default: unix:$OVN_RUNDIR/ovnnb_db.sock].
    #[arg(long, env = "OVN_NB_DB")]
    pub nb_db: Option<String>,
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
    pub fn nb_remote(&self) -> String {
        self.nb_db
            .clone()
            .unwrap_or_else(|| format!("unix:{}", self.ovn_rundir.join("ovnnb_db.sock").display()))
    }
}
