//! The codec's data types: parameters, blob ids, metadata and errors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Index of a sliver within a blob, `0..n`. Slivers `0..k` are systematic (the data itself).
pub type SliverIndex = u16;

/// blake3 commitment to one sliver's bytes.
pub type SliverHash = [u8; 32];

/// Upper bound on `n`: far above any committee we run, and it keeps metadata small
/// (`32 * n` bytes) so a node or client never allocates much for a hostile metadata frame.
pub const MAX_NODES: u16 = 1024;

/// Erasure-coding parameters: any `k` of `n` slivers rebuild a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EncodingParams {
    /// Total number of slivers (one per storage node).
    pub n: u16,
    /// Number of slivers needed to rebuild the blob.
    pub k: u16,
}

/// Errors of the codec. Each names what was wrong so callers can tell a lying node
/// ([`CodecError::SliverHashMismatch`]) from a bug or a lack of data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// `n`/`k` out of range: needs `1 <= k <= n <= MAX_NODES`.
    #[error("invalid encoding parameters n={n} k={k}: need 1 <= k <= n <= {MAX_NODES}")]
    InvalidParams {
        /// Offered `n`.
        n: u16,
        /// Offered `k`.
        k: u16,
    },
    /// A sliver index `>= n`.
    #[error("sliver index {index} out of range for n={n}")]
    IndexOutOfRange {
        /// The offending index.
        index: SliverIndex,
        /// Number of slivers of the blob.
        n: u16,
    },
    /// A sliver whose length is not the blob's sliver length (truncated or padded).
    #[error("sliver {index} has {got} bytes, expected {expected}")]
    SliverLength {
        /// The sliver's index.
        index: SliverIndex,
        /// Length the metadata implies.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// A sliver whose bytes do not match its commitment: corrupt or forged.
    #[error("sliver {index} does not match its commitment (corrupt or forged)")]
    SliverHashMismatch {
        /// The sliver's index.
        index: SliverIndex,
    },
    /// Metadata whose derived id is not the id asked for: wrong or forged metadata.
    #[error("metadata does not match blob id {expected}")]
    BlobIdMismatch {
        /// The id the caller expected.
        expected: BlobId,
    },
    /// Metadata that is internally inconsistent (e.g. wrong number of sliver hashes).
    #[error("malformed blob metadata: {0}")]
    MalformedMetadata(String),
    /// Fewer than `k` distinct verified slivers were given to the decoder.
    #[error("need {needed} distinct slivers to decode, have {have}")]
    NotEnoughSlivers {
        /// `k`.
        needed: u16,
        /// Distinct slivers supplied.
        have: u16,
    },
    /// A verified sliver belongs to another blob.
    #[error("sliver belongs to blob {got}, not {expected}")]
    WrongBlob {
        /// The blob being decoded.
        expected: BlobId,
        /// The blob the sliver was verified against.
        got: BlobId,
    },
    /// A sliver range that is empty, past the sliver's end, or not aligned to whole granules
    /// (see [`GRANULE`](super::range::GRANULE)).
    #[error("bad sliver range {start}..{end} of a {sliver_len}-byte sliver (granules of 16 KiB)")]
    BadRange {
        /// First byte asked for.
        start: u64,
        /// End of the range.
        end: u64,
        /// The sliver's length.
        sliver_len: u64,
    },
    /// A range proof with the wrong number of chaining values for its range.
    #[error("range proof for sliver {index} is {why}")]
    BadProof {
        /// The sliver's index.
        index: SliverIndex,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The blob is too large for its sliver length to fit in memory on this platform.
    #[error("blob of {0} bytes is too large to encode")]
    BlobTooLarge(u64),
    /// The Reed-Solomon library failed; with verified inputs this indicates a bug.
    #[error("reed-solomon failure: {0}")]
    ReedSolomon(String),
}

/// Printable, stable identifier of a blob: blake3 over the encoding parameters, blob length and
/// every sliver hash (see [`BlobMetadata::blob_id`]). Displayed and parsed as 64 lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 32]);

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid blob id {0:?}: expected 64 hex digits")]
pub struct ParseBlobIdError(String);

impl FromStr for BlobId {
    type Err = ParseBlobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseBlobIdError(s.to_owned()))?;
        Ok(BlobId(out))
    }
}

/// Everything needed to verify any sliver of a blob and to decode it; nodes store it next to
/// their sliver and hand it to readers, who check it against the [`BlobId`] before trusting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobMetadata {
    /// Encoding parameters the blob was encoded with.
    pub params: EncodingParams,
    /// Length of the original blob in bytes.
    pub blob_len: u64,
    /// blake3 commitment of each sliver, indexed by sliver index (`n` entries).
    pub sliver_hashes: Vec<SliverHash>,
}
