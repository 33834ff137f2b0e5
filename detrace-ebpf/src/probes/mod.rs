//! One file per hook family. Every program is a thin wrapper around a body function whose
//! error (a failed kernel read) is counted in `Counter::ProbeErrors`; the datapath hooks get
//! their kprobe and fentry entry points from [`hook!`].

#[macro_use]
mod hook;
mod packet;

pub mod datapath;
pub mod drop;
pub mod removal;
pub mod upcall;
pub mod vport;
