//! `cargo xtask bench`: every benchmark side by side, figures printed (docs/benchmarks.md
//! records them with this command).

use std::process::Command;

use crate::util::{run, workspace_root};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Repetitions of each datapath mode (alternated A B A B ...).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Virtual CPUs of the guest. Under TCG each is a host thread: with 2 on a 2-core host,
    /// the guest competes with QEMU's own I/O thread and anything else running, and its
    /// speed drifts between runs; 1 leaves a core free and steadies the figures.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// The lab guest the datapath benchmark runs in.
    #[arg(long, value_enum, default_value_t)]
    profile: crate::lab::Profile,
    /// Only the host benchmarks (no VM).
    #[arg(long)]
    host_only: bool,
    /// Only the datapath benchmark in the lab VM (no host benchmarks).
    #[arg(long, conflicts_with = "host_only")]
    vm_only: bool,
    /// The soak instead: `detrace top` and `detrace watch` side by side in the lab VM under
    /// churn (xtask/guest/soak.sh); fails when memory is not bounded or a packet goes missing.
    #[arg(long, conflicts_with_all = ["host_only", "vm_only"])]
    soak: bool,
    /// Seconds of the soak.
    #[arg(long, default_value_t = 1800, requires = "soak")]
    duration: u64,
    /// The soak fails if either process's RSS exceeds this (MiB).
    #[arg(long, default_value_t = 64.0, requires = "soak")]
    rss_bound_mib: f64,
    /// The soak fails if either process's RSS grows faster than this over the second half of a
    /// run (linear fit, MiB per hour; judged when that half spans 10 minutes or more).
    #[arg(long, default_value_t = 8.0, requires = "soak")]
    growth_bound_mib_per_hour: f64,
    /// With --soak: no VM, the verdict again on the results a soak kept (target/lab/soak-results),
    /// e.g. with other bounds.
    #[arg(long, requires = "soak")]
    soak_results: Option<std::path::PathBuf>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians per mode and their ratio to the run without detrace; and the median of the paired
/// ratios (each run against the base run of the same repetition, taken just before it: the
/// base drifts by tens of percent across repetitions under TCG, which the ratio of medians
/// carries and the paired ratios mostly cancel).
pub fn report(runs: &str) -> String {
    // bench.sh's modes: top and drops count from the flow table (their default), top-ls64 adds
    // --latency-sample 64, top-pp is top --per-packet (every packet through the probes);
    // floor-none attaches watch-none's programs at the same hooks, each returning at once.
    let modes = [
        "base",
        "top",
        "drops",
        "top-ls64",
        "top-pp",
        "watch-none",
        "floor-none",
        "watch-all",
    ];
    let mut out = String::from(
        "mode         tcp Mbit/s (median)  ratio  paired   udp 64B pps (median)  ratio  paired   runs\n",
    );
    let rows: Vec<Vec<&str>> = runs
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 4)
        .collect();
    let col = |mode: &str, i: usize| -> Vec<f64> {
        rows.iter()
            .filter(|f| f[0] == mode)
            .filter_map(|f| f[i].parse().ok())
            .collect()
    };
    let paired = |mode: &str, i: usize| -> Vec<f64> {
        rows.iter()
            .filter(|f| f[0] == mode)
            .filter_map(|f| {
                let base = rows.iter().find(|b| b[0] == "base" && b[1] == f[1])?;
                let (v, b): (f64, f64) = (f[i].parse().ok()?, base[i].parse().ok()?);
                (b > 0.0).then(|| v / b)
            })
            .collect()
    };
    let base_tcp = median(&mut col("base", 2));
    let base_udp = median(&mut col("base", 3));
    for m in modes {
        let mut t = col(m, 2);
        let mut u = col(m, 3);
        let n = t.len();
        let (mt, mu) = (median(&mut t), median(&mut u));
        let (pt, pu) = (median(&mut paired(m, 2)), median(&mut paired(m, 3)));
        out.push_str(&format!(
            "{m:<12} {:>19.1}  {:>5.3}  {pt:>6.3}   {:>20.0}  {:>5.3}  {pu:>6.3}   {n}\n",
            mt / 1e6,
            mt / base_tcp,
            mu,
            mu / base_udp
        ));
    }
    out
}

pub fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    crate::deps::all()?;
    if args.soak {
        eprintln!(
            "== soak: detrace top + watch for {} s in the lab VM under churn",
            args.duration
        );
        let dir = match args.soak_results {
            Some(dir) => dir,
            None => crate::lab::run_vm_soak(args.duration, args.cpus, args.profile)?,
        };
        let bounds = crate::soak::Bounds {
            rss_mib: args.rss_bound_mib,
            growth_mib_per_hour: args.growth_bound_mib_per_hour,
        };
        return crate::soak::report(&dir, args.duration, &bounds);
    }
    let root = workspace_root();
    if !args.vm_only {
        host_benches(&root)?;
    }
    if args.host_only {
        return Ok(());
    }
    eprintln!(
        "== datapath overhead in the lab VM (iperf3 client -> server through OVN + conntrack)"
    );
    let (runs, attach, cost) =
        crate::lab::run_vm_bench(args.reps, args.seconds, args.cpus, args.profile)?;
    println!("runs (mode rep tcp_bps udp_pps):\n{runs}");
    println!("{}", report(&runs));
    println!("attach/detach:\n{attach}");
    println!("probe cost (kernel BPF run-time statistics, 64-byte UDP):\n{cost}");
    Ok(())
}

fn host_benches(root: &std::path::Path) -> anyhow::Result<()> {
    eprintln!("== replica: load, memory, cookie lookups (100k and 1M logical flows)");
    cargo_bench(root, "replica", &["100000", "1000000"])?;
    eprintln!(
        "== user-space pipeline: decode + path assembly + cached explanation + aggregation, one core"
    );
    cargo_bench(root, "pipeline", &["10000", "5000000"])?;
    cargo_bench(root, "pipeline", &["100000", "5000000"])?;
    Ok(())
}

/// `cargo bench -q -p detrace-user --bench NAME -- ARGS...`
fn cargo_bench(root: &std::path::Path, name: &str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("cargo")
        .current_dir(root)
        .args(["bench", "-q", "-p", "detrace-user", "--bench", name, "--"])
        .args(args))
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians_and_ratios() {
        let r = super::report(
            "base 1 100000000 1000\nbase 2 300000000 3000\nbase 3 200000000 2000\ntop 1 190000000 1900\n",
        );
        let top = r.lines().find(|l| l.starts_with("top")).unwrap_or_default();
        assert!(top.contains("190.0") && top.contains("0.950"), "{r}");
        // Paired with base 1 (100 Mbit/s): 1.9.
        assert!(top.contains("1.900"), "{r}");
    }
}
