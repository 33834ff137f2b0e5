//! `--pod` and `--namespace`: the addresses of a pod, or of every pod of a namespace, read
//! from their logical switch ports and kept current while pods come and go; the kernel's
//! event filter holds them (FILTER_ADDRS).

use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    ovn::platform::{self, PlatformKind},
    ovsdb::Replica,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Pod { namespace: String, name: String },
    Namespace(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pod { namespace, name } => write!(f, "--pod {namespace}/{name}"),
            Self::Namespace(ns) => write!(f, "--namespace {ns}"),
        }
    }
}

impl Selector {
    /// The addresses of the selected pods' logical switch ports.
    pub fn resolve(&self, nb: &Replica) -> BTreeSet<IpAddr> {
        let mut out = BTreeSet::new();
        for (uuid, row) in nb.rows("Logical_Switch_Port") {
            let Some(p) = platform::identify(nb, "Logical_Switch_Port", *uuid, row) else {
                continue;
            };
            if p.kind != PlatformKind::Pod {
                continue;
            }
            let ns = p.namespace.as_deref().unwrap_or_default();
            let hit = match self {
                Self::Pod { namespace, name } => ns == namespace && p.name == *name,
                Self::Namespace(n) => ns == n,
            };
            if hit {
                out.extend(platform::port_addresses(row));
            }
        }
        out
    }
}

/// A selector and the addresses the kernel filters on now.
pub struct Selection {
    pub selector: Selector,
    pub current: BTreeSet<IpAddr>,
}

impl Selection {
    pub fn new(selector: Selector, nb: &Replica) -> Self {
        let current = selector.resolve(nb);
        Self { selector, current }
    }

    /// The new address set when it changed since the last call (pods came or went).
    pub fn refresh(&mut self, nb: &Replica) -> Option<&BTreeSet<IpAddr>> {
        let now = self.selector.resolve(nb);
        if now == self.current {
            return None;
        }
        self.current = now;
        Some(&self.current)
    }

    /// `--pod demo/web-0: 10.244.1.5` for stderr.
    pub fn describe(&self) -> String {
        if self.current.is_empty() {
            return format!(
                "{}: no such pod in the Northbound database (yet): nothing matches until one appears",
                self.selector
            );
        }
        let addrs: Vec<String> = self.current.iter().map(IpAddr::to_string).collect();
        format!("{}: {}", self.selector, addrs.join(" "))
    }
}
