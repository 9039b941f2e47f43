//! Encoding: blob bytes -> `n` slivers, plus the metadata and blob id that commit to them.

use super::coder::{rs_error, Codec};
use super::commit::sliver_hasher;
use super::sliver::VerifiedSliver;
use super::types::{BlobId, BlobMetadata, CodecError, EncodingParams, SliverHash, SliverIndex};

/// Bytes copied, then hashed, at a time: small enough that the hash reads the block back from
/// L1/L2 right after the copy wrote it, so copy + hash cost about one pass over memory.
const FUSED_BLOCK: usize = 64 * 1024;

/// The output of [`encode`]: the blob id, its metadata and the `n` slivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBlob {
    /// Id of the blob, derived from `metadata`.
    pub blob_id: BlobId,
    /// Parameters, length and sliver commitments.
    pub metadata: BlobMetadata,
    /// The `n` slivers; sliver `i` goes to node `i`. Slivers `0..k` are the (zero-padded) data.
    pub slivers: Vec<Vec<u8>>,
}

impl EncodedBlob {
    /// Turns the slivers into [`VerifiedSliver`]s without re-hashing them, e.g. to seed the
    /// writer's sliver cache. Sound because `metadata` was computed from these very bytes.
    pub fn into_verified_slivers(self) -> Vec<VerifiedSliver> {
        let blob_id = self.blob_id;
        (0..=SliverIndex::MAX)
            .zip(self.slivers)
            .map(|(index, data)| VerifiedSliver::new_trusted(blob_id, index, data))
            .collect()
    }
}

/// Copies `src` into `sliver` (empty), zero-padded to `len` bytes, and hashes it in the same
/// pass.
fn copy_and_hash(src: &[u8], len: usize, mut sliver: Vec<u8>) -> (Vec<u8>, SliverHash) {
    debug_assert!(src.len() <= len);
    sliver.clear();
    sliver.reserve_exact(len);
    let mut hasher = sliver_hasher();
    for block in src.chunks(FUSED_BLOCK) {
        sliver.extend_from_slice(block);
        hasher.update(block);
    }
    let padding_start = sliver.len();
    sliver.resize(len, 0);
    hasher.update(&sliver[padding_start..]);
    (sliver, *hasher.finalize().as_bytes())
}

/// Encodes `data` into `params.n` slivers, any `params.k` of which rebuild it.
///
/// Slivers `0..k` are `data` split in `k` and zero-padded to the sliver length; slivers `k..n`
/// are Reed-Solomon recovery slivers (none when `n == k`). Each sliver is copied and hashed in
/// one pass; the only other passes are the ones the RS encoder makes.
///
/// Fails on invalid parameters or a blob over [`MAX_BLOB_LEN`](super::MAX_BLOB_LEN). On a hot
/// path prefer [`Codec::encode`], which reuses the RS work buffers.
pub fn encode(params: EncodingParams, data: &[u8]) -> Result<EncodedBlob, CodecError> {
    Codec::new().encode(params, data)
}

impl Codec {
    /// Same as [`encode`], reusing this codec's RS work buffers.
    pub fn encode(
        &mut self,
        params: EncodingParams,
        data: &[u8],
    ) -> Result<EncodedBlob, CodecError> {
        self.encode_with(params, data, &mut |len| Vec::with_capacity(len))
    }

    /// Same as [`Codec::encode`], with each sliver written into a buffer from `buffer`
    /// (called with the sliver length; what it returns is emptied first), e.g. a reused one.
    pub fn encode_with(
        &mut self,
        params: EncodingParams,
        data: &[u8],
        buffer: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<EncodedBlob, CodecError> {
        let blob_len = u64::try_from(data.len()).map_err(|_| CodecError::BlobTooLarge(u64::MAX))?;
        let sliver_len = params.sliver_len(blob_len)?;
        let n = usize::from(params.n);
        let k = usize::from(params.k);
        let recovery = n - k;

        let mut encoder = if recovery > 0 {
            Some(self.rs_encoder(k, recovery, sliver_len)?)
        } else {
            None
        };
        let mut slivers = Vec::with_capacity(n);
        let mut sliver_hashes = Vec::with_capacity(n);

        // INV: sliver_len * k >= data.len() (sliver_len rounds up), so the k systematic slivers
        // hold every byte of `data`; the chunks iterator may yield fewer than k when padding is
        // larger than a sliver, and the missing ones are all padding.
        let mut chunks = data.chunks(sliver_len);
        for _ in 0..k {
            let (sliver, hash) =
                copy_and_hash(chunks.next().unwrap_or(&[]), sliver_len, buffer(sliver_len));
            if let Some(encoder) = encoder.as_mut() {
                // Fed right after the copy, while the sliver is still (partly) in cache.
                encoder.add_original_shard(&sliver).map_err(rs_error)?;
            }
            slivers.push(sliver);
            sliver_hashes.push(hash);
        }

        if let Some(encoder) = encoder.as_mut() {
            let result = encoder.encode().map_err(rs_error)?;
            for shard in result.recovery_iter() {
                let (sliver, hash) = copy_and_hash(shard, sliver_len, buffer(sliver_len));
                slivers.push(sliver);
                sliver_hashes.push(hash);
            }
        }
        if slivers.len() != n {
            return Err(CodecError::ReedSolomon(format!(
                "encoder returned {} slivers, expected {n}",
                slivers.len()
            )));
        }

        let metadata = BlobMetadata {
            params,
            blob_len,
            sliver_hashes,
        };
        Ok(EncodedBlob {
            blob_id: metadata.blob_id(),
            metadata,
            slivers,
        })
    }
}
