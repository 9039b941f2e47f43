//! [`Codec`]: Reed-Solomon working memory kept between blobs.
//!
//! The RS encoder and decoder need work buffers of a few times the sliver length. Allocating
//! them per blob means faulting in fresh pages every time, which measured here costs about as
//! much as the coding itself; a long-lived `Codec` (one per worker thread) keeps them.

use std::fmt;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::types::CodecError;

/// Reusable encoder/decoder state. [`Codec::encode`] and [`Codec::decode`] behave exactly like
/// the free functions [`encode`](super::encode) and [`decode`](super::decode), which build a
/// throwaway `Codec` per call.
///
/// Memory: holds the RS work buffers of the last blob it coded (up to about `n` slivers' worth
/// for the encoder and `2 * n` for the decoder) until dropped, so keep one per worker thread,
/// not one per blob, and drop it with the worker.
#[derive(Default)]
pub struct Codec {
    rs_encoder: Option<ReedSolomonEncoder>,
    rs_decoder: Option<ReedSolomonDecoder>,
}

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
