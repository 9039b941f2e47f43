//! Ranged, verified reads: a few KiB of a blob without fetching whole slivers.
//!
//! The bytes of a blob are its systematic slivers laid end to end, so a byte range of the blob
//! is a range of one systematic sliver (or two, across a boundary). Each is asked of the node
//! that holds that sliver, in whole granules, and checked against the blob's commitments with
//! the proof the node sends along ([`BlobMetadata::verify_range`]). When that node fails, lies,
//! or has not answered within the hedge delay, the same range of `k` other slivers is gathered
//! (hedged like a whole-blob read) and the missing range rebuilt with Reed-Solomon
//! ([`Codec::restore_range`](crate::codec::Codec::restore_range)); whichever is ready first
//! wins.

use futures::future::FusedFuture;
use futures::FutureExt;
use tracing::{debug, info_span, warn, Instrument};

use super::get::hedged;
use super::put::cpu_bound;
use super::{Client, ClientError, Failures, NodeError, NodeFailure};
use crate::codec::{aligned_range, BlobId, BlobMetadata, CodecError, SliverIndex, VerifiedRange};
use crate::wire::{Request, Response};

impl Client {
    /// Reads bytes `offset..offset + len` of a blob. Every returned byte was verified: the
    /// metadata against `blob_id`, each range against the metadata.
    pub async fn get_range(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let span = info_span!("get_range", blob = %blob_id, offset, len);
        crate::metrics::timed(
            crate::metrics::CLIENT_GET_RANGE_SECONDS,
            self.get_range_verified(blob_id, metadata, offset, len),
        )
        .instrument(span)
        .await
    }

    async fn get_range_verified(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        metadata.check_id(blob_id)?;
        let sliver_len = metadata.sliver_len()? as u64;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= metadata.blob_len)
            .ok_or(CodecError::BadRange {
                start: offset,
                end: offset.saturating_add(len),
                sliver_len,
            })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        // The pieces of the range, one per systematic sliver it touches.
        let mut pieces = Vec::new();
        let mut at = offset;
        while at < end {
            let index = SliverIndex::try_from(at / sliver_len)
                .map_err(|_| CodecError::MalformedMetadata("range past the slivers".into()))?;
            let from = at % sliver_len;
            let to = sliver_len.min(from + (end - at));
            pieces.push((index, from, to));
            at += to - from;
        }
        let fetched = futures::future::join_all(pieces.iter().map(|&(index, from, to)| {
            self.sliver_range(blob_id, metadata, sliver_len, index, from, to)
        }))
        .await;
        let mut out = Vec::with_capacity(len as usize);
        for r in fetched {
            out.extend_from_slice(&r?);
        }
        Ok(out)
    }

    /// Bytes `from..to` of systematic sliver `index`: from its node, or rebuilt from `k`
    /// others when that node is suspect, fails, or is slower than the hedge delay.
    async fn sliver_range(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
        sliver_len: u64,
        index: SliverIndex,
        from: u64,
        to: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let (start, end) = aligned_range(sliver_len, from, to);
        let cut = |data: Vec<u8>| data[(from - start) as usize..(to - start) as usize].to_vec();
        let hedge = self.inner.config.hedge_after(end - start);
        let node = &self.inner.nodes[usize::from(index)];
        let mut failures = Vec::new();

        let mut direct = self
            .fetch_range(blob_id, metadata, index, start, end)
            .boxed()
            .fuse();
        if !node.suspect(self.inner.config.hedge_delay) {
            tokio::select! {
                (_, r) = &mut direct => match r {
                    Ok(v) => return Ok(cut(v.into_data())),
                    Err(error) => failures.push(NodeFailure { node: index, error }),
                },
                () = tokio::time::sleep(hedge) => debug!(node = index, "range slow; rebuilding it from others"),
            }
        }

        let k = usize::from(metadata.params.k);
        let order: Vec<SliverIndex> = self
            .read_order(true)
            .into_iter()
            .filter(|&i| i != index)
            .collect();
        let mut gather = hedged(order, k, 0, hedge, |i| {
            self.fetch_range(blob_id, metadata, i, start, end).boxed()
        })
        .boxed()
        .fuse();
        let (ranges, more) = loop {
            tokio::select! {
                (_, r) = &mut direct, if !direct.is_terminated() => match r {
                    Ok(v) => return Ok(cut(v.into_data())),
                    Err(error) => failures.push(NodeFailure { node: index, error }),
                },
                got = &mut gather => break got,
            }
        };
        failures.extend(more.0);
        self.note_damage(blob_id, &failures);
        if ranges.len() < k {
            return Err(ClientError::NotEnoughSlivers {
                blob_id: *blob_id,
                needed: metadata.params.k,
                verified: ranges.len() as u16,
                failures: Failures(failures),
            });
        }
        let work = ranges.iter().map(|r| r.data().len()).sum();
        let restored = cpu_bound(work, || {
            self.inner.with_codec(end - start, |c| {
                c.restore_range(metadata, blob_id, index, &ranges)
            })
        })?;
        Ok(cut(restored))
    }

    /// Asks node `index` for bytes `start..end` of its sliver and verifies them.
    async fn fetch_range(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
        index: SliverIndex,
        start: u64,
        end: u64,
    ) -> (SliverIndex, Result<VerifiedRange, NodeError>) {
        let cfg = &self.inner.config;
        let node = &self.inner.nodes[usize::from(index)];
        let r = async {
            let req = Request::GetRange {
                blob_id: *blob_id,
                index,
                start,
                end,
            };
            let len = end - start;
            let deadline = cfg.request_deadline(len);
            let (resp, body) = node
                .request_expecting(cfg, req, None, Some(len), 0, deadline)
                .await?;
            match (resp, body) {
                (Response::Range { proof, .. }, Some(data)) => {
                    // INV: a range is kept only if it matches its sliver's commitment.
                    let v = metadata
                        .verify_range(*blob_id, index, start, data, &proof)
                        .map_err(|e| {
                            warn!(node = index, "sliver range failed verification: {e}");
                            NodeError::Verification(e)
                        })?;
                    debug!(node = index, start, end, "sliver range verified");
                    Ok(v)
                }
                (other, _) => Err(super::conn::unexpected(other)),
            }
        }
        .await;
        (index, r)
    }
}
