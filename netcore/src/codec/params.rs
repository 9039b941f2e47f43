//! Encoding parameters: validation and the sliver length a blob of a given size gets.

use super::types::{CodecError, EncodingParams, MAX_NODES};

/// Largest blob the codec accepts (1 TiB). Blobs are encrypted file chunks of a few MiB; the cap
/// only exists so a hostile `blob_len` in metadata can never make size arithmetic overflow.
pub const MAX_BLOB_LEN: u64 = 1 << 40;

/// Smallest sliver: reed-solomon-simd needs non-empty shards of an even number of bytes.
const MIN_SLIVER_LEN: u64 = 2;

impl EncodingParams {
    /// Builds parameters, checking `1 <= k <= n <= MAX_NODES`.
    pub fn new(n: u16, k: u16) -> Result<Self, CodecError> {
        let params = Self { n, k };
        params.validate()?;
        Ok(params)
    }

    /// Checks `1 <= k <= n <= MAX_NODES` (parameters may come from a file or the network).
    pub fn validate(&self) -> Result<(), CodecError> {
        let Self { n, k } = *self;
        if 1 <= k && k <= n && n <= MAX_NODES {
            Ok(())
        } else {
            Err(CodecError::InvalidParams { n, k })
        }
    }

    /// Number of recovery (non-systematic) slivers, `n - k`.
    pub fn recovery_count(&self) -> u16 {
        self.n.saturating_sub(self.k)
    }

    /// Length in bytes of every sliver of a blob of `blob_len` bytes: `ceil(blob_len / k)`
    /// rounded up to an even number, at least 2.
    ///
    /// Fails with [`CodecError::InvalidParams`] for invalid parameters and with
    /// [`CodecError::BlobTooLarge`] if `blob_len > MAX_BLOB_LEN` or the `n` slivers together
    /// would not fit in memory on this platform.
    pub fn sliver_len(&self, blob_len: u64) -> Result<usize, CodecError> {
        self.validate()?;
        if blob_len > MAX_BLOB_LEN {
            return Err(CodecError::BlobTooLarge(blob_len));
        }
        let per_sliver = blob_len.div_ceil(u64::from(self.k));
        let even = (per_sliver + (per_sliver & 1)).max(MIN_SLIVER_LEN);
        let len = usize::try_from(even).map_err(|_| CodecError::BlobTooLarge(blob_len))?;
        // INV: `n * sliver_len` fits in usize, so index arithmetic over all slivers cannot
        // overflow anywhere in the codec.
        len.checked_mul(usize::from(self.n))
            .ok_or(CodecError::BlobTooLarge(blob_len))?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_validates_range() {
        assert!(EncodingParams::new(1, 1).is_ok());
        assert!(EncodingParams::new(7, 3).is_ok());
        assert!(EncodingParams::new(MAX_NODES, 1).is_ok());
        assert!(EncodingParams::new(MAX_NODES, MAX_NODES).is_ok());
        for (n, k) in [
            (0, 0),
            (1, 0),
            (3, 4),
            (MAX_NODES + 1, 3),
            (u16::MAX, u16::MAX),
        ] {
            assert_eq!(
                EncodingParams::new(n, k),
                Err(CodecError::InvalidParams { n, k }),
                "n={n} k={k}"
            );
        }
        assert!(EncodingParams { n: 2, k: 3 }.validate().is_err());
    }

    #[test]
    fn sliver_len_rounds_up_to_even_min_two() {
        let p = |n, k| EncodingParams::new(n, k).expect("valid params");
        assert_eq!(p(7, 3).sliver_len(0), Ok(2));
        assert_eq!(p(7, 3).sliver_len(1), Ok(2));
        assert_eq!(p(7, 3).sliver_len(6), Ok(2));
        assert_eq!(p(7, 3).sliver_len(7), Ok(4));
        assert_eq!(p(7, 3).sliver_len(9), Ok(4));
        assert_eq!(p(7, 3).sliver_len(13), Ok(6));
        assert_eq!(p(1, 1).sliver_len(3), Ok(4));
        assert_eq!(p(1, 1).sliver_len(4), Ok(4));
        assert_eq!(p(4, 2).sliver_len(4 << 20), Ok(2 << 20));
        assert_eq!(p(7, 3).sliver_len(MAX_BLOB_LEN), Ok(366_503_875_926));
    }

    #[test]
    fn sliver_len_rejects_bad_params_and_absurd_sizes() {
        assert_eq!(
            EncodingParams { n: 3, k: 0 }.sliver_len(10),
            Err(CodecError::InvalidParams { n: 3, k: 0 })
        );
        let p = EncodingParams::new(7, 3).expect("valid params");
        assert_eq!(
            p.sliver_len(MAX_BLOB_LEN + 1),
            Err(CodecError::BlobTooLarge(MAX_BLOB_LEN + 1))
        );
        assert_eq!(
            p.sliver_len(u64::MAX),
            Err(CodecError::BlobTooLarge(u64::MAX))
        );
    }

    #[test]
    fn every_valid_shape_is_supported_by_reed_solomon() {
        use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
        for (n, k) in [
            (2, 1),
            (MAX_NODES, 1),
            (MAX_NODES, MAX_NODES - 1),
            (MAX_NODES, 512),
        ] {
            let (o, r) = (usize::from(k), usize::from(n - k));
            assert!(ReedSolomonEncoder::supports(o, r), "n={n} k={k}");
            assert!(ReedSolomonDecoder::supports(o, r), "n={n} k={k}");
        }
    }
}
