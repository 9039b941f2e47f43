//! Decoding: any `k` verified slivers -> the original blob bytes.

use super::coder::{rs_error, Codec};
use super::sliver::VerifiedSliver;
use super::types::{BlobId, BlobMetadata, CodecError};

/// Rebuilds blob `blob_id` from verified slivers.
///
/// `metadata` must be the metadata `blob_id` commits to ([`CodecError::BlobIdMismatch`]
/// otherwise); every sliver must have been verified against `blob_id`
/// ([`CodecError::WrongBlob`] otherwise). Duplicate indices are ignored; fewer than `k` distinct
/// ones fail with [`CodecError::NotEnoughSlivers`]. When all systematic slivers `0..k` are at
/// hand the blob is just their concatenation and no Reed-Solomon work is done; otherwise the
/// missing systematic slivers are restored from exactly `k` slivers.
///
/// Returns exactly `metadata.blob_len` bytes. On a hot path prefer [`Codec::decode`], which
/// reuses the RS work buffers.
pub fn decode(
    metadata: &BlobMetadata,
    blob_id: &BlobId,
    slivers: Vec<VerifiedSliver>,
) -> Result<Vec<u8>, CodecError> {
    Codec::new().decode(metadata, blob_id, slivers)
}

impl Codec {
    /// Same as [`decode`], reusing this codec's RS work buffers.
    pub fn decode(
        &mut self,
        metadata: &BlobMetadata,
        blob_id: &BlobId,
        slivers: Vec<VerifiedSliver>,
    ) -> Result<Vec<u8>, CodecError> {
        metadata.check_id(blob_id)?;
        let sliver_len = metadata.sliver_len()?;
        let blob_len = usize::try_from(metadata.blob_len)
            .map_err(|_| CodecError::BlobTooLarge(metadata.blob_len))?;
        let n = usize::from(metadata.params.n);
        let k = usize::from(metadata.params.k);

        // One slot per sliver index; the first sliver seen for an index wins.
        let mut slots: Vec<Option<VerifiedSliver>> = vec![None; n];
        let mut distinct: u16 = 0;
        for sliver in slivers {
            if sliver.blob_id() != *blob_id {
                return Err(CodecError::WrongBlob {
                    expected: *blob_id,
                    got: sliver.blob_id(),
                });
            }
            // A sliver verified against `blob_id` was checked against metadata deriving the same
            // id, so its index and length agree with `metadata`; check anyway rather than panic.
            let index = sliver.index();
            let slot = slots
                .get_mut(usize::from(index))
                .ok_or(CodecError::IndexOutOfRange {
                    index,
                    n: metadata.params.n,
                })?;
            if sliver.data().len() != sliver_len {
                return Err(CodecError::SliverLength {
                    index,
                    expected: sliver_len,
                    got: sliver.data().len(),
                });
            }
            if slot.is_none() {
                *slot = Some(sliver);
                distinct += 1;
            }
        }
        if usize::from(distinct) < k {
            return Err(CodecError::NotEnoughSlivers {
                needed: metadata.params.k,
                have: distinct,
            });
        }

        // INV: every byte returned below comes from a verified sliver, or was restored by RS
        // from exactly k verified slivers.
        if slots[..k].iter().all(Option::is_some) {
            let mut systematic = slots.into_iter().take(k).flatten();
            let first = systematic.next().map(VerifiedSliver::into_data);
            let rest: Vec<VerifiedSliver> = systematic.collect();
            return assemble(first, rest.iter().map(VerifiedSliver::data), blob_len);
        }
        // Not all systematic slivers are present, so some recovery sliver is: n > k.
        self.restore(&mut slots, k, n - k, sliver_len, blob_len)
    }

    /// Restores the missing systematic slivers from exactly `k` of the present slivers
    /// (systematic ones first: they cost nothing to use) and assembles the blob. Each missing
    /// one is a fixed GF(2^16) combination of those `k` ([`Codec::restore_coefficients`]),
    /// cheaper than the RS library's decode, which also evaluates its erasure polynomial over
    /// the whole field every time; with more than 32 originals, the library decodes.
    fn restore(
        &mut self,
        slots: &mut [Option<VerifiedSliver>],
        k: usize,
        recovery: usize,
        sliver_len: usize,
        blob_len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let sources: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i].is_some())
            .take(k)
            .collect();
        let missing: Vec<usize> = (0..k).filter(|&i| slots[i].is_none()).collect();
        let mut coefficients = Vec::with_capacity(missing.len());
        for &target in &missing {
            match self.restore_coefficients(k + recovery, k, target, &sources)? {
                Some(c) => coefficients.push(c),
                None => return self.restore_by_decoding(slots, k, recovery, sliver_len, blob_len),
            }
        }
        {
            let data: Vec<&[u8]> = sources
                .iter()
                .filter_map(|&i| slots[i].as_ref().map(VerifiedSliver::data))
                .collect();
            for (slot, c) in coefficients.iter().enumerate() {
                self.combine_into(slot, c, &data, sliver_len);
            }
        }
        let this = &*self;
        assemble_restored(slots, k, blob_len, |index| {
            let m = missing.iter().position(|&i| i == index)?;
            Some(this.combined(m, sliver_len))
        })
    }

    /// [`Codec::restore`] by the RS library's decode.
    fn restore_by_decoding(
        &mut self,
        slots: &mut [Option<VerifiedSliver>],
        k: usize,
        recovery: usize,
        sliver_len: usize,
        blob_len: usize,
    ) -> Result<Vec<u8>, CodecError> {
        let decoder = self.rs_decoder(k, recovery, sliver_len)?;
        let mut fed = 0;
        for (index, slot) in slots.iter().enumerate() {
            let Some(sliver) = slot else { continue };
            if fed == k {
                break;
            }
            if index < k {
                decoder
                    .add_original_shard(index, sliver.data())
                    .map_err(rs_error)?;
            } else {
                decoder
                    .add_recovery_shard(index - k, sliver.data())
                    .map_err(rs_error)?;
            }
            fed += 1;
        }
        let result = decoder.decode().map_err(rs_error)?;
        assemble_restored(slots, k, blob_len, |index| result.restored_original(index))
    }
}

/// The blob from the systematic slivers in `slots` and, for the missing ones, what `restored`
/// gives for their index. Sliver 0's buffer, if present, becomes the blob's (saves a copy);
/// everything else is borrowed.
fn assemble_restored<'a>(
    slots: &'a mut [Option<VerifiedSliver>],
    k: usize,
    blob_len: usize,
    restored: impl Fn(usize) -> Option<&'a [u8]>,
) -> Result<Vec<u8>, CodecError> {
    let first = slots[0].take().map(VerifiedSliver::into_data);
    let slots: &'a [Option<VerifiedSliver>] = slots;
    let mut parts = Vec::with_capacity(k);
    for (index, slot) in slots
        .iter()
        .enumerate()
        .take(k)
        .skip(usize::from(first.is_some()))
    {
        let part = match slot {
            Some(sliver) => sliver.data(),
            None => restored(index).ok_or_else(|| {
                CodecError::ReedSolomon(format!("systematic sliver {index} not restored"))
            })?,
        };
        parts.push(part);
    }
    assemble(first, parts.into_iter(), blob_len)
}

/// Concatenates the systematic slivers and cuts the padding off, returning `blob_len` bytes.
///
/// `first`, when given, is reused as the output buffer: growing a large allocation in place
/// (glibc remaps it) is cheaper than copying it.
fn assemble<'a>(
    first: Option<Vec<u8>>,
    rest: impl Iterator<Item = &'a [u8]>,
    blob_len: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut out = match first {
        Some(mut data) => {
            data.truncate(blob_len);
            data.reserve_exact(blob_len - data.len());
            data
        }
        None => Vec::with_capacity(blob_len),
    };
    for part in rest {
        let remaining = blob_len - out.len();
        if remaining == 0 {
            break;
        }
        out.extend_from_slice(&part[..part.len().min(remaining)]);
    }
    // INV: the output is exactly blob_len bytes; k * sliver_len >= blob_len makes this hold
    // for any metadata that passed validation.
    if out.len() != blob_len {
        return Err(CodecError::MalformedMetadata(format!(
            "slivers hold {} bytes, blob has {blob_len}",
            out.len()
        )));
    }
    Ok(out)
}
