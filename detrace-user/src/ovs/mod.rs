//! ovs-vswitchd side of the chain: datapath flows (UFIDs) and the OpenFlow rules behind them.

pub mod dpflow;
pub mod netlink;
pub mod ofrule;
pub mod unixctl;
pub mod vswitchd;

pub use dpflow::DpFlow;
pub use ofrule::{OfRule, RuleSource};
