use std::io::IsTerminal as _;

use clap::{CommandFactory as _, FromArgMatches as _};
use detrace::{
    cli::{Cli, Command},
    term::{self, ColorChoice},
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // --color is looked up first so that clap's own help and errors follow it as well.
    let color = ColorChoice::from_args(std::env::args_os());
    let matches = Cli::command().color(color.clap()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    term::init(cli.color);
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(term::colour(std::io::stderr().is_terminal()))
        .init();
    let result = match cli.command {
        Command::Explain(args) => detrace::cmd::explain::run(args),
        Command::Probes(args) => detrace::cmd::probes::run(args),
        Command::Watch(a) => detrace::cmd::live::watch(a),
        Command::Top(a) => detrace::cmd::live::top(a),
        Command::Drops(a) => detrace::cmd::live::drops(a),
        Command::Record(a) => detrace::cmd::live::record(a),
        Command::Replay(a) => detrace::cmd::replay::run(a),
        Command::Serve(a) => detrace::cmd::serve::run(a),
        Command::Completions { shell } => detrace::cmd::docs::completions(shell),
        Command::Man { out_dir } => detrace::cmd::docs::man(out_dir.as_deref()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`detrace ... | head`) is not an error worth a message.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("detrace: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
