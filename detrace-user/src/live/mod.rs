//! What the live commands share: the explanation cache and the run loop's plumbing.

pub mod explainer;
pub mod kernel;
pub mod print;
pub mod session;
pub mod source;
