//! The views, each a [`Sink`](super::pipeline::Sink) of the pipeline: what it keeps, and when
//! it renders (with the renderers of [`super::render`]).

pub mod drops;
pub mod flows;
pub mod metrics;
pub mod record;
pub mod top;
pub mod watch;

use std::io::Write;

/// Writes what a renderer made into `out`: the renderers write to a `String` (`fmt::Write`),
/// sinks own the I/O.
pub(crate) fn emit(out: &mut dyn Write, buf: &mut String) -> std::io::Result<()> {
    out.write_all(buf.as_bytes())?;
    buf.clear();
    Ok(())
}

pub(crate) fn fmt_err(_: std::fmt::Error) -> std::io::Error {
    std::io::Error::other("rendering failed")
}
