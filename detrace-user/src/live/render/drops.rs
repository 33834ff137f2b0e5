//! `drops`: groups by the object responsible.

use std::fmt::{self, Write};

use crate::aggregate::DropGroup;

pub fn text(w: &mut impl Write, groups: &[DropGroup]) -> fmt::Result {
    if groups.is_empty() {
        return writeln!(w, "no drops");
    }
    for g in groups {
        let c = &g.culprit;
        write!(w, "{:>8} drops  ", g.drops)?;
        if let Some(p) = &c.platform {
            write!(w, "{p} -> ")?;
        }
        write!(w, "{} {} ({})", c.kind, c.name, c.id)?;
        match &c.datapath {
            Some(dp) => writeln!(w, " on {dp}")?,
            None => writeln!(w)?,
        }
        if g.after_upcall > 0 {
            writeln!(
                w,
                "          {} in the kernel, {} after upcall (executed by ovs-vswitchd)",
                g.in_kernel, g.after_upcall
            )?;
        }
        writeln!(w, "          {}", c.detail)?;
        write!(w, "          reasons: ")?;
        for (i, (k, v)) in g.reasons.iter().enumerate() {
            write!(w, "{}{k} x{v}", if i > 0 { ", " } else { "" })?;
        }
        write!(w, "\n          flows: ")?;
        for (i, u) in g.flows.iter().enumerate() {
            write!(w, "{}ufid:{u}", if i > 0 { " " } else { "" })?;
        }
        if g.flows_not_listed > 0 {
            write!(w, " (and {} more, gone)", g.flows_not_listed)?;
        }
        writeln!(w)?;
        if let Some(p) = &g.sample {
            writeln!(w, "          sample: {p}")?;
        }
        for n in &g.notes {
            writeln!(w, "          note: {n}")?;
        }
    }
    Ok(())
}
