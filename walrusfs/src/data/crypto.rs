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
//! The plaintext is cut into segments of the archive's segment size ([`Segments`]; the last
//! may be shorter; an empty chunk is one empty segment). Each segment is stored as its
//! ciphertext followed by its 16-byte tag, and the segments are concatenated: segment `i` of a
//! chunk starts at byte `i * (segment size + TAG_LEN)` of the sealed chunk. Nothing else is
//! stored: where a chunk sits in its blob, its length, version and salt live in the index, and
//! the segment size in the index's meta records (fixed when the archive's index is created:
//! 4 KiB since index format 4, 64 KiB before).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Bytes of authentication tag after each segment.
pub const TAG_LEN: usize = 16;

/// How chunks are cut into independently authenticated segments: the plaintext bytes of a
/// full segment. An archive's is fixed when its index is created (index meta
/// `segment_size`), so every chunk of an archive is cut alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segments(usize);

impl Segments {
    /// Archives whose index records no segment size (index format 3 and earlier): 64 KiB.
    pub const LEGACY: Segments = Segments(64 * 1024);
    /// New archives: 4 KiB, a page. A random 4 KiB read then opens one segment and moves one
    /// or two of a sliver's 16 KiB proof granules (with 64 KiB segments: 80-96 KiB), at 0.4%
    /// of the data in tags.
    pub const DEFAULT: Segments = Segments(4 * 1024);
    /// Smallest segment size accepted.
    pub const MIN: u32 = 1024;
    /// Largest segment size accepted.
    pub const MAX: u32 = 1 << 20;
    /// The smallest segments accepted: the most tags, so the longest sealed chunk a plaintext
    /// length can have in any archive.
    pub const SMALLEST: Segments = Segments(Self::MIN as usize);

    /// Segments of `bytes` plaintext bytes: a power of two from [`Segments::MIN`] to
    /// [`Segments::MAX`], else `None`.
    pub fn new(bytes: u32) -> Option<Segments> {
        (bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes))
            .then_some(Segments(bytes as usize))
    }

    /// Plaintext bytes of a full segment.
    pub fn plain(self) -> usize {
        self.0
    }

    /// Sealed bytes of a full segment.
    pub fn sealed(self) -> usize {
        self.0 + TAG_LEN
    }

    /// Number of segments of a chunk of `plain_len` bytes (at least one).
    pub fn count(self, plain_len: usize) -> usize {
        plain_len.div_ceil(self.0).max(1)
    }

    /// Sealed length of a chunk of `plain_len` plaintext bytes.
    pub fn sealed_len(self, plain_len: usize) -> usize {
        plain_len + TAG_LEN * self.count(plain_len)
    }

    /// The segments `(first, last)` that hold plaintext bytes `from..to` (`from < to`).
    pub fn covering(self, from: usize, to: usize) -> (usize, usize) {
        (from / self.0, (to - 1) / self.0)
    }

    /// Where segments `first..=last` lie in a chunk sealed as `sealed_len` bytes.
    pub fn sealed_range(
        self,
        (first, last): (usize, usize),
        sealed_len: usize,
    ) -> std::ops::Range<usize> {
        first * self.sealed()..((last + 1) * self.sealed()).min(sealed_len)
    }
}

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

impl DataKey {
    /// A key from raw bytes (derived by the archive key; fixed bytes in tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// The chunk's ChaCha20-Poly1305 key (RFC 8439; `ring`'s implementation: its per-segment
    /// cost is a third of the RustCrypto crate's, which made 4 KiB segments 30% slower to
    /// seal and open than 64 KiB ones).
    fn cipher(&self, place: &ChunkPlace) -> LessSafeKey {
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        h.update(&self.0);
        h.update(&place.ino.to_le_bytes());
        h.update(&place.index.to_le_bytes());
        h.update(&place.version.to_le_bytes());
        h.update(&place.salt);
        // INV: ChaCha20-Poly1305 takes a 32-byte key, which is all `new` checks.
        let key = UnboundKey::new(&CHACHA20_POLY1305, h.finalize().as_bytes())
            .expect("a 32-byte ChaCha20-Poly1305 key");
        LessSafeKey::new(key)
    }

    /// Encrypts `plaintext` for `place` in the sealed chunk format, cut into `segments`.
    pub fn seal(&self, segments: Segments, place: &ChunkPlace, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(segments, place, plaintext, &mut out);
        out
    }

    /// [`DataKey::seal`], appending the sealed chunk to `out` (e.g. a reused buffer).
    pub fn seal_into(
        &self,
        segments: Segments,
        place: &ChunkPlace,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let cipher = self.cipher(place);
        let n = segments.count(plaintext.len());
        out.reserve_exact(segments.sealed_len(plaintext.len()));
        for seg in 0..n {
            let from = seg * segments.plain();
            let to = (from + segments.plain()).min(plaintext.len());
            let start = out.len();
            out.extend_from_slice(&plaintext[from..to]);
            // INV: the chunk key is unique to this seal (random salt), so the segment-number
            // nonce never repeats under a key. Sealing fails only past 256 GiB per segment.
            let tag = cipher
                .seal_in_place_separate_tag(
                    nonce(seg),
                    Aad::from(aad(place, seg, seg + 1 == n)),
                    &mut out[start..],
                )
                .expect("a segment far below 256 GiB");
            out.extend_from_slice(tag.as_ref());
        }
    }

    /// Decrypts a whole sealed chunk of `plain_len` plaintext bytes for `place`, cut into
    /// `segments`.
    pub fn open(
        &self,
        segments: Segments,
        place: &ChunkPlace,
        plain_len: usize,
        sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_segments(segments, place, plain_len, 0, sealed)
    }

    /// Decrypts segments `first..` of a chunk of `plain_len` plaintext bytes, given the sealed
    /// bytes from the start of segment `first` to the end of some later segment (whole
    /// segments only). Returns their plaintext, which starts at byte
    /// `first * segments.plain()` of the chunk.
    pub fn open_segments(
        &self,
        segments: Segments,
        place: &ChunkPlace,
        plain_len: usize,
        first: usize,
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, CryptoError> {
        let (plain, sealed_seg) = (segments.plain(), segments.sealed());
        let total = segments.count(plain_len);
        let last_len = plain_len - (total - 1) * plain;
        // Sealed bytes of segments first..total, to check `sealed` ends on a boundary.
        let full_to_end = segments
            .sealed_len(plain_len)
            .saturating_sub(first * sealed_seg);
        let count = sealed.len().div_ceil(sealed_seg);
        let ends_at_end = first + count == total && sealed.len() == full_to_end;
        let whole = sealed.len() == count * sealed_seg && first + count < total;
        if first >= total || !(ends_at_end || whole) {
            return Err(CryptoError::Length {
                got: sealed.len(),
                expected: full_to_end,
            });
        }
        let cipher = self.cipher(place);
        // Each segment's plaintext is written where the plaintext so far ends (`write`, at or
        // before the segment's sealed bytes at `at`), so the tags are squeezed out as it goes.
        let mut write = 0;
        for i in 0..count {
            let seg = first + i;
            let len = if seg + 1 == total { last_len } else { plain };
            let at = i * sealed_seg;
            cipher
                .open_within(
                    nonce(seg),
                    Aad::from(aad(place, seg, seg + 1 == total)),
                    &mut sealed[write..at + len + TAG_LEN],
                    at - write..,
                )
                .map_err(|_| CryptoError::Authentication)?;
            write += len;
        }
        sealed.truncate(write);
        Ok(sealed)
    }
}

fn nonce(segment: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&(segment as u64).to_le_bytes());
    Nonce::assume_unique_for_key(n)
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

    const SEG: Segments = Segments::DEFAULT;

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
        let sealed = key.seal(SEG, &p, b"secret data");
        assert_eq!(sealed.len(), 11 + TAG_LEN);
        assert_ne!(&sealed[..11], b"secret data", "ciphertext is not plaintext");
        assert_eq!(
            key.open(SEG, &p, 11, sealed.clone()).unwrap(),
            b"secret data"
        );
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert!(key.open(SEG, &p, 11, flipped).is_err());
        for other in [place(6, 2, 7), place(5, 3, 7), place(5, 2, 8)] {
            assert!(
                key.open(SEG, &other, 11, sealed.clone()).is_err(),
                "{other:?}"
            );
        }
        assert!(key
            .open(SEG, &ChunkPlace { salt: [8; 16], ..p }, 11, sealed.clone())
            .is_err());
        assert!(DataKey::from_bytes([2; 32])
            .open(SEG, &p, 11, sealed.clone())
            .is_err());
        assert!(
            key.open(SEG, &p, 11, vec![0; 5]).is_err(),
            "shorter than a tag"
        );
    }

    #[test]
    fn segments_are_opened_alone_and_cannot_be_cut_or_reordered() {
        for segs in [Segments::DEFAULT, Segments::LEGACY] {
            let (plain_seg, sealed_seg) = (segs.plain(), segs.sealed());
            let key = DataKey::from_bytes([1; 32]);
            let p = place(1, 0, 1);
            let len = 3 * plain_seg + 100;
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = key.seal(segs, &p, &plain);
            assert_eq!(sealed.len(), segs.sealed_len(len));
            assert_eq!(segs.count(len), 4);
            // The second segment alone.
            let s1 = sealed[sealed_seg..2 * sealed_seg].to_vec();
            assert_eq!(
                key.open_segments(segs, &p, len, 1, s1.clone()).unwrap(),
                &plain[plain_seg..2 * plain_seg]
            );
            // The last two segments.
            let tail = sealed[2 * sealed_seg..].to_vec();
            assert_eq!(
                key.open_segments(segs, &p, len, 2, tail).unwrap(),
                &plain[2 * plain_seg..]
            );
            // Segment 1's bytes presented as segment 2: wrong nonce and AAD.
            assert!(key.open_segments(segs, &p, len, 2, s1.clone()).is_err());
            // The chunk cut after segment 1 and presented as the whole chunk of a shorter
            // length.
            let cut = sealed[..2 * sealed_seg].to_vec();
            assert_eq!(
                key.open(segs, &p, 2 * plain_seg, cut),
                Err(CryptoError::Authentication),
                "segment 1 was not sealed as the last one"
            );
            // Partial segments are a length error, not a panic.
            assert!(matches!(
                key.open_segments(
                    segs,
                    &p,
                    len,
                    1,
                    sealed[sealed_seg..sealed_seg + 10].to_vec()
                ),
                Err(CryptoError::Length { .. })
            ));
            assert!(key.open_segments(segs, &p, len, 9, Vec::new()).is_err());
        }
    }

    #[test]
    fn a_chunk_opened_with_another_segment_size_fails_authentication() {
        let key = DataKey::from_bytes([1; 32]);
        let p = place(1, 0, 1);
        let plain = vec![7u8; 100_000];
        let sealed = key.seal(Segments::DEFAULT, &p, &plain);
        // Read as an archive of 64 KiB segments would: the tags are elsewhere.
        let other = Segments::LEGACY;
        let len = plain.len();
        let as_other = sealed[..other.sealed_len(len).min(sealed.len())].to_vec();
        assert!(key.open(other, &p, len, as_other).is_err());
        assert!(key
            .open_segments(other, &p, len, 0, sealed[..other.sealed()].to_vec())
            .is_err());
    }

    #[test]
    fn segment_sizes_are_powers_of_two_within_bounds() {
        assert_eq!(Segments::new(4096), Some(Segments::DEFAULT));
        assert_eq!(Segments::new(65536), Some(Segments::LEGACY));
        for bad in [0, 512, 3000, 4097, 2 << 20, u32::MAX] {
            assert_eq!(Segments::new(bad), None, "{bad}");
        }
        assert_eq!(Segments::DEFAULT.count(0), 1);
        assert_eq!(Segments::DEFAULT.sealed_len(0), TAG_LEN);
        assert_eq!(Segments::DEFAULT.sealed_len(4096), 4096 + TAG_LEN);
        assert_eq!(Segments::DEFAULT.sealed_len(4097), 4097 + 2 * TAG_LEN);
    }

    #[test]
    fn empty_chunk_is_one_empty_segment() {
        let key = DataKey::from_bytes([1; 32]);
        let p = place(1, 0, 1);
        let sealed = key.seal(SEG, &p, b"");
        assert_eq!(sealed.len(), TAG_LEN);
        assert_eq!(key.open(SEG, &p, 0, sealed).unwrap(), b"");
    }

    /// The sealed format is a contract: fixed inputs give fixed bytes, for either segment size.
    #[test]
    fn sealed_format_is_pinned() {
        let key = DataKey::from_bytes([0; 32]);
        for segs in [Segments::DEFAULT, Segments::LEGACY] {
            let sealed = key.seal(segs, &place(1, 2, 3), b"walrus");
            assert_eq!(hex::encode(&sealed), PINNED_SEAL, "{segs:?}");
        }
        // Three segments of 4 KiB (the last short); one of 64 KiB.
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let four = key.seal(Segments::DEFAULT, &place(1, 2, 3), &plain);
        assert_eq!(four.len(), 10_000 + 3 * TAG_LEN);
        assert_eq!(blake3::hash(&four).to_hex().as_str(), PINNED_4K);
        let legacy = key.seal(Segments::LEGACY, &place(1, 2, 3), &plain);
        assert_eq!(legacy.len(), 10_000 + TAG_LEN);
        assert_eq!(blake3::hash(&legacy).to_hex().as_str(), PINNED_64K);
    }

    /// `DataKey([0; 32])`, place (1, 2, 3, salt [9; 16]), plaintext "walrus".
    const PINNED_SEAL: &str = "bbc2edc467520f780be1bbda6399cb4a88f54e4a809d";
    /// blake3 of what the same key and place seal bytes `i % 251` for `i` in `0..10_000` into.
    const PINNED_4K: &str = "d965d484adf80a88e26152a9d4b51d553a9de28efb585c70f718fa70c3dfb4af";
    /// The same with 64 KiB segments (indexes before format 4).
    const PINNED_64K: &str = "32f0481e491f129f9ebd4d9c5d8db8f6eaa82c52f2ec68cf3e1e1ff70d4c3140";

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200_000),
                                ino in any::<u64>(), index in any::<u64>(), version in any::<u64>(),
                                salt in any::<[u8; 16]>()) {
            let key = DataKey::from_bytes([3; 32]);
            let p = ChunkPlace { ino, index, version, salt };
            for segs in [Segments::DEFAULT, Segments::LEGACY] {
                let sealed = key.seal(segs, &p, &data);
                prop_assert_eq!(sealed.len(), segs.sealed_len(data.len()));
                prop_assert_eq!(key.open(segs, &p, data.len(), sealed).unwrap(), &data[..]);
            }
        }
    }
}
