//! Chunk encryption: ChaCha20-Poly1305 under keys derived from the archive's data key, in
//! independently authenticated segments so a reader can open any part of a chunk alone.
//!
//! Every seal derives a fresh key from the data key, the file's inode number, the chunk index,
//! the chunk version and a random 128-bit salt, so no key ever encrypts two chunks and the
//! per-segment nonce (the segment number) never repeats under a key — even if a crash makes a
//! version number be handed out twice. The associated data binds inode, chunk index, version,
//! segment number and whether the segment is the last: a chunk cannot be moved to another file
//! or position, an old version replayed in place of a new one, or segments reordered or cut off,
//! without failing authentication.
//!
//! # Sealed chunk format (version 2; the index format version covers it)
//!
//! The plaintext is cut into segments of [`SEGMENT`] bytes (the last may be shorter; an empty
//! chunk is one empty segment). Each segment is stored as its ciphertext followed by its 16-byte
//! tag, and the segments are concatenated: segment `i` of a chunk starts at byte
//! `i * (SEGMENT + TAG_LEN)` of the sealed chunk. Nothing else is stored: where a chunk sits in
//! its blob, its length, version and salt live in the index.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// Bytes of authentication tag after each segment.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per authenticated segment: big enough that tags cost 0.02% of the data,
/// small enough that a random read opens little more than it asked for.
pub const SEGMENT: usize = 64 * 1024;
/// Sealed bytes of a full segment.
pub const SEALED_SEGMENT: usize = SEGMENT + TAG_LEN;

const KEY_CONTEXT: &str = "walrusfs 2026-11 chunk key v2";
const AAD_DOMAIN: &[u8] = b"walrusfs chunk segment v2\0";

/// Errors of sealing and opening.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A sealed chunk failed authentication: it was altered, or belongs elsewhere.
    #[error("chunk failed authentication (altered, misplaced or replayed)")]
    Authentication,
    /// The sealed bytes do not have the length the index says they must have.
    #[error("sealed chunk of {got} bytes, expected {expected}")]
    Length {
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
}

/// Where a chunk belongs; bound into its key and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// File inode number.
    pub ino: u64,
    /// Chunk index within the file.
    pub index: u64,
    /// Version of this chunk's content.
    pub version: u64,
    /// Random salt chosen at sealing.
    pub salt: [u8; 16],
}

/// The archive's data key: every chunk key derives from it.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Number of segments of a chunk of `plain_len` bytes (at least one).
pub fn segments(plain_len: usize) -> usize {
    plain_len.div_ceil(SEGMENT).max(1)
}

/// Sealed length of a chunk of `plain_len` plaintext bytes.
pub fn sealed_len(plain_len: usize) -> usize {
    plain_len + TAG_LEN * segments(plain_len)
}

impl DataKey {
    /// A key from raw bytes (derived by the archive key; fixed bytes in tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    fn cipher(&self, place: &ChunkPlace) -> ChaCha20Poly1305 {
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        h.update(&self.0);
        h.update(&place.ino.to_le_bytes());
        h.update(&place.index.to_le_bytes());
        h.update(&place.version.to_le_bytes());
        h.update(&place.salt);
        ChaCha20Poly1305::new(Key::from_slice(h.finalize().as_bytes()))
    }

    /// Encrypts `plaintext` for `place` in the sealed chunk format.
    pub fn seal(&self, place: &ChunkPlace, plaintext: &[u8]) -> Vec<u8> {
        let cipher = self.cipher(place);
        let n = segments(plaintext.len());
        let mut out = Vec::with_capacity(sealed_len(plaintext.len()));
        for seg in 0..n {
            let from = seg * SEGMENT;
            let to = (from + SEGMENT).min(plaintext.len());
            let start = out.len();
            out.extend_from_slice(&plaintext[from..to]);
            // INV: the chunk key is unique to this seal (random salt), so the segment-number
            // nonce never repeats under a key. Encryption cannot fail below 256 GiB.
            let tag = cipher
                .encrypt_in_place_detached(
                    &nonce(seg),
                    &aad(place, seg, seg + 1 == n),
                    &mut out[start..],
                )
                .unwrap_or_default();
            out.extend_from_slice(&tag);
        }
        out
    }

    /// Decrypts a whole sealed chunk of `plain_len` plaintext bytes for `place`.
    pub fn open(
        &self,
        place: &ChunkPlace,
        plain_len: usize,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_segments(place, plain_len, 0, sealed)
    }

    /// Decrypts segments `first..` of a chunk of `plain_len` plaintext bytes, given the sealed
    /// bytes from the start of segment `first` to the end of some later segment (whole
    /// segments only). Returns their plaintext, which starts at byte `first * SEGMENT` of the
    /// chunk.
    pub fn open_segments(
        &self,
        place: &ChunkPlace,
        plain_len: usize,
        first: usize,
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        let total = segments(plain_len);
        let last_len = plain_len - (total - 1) * SEGMENT;
        // Sealed bytes of segments first..total, to check `sealed` ends on a boundary.
        let full_to_end = sealed_len(plain_len).saturating_sub(first * SEALED_SEGMENT);
        let count = sealed.len().div_ceil(SEALED_SEGMENT);
        let ends_at_end = first + count == total && sealed.len() == full_to_end;
        let whole = sealed.len() == count * SEALED_SEGMENT && first + count < total;
        if first >= total || !(ends_at_end || whole) {
            return Err(CryptoError::Length {
                got: sealed.len(),
                expected: full_to_end,
            });
        }
        let cipher = self.cipher(place);
        let mut write = 0;
        for i in 0..count {
            let seg = first + i;
            let len = if seg + 1 == total { last_len } else { SEGMENT };
            let at = i * SEALED_SEGMENT;
            let tag = Tag::clone_from_slice(&sealed[at + len..at + len + TAG_LEN]);
            cipher
                .decrypt_in_place_detached(
                    &nonce(seg),
                    &aad(place, seg, seg + 1 == total),
                    &mut sealed[at..at + len],
                    &tag,
                )
                .map_err(|_| CryptoError::Authentication)?;
            sealed.copy_within(at..at + len, write);
            write += len;
        }
        sealed.truncate(write);
        Ok(sealed)
    }
}

fn nonce(segment: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&(segment as u64).to_le_bytes());
    *Nonce::from_slice(&n)
}

fn aad(place: &ChunkPlace, segment: usize, last: bool) -> [u8; AAD_DOMAIN.len() + 33] {
    let mut a = [0u8; AAD_DOMAIN.len() + 33];
    let (domain, rest) = a.split_at_mut(AAD_DOMAIN.len());
    domain.copy_from_slice(AAD_DOMAIN);
    rest[..8].copy_from_slice(&place.ino.to_le_bytes());
    rest[8..16].copy_from_slice(&place.index.to_le_bytes());
    rest[16..24].copy_from_slice(&place.version.to_le_bytes());
    rest[24..32].copy_from_slice(&(segment as u64).to_le_bytes());
    rest[32] = u8::from(last);
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn place(ino: u64, index: u64, version: u64) -> ChunkPlace {
        ChunkPlace {
            ino,
            index,
            version,
            salt: [9; 16],
        }
    }

    #[test]
    fn tampering_moving_or_replaying_fails() {
        let key = DataKey::from_bytes([1; 32]);
        let p = place(5, 2, 7);
        let sealed = key.seal(&p, b"secret data");
        assert_eq!(sealed.len(), 11 + TAG_LEN);
        assert_ne!(&sealed[..11], b"secret data", "ciphertext is not plaintext");
        assert_eq!(key.open(&p, 11, sealed.clone()).unwrap(), b"secret data");
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert!(key.open(&p, 11, flipped).is_err());
        for other in [place(6, 2, 7), place(5, 3, 7), place(5, 2, 8)] {
            assert!(key.open(&other, 11, sealed.clone()).is_err(), "{other:?}");
        }
        assert!(key
            .open(&ChunkPlace { salt: [8; 16], ..p }, 11, sealed.clone())
            .is_err());
        assert!(DataKey::from_bytes([2; 32])
            .open(&p, 11, sealed.clone())
            .is_err());
        assert!(key.open(&p, 11, vec![0; 5]).is_err(), "shorter than a tag");
    }

    #[test]
    fn segments_are_opened_alone_and_cannot_be_cut_or_reordered() {
        let key = DataKey::from_bytes([1; 32]);
        let p = place(1, 0, 1);
        let len = 3 * SEGMENT + 100;
        let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sealed = key.seal(&p, &plain);
        assert_eq!(sealed.len(), sealed_len(len));
        assert_eq!(segments(len), 4);
        // The second segment alone.
        let s1 = sealed[SEALED_SEGMENT..2 * SEALED_SEGMENT].to_vec();
        assert_eq!(
            key.open_segments(&p, len, 1, s1.clone()).unwrap(),
            &plain[SEGMENT..2 * SEGMENT]
        );
        // The last two segments.
        let tail = sealed[2 * SEALED_SEGMENT..].to_vec();
        assert_eq!(
            key.open_segments(&p, len, 2, tail).unwrap(),
            &plain[2 * SEGMENT..]
        );
        // Segment 1's bytes presented as segment 2: wrong nonce and AAD.
        assert!(key.open_segments(&p, len, 2, s1.clone()).is_err());
        // The chunk cut after segment 1 and presented as the whole chunk of a shorter length.
        let cut = sealed[..2 * SEALED_SEGMENT].to_vec();
        assert_eq!(
            key.open(&p, 2 * SEGMENT, cut),
            Err(CryptoError::Authentication),
            "segment 1 was not sealed as the last one"
        );
        // Partial segments are a length error, not a panic.
        assert!(matches!(
            key.open_segments(
                &p,
                len,
                1,
                sealed[SEALED_SEGMENT..SEALED_SEGMENT + 10].to_vec()
            ),
            Err(CryptoError::Length { .. })
        ));
        assert!(key.open_segments(&p, len, 9, Vec::new()).is_err());
    }

    #[test]
    fn empty_chunk_is_one_empty_segment() {
        let key = DataKey::from_bytes([1; 32]);
        let p = place(1, 0, 1);
        let sealed = key.seal(&p, b"");
        assert_eq!(sealed.len(), TAG_LEN);
        assert_eq!(key.open(&p, 0, sealed).unwrap(), b"");
    }

    /// The sealed format is a contract: fixed inputs give fixed bytes.
    #[test]
    fn sealed_format_is_pinned() {
        let key = DataKey::from_bytes([0; 32]);
        let sealed = key.seal(&place(1, 2, 3), b"walrus");
        assert_eq!(
            hex::encode(&sealed),
            hex::encode(key.seal(&place(1, 2, 3), b"walrus"))
        );
        assert_eq!(hex::encode(&sealed), PINNED_SEAL);
    }

    /// `DataKey([0; 32])`, place (1, 2, 3, salt [9; 16]), plaintext "walrus".
    const PINNED_SEAL: &str = "bbc2edc467520f780be1bbda6399cb4a88f54e4a809d";

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200_000),
                                ino in any::<u64>(), index in any::<u64>(), version in any::<u64>(),
                                salt in any::<[u8; 16]>()) {
            let key = DataKey::from_bytes([3; 32]);
            let p = ChunkPlace { ino, index, version, salt };
            let sealed = key.seal(&p, &data);
            prop_assert_eq!(sealed.len(), sealed_len(data.len()));
            prop_assert_eq!(key.open(&p, data.len(), sealed).unwrap(), data);
        }
    }
}
