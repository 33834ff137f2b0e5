//! One module per subcommand, each with `run(args) -> anyhow::Result<()>`.

pub mod docs;
pub mod explain;
pub mod live;
pub mod probes;
pub mod replay;
pub mod serve;
