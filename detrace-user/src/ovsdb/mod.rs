//! A read-only OVSDB client (RFC 7047) and an in-memory replica kept by `monitor`.

pub mod datum;
pub mod jsonrpc;
pub mod replica;
pub mod ssl;
mod stream;

pub use datum::Datum;
pub use jsonrpc::{Connection, OvsdbError, Remote};
pub use replica::{LogicalFlow, Replica, Row, TableSpec};
pub use ssl::SslFiles;
