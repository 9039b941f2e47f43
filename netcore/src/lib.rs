//! The walrusfs network layer: everything that crosses the network.
//!
//! Read it top-down, one module per step of a blob's life:
//! - [`codec`]: Reed-Solomon `k`-of-`n` encoding, blake3 sliver commitments, blob ids (no I/O);
//! - [`committee`]: who the storage nodes are (addresses, pinned keys, `n`, `k`);
//! - [`identity`]: ed25519 keys, self-signed TLS certificates and pinned-key verification;
//! - [`wire`]: the framed request/response protocol spoken on each QUIC stream;
//! - [`client`]: quorum `put` and verified, hedged `get` across the committee;
//! - [`root`]: signed, versioned root records, the one mutable thing nodes keep per archive;
//! - [`node`]: the storage node daemon and its durable on-disk sliver and root store.

pub mod buffers;
pub mod client;
pub mod codec;
pub mod committee;
#[cfg(test)]
mod fuzz_tests;
#[cfg(any(test, feature = "faults"))]
pub mod fuzzing;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod root;
pub mod transport;
pub mod wire;
