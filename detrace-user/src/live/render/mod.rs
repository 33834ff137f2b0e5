//! One renderer per view, text for people and JSON lines for programs. Renderers are pure
//! functions of resolved data: explanations come in as [`LookupRef`]s the explain stage
//! settled before (borrowed from the cache with `peek`), never fetched from here.
//!
//! [`LookupRef`]: super::explainer::LookupRef

pub mod drops;
pub mod packet;
pub mod table;

/// How a command prints.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable chain.
    Text,
    /// One JSON object per flow, one per line.
    Json,
}

pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}
