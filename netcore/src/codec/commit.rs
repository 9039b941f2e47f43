//! Commitments: sliver hashes, the blob id derived from metadata, and checks against both.
//!
//! Both hashes are blake3 in derive-key mode with their own context string, so a sliver hash
//! can never be confused with a blob id (or with any other blake3 use in walrusfs).

use std::sync::OnceLock;

use super::types::{BlobId, BlobMetadata, CodecError, SliverHash, SliverIndex};

/// blake3 derive-key context for sliver hashes. Changing it changes every blob id.
const SLIVER_HASH_CONTEXT: &str = "walrusfs 2026-11 sliver v1";

/// blake3 derive-key context for blob ids. Changing it changes every blob id.
const BLOB_ID_CONTEXT: &str = "walrusfs 2026-11 blob id v1";

/// A fresh hasher keyed for sliver hashes. Deriving the key costs two compressions; cloning a
/// prepared hasher is cheaper and matters for the many tiny slivers of small blobs.
pub(crate) fn sliver_hasher() -> blake3::Hasher {
    static HASHER: OnceLock<blake3::Hasher> = OnceLock::new();
    HASHER
        .get_or_init(|| {
            use blake3::hazmat::HasherExt;
            blake3::Hasher::new_from_context_key(sliver_context_key())
        })
        .clone()
}

/// The blake3 context key of sliver hashes, for merging subtrees of a sliver's hash tree (see
/// [`super::range`]).
pub(crate) fn sliver_context_key() -> &'static blake3::hazmat::ContextKey {
    static KEY: OnceLock<blake3::hazmat::ContextKey> = OnceLock::new();
    KEY.get_or_init(|| blake3::hazmat::hash_derive_key_context(SLIVER_HASH_CONTEXT))
}

/// The commitment to one sliver's bytes (blake3, domain-separated from blob ids).
pub fn sliver_hash(data: &[u8]) -> SliverHash {
    let mut hasher = sliver_hasher();
    hasher.update(data);
    *hasher.finalize().as_bytes()
}

impl BlobMetadata {
    /// The blob id this metadata commits to: blake3 (derive-key mode) over `n` (u16 LE),
    /// `k` (u16 LE), `blob_len` (u64 LE), then every sliver hash in index order.
    ///
    /// The layout is a stable contract: ids are stored in indexes and printed to users.
    pub fn blob_id(&self) -> BlobId {
        let mut hasher = blake3::Hasher::new_derive_key(BLOB_ID_CONTEXT);
        hasher.update(&self.params.n.to_le_bytes());
        hasher.update(&self.params.k.to_le_bytes());
        hasher.update(&self.blob_len.to_le_bytes());
        for hash in &self.sliver_hashes {
            hasher.update(hash);
        }
        BlobId(*hasher.finalize().as_bytes())
    }

    /// Checks that the metadata is internally consistent: valid parameters, exactly `n` sliver
    /// hashes, and a blob length whose sliver length is computable.
    pub fn validate(&self) -> Result<(), CodecError> {
        self.params.validate()?;
        if self.sliver_hashes.len() != usize::from(self.params.n) {
            return Err(CodecError::MalformedMetadata(format!(
                "{} sliver hashes for n={}",
                self.sliver_hashes.len(),
                self.params.n
            )));
        }
        self.params.sliver_len(self.blob_len)?;
        Ok(())
    }

    /// Length in bytes of every sliver of this blob (see [`EncodingParams::sliver_len`]).
    ///
    /// [`EncodingParams::sliver_len`]: super::EncodingParams::sliver_len
    pub fn sliver_len(&self) -> Result<usize, CodecError> {
        self.params.sliver_len(self.blob_len)
    }

    /// Checks that the metadata is valid and is the metadata `expected` commits to. Run this on
    /// any metadata received from elsewhere before trusting a byte of it.
    pub fn check_id(&self, expected: &BlobId) -> Result<(), CodecError> {
        self.validate()?;
        if self.blob_id() == *expected {
            Ok(())
        } else {
            Err(CodecError::BlobIdMismatch {
                expected: *expected,
            })
        }
    }

    /// Checks sliver `index` against this metadata: index in range, exact length, matching hash.
    ///
    /// This does not check the metadata against a blob id: a storage node calls
    /// [`BlobMetadata::check_id`] once for the blob, then this for the sliver it stores.
    /// Readers use [`BlobMetadata::verify_sliver`], which does both.
    pub fn check_sliver(&self, index: SliverIndex, data: &[u8]) -> Result<(), CodecError> {
        self.check_sliver_hashed(index, data.len(), sliver_hash(data))
    }

    /// [`BlobMetadata::check_sliver`] for a sliver of `len` bytes whose hash the caller
    /// computed (e.g. with its [`Outboard`](super::Outboard)).
    pub fn check_sliver_hashed(
        &self,
        index: SliverIndex,
        len: usize,
        hash: SliverHash,
    ) -> Result<(), CodecError> {
        self.validate()?;
        let n = self.params.n;
        let expected_hash = self
            .sliver_hashes
            .get(usize::from(index))
            .ok_or(CodecError::IndexOutOfRange { index, n })?;
        let expected = self.sliver_len()?;
        if len != expected {
            return Err(CodecError::SliverLength {
                index,
                expected,
                got: len,
            });
        }
        if hash != *expected_hash {
            return Err(CodecError::SliverHashMismatch { index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::EncodingParams;

    fn fixed_metadata() -> BlobMetadata {
        BlobMetadata {
            params: EncodingParams { n: 4, k: 2 },
            blob_len: 10,
            sliver_hashes: (0u8..4).map(|i| sliver_hash(&[i; 6])).collect(),
        }
    }

    #[test]
    fn sliver_hash_is_pinned_and_domain_separated() {
        assert_eq!(
            hex::encode(sliver_hash(b"walrusfs")),
            "89c5adfa92833a7f21d9934f6b956973e79cabcadc92ba2b424f4a0de728caac"
        );
        assert_ne!(
            sliver_hash(b"walrusfs"),
            *blake3::hash(b"walrusfs").as_bytes()
        );
    }

    #[test]
    fn blob_id_is_pinned() {
        // If this changes, every stored blob id changes: that needs a new context string.
        // Value cross-checked with the Python `blake3` bindings (derive_key_context).
        assert_eq!(
            fixed_metadata().blob_id().to_string(),
            "1425c5078b5b48b88f830bc7f0f0888375cc836df4a5964839ed87458b342d51"
        );
    }

    #[test]
    fn blob_id_commits_to_every_field() {
        let base = fixed_metadata();
        let id = base.blob_id();
        let mut m = base.clone();
        m.params.n = 5;
        m.sliver_hashes.push([0; 32]);
        assert_ne!(m.blob_id(), id);
        let mut m = base.clone();
        m.params.k = 3;
        assert_ne!(m.blob_id(), id);
        let mut m = base.clone();
        m.blob_len = 11;
        assert_ne!(m.blob_id(), id);
        let mut m = base.clone();
        m.sliver_hashes.swap(0, 1);
        assert_ne!(m.blob_id(), id);
    }

    #[test]
    fn validate_rejects_wrong_hash_count() {
        let mut m = fixed_metadata();
        m.sliver_hashes.pop();
        assert!(matches!(
            m.validate(),
            Err(CodecError::MalformedMetadata(_))
        ));
        assert!(matches!(
            m.check_sliver(0, &[0; 6]),
            Err(CodecError::MalformedMetadata(_))
        ));
        let id = fixed_metadata().blob_id();
        assert!(matches!(
            m.check_id(&id),
            Err(CodecError::MalformedMetadata(_))
        ));
    }

    #[test]
    fn validate_rejects_bad_params_and_length() {
        let mut m = fixed_metadata();
        m.params.k = 0;
        assert_eq!(m.validate(), Err(CodecError::InvalidParams { n: 4, k: 0 }));
        let mut m = fixed_metadata();
        m.blob_len = u64::MAX;
        assert_eq!(m.validate(), Err(CodecError::BlobTooLarge(u64::MAX)));
    }

    #[test]
    fn check_id_detects_mismatch() {
        let m = fixed_metadata();
        assert_eq!(m.check_id(&m.blob_id()), Ok(()));
        let other = BlobId([7; 32]);
        assert_eq!(
            m.check_id(&other),
            Err(CodecError::BlobIdMismatch { expected: other })
        );
    }

    #[test]
    fn check_sliver_checks_index_length_and_hash() {
        let m = fixed_metadata();
        assert_eq!(m.sliver_len(), Ok(6));
        assert_eq!(m.check_sliver(2, &[2; 6]), Ok(()));
        assert_eq!(
            m.check_sliver(4, &[2; 6]),
            Err(CodecError::IndexOutOfRange { index: 4, n: 4 })
        );
        assert_eq!(
            m.check_sliver(2, &[2; 5]),
            Err(CodecError::SliverLength {
                index: 2,
                expected: 6,
                got: 5
            })
        );
        assert_eq!(
            m.check_sliver(2, &[2; 7]),
            Err(CodecError::SliverLength {
                index: 2,
                expected: 6,
                got: 7
            })
        );
        assert_eq!(
            m.check_sliver(1, &[2; 6]),
            Err(CodecError::SliverHashMismatch { index: 1 })
        );
    }
}
