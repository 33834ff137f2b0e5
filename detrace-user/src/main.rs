use clap::Parser as _;
use detrace::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
