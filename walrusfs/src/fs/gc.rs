//! The garbage collector: deletes blobs no longer referenced (overwritten chunks, truncated or
//! deleted files, packs with no live chunk, replaced index records) from the nodes.
//!
//! Its queue lives in the index (published with it), so it survives restarts and moves with the
//! archive. A blob is deleted only once the change that dropped it is durable and published, a
//! grace period has passed (a reader that looked the chunk up just before may still be
//! fetching it) and no snapshot holds it (DESIGN invariant 8). Deletes are tracked per node: a
//! node that cannot be reached is asked again on a later round while the queue moves on, and
//! a blob leaves the queue once every node has deleted it.

use std::collections::HashMap;
use std::time::Instant;

use netcore::codec::BlobId;

use super::Fs;
use crate::data::store::BlobStore;

/// Blobs looked at per round.
const GC_BATCH: usize = 32;

impl<B: BlobStore> Fs<B> {
    /// The highest change sequence number whose GC entries may be acted on: changes that are
    /// durable and published. A filesystem outside an archive (`local_only`) publishes
    /// nothing, so durable on local disk is all there is; this flushes the index for that.
    fn gc_horizon(&self) -> crate::index::Result<u64> {
        if self.inner.cfg.local_only {
            self.inner.index.mark_local_only_published()
        } else {
            self.inner.index.published_seq()
        }
    }

    /// One round of garbage collection over the next batch of the queue (after `cursor`);
    /// returns whether more work is ready now. `seen` holds when each ripe blob was first seen,
    /// for the grace period.
    pub(crate) async fn gc_round(
        &self,
        cursor: &mut Option<BlobId>,
        seen: &mut HashMap<BlobId, Instant>,
    ) -> bool {
        // Exclusive from choosing blobs to deleting them (see `Inner::gc_gate`).
        let _gate = self.inner.gc_gate.write().await;
        let horizon = match self.gc_horizon() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("GC cannot tell what is published: {e}");
                return false;
            }
        };
        let pending = match self.inner.index.gc_pending(*cursor, GC_BATCH) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("reading the GC queue failed: {e}");
                return false;
            }
        };
        let wrapped = pending.len() < GC_BATCH;
        *cursor = if wrapped {
            None
        } else {
            pending.last().map(|(id, _)| *id)
        };
        if pending.is_empty() {
            return false;
        }
        let now = Instant::now();
        let grace = self.inner.cfg.gc_grace;
        // INV (DESIGN 8): a blob is deleted only once the change that dropped it is durable
        // and published, a grace period after that, and while no snapshot refers to it.
        let ripe: Vec<_> = pending
            .into_iter()
            .filter(|(_, e)| e.dropped_seq <= horizon)
            .filter(|(id, _)| matches!(self.inner.index.is_held(id), Ok(false)))
            // Registered blobs are live (registering takes them off the queue; belt and braces).
            .filter(|(id, _)| matches!(self.inner.index.blob(id), Ok(None)))
            .filter(|(id, _)| now.duration_since(*seen.entry(*id).or_insert(now)) >= grace)
            .collect();
        if seen.len() > 64 * GC_BATCH {
            seen.retain(|_, t| {
                now.duration_since(*t) < 10 * grace.max(std::time::Duration::from_secs(1))
            });
        }
        if ripe.is_empty() {
            return !wrapped;
        }
        let started = Instant::now();
        let deletes = ripe.iter().map(|(id, e)| async move {
            let left = self.inner.store.delete(*id, e.left.clone()).await;
            (*id, left)
        });
        let results = futures::future::join_all(deletes).await;
        let mut deleted = 0;
        for (id, left) in &results {
            crate::faults::crash_point("gc.deleted");
            let r = if left.is_empty() {
                deleted += 1;
                seen.remove(id);
                self.inner.index.gc_done(id)
            } else {
                self.inner.index.gc_left(id, left.clone())
            };
            if let Err(e) = r {
                tracing::warn!(blob = %id, "updating the GC queue failed: {e}");
            }
        }
        tracing::debug!(deleted, ripe = results.len(), took = ?started.elapsed(), "GC round");
        // Move on to the next batch at once, unless the queue wrapped around.
        !wrapped
    }
}
