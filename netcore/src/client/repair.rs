//! Repair: bring every node's sliver of a blob back. Each node's sliver is fetched and
//! verified; a node that answers without a valid sliver (missing, truncated, corrupt, another
//! blob's) gets its sliver rebuilt from `k` verified ones, re-encoded, and stored again, with a
//! signed confirmation. Nodes that cannot be reached are reported, not written.

use std::sync::Arc;

use tracing::{info, info_span, warn, Instrument};

use super::put::cpu_bound;
use super::{Client, ClientError, Failures, NodeError, NodeFailure};
use crate::codec::{BlobId, BlobMetadata, CodecError, SliverIndex, VerifiedSliver};
use crate::wire::{Request, Response, StorageConfirmation, WireError};

/// What repairing one blob found and did.
#[derive(Debug)]
pub struct RepairReport {
    /// The blob.
    pub blob_id: BlobId,
    /// Nodes whose sliver verified.
    pub intact: Vec<SliverIndex>,
    /// Nodes whose sliver was missing or bad and is now stored again, with their signed
    /// confirmations.
    pub restored: Vec<StorageConfirmation>,
    /// Nodes that could not be checked or repaired (unreachable, refusing), and why.
    pub failed: Failures,
    /// Sliver bytes fetched to check the blob.
    pub bytes_fetched: u64,
    /// Sliver bytes stored to repair it.
    pub bytes_stored: u64,
}

/// How a node's copy of one sliver turned out.
enum Check {
    Intact(VerifiedSliver),
    /// The node answered, without a valid sliver: repair it.
    Damaged(NodeError),
    /// The node could not be asked: leave it.
    Unreachable(NodeError),
}

impl Client {
    /// Checks every node's sliver of `blob_id` and restores the missing and bad ones (see the
    /// module docs). Fails only if fewer than `k` slivers verify, so nothing can be rebuilt.
    pub async fn repair(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
    ) -> Result<RepairReport, ClientError> {
        metadata.check_id(blob_id)?;
        let span = info_span!("repair", blob = %blob_id);
        self.repair_checked(*blob_id, metadata)
            .instrument(span)
            .await
    }

    async fn repair_checked(
        &self,
        blob_id: BlobId,
        metadata: &BlobMetadata,
    ) -> Result<RepairReport, ClientError> {
        let sliver_len = metadata.sliver_len()? as u64;
        let cfg = &self.inner.config;
        let deadline = cfg.request_deadline(sliver_len);
        let checks = futures::future::join_all(self.inner.nodes.iter().map(|node| async move {
            let check = check_node(node, cfg, blob_id, metadata, sliver_len, deadline).await;
            (node.info.index, check)
        }))
        .await;

        let mut report = RepairReport {
            blob_id,
            intact: Vec::new(),
            restored: Vec::new(),
            failed: Failures::default(),
            bytes_fetched: 0,
            bytes_stored: 0,
        };
        let mut verified = Vec::new();
        let mut damaged = Vec::new();
        for (index, check) in checks {
            match check {
                Check::Intact(v) => {
                    report.intact.push(index);
                    report.bytes_fetched += sliver_len;
                    verified.push(v);
                }
                Check::Damaged(error) => {
                    info!(node = index, "sliver needs repair: {error}");
                    damaged.push(index);
                }
                Check::Unreachable(error) => {
                    report.failed.0.push(NodeFailure { node: index, error })
                }
            }
        }
        if damaged.is_empty() {
            return Ok(report);
        }
        let k = metadata.params.k;
        if verified.len() < usize::from(k) {
            return Err(ClientError::NotEnoughSlivers {
                blob_id,
                needed: k,
                verified: verified.len() as u16,
                failures: report.failed,
            });
        }
        // Rebuild the blob from `k` verified slivers and encode it again: the same bytes and
        // parameters give the same slivers, which the blob id then vouches for.
        verified.truncate(usize::from(k));
        let encoded = cpu_bound(
            usize::try_from(metadata.blob_len).unwrap_or(usize::MAX),
            || {
                self.inner.with_codec(metadata.blob_len, |c| {
                    let data = c.decode(metadata, &blob_id, verified)?;
                    c.encode(metadata.params, &data)
                })
            },
        )?;
        if encoded.blob_id != blob_id {
            return Err(ClientError::Codec(CodecError::BlobIdMismatch {
                expected: blob_id,
            }));
        }
        let metadata = Arc::new(encoded.metadata);
        let slivers = encoded.slivers;
        let stores = damaged.iter().map(|&index| {
            let sliver = &slivers[usize::from(index)];
            let metadata = metadata.clone();
            async move {
                let r =
                    super::put::store_one(&self.inner, blob_id, &metadata, index, sliver.clone())
                        .await;
                (index, r)
            }
        });
        for (index, r) in futures::future::join_all(stores).await {
            match r {
                Ok(confirmation) => {
                    report.bytes_stored += sliver_len;
                    report.restored.push(confirmation);
                }
                Err(error) => {
                    warn!(node = index, "could not store the repaired sliver: {error}");
                    report.failed.0.push(NodeFailure { node: index, error });
                }
            }
        }
        Ok(report)
    }
}

/// What a node did when challenged for its sliver of a blob ([`Client::challenge`]).
#[derive(Debug)]
pub enum Challenge {
    /// It served a sliver that verified.
    Served,
    /// It answered without a valid sliver: missing, cut short, corrupt, or another blob's.
    Failed(NodeError),
    /// It could not be asked (down, overloaded, refusing the connection).
    Unreachable(NodeError),
}

impl Client {
    /// Asks node `node` for its sliver of `blob_id` and verifies it against `metadata` (an
    /// audit's challenge).
    pub async fn challenge(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
        node: SliverIndex,
    ) -> Challenge {
        let Some(conn) = self.inner.nodes.get(usize::from(node)) else {
            return Challenge::Unreachable(NodeError::Unexpected(format!("no node {node}")));
        };
        let Ok(sliver_len) = metadata.sliver_len() else {
            return Challenge::Failed(NodeError::Unexpected("invalid metadata".into()));
        };
        let cfg = &self.inner.config;
        let sliver_len = sliver_len as u64;
        let deadline = cfg.request_deadline(sliver_len);
        match check_node(conn, cfg, *blob_id, metadata, sliver_len, deadline).await {
            Check::Intact(_) => Challenge::Served,
            Check::Damaged(e) => Challenge::Failed(e),
            Check::Unreachable(e) => Challenge::Unreachable(e),
        }
    }
}

/// Fetches `node`'s sliver of `blob_id` and verifies it against `metadata`.
async fn check_node(
    node: &super::conn::NodeConn,
    cfg: &super::ClientConfig,
    blob_id: BlobId,
    metadata: &BlobMetadata,
    sliver_len: u64,
    deadline: std::time::Duration,
) -> Check {
    let index = node.info.index;
    let req = Request::GetSliver { blob_id, index };
    match node
        .request_expecting(cfg, req, None, Some(sliver_len), 0, deadline)
        .await
    {
        Ok((Response::Sliver { .. }, Some(data))) => {
            match cpu_bound(data.len(), || metadata.verify_sliver(blob_id, index, data)) {
                Ok(v) => Check::Intact(v),
                Err(e) => Check::Damaged(NodeError::Verification(e)),
            }
        }
        Ok((other, _)) => Check::Damaged(super::conn::unexpected(other)),
        Err(e) => classify(e),
    }
}

/// A node that answered (even with an error about the sliver) holds no valid copy: repair it.
/// One that did not answer, or is overloaded or refusing us, is left for a later run.
fn classify(e: NodeError) -> Check {
    match e {
        NodeError::Remote(WireError::NotFound)
        | NodeError::Remote(WireError::Corrupt(_))
        | NodeError::Verification(_)
        | NodeError::Frame(_)
        | NodeError::Unexpected(_) => Check::Damaged(e),
        _ => Check::Unreachable(e),
    }
}
