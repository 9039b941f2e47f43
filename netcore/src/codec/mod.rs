//! Erasure codec: blob <-> `n` slivers, with blake3 commitments. Pure logic, no I/O.
//!
//! A blob of `len` bytes is zero-padded to `k * sliver_len` and split into `k` systematic
//! slivers (the data itself); Reed-Solomon adds `n - k` recovery slivers. Each sliver is
//! committed to by a blake3 hash; the [`BlobId`] commits to the encoding parameters, the blob
//! length and every sliver hash, so a client holding only the id can check any metadata a node
//! hands it, and through the metadata any sliver.

mod coder;
mod commit;
mod decode;
mod encode;
mod params;
mod range;
mod sliver;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use coder::Codec;
pub use commit::sliver_hash;
pub use decode::decode;
pub use encode::{encode, EncodedBlob};
pub use params::MAX_BLOB_LEN;
pub use range::{
    aligned_range, check_range, max_proof_len, prove_range, Outboard, VerifiedRange, GRANULE,
};
pub use sliver::VerifiedSliver;
pub use types::{
    BlobId, BlobMetadata, CodecError, EncodingParams, ParseBlobIdError, SliverHash, SliverIndex,
    MAX_NODES,
};
