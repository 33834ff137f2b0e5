//! `detrace explain`: the chain for given UFIDs, or for every current datapath flow.

use std::io::Write as _;

use anyhow::{Context as _, bail};

use crate::{
    cli::{ExplainArgs, Format},
    explain::{FlowExplanation, explain, render},
    ovn::{OvnReplicas, Resolver},
    ovs::{
        DpFlow,
        unixctl::{UnixctlClient, UnixctlError},
        vswitchd::{Vswitchd, VswitchdError},
    },
    ovsdb::Remote,
    uuid::Uuid,
};

fn parse_ufid(s: &str) -> anyhow::Result<Uuid> {
    let text = s.strip_prefix("ufid:").unwrap_or(s);
    text.parse()
        .with_context(|| format!("{s:?} is not a UFID; expected ufid:<uuid> as printed by `ovs-appctl dpctl/dump-flows -m`"))
}

fn connect_vswitchd(args: &ExplainArgs) -> anyhow::Result<Vswitchd<UnixctlClient>> {
    let ctl = UnixctlClient::connect_target(&args.conn.ovs_rundir, "ovs-vswitchd", args.conn.timeout())
        .map_err(|e| {
            let hint = match &e {
                UnixctlError::NoPidfile { .. } | UnixctlError::Connect { .. } => {
                    "\nhint: is ovs-vswitchd running? point detrace at its run directory with --ovs-rundir or OVS_RUNDIR"
                }
                UnixctlError::PermissionDenied { .. } => "\nhint: run detrace as root",
                _ => "",
            };
            anyhow::anyhow!("{e}{hint}")
        })?;
    Vswitchd::new(ctl).context("asking ovs-vswitchd for its commands")
}

pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let ufids: Vec<Uuid> = args
        .ufids
        .iter()
        .map(|s| parse_ufid(s))
        .collect::<Result<_, _>>()?;
    // Start the database replicas first: they load while we talk to ovs-vswitchd.
    let sb =
        Remote::parse_list_with(&args.conn.sb_remote(), &args.conn.ssl()).context("--sb-db")?;
    let nb =
        Remote::parse_list_with(&args.conn.nb_remote(), &args.conn.ssl()).context("--nb-db")?;
    let ovn = OvnReplicas::start(sb, nb, args.conn.timeout());
    let mut ovs = connect_vswitchd(&args)?;
    ovs.retry.attempts = args.detrace_retries.max(1);

    let (flows, failures) = flows_to_explain(&args, &ufids, &mut ovs)?;

    ovn.wait_ready(args.conn.timeout()).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the OVN databases: {e}\nhint: point detrace at them with --sb-db/--nb-db \
             (or OVN_SB_DB/OVN_NB_DB), e.g. unix:/var/run/ovn/ovnsb_db.sock"
        )
    })?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut explained: Vec<FlowExplanation> = Vec::with_capacity(flows.len());
    for (dp, flow) in &flows {
        let rules = ovs.rules(dp, flow);
        let e = {
            let (sb, nb) = (ovn.sb(), ovn.nb());
            explain(dp, flow, rules, &Resolver { sb: &sb, nb: &nb })
        };
        match args.format {
            Format::Json => writeln!(out, "{}", serde_json::to_string(&e)?)?,
            Format::Text => writeln!(out, "{}", render::text(&e))?,
        }
        explained.push(e);
    }
    if args.format == Format::Text && args.all {
        write_summary(&mut out, &explained, &ovs, &ovn)?;
    }
    out.flush()?;
    if failures > 0 && explained.is_empty() {
        bail!("nothing to explain");
    }
    Ok(())
}

/// The flows asked for (every datapath's with --all) with their datapath, and how many could
/// not be had (malformed lines, UFIDs that are not current flows: each said on stderr).
fn flows_to_explain(
    args: &ExplainArgs,
    ufids: &[Uuid],
    ovs: &mut Vswitchd<UnixctlClient>,
) -> anyhow::Result<(Vec<(String, DpFlow)>, usize)> {
    let mut flows: Vec<(String, DpFlow)> = Vec::new();
    let mut failures = 0usize;
    if args.all {
        for dp in ovs.datapaths()? {
            let (f, errors) = ovs.dump_flows(&dp)?;
            for e in errors {
                tracing::warn!("skipping a malformed flow line: {e}");
                eprintln!("detrace: warning: skipping a malformed flow line: {e}");
                failures += 1;
            }
            flows.extend(f.into_iter().map(|f| (dp.clone(), f)));
        }
    } else {
        for u in ufids {
            match ovs.get_flow(*u) {
                Ok(found) => flows.push(found),
                Err(e @ VswitchdError::UfidNotFound { .. }) => {
                    eprintln!(
                        "detrace: {e}\nhint: list the current flows with `detrace explain --all`"
                    );
                    failures += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok((flows, failures))
}

/// The closing line of `explain --all` in text: how the rules were found and what stayed
/// unresolved.
fn write_summary(
    out: &mut impl std::io::Write,
    explained: &[FlowExplanation],
    ovs: &Vswitchd<UnixctlClient>,
    ovn: &OvnReplicas,
) -> anyhow::Result<()> {
    let unresolved: usize = explained
        .iter()
        .flat_map(|e| &e.rules)
        .filter(|r| r.unresolved)
        .count();
    let no_rules = explained.iter().filter(|e| e.rules.is_empty()).count();
    // Flows whose rules were re-translated because ofproto/detrace could not answer.
    let fallback = explained
        .iter()
        .filter(|e| e.rules_error.is_some() && !e.rules.is_empty())
        .count();
    let (sbs, nbs) = ovn.status();
    writeln!(
        out,
        "{} flows explained with {} ({} through the ofproto/trace fallback, {} without rules), {} cookies unresolved; SB {} logical flows via {}, NB via {}",
        explained.len(),
        if ovs.has_detrace() {
            "ofproto/detrace"
        } else {
            "ofproto/trace (OVS < 3.4)"
        },
        fallback,
        no_rules,
        unresolved,
        ovn.sb().lflows.len(),
        sbs.connected_to.unwrap_or_default(),
        nbs.connected_to.unwrap_or_default()
    )?;
    Ok(())
}
