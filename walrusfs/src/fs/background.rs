//! Background work: the write-back flusher and the garbage collector.
//!
//! - The flusher uploads buffers that have been dirty longer than the write-back delay (or
//!   all dirty buffers while the dirty budget is more than half used), commits pending sizes
//!   and times, retries files whose earlier uploads failed, and forgets closed files whose data
//!   is stored.
//! - The garbage collector deletes blobs no longer referenced (overwritten chunks, truncated or
//!   deleted files) from the nodes. Its queue lives in the index, so it survives restarts; a
//!   blob leaves the queue only once every node acknowledged the delete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::OpenFile;
use super::Fs;
use crate::data::store::BlobStore;

/// How often the flusher looks at open files.
const FLUSH_TICK: Duration = Duration::from_millis(500);
/// How often the garbage collector runs when nothing wakes it.
const GC_TICK: Duration = Duration::from_secs(10);
/// Blobs deleted per garbage-collection round, concurrently.
const GC_BATCH: usize = 32;

/// Starts the flusher and the garbage collector; they stop when the filesystem is dropped.
pub(crate) fn start<B: BlobStore>(fs: &Fs<B>) {
    let weak = Arc::downgrade(&fs.inner);
    fs.inner.rt.spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_TICK);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let fs = Fs { inner };
            // Index commits and file locks are quick but blocking; keep them off the runtime
            // threads' critical path.
            let _ = tokio::task::spawn_blocking(move || fs.flush_round()).await;
        }
    });
    let weak = Arc::downgrade(&fs.inner);
    let wake = fs.inner.gc_wake.clone();
    fs.inner.rt.spawn(async move {
        let mut seen = std::collections::HashMap::new();
        let mut cursor = None;
        loop {
            let Some(inner) = weak.upgrade() else { break };
            let more = Fs { inner }.gc_round(&mut cursor, &mut seen).await;
            if !more {
                // Only the Notify is held while waiting, so dropping the filesystem ends this
                // task at its next tick.
                let _ = tokio::time::timeout(GC_TICK, wake.notified()).await;
            }
        }
    });
}

impl<B: BlobStore> Fs<B> {
    fn flush_round(&self) {
        let files: Vec<Arc<OpenFile>> = self.inner.lock_open().values().cloned().collect();
        let pressure = self.dirty_bytes() > self.inner.cfg.dirty_budget / 2;
        let delay = self.inner.cfg.writeback_delay;
        for file in files {
            let mut st = file.lock();
            self.upload_dirty(&file, &mut st, |b| {
                pressure || b.dirty_since.elapsed() >= delay
            });
            if st.bufs.is_empty() && st.uploading == 0 && st.attr_dirty {
                match self.inner.index.commit_chunks(
                    file.ino,
                    &[],
                    Vec::new(),
                    st.size,
                    st.mtime,
                    st.ctime,
                ) {
                    Ok(_) => st.attr_dirty = false,
                    Err(crate::index::IndexError::NotFound) => st.attr_dirty = false,
                    Err(e) => tracing::warn!(ino = file.ino, "committing attributes failed: {e}"),
                }
            }
            let idle = st.handles == 0;
            drop(st);
            if idle {
                self.forget_if_idle(&file);
            }
        }
    }

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
    async fn gc_round(
        &self,
        cursor: &mut Option<netcore::codec::BlobId>,
        seen: &mut std::collections::HashMap<netcore::codec::BlobId, Instant>,
    ) -> bool {
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
        // INV (DESIGN 8): a blob is deleted only once the change that dropped it is durable
        // and published, and a grace period after that, for readers still on the old state.
        let ripe: Vec<_> = pending
            .iter()
            .filter(|(_, e)| e.dropped_seq <= horizon)
            // INV (DESIGN 8): nor while a snapshot refers to it.
            .filter(|(id, _)| !matches!(self.inner.index.is_held(id), Ok(true) | Err(_)))
            .filter(|(id, _)| {
                now.duration_since(*seen.entry(*id).or_insert(now)) >= self.inner.cfg.gc_grace
            })
            .map(|(id, _)| *id)
            .collect();
        if seen.len() > 4 * GC_BATCH * 64 {
            seen.retain(|_, t| now.duration_since(*t) < 10 * self.inner.cfg.gc_grace);
        }
        if ripe.is_empty() {
            return !wrapped;
        }
        let started = Instant::now();
        let deletes = ripe.iter().map(|id| async move {
            let done = matches!(self.inner.store.delete(*id).await, Ok(true));
            (*id, done)
        });
        let results = futures::future::join_all(deletes).await;
        let mut deleted = 0;
        for (id, done) in &results {
            if *done {
                if let Err(e) = self.inner.index.gc_done(id) {
                    tracing::warn!(blob = %id, "removing from GC queue failed: {e}");
                }
                seen.remove(id);
                deleted += 1;
            }
        }
        tracing::debug!(deleted, ripe = results.len(), took = ?started.elapsed(), "GC round");
        // Move on to the next batch at once, unless the queue wrapped around.
        !wrapped
    }
}
