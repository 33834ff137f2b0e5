//! Colour and terminal control codes: `--color auto|always|never`, NO_COLOR and CLICOLOR_FORCE.
//!
//! One choice for the process, made in `main` from the command line and read where escape
//! codes are written (the log's colours, `top` redrawing the screen), as anstream and
//! owo-colors keep theirs: threading it through every sink would change every signature for
//! one bit that never changes after start.

use std::sync::OnceLock;

use clap::ValueEnum;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour and redraw on a terminal; NO_COLOR turns colour off, CLICOLOR_FORCE on.
    #[default]
    Auto,
    /// Always write escape codes, even into a pipe or a file.
    Always,
    /// Never write escape codes: no colour, and `top` prints each table after the last
    /// instead of redrawing the screen.
    Never,
}

/// The environment variables that matter, read once (a seam for tests).
#[derive(Clone, Debug, Default)]
pub struct ColorEnv {
    /// NO_COLOR set and not empty (no-color.org).
    pub no_color: bool,
    /// CLICOLOR_FORCE set, not empty and not "0" (bixense.com/clicolors).
    pub force: bool,
}

impl ColorEnv {
    pub fn from_env() -> Self {
        let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
        Self {
            no_color: set("NO_COLOR"),
            force: set("CLICOLOR_FORCE")
                && std::env::var_os("CLICOLOR_FORCE").is_some_and(|s| s != "0"),
        }
    }
}

impl ColorChoice {
    /// Whether to colour a stream that is (or is not) a terminal.
    pub fn colour(self, env: &ColorEnv, tty: bool) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto if env.no_color => false,
            Self::Auto => env.force || tty,
        }
    }

    /// Whether to write terminal control codes (cursor moves, clearing) on a stream. NO_COLOR
    /// is about colour only, so it leaves these alone; `--color never` does not.
    pub fn control(self, tty: bool) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => tty,
        }
    }

    /// For clap's own help and errors.
    pub fn clap(self) -> clap::ColorChoice {
        match self {
            Self::Auto => clap::ColorChoice::Auto,
            Self::Always => clap::ColorChoice::Always,
            Self::Never => clap::ColorChoice::Never,
        }
    }

    /// `--color` as given on a command line, looked up before clap parses it (so that clap's
    /// own errors follow it too). The last one wins, as clap would have it.
    pub fn from_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> Self {
        let mut choice = Self::Auto;
        let mut next_is_value = false;
        for a in args {
            let Some(a) = a.to_str() else { continue };
            if a == "--" {
                break;
            }
            let value = if next_is_value {
                Some(a)
            } else {
                a.strip_prefix("--color=")
            };
            next_is_value = a == "--color";
            if let Some(v) = value.and_then(|v| Self::from_str(v, true).ok()) {
                choice = v;
            }
        }
        choice
    }
}

static CHOICE: OnceLock<ColorChoice> = OnceLock::new();

/// Records the process's choice (once, from `main`; later calls are ignored).
pub fn init(choice: ColorChoice) {
    let _ = CHOICE.set(choice);
}

/// The process's choice (`auto` until `init`).
pub fn choice() -> ColorChoice {
    CHOICE.get().copied().unwrap_or_default()
}

/// Whether to colour a stream, by the process's choice and the environment.
pub fn colour(tty: bool) -> bool {
    choice().colour(&ColorEnv::from_env(), tty)
}

/// Whether to write terminal control codes on a stream, by the process's choice.
pub fn control(tty: bool) -> bool {
    choice().control(tty)
}

#[cfg(test)]
mod tests {
    use super::{ColorChoice::*, *};

    #[test]
    fn choice_env_and_terminal() {
        let plain = ColorEnv::default();
        let no_color = ColorEnv {
            no_color: true,
            force: false,
        };
        let force = ColorEnv {
            no_color: false,
            force: true,
        };
        assert!(Auto.colour(&plain, true));
        assert!(!Auto.colour(&plain, false));
        assert!(!Auto.colour(&no_color, true));
        assert!(Auto.colour(&force, false));
        assert!(Always.colour(&no_color, false));
        assert!(!Never.colour(&force, true));
        assert!(Auto.control(true) && !Auto.control(false));
        assert!(Always.control(false) && !Never.control(true));
    }

    #[test]
    fn pre_scan() {
        let scan = |s: &str| ColorChoice::from_args(s.split(' ').map(Into::into));
        assert_eq!(scan("detrace top"), Auto);
        assert_eq!(scan("detrace --color never top"), Never);
        assert_eq!(scan("detrace top --color=always"), Always);
        assert_eq!(scan("detrace --color=never top --color always"), Always);
        assert_eq!(scan("detrace --color=bogus top"), Auto);
        assert_eq!(scan("detrace explain -- --color=never"), Auto);
    }
}
