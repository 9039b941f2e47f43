//! The storage node: holds one sliver of each blob (plus the blob's metadata) for the committee,
//! stores it durably on local disk and serves it back to clients, who verify everything.

pub mod config;
#[cfg(feature = "faults")]
pub mod faults;
mod limits;
pub mod roots;
pub mod server;
pub mod store;

pub use config::NodeConfig;
pub use server::{Node, NodeError};
