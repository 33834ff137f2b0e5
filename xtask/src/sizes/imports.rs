//! Module import cycles: an edge from module A to module B when A's code names a path into B
//! (`crate::b::..`, `super::..`, `self::b::..`, or a child module `b::..`), then every group of
//! modules that reach each other (Tarjan's strongly connected components).

use std::collections::{BTreeMap, BTreeSet};

/// One crate: module path ("" for the root, "lab::image") -> blanked source.
pub type Modules = BTreeMap<String, String>;

pub fn edges(modules: &Modules) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (m, code) in modules {
        let mut to = BTreeSet::new();
        for path in paths(code) {
            if let Some(t) = resolve(modules, m, &path).filter(|t| t != m) {
                to.insert(t);
            }
        }
        out.insert(m.clone(), to);
    }
    out
}

/// Every `a::b::c` path in the code (and each member of a `a::{b, c::d}` group), as segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let is_id = |c: char| c.is_alphanumeric() || c == '_';
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let starts =
            is_id(b[i] as char) && (i == 0 || !(is_id(b[i - 1] as char) || b[i - 1] == b':'));
        if !starts {
            i += 1;
            continue;
        }
        let (segs, end) = segments(code, i);
        if code[end..].starts_with("::{") {
            let close = matching_brace(code, end + 2);
            for member in expand(&code[end + 3..close]) {
                let mut full = segs.clone();
                full.extend(member);
                out.push(full);
            }
            i = close + 1;
            continue;
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = end.max(i + 1);
    }
    out
}

/// The members of a use group (`a, b::c, d::{e, f}`), nested groups expanded.
fn expand(group: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let (mut depth, mut from) = (0, 0);
    let mut members = Vec::new();
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(&group[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    members.push(&group[from..]);
    for m in members.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
        match m.find("::{") {
            Some(at) => {
                let head: Vec<String> = m[..at].split("::").map(|s| s.trim().to_string()).collect();
                let close = matching_brace(m, at + 2);
                for tail in expand(&m[at + 3..close]) {
                    let mut full = head.clone();
                    full.extend(tail);
                    out.push(full);
                }
            }
            None => out.push(m.split("::").map(|s| s.trim().to_string()).collect()),
        }
    }
    out
}

/// The offset of the `}` closing the `{` at `open` (the end of `code` when unbalanced).
fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

fn segments(code: &str, mut i: usize) -> (Vec<String>, usize) {
    let is_id = |c: char| c.is_alphanumeric() || c == '_';
    let mut segs = Vec::new();
    loop {
        let len = code[i..]
            .find(|c: char| !is_id(c))
            .unwrap_or(code.len() - i);
        segs.push(code[i..i + len].to_string());
        i += len;
        let rest = &code[i..];
        if rest.starts_with("::") && rest[2..].starts_with(|c: char| is_id(c)) {
            i += 2;
        } else {
            return (segs, i);
        }
    }
}

/// The module a path lands in, as deep as known modules go; None for other crates and std.
fn resolve(modules: &Modules, from: &str, path: &[String]) -> Option<String> {
    let mut base: Vec<String> = split(from);
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A bare path names a child module of `from` or nothing of ours.
            let mut child = base.clone();
            child.push(first.to_string());
            if !modules.contains_key(&child.join("::")) {
                return None;
            }
        }
        None => return None,
    }
    let mut at = base.clone();
    let mut found = base.join("::");
    for s in rest {
        at.push(s.clone());
        let m = at.join("::");
        if !modules.contains_key(&m) {
            break;
        }
        found = m;
    }
    modules.contains_key(&found).then_some(found)
}

fn split(m: &str) -> Vec<String> {
    if m.is_empty() {
        Vec::new()
    } else {
        m.split("::").map(str::to_string).collect()
    }
}

/// Groups of two or more modules that import each other, directly or around a loop.
pub fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(lw));
                } else if self.stack.contains(&w.as_str()) {
                    let iw = self.index[w.as_str()];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// True when every module of the group is an ancestor or descendant of the others' common
/// parent chain, i.e. the loop is a parent module and the children it holds (`super::` items
/// used by a child while the parent calls into it), as opposed to siblings importing each other.
pub fn parent_child_only(group: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> bool {
    let related = |a: &str, b: &str| {
        let (a, b) = (format!("{a}::"), format!("{b}::"));
        a.starts_with(&b) || b.starts_with(&a) || a == "::" || b == "::"
    };
    group.iter().all(|a| {
        edges[a]
            .iter()
            .filter(|b| group.contains(b))
            .all(|b| related(a, b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_sibling_cycle() {
        let mut m = Modules::new();
        m.insert(String::new(), "mod a; mod b;".into());
        m.insert("a".into(), "use crate::b::X;".into());
        m.insert("b".into(), "use super::{c, d::{e}, a::{Y, Z}};".into());
        m.insert("c".into(), "use crate::{d::{X, Y}};".into());
        m.insert("d".into(), String::new());
        let e = edges(&m);
        assert_eq!(cycles(&e), vec![vec!["a".to_string(), "b".to_string()]]);
        assert!(!parent_child_only(&cycles(&e)[0], &e));
    }
}
