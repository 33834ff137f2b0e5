//! `detrace completions SHELL` and `detrace man`: generated at run time from the same clap
//! definition as `--help`, so they always match the binary at hand. The binary carries them
//! (as rg --generate, rustup completions and kubectl completion do) rather than a build step:
//! a static binary or a container image has no source tree to generate them from, and a
//! packager runs the binary it ships.

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// Writes the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "detrace", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}

/// Writes the man page on stdout, or one page per command (detrace.1, detrace-explain.1, ...)
/// into `out_dir`.
pub fn man(out_dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match out_dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            std::io::stdout().write_all(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;

    /// clap's own consistency checks (duplicate short options, bad defaults...), which it
    /// otherwise runs only when a command line reaches the broken argument.
    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_cover_the_options() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "detrace",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        for opt in ["--ca-cert", "--color", "--sb-db", "explain", "completions"] {
            assert!(bash.contains(opt), "bash completion lacks {opt}");
        }
        let dir = std::env::temp_dir().join(format!("detrace-man-{}", std::process::id()));
        man(Some(&dir)).unwrap();
        let top = std::fs::read_to_string(dir.join("detrace.1")).unwrap();
        assert!(top.contains(".TH detrace 1"), "{top}");
        let explain = std::fs::read_to_string(dir.join("detrace-explain.1")).unwrap();
        assert!(explain.contains("ca\\-cert"), "{explain}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
