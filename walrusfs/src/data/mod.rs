//! The data path below the filesystem core: chunk encryption and the blob store.

pub mod crypto;
pub mod store;
