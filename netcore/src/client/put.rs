//! Quorum write: encode, send sliver `i` to node `i` in parallel, return at `n - f` valid
//! confirmations.

use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use super::{Client, ClientError, Failures, Inner, NodeError, NodeFailure};
use crate::codec::{BlobId, BlobMetadata, SliverIndex};
use crate::wire::{Request, Response, StorageConfirmation};

/// A successful write: the blob id, its metadata, and the storage certificate (at least
/// `n - f` confirmations, each verified against the committee's key for that node).
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// The blob's id.
    pub blob_id: BlobId,
    /// The blob's metadata (keep it to read the blob back without asking a node for it).
    pub metadata: BlobMetadata,
    /// Verified confirmations, one per confirming node.
    pub confirmations: Vec<StorageConfirmation>,
}

impl Client {
    /// Stores `data` as one blob. Returns once `n - f` nodes have durably stored their sliver
    /// and signed for it; slivers for slower nodes keep going in the background, and their
    /// confirmations are kept for [`Client::take_late_confirmations`].
    pub async fn put(&self, data: &[u8]) -> Result<PutOutcome, ClientError> {
        self.put_announced(data, |_| Ok(())).await
    }

    /// [`Client::put`], calling `announce` with the blob's id once it is encoded and before
    /// any node receives a byte: the caller records its intent (so a crash mid-put leaves no
    /// blob it does not know of). An error from `announce` stops the put.
    pub async fn put_announced(
        &self,
        data: &[u8],
        announce: impl FnOnce(&BlobId) -> Result<(), String>,
    ) -> Result<PutOutcome, ClientError> {
        crate::metrics::timed(
            crate::metrics::CLIENT_PUT_SECONDS,
            self.put_inner(data, announce),
        )
        .await
    }

    async fn put_inner(
        &self,
        data: &[u8],
        announce: impl FnOnce(&BlobId) -> Result<(), String>,
    ) -> Result<PutOutcome, ClientError> {
        let params = self.inner.committee.params();
        let pool = &self.inner.sliver_buffers;
        let encoded = cpu_bound(data.len(), || {
            self.inner.with_codec(data.len() as u64, |c| {
                c.encode_with(params, data, &mut |len| pool.take(len).into_vec())
            })
        })?;
        let blob_id = encoded.blob_id;
        announce(&blob_id).map_err(ClientError::Announce)?;
        let span = info_span!("put", blob = %blob_id, len = data.len());
        self.disperse(blob_id, encoded.metadata, encoded.slivers)
            .instrument(span)
            .await
    }

    async fn disperse(
        &self,
        blob_id: BlobId,
        metadata: BlobMetadata,
        slivers: Vec<Vec<u8>>,
    ) -> Result<PutOutcome, ClientError> {
        let metadata = Arc::new(metadata);
        let mut tasks = JoinSet::new();
        for (index, sliver) in slivers.into_iter().enumerate() {
            let inner = self.inner.clone();
            let metadata = metadata.clone();
            let index = index as SliverIndex;
            tasks.spawn(
                async move {
                    let r = store_one(&inner, blob_id, &metadata, index, sliver).await;
                    (index, r)
                }
                .in_current_span(),
            );
        }

        let needed = self.inner.committee.write_quorum();
        let tolerable = self.inner.committee.n - needed;
        let mut confirmations = Vec::with_capacity(usize::from(needed));
        let mut failures = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (node, result) = match joined {
                Ok(x) => x,
                Err(e) => {
                    warn!("sliver send task failed: {e}");
                    continue;
                }
            };
            match result {
                Ok(c) => confirmations.push(c),
                Err(error) => {
                    debug!(node, "store failed: {error}");
                    failures.push(NodeFailure { node, error });
                }
            }
            if confirmations.len() >= usize::from(needed) {
                // INV: success only with n - f verified confirmations from distinct nodes.
                let mut bg = self.inner.background.lock().await;
                if !tasks.is_empty() {
                    let inner = self.inner.clone();
                    bg.spawn(async move {
                        // The slower nodes' confirmations are kept too (verified like the
                        // others in `store_one`): evidence an audit can use.
                        while let Some(joined) = tasks.join_next().await {
                            if let Ok((_, Ok(c))) = joined {
                                inner.note_late(c);
                            }
                        }
                    });
                }
                return Ok(PutOutcome {
                    blob_id,
                    metadata: Arc::unwrap_or_clone(metadata),
                    confirmations,
                });
            }
            if failures.len() > usize::from(tolerable) {
                break;
            }
        }
        Err(ClientError::NotEnoughConfirmations {
            blob_id,
            needed,
            confirmed: confirmations.len() as u16,
            failures: Failures(failures),
        })
    }
}

pub(super) async fn store_one(
    inner: &Inner,
    blob_id: BlobId,
    metadata: &BlobMetadata,
    index: SliverIndex,
    sliver: Vec<u8>,
) -> Result<StorageConfirmation, NodeError> {
    let node = &inner.nodes[usize::from(index)];
    let len = sliver.len() as u64;
    let request = Request::StoreSliver {
        blob_id,
        metadata: metadata.clone(),
        index,
        len,
    };
    let deadline = inner.config.request_deadline(len);
    // Handed to QUIC as shared slices of this one buffer: no copy before the packets. The
    // buffer goes back to the pool when QUIC drops the last of them.
    let body = bytes::Bytes::from_owner(inner.sliver_buffers.adopt(sliver));
    let (resp, _) = node
        .request(&inner.config, request, Some(body), deadline)
        .await?;
    match resp {
        Response::Stored(c) if c.verify(&blob_id, index, &node.info.public_key) => Ok(c),
        Response::Stored(_) => Err(NodeError::BadConfirmation),
        other => Err(super::conn::unexpected(other)),
    }
}

/// Codec work over fewer bytes than this runs where it is: handing a worker's queue to another
/// thread (a thread woken) costs about as much as hashing or coding this much (256 KiB of
/// blake3 at 2-4 GB/s is 0.06-0.13 ms, by arithmetic, not measured here), and a restored
/// 16 KiB range paid that hand-off on every degraded random read (3-11% fewer IOPS with two
/// nodes stopped, four alternating pairs).
const CPU_BOUND_INLINE: usize = 256 << 10;

/// Runs CPU-heavy codec work over `bytes` bytes without stalling the runtime's other tasks:
/// on a worker of a multi-threaded runtime, the worker hands its queue to another thread
/// meanwhile, unless the work is small ([`CPU_BOUND_INLINE`]).
pub fn cpu_bound<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    if bytes < CPU_BOUND_INLINE {
        return f();
    }
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
