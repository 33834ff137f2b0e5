//! `cargo xtask sizes`: the files and functions past the size the team keeps code to (a file read
//! in one sitting, a function seen on one screen), and module import cycles. A report for people,
//! not a CI gate: `--check` makes it fail when it finds something.

mod imports;
mod scan;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::util::workspace_root;

/// Source roots scanned, each a crate's `src` (or the crate itself).
const ROOTS: &[&str] = &[
    "detrace-user/src",
    "detrace-common/src",
    "detrace-ebpf/src",
    "xtask/src",
];

#[derive(clap::Args)]
pub struct SizesArgs {
    /// Files longer than this many lines are listed.
    #[arg(long, default_value_t = 500)]
    max_file: usize,
    /// Functions longer than this many lines (signature to closing brace) are listed.
    #[arg(long, default_value_t = 80)]
    max_fn: usize,
    /// Exit non-zero when anything outside test code is listed.
    #[arg(long)]
    check: bool,
}

/// One source file, blanked (see scan::blank), with what is test code in it.
struct Source {
    rel: PathBuf,
    code: String,
    lines: usize,
    /// Line ranges of `#[cfg(test)] mod` blocks (the whole file for a tests.rs).
    tests: Vec<(usize, usize)>,
}

impl Source {
    fn in_tests(&self, line: usize) -> bool {
        self.tests.iter().any(|&(a, b)| (a..=b).contains(&line))
    }

    /// The code with its test modules blanked: tests may import anything, that is no cycle.
    fn without_tests(&self) -> String {
        self.code
            .split_inclusive('\n')
            .enumerate()
            .map(|(i, l)| if self.in_tests(i + 1) { "\n" } else { l })
            .collect()
    }

    fn test_lines(&self) -> usize {
        self.tests.iter().map(|&(a, b)| b - a + 1).sum()
    }
}

pub fn run(args: SizesArgs) -> anyhow::Result<()> {
    let root = workspace_root();
    let mut findings = 0;
    for r in ROOTS {
        let sources = load(&root, Path::new(r))?;
        findings += report_files(&sources, args.max_file);
        findings += report_fns(&sources, args.max_fn);
        findings += report_cycles(r, &sources);
    }
    if args.check && findings > 0 {
        bail!("{findings} finding(s) over the limits");
    }
    Ok(())
}

fn load(root: &Path, dir: &Path) -> anyhow::Result<Vec<Source>> {
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let code = scan::blank(&text);
        let lines = text.lines().count();
        let rel = f.strip_prefix(root).unwrap_or(&f).to_path_buf();
        let whole_file_tests = rel.file_name().is_some_and(|n| n == "tests.rs")
            || rel.components().any(|c| c.as_os_str() == "tests");
        let tests = if whole_file_tests {
            vec![(1, lines.max(1))]
        } else {
            scan::test_modules(&code)
        };
        out.push(Source {
            rel,
            code,
            lines,
            tests,
        });
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

fn report_files(sources: &[Source], max: usize) -> usize {
    let mut n = 0;
    for s in sources.iter().filter(|s| s.lines > max) {
        let tests = s.test_lines();
        let code = s.lines - tests;
        let verdict = if code > max {
            "over"
        } else {
            "over only with its tests"
        };
        println!(
            "file  {:>5} lines  {} ({code} without tests: {verdict})",
            s.lines,
            s.rel.display()
        );
        if code > max {
            n += 1;
        }
    }
    n
}

fn report_fns(sources: &[Source], max: usize) -> usize {
    let mut n = 0;
    for s in sources {
        for f in scan::functions(&s.code).iter().filter(|f| f.lines() > max) {
            let test = s.in_tests(f.first);
            println!(
                "fn    {:>5} lines  {}:{} {}{}",
                f.lines(),
                s.rel.display(),
                f.first,
                f.name,
                if test { "  (test)" } else { "" }
            );
            if !test {
                n += 1;
            }
        }
    }
    n
}

fn report_cycles(root: &str, sources: &[Source]) -> usize {
    let has_lib = sources.iter().any(|s| s.rel.ends_with("src/lib.rs"));
    let mut modules = imports::Modules::new();
    for s in sources {
        if let Some(m) = module_path(root, &s.rel, has_lib) {
            modules.insert(m, s.without_tests());
        }
    }
    let edges = imports::edges(&modules);
    let mut n = 0;
    for group in imports::cycles(&edges) {
        let names: Vec<String> = group
            .iter()
            .map(|m| format!("{root}:{}", display(m)))
            .collect();
        if imports::parent_child_only(&group, &edges) {
            println!("cycle (parent/child only) {}", names.join(" <-> "));
        } else {
            println!("cycle {}", names.join(" <-> "));
            n += 1;
        }
    }
    n
}

fn display(m: &str) -> &str {
    if m.is_empty() { "crate" } else { m }
}

/// `a/b.rs` and `a/b/mod.rs` are `a::b`; lib.rs (or main.rs without a lib) is the root. A
/// binary's main.rs next to a lib.rs is its own crate: left out.
fn module_path(root: &str, rel: &Path, has_lib: bool) -> Option<String> {
    let inner = rel.strip_prefix(root).ok()?;
    let mut parts: Vec<String> = inner
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.last().map(String::as_str) {
        Some("lib") if parts.len() == 1 => parts.clear(),
        Some("main") if parts.len() == 1 && !has_lib => parts.clear(),
        Some("main") if parts.len() == 1 => return None,
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts.join("::"))
}
