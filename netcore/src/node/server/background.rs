//! The node's background work: the group committer, which makes slivers that arrived together
//! durable in one batch, and the scrubber, which re-verifies everything stored.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::requests::wire_error;
use super::State;
use crate::codec::{BlobId, SliverIndex};
use crate::wire::WireError;

/// A sliver waiting for the group committer.
pub(super) struct CommitJob {
    pub(super) blob_id: BlobId,
    pub(super) metadata: crate::codec::BlobMetadata,
    pub(super) index: SliverIndex,
    pub(super) body: Vec<u8>,
    /// The storing client (its quota is charged).
    pub(super) owner: Option<crate::identity::PublicKey>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<(), WireError>>,
}

/// Slivers stored per group commit at most.
pub(super) const MAX_BATCH: usize = 64;

/// The group committer: stores the slivers that arrived while the previous batch was being
/// made durable as one batch (two filesystem syncs for all of them, see
/// `SliverStore::put_batch`), then answers each.
pub(super) async fn committer(state: Arc<State>, mut jobs: tokio::sync::mpsc::Receiver<CommitJob>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let st = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            let items: Vec<crate::node::store::PutItem<'_>> = batch
                .iter()
                .map(|j| crate::node::store::PutItem {
                    blob_id: j.blob_id,
                    metadata: &j.metadata,
                    index: j.index,
                    data: &j.body,
                    owner: j.owner,
                })
                .collect();
            let results = st.store.put_batch(&items);
            drop(items);
            (batch, results)
        })
        .await;
        let Ok((batch, results)) = done else {
            warn!("group commit task failed");
            continue;
        };
        debug!(slivers = batch.len(), "group commit");
        for (job, r) in batch.into_iter().zip(results) {
            let _ = job.reply.send(r.map(|_| ()).map_err(wire_error));
        }
    }
}

/// The background scrubber: pass after pass over the store at `scrub_mib_per_sec`, hashing
/// every sliver against its metadata; damaged ones are quarantined (see
/// [`SliverStore::scrub_blob`]), so the node stops serving them and a repair restores them.
pub(super) async fn scrubber(state: Arc<State>) {
    let rate = state.config.scrub_mib_per_sec << 20;
    if rate == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(state.config.scrub_interval_secs.max(1));
    loop {
        let started = Instant::now();
        let st = state.clone();
        let ids = match tokio::task::spawn_blocking(move || st.store.blob_ids()).await {
            Ok(Ok(ids)) => ids,
            Ok(Err(e)) => {
                warn!("scrub: cannot list the store: {e}");
                Vec::new()
            }
            Err(_) => return,
        };
        let (mut blobs, mut bytes, mut bad) = (0u64, 0u64, 0u64);
        for id in ids {
            let st = state.clone();
            let report = match tokio::task::spawn_blocking(move || st.store.scrub_blob(&id)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    warn!(blob = %id, "scrub: {e}");
                    continue;
                }
                Err(_) => return,
            };
            blobs += 1;
            bytes += report.bytes;
            bad += report.quarantined.len() as u64 + u64::from(report.bad_metadata);
            metrics::counter!(crate::metrics::NODE_QUARANTINED)
                .increment(report.quarantined.len() as u64);
            // Paced: the pass reads at most `rate` bytes per second on average.
            let due = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if bad > 0 {
            warn!(
                blobs,
                bytes,
                damaged = bad,
                "scrub pass found damage (quarantined; run walrusfs repair)"
            );
        } else {
            info!(blobs, bytes, elapsed = ?started.elapsed(), "scrub pass: everything intact");
        }
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}
