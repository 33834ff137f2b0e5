//! One file per hook family. Every program is a thin wrapper around a `try_` function whose
//! error (a failed kernel read) is counted in `Counter::ProbeErrors`.

mod packet;

pub mod datapath;
pub mod drop;
pub mod upcall;
pub mod vport;
