//! detrace's orchestration. Nothing here ships: it installs what the project needs, runs the
//! test suites, and drives the lab VM.

mod bench;
mod deps;
mod dist;
mod fuzz;
mod lab;
mod sizes;
mod soak;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "detrace's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need: Debian packages, the pinned toolchain's rust-src,
    /// bpf-linker built against that toolchain's libLLVM. Idempotent; fast when all is there.
    Deps,
    /// The project's test command: deps, unit tests, the integration tests against real
    /// OVS/OVN daemons on this host, then the kernel-level tests in the lab VM.
    Test {
        /// Unit tests only (the integration tests need root, start real daemons and a VM).
        #[arg(long)]
        unit_only: bool,
    },
    /// The lab: boot a QEMU guest running OVS (kernel datapath) and OVN with a topology and
    /// live traffic, and show `detrace explain --all` on it (see docs/lab.md).
    Lab(lab::LabArgs),
    /// Run the kernel-level tests inside the lab guest (`integration-test vm`).
    IntegrationTest(lab::IntegrationTestArgs),
    /// Benchmarks, figures printed: replica at scale, the user-space pipeline, and the datapath
    /// overhead of detrace in the lab VM (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// List the .rs files over 500 lines, the functions over 80 lines and the module import
    /// cycles in detrace-user, detrace-common, detrace-ebpf and xtask (a report, not a gate).
    Sizes(sizes::SizesArgs),
    /// Build the static (musl) detrace binary (target/x86_64-unknown-linux-musl/release/detrace,
    /// what deploy/Containerfile packs) and check it runs: --version, a replay of a recording.
    Static,
    /// Run every fuzz target (fuzz/, cargo-fuzz + libFuzzer) for a bounded time, seeded from
    /// tests/fixtures; one line per target and a total; fails on a crash and names its input.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Deps => deps::all(),
        Command::Test { unit_only } => test::run_tests(unit_only),
        Command::Lab(args) => lab::run_lab(args),
        Command::IntegrationTest(args) => lab::run_integration_test(args),
        Command::Bench(args) => bench::run_bench(args),
        Command::Sizes(args) => sizes::run(args),
        Command::Fuzz(args) => fuzz::run_fuzz(&args),
        Command::Static => dist::build_static().map(|_| ()),
    }
}
