//! `cargo xtask fuzz`: every cargo-fuzz (libFuzzer) target in `fuzz/` for a bounded time, seeded
//! from the captured OVS/OVN text in tests/fixtures, with the kept crash inputs of
//! tests/fixtures/fuzz/<target>/ replayed first. `cargo xtask test` runs it with a small budget.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::util::{run, workspace_root};

/// The targets of fuzz/Cargo.toml, each one parser that reads outside input.
const TARGETS: &[&str] = &[
    "unixctl_reply",
    "ovsdb_messages",
    "replica_updates",
    "dpflow",
    "ofrule",
    "btf",
    "event",
    "record",
];

/// What `cargo xtask test` spends per target (CI runs every submission).
pub const CI_SECONDS: u64 = 15;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
}

struct Outcome {
    target: &'static str,
    runs: u64,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

pub fn run_fuzz(args: &FuzzArgs) -> anyhow::Result<()> {
    crate::deps::ensure_cargo_fuzz()?;
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", "));
        }
    }
    let started = Instant::now();
    // Release build with debug assertions (integer overflow checks) and ASan, as cargo-fuzz
    // does by default; RUSTC_BOOTSTRAP lets the pinned stable toolchain take -Zsanitizer.
    run(Command::new("cargo")
        .current_dir(&fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build", "--debug-assertions"]))?;
    eprintln!(
        "xtask: fuzz build took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let bin_dir = fuzz_dir.join("target/x86_64-unknown-linux-gnu/release");
    let work = root.join("target/fuzz");
    let mut outcomes = Vec::new();
    for &target in TARGETS {
        if !args.targets.is_empty() && !args.targets.iter().any(|t| t == target) {
            continue;
        }
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        fs::create_dir_all(&corpus)?;
        fs::create_dir_all(&artifacts)?;
        seed(&root, target, &corpus)?;
        outcomes.push(fuzz_one(
            &bin_dir.join(target),
            target,
            &corpus,
            &artifacts,
            &root.join("tests/fixtures/fuzz").join(target),
            args.seconds,
        )?);
    }
    let (mut runs, mut corpus, mut crashes) = (0, 0, 0);
    for o in &outcomes {
        println!(
            "fuzz {:<16} {:>10} runs  corpus {:>5}  crashes {}",
            o.target,
            o.runs,
            o.corpus,
            o.crashes.len()
        );
        for c in &o.crashes {
            println!(
                "  reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --debug-assertions {} {}",
                o.target,
                c.display()
            );
        }
        runs += o.runs;
        corpus += o.corpus;
        crashes += o.crashes.len();
    }
    println!(
        "fuzz total: {} targets, {runs} runs, corpus {corpus}, crashes {crashes} ({:.0} s with the build)",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    if crashes > 0 {
        bail!(
            "{crashes} fuzz crash(es): fix them and keep each input in tests/fixtures/fuzz/<target>/"
        );
    }
    Ok(())
}

fn fuzz_one(
    bin: &Path,
    target: &'static str,
    corpus: &Path,
    artifacts: &Path,
    kept: &Path,
    seconds: u64,
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(corpus);
    // Kept crash inputs are read (and so re-run) before any fuzzing; new units go to `corpus`.
    if kept.is_dir() {
        cmd.arg(kept);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let runs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // libFuzzer names each input it kept for a crash, leak, timeout or OOM (a kept crash that
    // still crashes is written again under the same name, so the folder alone cannot tell).
    let crashes: Vec<PathBuf> = log
        .lines()
        .filter_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| PathBuf::from(p.trim()))
        })
        .collect();
    if !out.status.success() {
        // The panic message and libFuzzer's verdict, not the sanitizer's 40-frame stack.
        let lines: Vec<&str> = log.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if l.contains("panicked at") || l.contains("ERROR:") || l.starts_with("SUMMARY:") {
                eprintln!("{target}: {l}");
                if l.contains("panicked at")
                    && let Some(msg) = lines.get(i + 1)
                {
                    eprintln!("{target}: {msg}");
                }
            }
        }
        if crashes.is_empty() {
            bail!(
                "fuzz target {target} failed without naming an input: {}",
                out.status
            );
        }
    }
    Ok(Outcome {
        target,
        runs,
        corpus: files(corpus).len(),
        crashes,
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Text fixtures whose file name starts with one of `prefixes`, under `dir`, recursively.
fn fixtures(dir: &Path, prefixes: &[&str], out: &mut Vec<PathBuf>) {
    for p in files(dir) {
        if p.is_dir() {
            fixtures(&p, prefixes, out);
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| prefixes.iter().any(|pre| n.starts_with(pre)))
        {
            out.push(p);
        }
    }
}

/// Writes the seed inputs of `target` into its corpus (generated each run from tests/fixtures,
/// never committed as a corpus).
fn seed(root: &Path, target: &str, corpus: &Path) -> anyhow::Result<()> {
    let fx = root.join("tests/fixtures");
    let mut n = 0;
    let mut put = |bytes: &[u8]| -> anyhow::Result<()> {
        n += 1;
        fs::write(corpus.join(format!("seed-{n:03}")), bytes).context("writing a fuzz seed")
    };
    let mut found = Vec::new();
    match target {
        "unixctl_reply" => {
            fixtures(
                &fx,
                &["get-flow", "trace-", "detrace-", "dump-dps", "version"],
                &mut found,
            );
            for p in found.iter().take(40) {
                let text = fs::read_to_string(p)?;
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let reply = if name.contains("error") {
                    serde_json::json!({"id": 0, "result": null, "error": text})
                } else {
                    serde_json::json!({"id": 0, "result": text, "error": null})
                };
                put(reply.to_string().as_bytes())?;
            }
        }
        "ovsdb_messages" | "replica_updates" => {
            fixtures(&fx, &["sb-", "nb-"], &mut found);
            found.retain(|p| p.extension().is_some_and(|e| e == "json"));
            for p in &found {
                let bytes = fs::read(p)?;
                if target == "ovsdb_messages" {
                    put(&bytes)?;
                    continue;
                }
                for updates in table_updates(&bytes) {
                    put(updates.as_bytes())?;
                }
            }
        }
        "dpflow" => {
            fixtures(&fx, &["dump-flows", "get-flow"], &mut found);
            found.retain(|p| !p.to_string_lossy().contains("ofctl"));
            for p in &found {
                put(&fs::read(p)?)?;
            }
        }
        "ofrule" => {
            fixtures(&fx, &["trace-", "detrace-", "error-"], &mut found);
            for p in found.iter().take(60) {
                put(&fs::read(p)?)?;
            }
        }
        "btf" => {
            for b in btf_seeds(&fx)? {
                put(&b)?;
            }
        }
        "event" => {
            for kind in 0u8..6 {
                let mut b = vec![0u8; 128];
                b[0] = kind;
                put(&b)?;
            }
        }
        "record" => {
            put(concat!(
                r#"{"type":"header","version":1,"clock_offset_ns":0,"command":"detrace watch","ports":{"2":"p1"}}"#,
                "\n",
                r#"{"type":"flow","ufid":"268c54c6-e46b-4358-b12c-c08235f3fd11","stats":{}}"#,
                "\n"
            )
            .as_bytes())?;
            put(&fs::read(fx.join("lab/events-lab-6.12.jsonl"))?)?;
        }
        other => bail!("no seeds for fuzz target {other}"),
    }
    Ok(())
}

/// The `<table-updates>` inside a monitor reply (`result`) or an `update` notification
/// (`params[1]`), as JSON text.
fn table_updates(message: &[u8]) -> Vec<String> {
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(message) else {
        return Vec::new();
    };
    [msg.get("result"), msg.pointer("/params/1")]
        .into_iter()
        .flatten()
        .filter(|v| v.is_object())
        .map(ToString::to_string)
        .collect()
}

/// A small valid base of the members and function the probes look up; the lab module's
/// split BTF alone, and after a split point of 0 (an empty base, the module as the split).
fn btf_seeds(fx: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let split = fs::read(fx.join("btf/openvswitch-6.12.117.btf"))?;
    let at_zero = [&[0u8; 4][..], &split].concat();
    Ok(vec![tiny_btf(), split, at_zero])
}

/// A small valid BTF blob (header, types, strings) with the types the fuzz target looks up:
/// `sk_buff.len`, `sw_flow.id`, `sw_flow_key.phy.in_port` and `ovs_dp_process_packet`, so
/// that mutations start from a blob the parser accepts rather than only from a module's split
/// BTF.
fn tiny_btf() -> Vec<u8> {
    let mut strings: Vec<u8> = vec![0];
    let mut name = |s: &str| -> u32 {
        let off = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let (int, skb, len, flow, id, key, phy, in_port, phy_t, func) = (
        name("unsigned int"),
        name("sk_buff"),
        name("len"),
        name("sw_flow"),
        name("id"),
        name("sw_flow_key"),
        name("phy"),
        name("in_port"),
        name("phy_t"),
        name("ovs_dp_process_packet"),
    );
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    let mut types: Vec<u32> = Vec::new();
    // 1: INT unsigned int (size 4, 32 bits)
    types.extend([int, info(1, 0), 4, 32]);
    // 2: STRUCT sk_buff { len: 1 @ 0 }
    types.extend([skb, info(4, 1), 8, len, 1, 0]);
    // 3: STRUCT sw_flow { id: 1 @ 64 bits }
    types.extend([flow, info(4, 1), 16, id, 1, 64]);
    // 4: STRUCT phy_t { in_port: 1 @ 32 bits }
    types.extend([phy_t, info(4, 1), 8, in_port, 1, 32]);
    // 5: STRUCT sw_flow_key { phy: 4 @ 0 }
    types.extend([key, info(4, 1), 8, phy, 4, 0]);
    // 6: FUNC_PROTO void (void)
    types.extend([0, info(13, 0), 0]);
    // 7: FUNC ovs_dp_process_packet: 6 (global linkage)
    types.extend([func, info(12, 1), 6]);
    let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut out = Vec::new();
    out.extend(0xeb9f_u16.to_le_bytes());
    out.extend([1u8, 0]);
    for w in [
        24,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend(w.to_le_bytes());
    }
    out.extend(types);
    out.extend(strings);
    out
}

#[cfg(test)]
mod tiny_btf_tests {
    /// Its header matches its sections (checked once by hand: detrace's parser resolves
    /// sk_buff.len at 0, sw_flow.id at 8, sw_flow_key.phy.in_port at 4 from it).
    #[test]
    fn the_tiny_btf_is_laid_out_as_its_header_says() {
        let b = super::tiny_btf();
        let w = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
        assert_eq!(&b[..2], &0xeb9f_u16.to_le_bytes());
        let (hdr, type_len, str_off, str_len) = (w(4), w(12), w(16), w(20));
        assert_eq!(hdr + str_off + str_len, b.len());
        assert_eq!(str_off, type_len);
        assert!(b[hdr + str_off..].starts_with(b"\0unsigned int\0sk_buff\0"));
    }
}
