//! [`Codec`]: Reed-Solomon working memory kept between blobs.
//!
//! The RS encoder and decoder need work buffers of a few times the sliver length. Allocating
//! them per blob means faulting in fresh pages every time, which measured here costs about as
//! much as the coding itself; a long-lived `Codec` (one per worker thread) keeps them.

use std::fmt;

use reed_solomon_simd::engine::{tables, DefaultEngine, Engine, GfElement};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::types::CodecError;

/// Reusable encoder/decoder state. [`Codec::encode`] and [`Codec::decode`] behave exactly like
/// the free functions [`encode`](super::encode) and [`decode`](super::decode), which build a
/// throwaway `Codec` per call.
///
/// Memory: holds the RS work buffers of the last blob it coded (up to about `n` slivers' worth
/// for the encoder and `2 * n` for the decoder, which with at most 32 originals only ever
/// decodes 64-byte shards) and the buffers of the last rebuild of missing slivers (one per
/// missing systematic sliver, and one more) until dropped, so keep one per worker thread, not
/// one per blob, and drop it with the worker.
#[derive(Default)]
pub struct Codec {
    rs_encoder: Option<ReedSolomonEncoder>,
    rs_decoder: Option<ReedSolomonDecoder>,
    /// Coefficients of ranges restored before, by erasure pattern (see
    /// [`Codec::restore_coefficients`]).
    restore_coefficients: std::collections::HashMap<RestorePattern, Vec<GfElement>>,
    /// GF(2^16) arithmetic for [`Codec::combine`], made on first use.
    engine: Option<DefaultEngine>,
    /// [`Codec::combine_into`]'s work buffer for one term, kept between blobs.
    term: Vec<[u8; 64]>,
    /// [`Codec::combine_into`]'s results, kept between blobs.
    sums: Vec<Vec<[u8; 64]>>,
}

/// Which sliver is rebuilt from which others: `(n, k, target, sources in ascending order)`.
type RestorePattern = (usize, usize, usize, Vec<usize>);

/// Erasure patterns remembered per codec: a committee has few that occur (the nodes that are
/// away), so this only bounds a pathological mix.
const MAX_RESTORE_PATTERNS: usize = 256;

/// GF(2^16) symbols per 64-byte block of the RS library's shard layout: the block's first 32
/// bytes are the symbols' low bytes, the next 32 their high bytes.
const BLOCK_SYMBOLS: usize = 32;

impl Codec {
    /// A codec with no buffers yet; they are allocated on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The RS encoder, reset for `k` originals, `recovery` recovery shards of `shard_len` bytes.
    pub(crate) fn rs_encoder(
        &mut self,
        k: usize,
        recovery: usize,
        shard_len: usize,
    ) -> Result<&mut ReedSolomonEncoder, CodecError> {
        let encoder = match self.rs_encoder.take() {
            Some(mut encoder) => {
                encoder.reset(k, recovery, shard_len).map_err(rs_error)?;
                encoder
            }
            None => ReedSolomonEncoder::new(k, recovery, shard_len).map_err(rs_error)?,
        };
        Ok(self.rs_encoder.insert(encoder))
    }

    /// The RS decoder, reset for `k` originals, `recovery` recovery shards of `shard_len` bytes.
    pub(crate) fn rs_decoder(
        &mut self,
        k: usize,
        recovery: usize,
        shard_len: usize,
    ) -> Result<&mut ReedSolomonDecoder, CodecError> {
        let decoder = match self.rs_decoder.take() {
            Some(mut decoder) => {
                decoder.reset(k, recovery, shard_len).map_err(rs_error)?;
                decoder
            }
            None => ReedSolomonDecoder::new(k, recovery, shard_len).map_err(rs_error)?,
        };
        Ok(self.rs_decoder.insert(decoder))
    }
}

impl Codec {
    /// The coefficients `c` with which sliver `target` is, symbol by symbol, the sum over
    /// `j` of `c[j] * sliver sources[j]` in GF(2^16): `sources` are `k` distinct sliver
    /// indices in ascending order, `target < k` is not among them. The code is linear and
    /// works on each symbol position on its own, so these depend only on which slivers are
    /// there; the RS library finds them by decoding one 64-byte shard per source holding a
    /// single 1 (source `j` at symbol `j`), which costs as much as decoding any range (its
    /// erasure polynomial over all 65,536 field elements, about half a millisecond here), once
    /// per pattern instead of once per range. `None` when `k` exceeds the symbols of a block.
    pub(crate) fn restore_coefficients(
        &mut self,
        n: usize,
        k: usize,
        target: usize,
        sources: &[usize],
    ) -> Result<Option<Vec<GfElement>>, CodecError> {
        if k > BLOCK_SYMBOLS || sources.len() != k {
            return Ok(None);
        }
        let key: RestorePattern = (n, k, target, sources.to_vec());
        if let Some(c) = self.restore_coefficients.get(&key) {
            return Ok(Some(c.clone()));
        }
        let coefficients: Vec<GfElement> = {
            let decoder = self.rs_decoder(k, n - k, 64)?;
            for (j, &i) in sources.iter().enumerate() {
                let mut unit = [0u8; 64];
                unit[j] = 1;
                if i < k {
                    decoder.add_original_shard(i, unit).map_err(rs_error)?;
                } else {
                    decoder.add_recovery_shard(i - k, unit).map_err(rs_error)?;
                }
            }
            let result = decoder.decode().map_err(rs_error)?;
            let out = result
                .restored_original(target)
                .ok_or_else(|| CodecError::ReedSolomon(format!("sliver {target} not restored")))?;
            (0..k)
                .map(|j| GfElement::from(out[j]) | GfElement::from(out[BLOCK_SYMBOLS + j]) << 8)
                .collect()
        };
        if self.restore_coefficients.len() >= MAX_RESTORE_PATTERNS {
            self.restore_coefficients.clear();
        }
        self.restore_coefficients.insert(key, coefficients.clone());
        Ok(Some(coefficients))
    }

    /// `sum over j of coefficients[j] * sources[j]`, symbol by symbol in GF(2^16), for
    /// sources of `len` bytes each (`len` even), laid out as the RS library lays out shards
    /// (so that a symbol here is the symbol it decodes): whole 64-byte blocks as they are, and a
    /// last partial block of `t` bytes as its first `t / 2` bytes (low) and last `t / 2` (high).
    pub(crate) fn combine(
        &mut self,
        coefficients: &[GfElement],
        sources: &[&[u8]],
        len: usize,
    ) -> Vec<u8> {
        self.combine_into(0, coefficients, sources, len);
        self.combined(0, len).to_vec()
    }

    /// [`Codec::combine`] into result buffer `slot` (read it with [`Codec::combined`]), with
    /// buffers kept between calls: a chunk-sized combination in fresh memory would have every
    /// page of it faulted in and zeroed per chunk.
    pub(crate) fn combine_into(
        &mut self,
        slot: usize,
        coefficients: &[GfElement],
        sources: &[&[u8]],
        len: usize,
    ) {
        debug_assert!(len.is_multiple_of(2) && sources.iter().all(|s| s.len() == len));
        let engine = self.engine.get_or_insert_with(DefaultEngine::new);
        let log = &tables::get_exp_log().log;
        let blocks = len.div_ceil(64);
        if self.sums.len() <= slot {
            self.sums.resize_with(slot + 1, Vec::new);
        }
        let sum = &mut self.sums[slot];
        sum.clear();
        sum.resize(blocks, [0; 64]);
        self.term.resize(blocks, [0; 64]);
        let term = &mut self.term[..blocks];
        for (&c, data) in coefficients.iter().zip(sources) {
            if c == 0 {
                continue;
            }
            to_blocks(data, term);
            if c != 1 {
                engine.mul(term, log[usize::from(c)]);
            }
            reed_solomon_simd::engine::utils::xor(sum, term);
        }
        // Undo the partial last block's layout in place: its high bytes follow its low ones.
        let tail = len % 64;
        if tail > 0 {
            sum[len / 64].copy_within(BLOCK_SYMBOLS..BLOCK_SYMBOLS + tail / 2, tail / 2);
        }
    }

    /// The `len` bytes [`Codec::combine_into`] left in `slot`.
    pub(crate) fn combined(&self, slot: usize, len: usize) -> &[u8] {
        &self.sums[slot].as_flattened()[..len]
    }
}

/// `data` in the RS library's shard layout, into `blocks` (`data.len().div_ceil(64)` of them).
fn to_blocks(data: &[u8], blocks: &mut [[u8; 64]]) {
    let whole = data.len() / 64;
    let tail = data.len() % 64;
    blocks[..whole]
        .as_flattened_mut()
        .copy_from_slice(&data[..whole * 64]);
    if tail > 0 {
        let block = &mut blocks[whole];
        *block = [0; 64];
        let (lo, hi) = data[whole * 64..].split_at(tail / 2);
        block[..lo.len()].copy_from_slice(lo);
        block[BLOCK_SYMBOLS..BLOCK_SYMBOLS + hi.len()].copy_from_slice(hi);
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("has_encoder", &self.rs_encoder.is_some())
            .field("has_decoder", &self.rs_decoder.is_some())
            .finish()
    }
}

/// Maps a reed-solomon-simd error (a bug once inputs are validated) to a codec error.
pub(crate) fn rs_error(err: reed_solomon_simd::Error) -> CodecError {
    CodecError::ReedSolomon(err.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `k` original shards of `len` bytes of varied data and the `n - k` recovery shards the
    /// RS library makes of them.
    fn shards(n: usize, k: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut originals = Vec::new();
        for _ in 0..k {
            let shard: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            originals.push(shard);
        }
        let mut encoder = ReedSolomonEncoder::new(k, n - k, len).unwrap();
        for s in &originals {
            encoder.add_original_shard(s).unwrap();
        }
        let recovery: Vec<Vec<u8>> = encoder
            .encode()
            .unwrap()
            .recovery_iter()
            .map(<[u8]>::to_vec)
            .collect();
        originals.into_iter().chain(recovery).collect()
    }

    /// Every `k`-subset of `0..n` without `skip`, in ascending order.
    fn subsets(n: usize, k: usize, skip: usize) -> Vec<Vec<usize>> {
        let pool: Vec<usize> = (0..n).filter(|&i| i != skip).collect();
        (0u32..1 << pool.len())
            .filter(|m| m.count_ones() as usize == k)
            .map(|m| {
                (0..pool.len())
                    .filter(|b| m & (1 << b) != 0)
                    .map(|b| pool[b])
                    .collect()
            })
            .collect()
    }

    /// The linear combination rebuilds each original shard from every possible set of `k`
    /// others, for shard lengths with and without a partial last block, exactly as the
    /// library's decode does; and a pattern seen before is answered from the cache.
    #[test]
    fn a_combination_of_k_shards_rebuilds_any_original_as_decoding_does() {
        let mut codec = Codec::new();
        for (n, k) in [(7, 3), (4, 2), (6, 1), (10, 4)] {
            for len in [64, 2, 30, 62, 64 * 5 + 46, 16 * 1024] {
                let all = shards(n, k, len, (n * 1000 + len) as u64);
                for target in 0..k {
                    for sources in subsets(n, k, target) {
                        let c = codec
                            .restore_coefficients(n, k, target, &sources)
                            .unwrap()
                            .unwrap();
                        let data: Vec<&[u8]> = sources.iter().map(|&i| &all[i][..]).collect();
                        assert_eq!(
                            codec.combine(&c, &data, len),
                            all[target],
                            "n {n} k {k} len {len} target {target} from {sources:?}"
                        );
                    }
                }
            }
        }
        // More patterns than are remembered came by: the cache was emptied and refilled,
        // never past its bound.
        assert!(codec.restore_coefficients.len() <= MAX_RESTORE_PATTERNS);
        let mut fresh = Codec::new();
        let first = fresh.restore_coefficients(7, 3, 0, &[3, 4, 5]).unwrap();
        assert_eq!(fresh.restore_coefficients.len(), 1);
        assert_eq!(
            fresh.restore_coefficients(7, 3, 0, &[3, 4, 5]).unwrap(),
            first
        );
        assert_eq!(fresh.restore_coefficients.len(), 1);
    }

    #[test]
    fn more_originals_than_a_block_holds_symbols_have_no_coefficients() {
        let mut codec = Codec::new();
        let sources: Vec<usize> = (1..=33).collect();
        assert_eq!(
            codec.restore_coefficients(40, 33, 0, &sources).unwrap(),
            None
        );
    }
}
