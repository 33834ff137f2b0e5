//! `top`: fixed-width tables of flows and OVN objects.

use std::fmt::{self, Write};

use super::human_ns;
use crate::aggregate::{Row, RowKey};

fn pct(ns: u64) -> String {
    if ns == 0 { "-".into() } else { human_ns(ns) }
}

/// A fixed-width table of rows.
pub fn table(w: &mut impl Write, title: &str, rows: &[Row]) -> fmt::Result {
    writeln!(
        w,
        "{title}\n{:>10} {:>10} {:>12} {:>8} {:>10} {:>10}  what",
        "pkts/s", "packets", "bytes", "drops", "p50", "p99"
    )?;
    for r in rows {
        write!(
            w,
            "{:>10.1} {:>10} {:>12} {:>8} {:>10} {:>10}  {}  ",
            r.pps,
            r.packets,
            r.bytes,
            r.drops,
            pct(r.latency.p50_ns),
            pct(r.latency.p99_ns),
            r.label,
        )?;
        if let RowKey::Flow(u) = &r.key {
            // The UFID's first group is enough to find it in `dpctl/dump-flows`.
            let u = u.to_string();
            write!(w, "ufid:{}", &u[..8])?;
        }
        writeln!(w)?;
    }
    Ok(())
}
