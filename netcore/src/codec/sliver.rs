//! [`VerifiedSliver`]: sliver bytes that provably match a blob id's commitments.

use std::fmt;

use super::types::{BlobId, BlobMetadata, CodecError, SliverIndex};

/// A sliver whose bytes were checked against its blob's commitments.
///
/// The fields are private and the only constructors verify (or, for the writer's own freshly
/// encoded slivers, compute the commitments from these very bytes), so holding a
/// `VerifiedSliver` proves the bytes are what the blob id commits to. It is deliberately not
/// `Deserialize`: bytes read back from disk or the network must be verified again.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedSliver {
    blob_id: BlobId,
    index: SliverIndex,
    data: Vec<u8>,
}

impl VerifiedSliver {
    /// Wraps bytes that are known to match `blob_id`'s commitments without re-hashing them.
    ///
    /// Crate-private on purpose: only the encoder, which just computed the commitments from
    /// these bytes, may call it.
    pub(crate) fn new_trusted(blob_id: BlobId, index: SliverIndex, data: Vec<u8>) -> Self {
        Self {
            blob_id,
            index,
            data,
        }
    }

    /// Index of the sliver within its blob (`0..n`; `0..k` are systematic).
    pub fn index(&self) -> SliverIndex {
        self.index
    }

    /// The verified bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The verified bytes, by value.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The blob this sliver was verified against.
    pub fn blob_id(&self) -> BlobId {
        self.blob_id
    }
}

impl fmt::Debug for VerifiedSliver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes are megabytes of ciphertext: print their length, not their content.
        f.debug_struct("VerifiedSliver")
            .field("blob_id", &self.blob_id)
            .field("index", &self.index)
            .field("len", &self.data.len())
            .finish()
    }
}

impl BlobMetadata {
    /// Verifies sliver `index` of blob `blob_id` and wraps it as a [`VerifiedSliver`].
    ///
    /// Checks, in order: the metadata is valid and derives `blob_id`
    /// ([`CodecError::BlobIdMismatch`]), `index < n` ([`CodecError::IndexOutOfRange`]), the
    /// length is the blob's sliver length ([`CodecError::SliverLength`]) and the bytes hash to
    /// the committed value ([`CodecError::SliverHashMismatch`]). Re-deriving the id costs one
    /// blake3 pass over `32 * n` bytes, negligible next to hashing the sliver, and means the
    /// result is tied to `blob_id` whatever metadata the caller was handed.
    pub fn verify_sliver(
        &self,
        blob_id: BlobId,
        index: SliverIndex,
        data: Vec<u8>,
    ) -> Result<VerifiedSliver, CodecError> {
        self.check_id(&blob_id)?;
        self.check_sliver(index, &data)?;
        // INV: a VerifiedSliver built here matches the commitment of `blob_id` for `index`.
        Ok(VerifiedSliver {
            blob_id,
            index,
            data,
        })
    }
}
