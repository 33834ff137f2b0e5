//! `cargo xtask bench --soak`: `detrace top` and `detrace watch` side by side in the lab VM under
//! churn (xtask/guest/soak.sh), and the verdict on what the guest sampled: memory bounded and
//! not growing, no fd leak, clean exits, and every packet the churn pod sent into the datapath
//! either shown by watch or counted as lost by it.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, bail};

/// What a soak must hold to pass.
pub struct Bounds {
    /// Neither process's RSS may exceed this (MiB).
    pub rss_mib: f64,
    /// RSS growth over the second half, extrapolated to an hour (MiB/h), judged when the
    /// second half spans at least [`MIN_JUDGED_SECS`].
    pub growth_mib_per_hour: f64,
}

/// Shorter second halves are too noisy for a growth rate (the allocator's own steps are
/// hundreds of KiB): reported, not judged.
pub const MIN_JUDGED_SECS: f64 = 600.0;
/// More fds at the end than after the warm-up is a leak past this slack.
const FD_SLACK: u64 = 8;

/// One sample of one process: seconds since start, RSS and peak RSS (KiB), fds, CPU ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub rss_kb: f64,
    pub hwm_kb: f64,
    pub fds: u64,
    pub ticks: u64,
}

/// soak-samples.txt: `t name rss_kb hwm_kb fds ticks` lines (and `t dpflows N`).
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 6 || f[1] != name {
                return None;
            }
            Some(Sample {
                t: f[0].parse().ok()?,
                rss_kb: f[2].parse().ok()?,
                hwm_kb: f[3].parse().ok()?,
                fds: f[4].parse().ok()?,
                ticks: f[5].parse().ok()?,
            })
        })
        .collect()
}

/// The datapath's flow counts sampled (`t dpflows N`).
pub fn dpflows(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[1] == "dpflows").then(|| f[2].parse().ok())?
        })
        .collect()
}

/// Least-squares slope of y over x (per unit of x); None under two distinct x.
pub fn slope(pts: &[(f64, f64)]) -> Option<f64> {
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (pts.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// The integer just before the last occurrence of `phrase` in `text` ("12 LOST" -> 12).
pub fn number_before(text: &str, phrase: &str) -> Option<u64> {
    let at = text.rfind(phrase)?;
    let head = text[..at].trim_end();
    let digits: String = head
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// The integer just after the last occurrence of `phrase` ("events: 12 sent" -> 12).
pub fn number_after(text: &str, phrase: &str) -> Option<u64> {
    let at = text.rfind(phrase)? + phrase.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One process's memory over the run.
pub struct Memory {
    pub start_mib: f64,
    pub max_mib: f64,
    pub end_mib: f64,
    pub hwm_mib: f64,
    /// Second half's linear fit, extrapolated to an hour.
    pub growth_mib_per_hour: Option<f64>,
    pub second_half_secs: f64,
    pub fds: (u64, u64, u64),
    pub cpu_percent: f64,
}

/// `warmup`: seconds after which the start is taken; `secs`: the run's length.
pub fn memory(s: &[Sample], warmup: f64, secs: f64, hz: f64) -> Option<Memory> {
    let mib = |kb: f64| kb / 1024.0;
    let start = s.iter().find(|x| x.t >= warmup).or(s.first())?;
    let last = s.last()?;
    let half: Vec<(f64, f64)> = s
        .iter()
        .filter(|x| x.t >= secs / 2.0)
        .map(|x| (x.t, mib(x.rss_kb)))
        .collect();
    let span = half.last().map_or(0.0, |l| l.0) - half.first().map_or(0.0, |f| f.0);
    let first = s.first()?;
    Some(Memory {
        start_mib: mib(start.rss_kb),
        max_mib: mib(s.iter().map(|x| x.rss_kb).fold(0.0, f64::max)),
        end_mib: mib(last.rss_kb),
        hwm_mib: mib(s.iter().map(|x| x.hwm_kb).fold(0.0, f64::max)),
        growth_mib_per_hour: slope(&half).map(|k| k * 3600.0),
        second_half_secs: span,
        fds: (start.fds, s.iter().map(|x| x.fds).max()?, last.fds),
        cpu_percent: 100.0 * (last.ticks - first.ticks) as f64 / hz / (last.t - first.t).max(1.0),
    })
}

/// Reads the kept results, prints the summary, fails on any bound broken.
pub fn report(dir: &Path, secs: u64, bounds: &Bounds) -> anyhow::Result<()> {
    let read = |f: &str| {
        fs::read_to_string(dir.join(f)).with_context(|| format!("{f} in {}", dir.display()))
    };
    let text = read("soak-samples.txt")?;
    let (mut out, mut fails) = (String::new(), Vec::new());
    let secs = secs as f64;
    let warmup = (secs / 6.0).min(120.0);
    writeln!(
        out,
        "soak: {secs:.0} s, samples every ~10 s, start = first sample after {warmup:.0} s"
    )?;
    for name in ["top", "watch"] {
        let Some(m) = memory(&samples(&text, name), warmup, secs, 100.0) else {
            fails.push(format!("{name}: no samples"));
            continue;
        };
        judge(&mut out, &mut fails, name, &m, bounds)?;
        let rc = read(&format!("soak-{name}.rc")).unwrap_or_default();
        if rc.trim() != "0" {
            fails.push(format!("{name} exited with {:?}", rc.trim()));
        }
    }
    let flows = dpflows(&text);
    writeln!(
        out,
        "datapath flows sampled: max {}, mean {:.0}",
        flows.iter().max().unwrap_or(&0),
        flows.iter().sum::<u64>() as f64 / flows.len().max(1) as f64
    )?;
    removals(
        &mut out,
        &mut fails,
        &read("soak-top.err").unwrap_or_default(),
        &read("soak-watch.err").unwrap_or_default(),
        secs,
    )?;
    exactness(&mut out, &mut fails, dir)?;
    closing(&mut out, dir)?;
    print!("{out}");
    if fails.is_empty() {
        println!(
            "soak: PASS (RSS under {:.0} MiB, growth under {:.0} MiB/h when judged, no fd leak, nothing lost silently)",
            bounds.rss_mib, bounds.growth_mib_per_hour
        );
        return Ok(());
    }
    for f in &fails {
        println!("soak: FAIL {f}");
    }
    bail!("the soak failed: {}", fails.join("; "))
}

/// Each command's closing lines, its reconnections, and the control plane's churn.
fn closing(out: &mut String, dir: &Path) -> std::fmt::Result {
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    for name in ["top", "watch"] {
        let err = read(&format!("soak-{name}.err"));
        writeln!(out, "{name}'s closing lines:")?;
        for l in err
            .lines()
            .filter(|l| l.starts_with("detrace:"))
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            writeln!(out, "  {l}")?;
        }
        let n = |w: &str| err.lines().filter(|l| l.contains(w)).count();
        writeln!(
            out,
            "  (on stderr: {} lines about a lost connection, {} about a reconnection)",
            n("connection lost"),
            n("reconnected")
        )?;
    }
    let ev = read("soak-events.txt");
    let n = |w: &str| {
        ev.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(w))
            .count()
    };
    writeln!(
        out,
        "control plane churn: {} ACL swaps, {} LB add/del, {} ovs-vswitchd restarts",
        n("acl"),
        n("lb"),
        n("ovs-vswitchd-restart")
    )
}

/// The kernel's per-UFID maps (REMOVED_STATS: top's last counts of removed flows, 65,536
/// UFIDs; EXEC_STATS: packets executed after their upcall, 16,384; FLOW_STATS with per-packet
/// events, 16,384) keep only what is not retired yet: a flow gone (or idle) for
/// `--retire-after` (60 s) leaves them. Without retirement this churn would fill them within
/// hours; with it they hold about a minute and a bit of it. A soak in which flows went and
/// none retired fails: the maps would fill.
fn removals(
    out: &mut String,
    fails: &mut Vec<String>,
    top_err: &str,
    watch_err: &str,
    secs: f64,
) -> std::fmt::Result {
    let per_hour = |n: u64| n as f64 * 3600.0 / secs.max(1.0);
    // What arrives in 70 s (--retire-after, and the ~10 s a flow idles before it goes).
    let held = |n: u64| per_hour(n) * 70.0 / 3600.0;
    let long = secs >= 600.0;
    for (name, err, what, maps) in [
        (
            "top",
            top_err,
            "flows removed",
            "REMOVED_STATS (65,536), EXEC_STATS (16,384)",
        ),
        ("watch", watch_err, "flows explained", "FLOW_STATS (16,384)"),
    ] {
        let (Some(n), retired) = (
            number_before(err, what),
            number_before(err, "flows retired").unwrap_or(0),
        ) else {
            continue;
        };
        writeln!(
            out,
            "{name}: {n} {what} ({:.0}/h), {retired} retired: {maps} hold ~{:.0} UFIDs of this churn",
            per_hour(n),
            held(n)
        )?;
        if long && n > 0 && retired == 0 {
            fails.push(format!(
                "{name}: {n} {what} and none retired: its maps would fill"
            ));
        }
    }
    Ok(())
}

fn judge(
    out: &mut String,
    fails: &mut Vec<String>,
    name: &str,
    m: &Memory,
    b: &Bounds,
) -> std::fmt::Result {
    let growth = m
        .growth_mib_per_hour
        .map_or("?".into(), |g| format!("{g:+.1}"));
    writeln!(
        out,
        "{name:<5} RSS MiB: start {:.1}  max {:.1}  end {:.1}  (VmHWM {:.1}); second half ({:.0} s) {growth} MiB/h; fds start/max/end {}/{}/{}; CPU {:.1}% of one guest CPU",
        m.start_mib,
        m.max_mib,
        m.end_mib,
        m.hwm_mib,
        m.second_half_secs,
        m.fds.0,
        m.fds.1,
        m.fds.2,
        m.cpu_percent
    )?;
    if m.max_mib.max(m.hwm_mib) > b.rss_mib {
        fails.push(format!(
            "{name}: RSS reached {:.1} MiB, over the bound {:.0} MiB",
            m.max_mib.max(m.hwm_mib),
            b.rss_mib
        ));
    }
    match m.growth_mib_per_hour {
        Some(g) if m.second_half_secs >= MIN_JUDGED_SECS && g > b.growth_mib_per_hour => {
            fails.push(format!(
                "{name}: RSS grows {g:.1} MiB/h over the second half (bound {:.0})",
                b.growth_mib_per_hour
            ));
        }
        _ if m.second_half_secs < MIN_JUDGED_SECS => {
            writeln!(
                out,
                "      (second half under {MIN_JUDGED_SECS:.0} s: growth reported, not judged)"
            )?;
        }
        _ => {}
    }
    if m.fds.2 > m.fds.0 + FD_SLACK {
        fails.push(format!("{name}: fds went from {} to {}", m.fds.0, m.fds.2));
    }
    Ok(())
}

/// The churn pod's traffic as watch showed it (soak-churn-seen.jsonl), against its veth's tx
/// count and churn.py's log of conversations (soak-conversations.txt).
#[derive(Debug, Default, PartialEq)]
pub struct Churn {
    /// Packets shown with their fate (output or drop).
    pub fates: u64,
    /// Packets shown ending in an upcall (a miss: ovs-vswitchd executes the packet again, which
    /// watch follows as the same packet when the flow installed for it is seen, else not).
    pub upcalls: u64,
    /// Conversations to the server that never went up to ovs-vswitchd (no upcall shown): their
    /// packets sent, and the fates shown for them (must be equal).
    pub fast_conversations: u64,
    pub fast_sent: u64,
    pub fast_shown: u64,
}

/// `conversations`: "sport dst dport packets" lines; `seen`: one JSON object per packet shown.
pub fn churn(conversations: &str, seen: &str, server: &str) -> Churn {
    type Key = (u64, String, u64);
    let mut c = Churn::default();
    let mut shown: std::collections::HashMap<Key, (u64, u64)> = Default::default();
    for p in seen
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let upcall = p["verdict"] == "upcall";
        if upcall {
            c.upcalls += 1;
        } else {
            c.fates += 1;
        }
        if p["proto"] == 17 {
            let key = (
                p["sport"].as_u64().unwrap_or(0),
                p["dst"].as_str().unwrap_or("").to_string(),
                p["dport"].as_u64().unwrap_or(0),
            );
            let e = shown.entry(key).or_default();
            if upcall { e.1 += 1 } else { e.0 += 1 }
        }
    }
    // Packets sent per (sport, dport) to the server: an ephemeral port can come back for the
    // same destination port, making two conversations of one 5-tuple. Packets to the VIP
    // while lb-soak is absent never leave the pod (no ARP answer): not counted.
    let mut sent: std::collections::HashMap<(u64, u64), u64> = Default::default();
    for l in conversations.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let (Some(sport), Some(dport), Some(n), true) = (
            f.first().and_then(|v| v.parse().ok()),
            f.get(2).and_then(|v| v.parse().ok()),
            f.get(3).and_then(|v| v.parse::<u64>().ok()),
            f.get(1) == Some(&server),
        ) {
            *sent.entry((sport, dport)).or_default() += n;
        }
    }
    for ((sport, dport), n) in sent {
        let (fates, upcalls) = shown
            .get(&(sport, server.to_string(), dport))
            .copied()
            .unwrap_or_default();
        if upcalls == 0 {
            c.fast_conversations += 1;
            c.fast_sent += n;
            c.fast_shown += fates;
        }
    }
    c
}

/// The churn pod's veth's tx packets over the run, from soak.sh's `tx BEFORE AFTER` line.
fn tx_sent(log: &str) -> Option<u64> {
    let tx: Vec<u64> = log
        .lines()
        .find_map(|l| l.strip_prefix("tx "))?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match tx[..] {
        [before, after] => after.checked_sub(before),
        _ => None,
    }
}

/// Watch against the churn pod: every packet it sent into the datapath (its veth's tx count)
/// shown with its fate or as an upcall, or counted lost by watch; no fate shown twice; on the
/// fast path (conversations with no upcall) exactly as many fates shown as packets sent; and
/// watch printed as many packets as it says it assembled.
fn exactness(out: &mut String, fails: &mut Vec<String>, dir: &Path) -> anyhow::Result<()> {
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (log, err) = (read("soak-churn.txt"), read("soak-watch.err"));
    let counts: serde_json::Value =
        serde_json::from_str(&read("soak-watch.json")).unwrap_or_default();
    let Some(sent) = tx_sent(&log) else {
        fails.push("no tx counts from the churn pod".into());
        return Ok(());
    };
    let get = |k: &str| {
        counts
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let (shown, malformed) = (get("packets"), get("malformed"));
    let lost = number_before(&err, "LOST").unwrap_or(0)
        + number_before(&err, "not sent (over --rate-limit)").unwrap_or(0);
    let assembled = number_before(&err, "packets assembled");
    let c = churn(
        &read("soak-conversations.txt"),
        &read("soak-churn-seen.jsonl"),
        "10.244.2.5",
    );
    writeln!(
        out,
        "watch: {shown} packets shown, {} assembled, {} events sent, {lost} lost or over --rate-limit",
        assembled.map_or("?".into(), |a| a.to_string()),
        number_after(&err, "events: ").map_or("?".into(), |e| e.to_string()),
    )?;
    writeln!(
        out,
        "churn pod: {sent} packets into the datapath (its veth's tx count; {}); watch showed {} of them with their fate, {} upcalls",
        log.lines()
            .find(|l| l.starts_with("sent"))
            .unwrap_or("churn.py said nothing"),
        c.fates,
        c.upcalls
    )?;
    writeln!(
        out,
        "fast path: {} conversations to the server with no upcall, {} packets sent, {} shown",
        c.fast_conversations, c.fast_sent, c.fast_shown
    )?;
    if c.fates > sent {
        fails.push(format!(
            "watch showed {} fates for the churn pod's {sent} packets",
            c.fates
        ));
    }
    if c.fates + c.upcalls + lost < sent {
        fails.push(format!(
            "{} of the churn pod's {sent} packets missing from watch, {lost} counted lost: lost silently",
            sent - c.fates - c.upcalls
        ));
    }
    if c.fast_shown != c.fast_sent && c.fast_shown + lost < c.fast_sent
        || c.fast_shown > c.fast_sent
    {
        fails.push(format!(
            "fast path: {} packets sent, {} shown, {lost} counted lost",
            c.fast_sent, c.fast_shown
        ));
    }
    if malformed > 0 {
        fails.push(format!("watch printed {malformed} lines that are not JSON"));
    }
    if assembled != Some(shown) {
        fails.push(format!(
            "watch printed {shown} packets but says it assembled {assembled:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 2.0 * f64::from(i) + 1.0))
            .collect();
        assert!((slope(&line).unwrap_or_default() - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        let flat = [
            (0.0, 1.0),
            (1.0, 3.0),
            (2.0, 1.0),
            (3.0, 3.0),
            (4.0, 1.0),
            (5.0, 3.0),
        ];
        assert!(slope(&flat).unwrap_or(9.0).abs() < 0.3);
    }

    #[test]
    fn closing_line_numbers() {
        let err = "detrace: kernel: 10 passes; events: 1234 sent, 56 LOST (ring buffer full: raise --ring-size)\n\
                   detrace: 1178 packets assembled (0 unfinished, 0 evicted, 2 ends without passes); 40 flows explained";
        assert_eq!(number_before(err, "LOST"), Some(56));
        assert_eq!(number_before(err, "sent,"), Some(1234));
        assert_eq!(number_after(err, "events: "), Some(1234));
        assert_eq!(number_before(err, "packets assembled"), Some(1178));
        assert_eq!(number_before(err, "flows explained"), Some(40));
        assert_eq!(number_before(err, "not sent (over --rate-limit)"), None);
    }

    #[test]
    fn churn_fates_upcalls_and_fast_path() {
        let conv = "100 10.244.2.5 6000 2\n101 10.244.2.5 6001 3\n102 10.244.1.44 7000 4\n";
        let p = |sport: u32, dport: u32, v: &str| {
            format!(
                r#"{{"verdict":"{v}","proto":17,"sport":{sport},"dport":{dport},"dst":"10.244.2.5"}}"#
            )
        };
        let seen = [
            p(100, 6000, "output"),
            p(100, 6000, "output"),
            p(101, 6001, "upcall"),
            p(101, 6001, "output"),
            p(101, 6001, "drop"),
        ]
        .join("\n")
            + "\n{\"verdict\":\"output\",\"proto\":0}\n";
        let c = churn(conv, &seen, "10.244.2.5");
        // 6001 went up to ovs-vswitchd: not on the fast path; the VIP's is not counted.
        assert_eq!(
            c,
            Churn {
                fates: 5,
                upcalls: 1,
                fast_conversations: 1,
                fast_sent: 2,
                fast_shown: 2
            }
        );
        let c = churn("100 10.244.2.5 6000 3\n", &seen, "10.244.2.5");
        assert_eq!((c.fast_sent, c.fast_shown), (3, 2));
        // One 5-tuple, two conversations (the ephemeral port came back): counted once.
        let c = churn(
            "100 10.244.2.5 6000 1\n100 10.244.2.5 6000 1\n",
            &seen,
            "10.244.2.5",
        );
        assert_eq!((c.fast_conversations, c.fast_sent, c.fast_shown), (1, 2, 2));
    }

    #[test]
    fn tx_count() {
        assert_eq!(tx_sent("sent 3 conversations 1\ntx 10 25\n"), Some(15));
        assert_eq!(tx_sent("tx 10\n"), None);
        assert_eq!(tx_sent(""), None);
    }

    #[test]
    fn bench_flags_parse() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: crate::bench::BenchArgs,
        }
        // The soak's options have defaults and do not make a plain bench a soak.
        assert!(Cli::try_parse_from(["bench"]).is_ok());
        assert!(Cli::try_parse_from(["bench", "--host-only"]).is_ok());
        assert!(Cli::try_parse_from(["bench", "--soak", "--duration", "180"]).is_ok());
        assert!(Cli::try_parse_from(["bench", "--duration", "180"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--soak", "--vm-only"]).is_err());
    }

    #[test]
    fn memory_from_samples() {
        let text = "0 top 1000 1000 10 0\n10 watch 2048 2048 12 5\n60 top 2048 3072 11 100\n\
                    120 top 4096 4096 11 200\n0 dpflows 7\n120 dpflows 9\n";
        let s = samples(text, "top");
        assert_eq!(s.len(), 3);
        let m = memory(&s, 50.0, 120.0, 100.0).expect("memory");
        assert_eq!(
            (m.start_mib, m.max_mib, m.end_mib, m.hwm_mib),
            (2.0, 4.0, 4.0, 4.0)
        );
        // Second half (t >= 60): 2 MiB -> 4 MiB in 60 s = 120 MiB/h.
        assert!((m.growth_mib_per_hour.unwrap_or_default() - 120.0).abs() < 1e-6);
        assert_eq!(m.fds, (11, 11, 11));
        // 200 ticks at 100 Hz over 120 s.
        assert!((m.cpu_percent - 200.0 / 100.0 / 120.0 * 100.0).abs() < 1e-9);
        assert_eq!(dpflows(text), vec![7, 9]);
    }
}
