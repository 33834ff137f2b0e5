//! The OVN side of the chain: what ovn-controller's cookies and ovn-northd's stage-hints
//! point at, replicated from the Southbound and Northbound databases.

pub mod platform;
pub mod resolve;
pub mod schema;
pub mod sync;

pub use resolve::{NbObject, Resolver, SbCandidate};
pub use sync::{OvnReplicas, SyncStatus};
