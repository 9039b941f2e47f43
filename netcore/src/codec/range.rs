//! Ranged, verified reads of a sliver: a node serves a byte range plus the few interior hashes
//! of the sliver's blake3 tree needed to tie the range to the sliver hash the blob id commits
//! to.
//!
//! A sliver hash is blake3 (derive-key mode), and blake3 is itself a Merkle tree over 1 KiB
//! chunks. So no new commitment is needed: the existing blob ids already commit to every
//! subtree of every sliver, and blobs stored before ranged reads existed can be read in ranges
//! too. Ranges are served in whole [`GRANULE`]s (the last one may be short): every tree node is
//! then either entirely inside the range, entirely outside it, or a parent of both, so the proof
//! is just the chaining values of the outside subtrees next to the range, at most two per tree
//! level (about 20 for a 1 MiB sliver).
//!
//! The verifier walks the tree top-down: a subtree inside the range is hashed from the bytes
//! received, one outside takes the next chaining value of the proof, and one that straddles is
//! split where blake3 splits it. The root it ends with must be the committed sliver hash, and
//! the proof must be used up exactly. The prover makes the same walk and emits the chaining
//! value of each outside subtree.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use super::commit::{sliver_context_key, sliver_hasher};
use super::types::{BlobId, BlobMetadata, CodecError, SliverHash, SliverIndex};

/// Ranges of a sliver are served and verified in whole granules of this many bytes (a power of
/// two, a multiple of blake3's 1 KiB chunk): the first byte of a range is a multiple of it, and
/// so is its end unless the range ends with the sliver.
pub const GRANULE: u64 = 16 * 1024;

/// Version byte of a stored outboard (see [`Outboard::to_bytes`]).
const OUTBOARD_FORMAT: u8 = 1;

/// Most chaining values a proof of one range can need for a sliver of `sliver_len` bytes: two
/// per level of the tree. Anything longer is malformed.
pub fn max_proof_len(sliver_len: u64) -> usize {
    let chunks = sliver_len.div_ceil(blake3::CHUNK_LEN as u64).max(1);
    2 * (64 - chunks.leading_zeros() as usize + 1)
}

/// The smallest granule-aligned range of a sliver of `sliver_len` bytes that holds bytes
/// `from..to` (`from < to <= sliver_len`).
pub fn aligned_range(sliver_len: u64, from: u64, to: u64) -> (u64, u64) {
    let start = from / GRANULE * GRANULE;
    let end = to.div_ceil(GRANULE).saturating_mul(GRANULE).min(sliver_len);
    (start, end)
}

/// Checks that `start..end` is a non-empty, granule-aligned range of a sliver of `sliver_len`
/// bytes.
pub fn check_range(sliver_len: u64, start: u64, end: u64) -> Result<(), CodecError> {
    let aligned_end = end.is_multiple_of(GRANULE) || end == sliver_len;
    if start >= end || end > sliver_len || !start.is_multiple_of(GRANULE) || !aligned_end {
        return Err(CodecError::BadRange {
            start,
            end,
            sliver_len,
        });
    }
    Ok(())
}

/// Where a subtree lies relative to the range.
enum Place {
    Inside,
    Outside,
    Straddles,
}

fn place(offset: u64, len: u64, start: u64, end: u64) -> Place {
    if offset >= start && offset + len <= end {
        Place::Inside
    } else if offset + len <= start || offset >= end {
        Place::Outside
    } else {
        Place::Straddles
    }
}

/// The chaining value of the (non-root) subtree of `bytes` that starts `offset` bytes into
/// the sliver.
fn subtree_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = sliver_hasher();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// The proof for bytes `start..end` of `sliver` (the whole sliver, as stored): the chaining
/// values of the subtrees outside the range, in the order [`BlobMetadata::verify_range`] needs
/// them. Empty when the range is the whole sliver. (A node serving many ranges of one sliver
/// keeps its [`Outboard`] instead of hashing the sliver for each.)
pub fn prove_range(sliver: &[u8], start: u64, end: u64) -> Result<Vec<ChainingValue>, CodecError> {
    Outboard::build(sliver).prove(start, end)
}

/// The chaining value of every granule of a sliver (the leaves of its tree at granule size):
/// with it, a node proves any range of the sliver without reading the rest of it. 32 bytes per
/// 16 KiB of sliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outboard {
    sliver_len: u64,
    leaves: Vec<ChainingValue>,
    root: SliverHash,
}

impl Outboard {
    /// Hashes `sliver` granule by granule (one pass, the cost of hashing it whole).
    pub fn build(sliver: &[u8]) -> Outboard {
        let sliver_len = sliver.len() as u64;
        if sliver_len <= GRANULE {
            // One granule: ranges are the whole sliver, which needs no proof.
            return Outboard {
                sliver_len,
                leaves: Vec::new(),
                root: super::sliver_hash(sliver),
            };
        }
        let leaves: Vec<ChainingValue> = sliver
            .chunks(GRANULE as usize)
            .enumerate()
            .map(|(i, g)| subtree_cv(i as u64 * GRANULE, g))
            .collect();
        Outboard::from_leaves(sliver_len, leaves)
    }

    /// The outboard of granules `leaves` of a sliver of `sliver_len` (more than one granule),
    /// with the root they make.
    fn from_leaves(sliver_len: u64, leaves: Vec<ChainingValue>) -> Outboard {
        let mut o = Outboard {
            sliver_len,
            leaves,
            root: [0; 32],
        };
        let left = left_subtree_len(sliver_len);
        let (l, r) = (o.cv(0, left), o.cv(left, sliver_len - left));
        o.root = *merge_subtrees_root(&l, &r, mode()).as_bytes();
        o
    }

    /// The sliver hash the granules make: compare it with the committed one before trusting
    /// the outboard (or the sliver it was built from).
    pub fn root(&self) -> SliverHash {
        self.root
    }

    /// The outboard as stored beside a sliver: a format version byte (1), then each
    /// granule's chaining value. Empty for a sliver of one granule (it needs no outboard).
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.leaves.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(1 + 32 * self.leaves.len());
        out.push(OUTBOARD_FORMAT);
        for leaf in &self.leaves {
            out.extend_from_slice(leaf);
        }
        out
    }

    /// Reads back what [`Outboard::to_bytes`] wrote for a sliver of `sliver_len` bytes; `None`
    /// if it is not that (another version, the wrong length). The granules are not checked:
    /// compare [`Outboard::root`] with the committed sliver hash before using it.
    pub fn from_bytes(sliver_len: u64, bytes: &[u8]) -> Option<Outboard> {
        if sliver_len <= GRANULE {
            return None;
        }
        let (&version, leaves) = bytes.split_first()?;
        let count = sliver_len.div_ceil(GRANULE);
        if version != OUTBOARD_FORMAT || leaves.len() as u64 != 32 * count {
            return None;
        }
        let leaves = leaves
            .chunks_exact(32)
            .map(|c| c.try_into().unwrap_or([0; 32]))
            .collect();
        Some(Outboard::from_leaves(sliver_len, leaves))
    }

    /// Length of the sliver the outboard is of.
    pub fn sliver_len(&self) -> u64 {
        self.sliver_len
    }

    /// Bytes of memory the outboard holds.
    pub fn weight(&self) -> usize {
        self.leaves.len() * 32 + std::mem::size_of::<Self>()
    }

    /// The proof for bytes `start..end` (see [`prove_range`]).
    pub fn prove(&self, start: u64, end: u64) -> Result<Vec<ChainingValue>, CodecError> {
        check_range(self.sliver_len, start, end)?;
        let mut proof = Vec::new();
        if start == 0 && end == self.sliver_len {
            return Ok(proof);
        }
        // INV: a range that is not the whole sliver means the sliver is longer than a granule,
        // hence longer than a chunk, so the root is a parent node and can be split.
        self.prove_walk(0, self.sliver_len, start, end, &mut proof);
        Ok(proof)
    }

    fn prove_walk(
        &self,
        offset: u64,
        len: u64,
        start: u64,
        end: u64,
        proof: &mut Vec<ChainingValue>,
    ) {
        match place(offset, len, start, end) {
            Place::Inside => {}
            Place::Outside => proof.push(self.cv(offset, len)),
            Place::Straddles => {
                // INV (see the module docs): a subtree straddling a granule-aligned range is
                // longer than a granule, so longer than a chunk, so it is a parent node.
                let left = left_subtree_len(len);
                self.prove_walk(offset, left, start, end, proof);
                self.prove_walk(offset + left, len - left, start, end, proof);
            }
        }
    }

    /// The chaining value of the subtree at `offset` of `len` bytes, from the granules'. Every
    /// subtree this is asked for is whole granules: a subtree longer than a granule splits at
    /// a power of two at least a granule long, and the rest starts on a granule boundary (it
    /// is the sliver's short last granule if it is shorter).
    fn cv(&self, offset: u64, len: u64) -> ChainingValue {
        if len <= GRANULE {
            return self.leaves[(offset / GRANULE) as usize];
        }
        let left = left_subtree_len(len);
        merge_subtrees_non_root(
            &self.cv(offset, left),
            &self.cv(offset + left, len - left),
            mode(),
        )
    }
}

/// A verifier's walk over the proof and the range's bytes.
struct Verifier<'a> {
    start: u64,
    end: u64,
    data: &'a [u8],
    proof: std::slice::Iter<'a, ChainingValue>,
    index: SliverIndex,
}

impl Verifier<'_> {
    /// The chaining value of the subtree at `offset` of `len` bytes (never the root).
    fn walk(&mut self, offset: u64, len: u64) -> Result<ChainingValue, CodecError> {
        match place(offset, len, self.start, self.end) {
            Place::Inside => {
                let from = (offset - self.start) as usize;
                Ok(subtree_cv(offset, &self.data[from..from + len as usize]))
            }
            Place::Outside => self.proof.next().copied().ok_or(CodecError::BadProof {
                index: self.index,
                why: "too short",
            }),
            Place::Straddles => {
                let (l, r) = self.children(offset, len)?;
                Ok(merge_subtrees_non_root(&l, &r, mode()))
            }
        }
    }

    fn children(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<(ChainingValue, ChainingValue), CodecError> {
        if len <= blake3::CHUNK_LEN as u64 {
            // Cannot happen for a range `check_range` accepted; guard it all the same.
            return Err(CodecError::BadProof {
                index: self.index,
                why: "range splits a chunk",
            });
        }
        let left = left_subtree_len(len);
        Ok((
            self.walk(offset, left)?,
            self.walk(offset + left, len - left)?,
        ))
    }
}

fn mode() -> Mode<'static> {
    Mode::DeriveKeyMaterial(sliver_context_key())
}

impl BlobMetadata {
    /// Verifies bytes `start..start + data.len()` of sliver `index` of blob `blob_id` against
    /// the blob's commitments, using `proof` (from [`prove_range`] on the node). Checks, in
    /// order: the metadata derives `blob_id`, the index and the range are valid
    /// ([`CodecError::BadRange`]), the proof has the right number of chaining values, and the
    /// root the range and proof make is the committed sliver hash
    /// ([`CodecError::SliverHashMismatch`]).
    pub fn verify_range(
        &self,
        blob_id: BlobId,
        index: SliverIndex,
        start: u64,
        data: Vec<u8>,
        proof: &[ChainingValue],
    ) -> Result<VerifiedRange, CodecError> {
        self.check_id(&blob_id)?;
        let n = self.params.n;
        let expected = *self
            .sliver_hashes
            .get(usize::from(index))
            .ok_or(CodecError::IndexOutOfRange { index, n })?;
        let sliver_len = self.sliver_len()? as u64;
        let end = start.saturating_add(data.len() as u64);
        check_range(sliver_len, start, end)?;
        if proof.len() > max_proof_len(sliver_len) {
            return Err(CodecError::BadProof {
                index,
                why: "too long",
            });
        }
        let root = if start == 0 && end == sliver_len {
            if !proof.is_empty() {
                return Err(CodecError::BadProof {
                    index,
                    why: "too long",
                });
            }
            super::sliver_hash(&data)
        } else {
            let mut v = Verifier {
                start,
                end,
                data: &data,
                proof: proof.iter(),
                index,
            };
            let (l, r) = v.children(0, sliver_len)?;
            if v.proof.next().is_some() {
                return Err(CodecError::BadProof {
                    index,
                    why: "too long",
                });
            }
            *merge_subtrees_root(&l, &r, mode()).as_bytes()
        };
        if root != expected {
            return Err(CodecError::SliverHashMismatch { index });
        }
        // INV: a VerifiedRange built here matches the commitment of `blob_id` for `index`.
        Ok(VerifiedRange {
            blob_id,
            index,
            start,
            data,
        })
    }
}

/// Bytes of a sliver range checked against its blob's commitments (see [`VerifiedSliver`]
/// for the same idea for whole slivers: only verification makes one).
///
/// [`VerifiedSliver`]: super::VerifiedSliver
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedRange {
    blob_id: BlobId,
    index: SliverIndex,
    start: u64,
    data: Vec<u8>,
}

impl VerifiedRange {
    /// Index of the sliver the range is of.
    pub fn index(&self) -> SliverIndex {
        self.index
    }

    /// Offset of the range's first byte in its sliver.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The verified bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The verified bytes, by value.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

impl std::fmt::Debug for VerifiedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedRange")
            .field("blob_id", &self.blob_id)
            .field("index", &self.index)
            .field("start", &self.start)
            .field("len", &self.data.len())
            .finish()
    }
}

impl super::Codec {
    /// Rebuilds the same range of systematic sliver `target` from the same range of `k` other
    /// slivers, all verified against `blob_id`: Reed-Solomon works position by position across
    /// slivers, and granule-aligned ranges cut every sliver at the same positions, so a range
    /// decodes on its own. Fails with [`CodecError::NotEnoughSlivers`] given fewer than `k`
    /// distinct ranges of the same place, and with [`CodecError::WrongBlob`] for a range of
    /// another blob.
    pub fn restore_range(
        &mut self,
        metadata: &BlobMetadata,
        blob_id: &BlobId,
        target: SliverIndex,
        ranges: &[VerifiedRange],
    ) -> Result<Vec<u8>, CodecError> {
        metadata.check_id(blob_id)?;
        let n = usize::from(metadata.params.n);
        let k = usize::from(metadata.params.k);
        if usize::from(target) >= k {
            return Err(CodecError::IndexOutOfRange {
                index: target,
                n: metadata.params.k,
            });
        }
        let Some(first) = ranges.first() else {
            return Err(CodecError::NotEnoughSlivers {
                needed: metadata.params.k,
                have: 0,
            });
        };
        let (start, len) = (first.start, first.data.len());
        let mut used = vec![false; n];
        let mut chosen = Vec::with_capacity(k);
        for r in ranges {
            if r.blob_id != *blob_id {
                return Err(CodecError::WrongBlob {
                    expected: *blob_id,
                    got: r.blob_id,
                });
            }
            let i = usize::from(r.index);
            if i < n && !used[i] && r.start == start && r.data.len() == len && chosen.len() < k {
                used[i] = true;
                chosen.push(r);
            }
        }
        if let Some(r) = chosen.iter().find(|r| r.index == target) {
            return Ok(r.data.clone());
        }
        if chosen.len() < k {
            return Err(CodecError::NotEnoughSlivers {
                needed: metadata.params.k,
                have: chosen.len() as u16,
            });
        }
        // Reed-Solomon needs shards of an even length; granules are, and so is a sliver's end.
        chosen.sort_by_key(|r| r.index);
        let sources: Vec<usize> = chosen.iter().map(|r| usize::from(r.index)).collect();
        if let Some(c) = self.restore_coefficients(n, k, usize::from(target), &sources)? {
            let data: Vec<&[u8]> = chosen.iter().map(|r| &r.data[..]).collect();
            return Ok(self.combine(&c, &data, len));
        }
        self.decode_range(n, k, target, &chosen, len)
    }

    /// [`Codec::restore_range`] by a full Reed-Solomon decode of the ranges (`chosen`: `k`
    /// distinct ranges of `len` bytes).
    fn decode_range(
        &mut self,
        n: usize,
        k: usize,
        target: SliverIndex,
        chosen: &[&VerifiedRange],
        len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let decoder = self.rs_decoder(k, n - k, len)?;
        for r in chosen {
            let i = usize::from(r.index);
            if i < k {
                decoder
                    .add_original_shard(i, &r.data)
                    .map_err(super::coder::rs_error)?;
            } else {
                decoder
                    .add_recovery_shard(i - k, &r.data)
                    .map_err(super::coder::rs_error)?;
            }
        }
        let result = decoder.decode().map_err(super::coder::rs_error)?;
        result
            .restored_original(usize::from(target))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| CodecError::ReedSolomon(format!("sliver {target} not restored")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{encode, EncodingParams};

    fn blob(len: usize) -> crate::codec::EncodedBlob {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        encode(EncodingParams::new(7, 3).unwrap(), &data).unwrap()
    }

    /// Every granule-aligned range of every sliver of blobs of awkward sizes proves and
    /// verifies (sliver lengths just under, at and over powers of two, and not chunk-aligned).
    #[test]
    fn every_aligned_range_verifies() {
        for len in [3 * 1024, 3 * 40_000, 3 * 65_536, 3 * 65_537, 3 * 100_001] {
            let b = blob(len);
            let sl = b.metadata.sliver_len().unwrap() as u64;
            let granules = sl.div_ceil(GRANULE);
            for (index, sliver) in b.slivers.iter().enumerate() {
                for first in 0..granules {
                    for last in first..granules {
                        let (s, e) = (first * GRANULE, ((last + 1) * GRANULE).min(sl));
                        let proof = prove_range(sliver, s, e).unwrap();
                        assert!(proof.len() <= max_proof_len(sl), "{len} {s}..{e}");
                        b.metadata
                            .verify_range(
                                b.blob_id,
                                index as u16,
                                s,
                                sliver[s as usize..e as usize].to_vec(),
                                &proof,
                            )
                            .unwrap_or_else(|e2| panic!("len {len} {s}..{e}: {e2}"));
                    }
                }
            }
        }
    }

    /// The granules' chaining values make the sliver hash, whatever the sliver's length.
    #[test]
    fn outboard_root_is_the_sliver_hash() {
        for len in [
            0,
            1,
            1000,
            3 * 6000,
            3 * 20_000,
            3 * 65_536,
            3 * 100_001,
            3 * 700_000,
        ] {
            let b = blob(len);
            for (i, s) in b.slivers.iter().enumerate() {
                assert_eq!(
                    Outboard::build(s).root(),
                    b.metadata.sliver_hashes[i],
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn outboards_round_trip_through_bytes_and_refuse_other_shapes() {
        let b = blob(3 * 100_001);
        let s = &b.slivers[5];
        let o = Outboard::build(s);
        let bytes = o.to_bytes();
        assert_eq!(bytes.len(), 1 + 32 * 7);
        let back = Outboard::from_bytes(s.len() as u64, &bytes).unwrap();
        assert_eq!(back, o);
        // A flipped byte still parses but no longer makes the committed root.
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        let parsed = Outboard::from_bytes(s.len() as u64, &bad).unwrap();
        assert_ne!(parsed.root(), b.metadata.sliver_hashes[5]);
        // Wrong length, version or sliver length: not an outboard.
        assert!(Outboard::from_bytes(s.len() as u64, &bytes[..bytes.len() - 1]).is_none());
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(Outboard::from_bytes(s.len() as u64, &v2).is_none());
        assert!(Outboard::from_bytes(s.len() as u64 + GRANULE, &bytes).is_none());
        assert!(Outboard::from_bytes(100, &bytes).is_none());
        assert!(Outboard::build(&[1; 100]).to_bytes().is_empty());
    }

    #[test]
    fn whole_sliver_needs_no_proof() {
        let b = blob(3 * 1000);
        let s = &b.slivers[4];
        assert_eq!(
            prove_range(s, 0, s.len() as u64).unwrap(),
            Vec::<ChainingValue>::new()
        );
        b.metadata
            .verify_range(b.blob_id, 4, 0, s.clone(), &[])
            .unwrap();
        assert_eq!(
            b.metadata
                .verify_range(b.blob_id, 4, 0, s.clone(), &[[0; 32]]),
            Err(CodecError::BadProof {
                index: 4,
                why: "too long"
            })
        );
    }

    #[test]
    fn tampered_bytes_proofs_and_places_are_rejected() {
        let b = blob(3 * 300_000);
        let sliver = &b.slivers[1];
        let (s, e) = (2 * GRANULE, 4 * GRANULE);
        let range = sliver[s as usize..e as usize].to_vec();
        let proof = prove_range(sliver, s, e).unwrap();
        let m = &b.metadata;
        m.verify_range(b.blob_id, 1, s, range.clone(), &proof)
            .unwrap();

        let mut bad = range.clone();
        bad[100] ^= 1;
        assert_eq!(
            m.verify_range(b.blob_id, 1, s, bad, &proof),
            Err(CodecError::SliverHashMismatch { index: 1 })
        );
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i][0] ^= 1;
            assert_eq!(
                m.verify_range(b.blob_id, 1, s, range.clone(), &p),
                Err(CodecError::SliverHashMismatch { index: 1 })
            );
        }
        // The same bytes claimed for another place, another sliver or another blob.
        assert!(m
            .verify_range(b.blob_id, 1, s + GRANULE, range.clone(), &proof)
            .is_err());
        assert!(m
            .verify_range(b.blob_id, 2, s, range.clone(), &proof)
            .is_err());
        assert!(matches!(
            m.verify_range(BlobId([9; 32]), 1, s, range.clone(), &proof),
            Err(CodecError::BlobIdMismatch { .. })
        ));
        // Proofs one too short and one too long.
        assert!(matches!(
            m.verify_range(b.blob_id, 1, s, range.clone(), &proof[1..]),
            Err(CodecError::BadProof { .. } | CodecError::SliverHashMismatch { .. })
        ));
        let mut long = proof.clone();
        long.push([0; 32]);
        assert_eq!(
            m.verify_range(b.blob_id, 1, s, range.clone(), &long),
            Err(CodecError::BadProof {
                index: 1,
                why: "too long"
            })
        );
        // Unaligned or out-of-bounds ranges.
        for (start, bytes) in [(s + 1, &range[..]), (s, &range[1..]), (s, &range[..0])] {
            assert!(matches!(
                m.verify_range(b.blob_id, 1, start, bytes.to_vec(), &proof),
                Err(CodecError::BadRange { .. })
            ));
        }
        assert!(matches!(
            m.verify_range(b.blob_id, 1, u64::MAX - 5, range.clone(), &proof),
            Err(CodecError::BadRange { .. })
        ));
    }

    /// Any `k` verified ranges rebuild the same range of a missing systematic sliver, at the
    /// start, in the middle and at the (short, not 64-byte-aligned) end of the slivers.
    #[test]
    fn missing_systematic_ranges_are_restored_from_any_k() {
        let b = blob(3 * 100_001 - 7);
        let sl = b.metadata.sliver_len().unwrap() as u64;
        assert_ne!(sl % 64, 0, "the tail must be a partial RS block");
        let mut codec = crate::codec::Codec::new();
        for (s, e) in [(0, GRANULE), (2 * GRANULE, 4 * GRANULE), (6 * GRANULE, sl)] {
            let range = |i: usize| {
                let proof = prove_range(&b.slivers[i], s, e).unwrap();
                let data = b.slivers[i][s as usize..e as usize].to_vec();
                b.metadata
                    .verify_range(b.blob_id, i as u16, s, data, &proof)
                    .unwrap()
            };
            for target in 0..3u16 {
                for others in [[3, 4, 5], [1, 5, 6], [0, 2, 6], [4, 5, 6]] {
                    let ranges: Vec<_> = others.iter().map(|&i| range(i)).collect();
                    let got = codec
                        .restore_range(&b.metadata, &b.blob_id, target, &ranges)
                        .unwrap();
                    let want = &b.slivers[usize::from(target)][s as usize..e as usize];
                    assert!(got == want, "{s}..{e} target {target} from {others:?}");
                }
            }
            let two: Vec<_> = [4, 5].iter().map(|&i| range(i)).collect();
            assert!(matches!(
                codec.restore_range(&b.metadata, &b.blob_id, 0, &two),
                Err(CodecError::NotEnoughSlivers { have: 2, .. })
            ));
        }
    }

    #[test]
    fn aligned_range_covers_and_stays_inside() {
        assert_eq!(aligned_range(100_000, 0, 1), (0, GRANULE));
        assert_eq!(
            aligned_range(100_000, GRANULE, GRANULE + 1),
            (GRANULE, 2 * GRANULE)
        );
        assert_eq!(
            aligned_range(100_000, 99_000, 100_000),
            (6 * GRANULE, 100_000)
        );
        assert_eq!(aligned_range(100, 3, 50), (0, 100));
        for (from, to) in [(0, 1), (17, 40_000), (99_999, 100_000)] {
            let (s, e) = aligned_range(100_000, from, to);
            assert!(s <= from && to <= e);
            check_range(100_000, s, e).unwrap();
        }
    }
}
