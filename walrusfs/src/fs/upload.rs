//! The uploader: stores journal records as blobs and repoints their chunks at them.
//!
//! Small records (files and file tails) are packed together into shared blobs of about
//! [`PACK_BYTES`] (Walrus calls these quilts); a big record (a full chunk) is a blob of its
//! own. Each blob is committed in one index transaction that registers it and repoints every
//! chunk that still holds the record it stores: a record overwritten, truncated away or deleted
//! while it was uploading is simply not repointed, and a blob left with no ref goes to GC.
//!
//! Records are claimed before upload, so the background loop and an fsync storing the same
//! file's records never store one twice; whoever finds a record claimed waits for its upload.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::{Fs, FsError, FsResult};
use crate::data::store::BlobStore;
use crate::index::{Ino, Pending, Stored};
use crate::journal::Loc;
use netcore::codec::BlobId;

/// Target size of a pack blob: a few MiB keeps per-blob costs (n slivers, n fsyncs) small and
/// a small file's read (one pack) cheap.
pub(crate) const PACK_BYTES: u64 = 4 << 20;
/// Records at least this big (sealed) are a blob of their own.
pub(crate) const ALONE_BYTES: u64 = 1 << 20;
/// Records taken from the queue per background round.
const ROUND: usize = 4096;
/// Rounds a drain makes for records that keep being rewritten before it gives up.
const MAX_DRAIN_ROUNDS: u32 = 256;

/// Records, durably and before a byte of it is stored, that blob `id` is about to be stored:
/// it is queued for GC, and the index commit that registers it takes it off the queue again.
/// A crash in between (after nodes stored it, before the commit) then leaves no blob that
/// nothing refers to and nothing will delete; the gate (`Inner::gc_gate`) keeps GC from
/// deleting it while its upload runs.
pub(crate) fn intend(index: &crate::index::Index, id: &BlobId) -> Result<(), String> {
    tokio::task::block_in_place(|| {
        index.gc_enqueue(&[*id])?;
        index.flush()
    })
    .map_err(|e| format!("cannot record the upload in the index: {e}"))
}

/// The uploader's shared state.
pub(crate) struct Uploads {
    /// Records being uploaded.
    claimed: Mutex<HashSet<u64>>,
    /// Signalled when an upload finished (its claims were released).
    released: tokio::sync::Notify,
    /// Signalled when records were appended.
    pub(crate) wake: std::sync::Arc<tokio::sync::Notify>,
    /// Blob uploads in flight at once.
    slots: tokio::sync::Semaphore,
    /// Buffers of blobs being uploaded, reused: one blob of at most [`PACK_BYTES`] or a
    /// sealed chunk per slot.
    pub(crate) buffers: std::sync::Arc<netcore::buffers::BufferPool>,
    /// Permits `slots` was made with.
    concurrency: usize,
    /// The last upload failure, for status and logs.
    pub(crate) last_error: Mutex<Option<String>>,
    /// Blobs stored whose index commit then failed (a full state disk): nothing refers to
    /// them; they are queued for GC as soon as the index takes writes again.
    orphans: Mutex<Vec<BlobId>>,
}

impl Uploads {
    fn lock_orphans(&self) -> std::sync::MutexGuard<'_, Vec<BlobId>> {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn new(concurrency: usize, chunk_size: u64) -> Self {
        // The largest blob: a pack, or a chunk sealed alone (in the smallest segments).
        let chunk = usize::try_from(chunk_size).unwrap_or(usize::MAX);
        let blob = PACK_BYTES.max(crate::data::crypto::Segments::SMALLEST.sealed_len(chunk) as u64);
        Uploads {
            buffers: netcore::buffers::BufferPool::new(
                usize::try_from(blob.saturating_mul(concurrency.max(1) as u64))
                    .unwrap_or(usize::MAX),
            ),
            claimed: Mutex::new(HashSet::new()),
            released: tokio::sync::Notify::new(),
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
            slots: tokio::sync::Semaphore::new(concurrency.max(1)),
            concurrency: concurrency.max(1),
            last_error: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
        }
    }

    /// Blob uploads running now.
    pub(crate) fn in_flight(&self) -> usize {
        self.concurrency
            .saturating_sub(self.slots.available_permits())
    }

    /// Claims the unclaimed records among `records`; returns them.
    fn claim(&self, records: Vec<Pending>) -> Vec<Pending> {
        let mut c = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        records
            .into_iter()
            .filter(|r| c.insert(r.jchunk.seq))
            .collect()
    }

    fn release(&self, records: &[Pending]) {
        let mut c = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        for r in records {
            c.remove(&r.jchunk.seq);
        }
        drop(c);
        self.released.notify_waiters();
    }
}

/// One blob to store: the records it packs, in order, and where each lands in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) records: Vec<Pending>,
    pub(crate) offsets: Vec<u64>,
    pub(crate) bytes: u64,
}

/// Groups records into blobs: big ones alone, small ones packed in record order up to
/// [`PACK_BYTES`].
pub(crate) fn plan(records: &[Pending]) -> Vec<Plan> {
    let mut out = Vec::new();
    let mut pack = Plan {
        records: Vec::new(),
        offsets: Vec::new(),
        bytes: 0,
    };
    for r in records {
        let len = u64::from(r.jchunk.sealed_len);
        if len >= ALONE_BYTES {
            out.push(Plan {
                records: vec![*r],
                offsets: vec![0],
                bytes: len,
            });
            continue;
        }
        if pack.bytes + len > PACK_BYTES && !pack.records.is_empty() {
            out.push(std::mem::replace(
                &mut pack,
                Plan {
                    records: Vec::new(),
                    offsets: Vec::new(),
                    bytes: 0,
                },
            ));
        }
        pack.offsets.push(pack.bytes);
        pack.bytes += len;
        pack.records.push(*r);
    }
    if !pack.records.is_empty() {
        out.push(pack);
    }
    out
}

impl<B: BlobStore> Fs<B> {
    /// Stores every journal record (of `ino`, or all) appended before the call, and waits until
    /// each is committed (by this call or by an upload already running).
    pub(crate) async fn drain(&self, ino: Option<Ino>) -> FsResult<()> {
        let upto = self.inner.journal.next_seq();
        // Records whose commit a close deferred are uploaded like the rest.
        self.inner.index.commit_deferred()?;
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        for _ in 0..MAX_DRAIN_ROUNDS {
            let pending = self.pending_of(ino, upto)?;
            if pending.is_empty() {
                return Ok(());
            }
            let released = self.inner.uploads.released.notified();
            let mine = self.inner.uploads.claim(pending);
            if mine.is_empty() {
                // Another upload holds them: wait for it (and look again now and then).
                let _ = tokio::time::timeout(Duration::from_millis(500), released).await;
                continue;
            }
            if let Err(e) = self.upload(mine).await {
                // Nodes that just came back may still be reconnecting: retry for a moment
                // before reporting the failure.
                if started.elapsed() + pause > self.inner.cfg.sync_retry {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
        Err(FsError::WriteBack(format!(
            "data still changing after {MAX_DRAIN_ROUNDS} upload rounds"
        )))
    }

    /// Records waiting in the journal, of `ino` or all, older than record `upto`.
    fn pending_of(&self, ino: Option<Ino>, upto: u64) -> FsResult<Vec<Pending>> {
        let index = &self.inner.index;
        let all: Vec<Pending> = match ino {
            Some(ino) => index
                .jchunks_in(ino, 0, u64::MAX)?
                .into_iter()
                .map(|(chunk, jchunk)| Pending { ino, chunk, jchunk })
                .collect(),
            None => {
                let mut out = Vec::new();
                let mut from = 0;
                loop {
                    let batch = index.journal_pending(from, ROUND)?;
                    let Some(last) = batch.last() else { break };
                    from = last.jchunk.seq + 1;
                    let more = batch.len() == ROUND;
                    out.extend(batch);
                    if !more {
                        break;
                    }
                }
                out
            }
        };
        Ok(all.into_iter().filter(|p| p.jchunk.seq < upto).collect())
    }

    /// Stores claimed `records` as blobs (see [`plan`]) and commits each; releases the claims.
    pub(crate) async fn upload(&self, records: Vec<Pending>) -> FsResult<()> {
        let plans = plan(&records);
        let results =
            futures::future::join_all(plans.into_iter().map(|p| self.store_plan(p))).await;
        self.inner.uploads.release(&records);
        let mut first_error = None;
        for r in results {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => {
                super::error::note_error(format!("upload failed: {e}"));
                *self
                    .inner
                    .uploads
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn store_plan(&self, plan: Plan) -> FsResult<()> {
        let _slot = self
            .inner
            .uploads
            .slots
            .acquire()
            .await
            .map_err(|_| FsError::Network("shutting down".into()))?;
        let journal = self.inner.journal.clone();
        let records = plan.records.clone();
        let offsets = plan.offsets.clone();
        // The blob is gathered into a buffer of an earlier upload, overwritten in place: a
        // fresh one would be zeroed, and its pages faulted in, for every blob.
        let mut blob = self.inner.uploads.buffers.take_filled(plan.bytes as usize);
        // Reading the records is file I/O: off the async workers.
        let blob = tokio::task::spawn_blocking(move || {
            for (r, &at) in records.iter().zip(&offsets) {
                let j = &r.jchunk;
                let loc = Loc {
                    segment: j.segment,
                    offset: j.offset,
                    len: j.sealed_len,
                };
                let at = at as usize;
                journal.read_at(&loc, &mut blob.vec_mut()[at..at + j.sealed_len as usize])?;
            }
            Ok::<_, crate::journal::JournalError>(blob)
        })
        .await
        .map_err(|e| FsError::Network(format!("upload task: {e}")))?;
        let blob = match blob {
            Ok(b) => b,
            // The records were committed elsewhere (stored by another upload) and their
            // segment reclaimed: nothing left to do for them.
            Err(crate::journal::JournalError::Gone(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Held until the index commit (see `Inner::gc_gate`).
        let _gate = self.inner.gc_gate.read().await;
        let index = self.inner.index.clone();
        let stored = match self
            .inner
            .store
            .put_announced(&blob, |id| intend(&index, id))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // Nodes that did store a sliver of the failed blob must not keep it forever.
                if let Some(b) = e.partial_blob {
                    if let Err(qe) = self.inner.index.gc_enqueue(&[b]) {
                        tracing::warn!(blob = %b, "cannot queue a failed blob for deletion: {qe}");
                    }
                }
                tracing::warn!(
                    records = plan.records.len(),
                    bytes = plan.bytes,
                    "upload failed: {e}"
                );
                return Err(FsError::Network(e.message));
            }
        };
        crate::faults::crash_point("upload.stored");
        let items: Vec<Stored> = plan
            .records
            .iter()
            .zip(&plan.offsets)
            .map(|(r, off)| Stored {
                ino: r.ino,
                chunk: r.chunk,
                seq: r.jchunk.seq,
                offset: *off,
            })
            .collect();
        let index = self.inner.index.clone();
        let blob_id = stored.blob_id;
        let metadata = stored.metadata;
        let confirmations = stored.confirmations;
        let committed = tokio::task::spawn_blocking(move || {
            index.commit_upload(blob_id, &metadata, &confirmations, &items)
        })
        .await
        .map_err(|e| FsError::Network(format!("commit task: {e}")))?;
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                // INV: a stored blob the index never took is not leaked: it is queued for GC
                // once the index takes writes again (the records stay in the journal and are
                // stored again).
                tracing::warn!(blob = %blob_id, "stored, but the index commit failed: {e}");
                self.inner.uploads.lock_orphans().push(blob_id);
                return Err(e.into());
            }
        };
        tracing::debug!(blob = %blob_id, records = plan.records.len(), committed, bytes = plan.bytes, "stored");
        if committed > 0 {
            self.keep_written(blob_id, &plan, &blob);
        }
        self.inner.reclaim_wake.notify_one();
        if committed == 0 {
            self.inner.gc_wake.notify_one();
        }
        Ok(())
    }

    /// Keeps the sealed chunks of a blob just stored in the on-disk cache, as a read of them
    /// would: data read back after it was written, once the kernel's page cache has let go of
    /// it (a remount, a backup checked after gigabytes more went through), is then read from
    /// the local disk, not fetched from the nodes. Only records of at least
    /// [`cache::direct::DIRECT_MIN`] (full chunks and big tails): a small file's read fetches
    /// its pack once for all its neighbours (the pack cache), and an entry per small file
    /// would cost a file creation each. Only for files smaller than the cache, the rule of
    /// reads (`keeps_on_disk`); a file still growing is judged by its size so far. Best
    /// effort and off the upload's path, as every cache fill is: with the cache's writes
    /// backed up, a chunk is skipped.
    fn keep_written(&self, blob_id: BlobId, plan: &Plan, blob: &[u8]) {
        let Some(capacity) = self.inner.disk_cache.as_ref().map(|d| d.capacity()) else {
            return;
        };
        for (r, &offset) in plan.records.iter().zip(&plan.offsets) {
            let len = r.jchunk.sealed_len as usize;
            if len < cache::direct::DIRECT_MIN {
                continue;
            }
            match self.inner.index.get_attr(r.ino) {
                Ok(attr) if attr.size < capacity => {}
                _ => continue,
            }
            let Some(sealed) = usize::try_from(offset)
                .ok()
                .and_then(|at| blob.get(at..at + len))
            else {
                continue;
            };
            self.cache_on_disk(cache::DiskKey::new(blob_id.0, offset), sealed);
        }
    }

    /// Queues for GC the blobs whose index commit failed, once the index takes the write.
    fn requeue_orphans(&self) {
        let orphans = std::mem::take(&mut *self.inner.uploads.lock_orphans());
        if orphans.is_empty() {
            return;
        }
        match self.inner.index.gc_enqueue(&orphans) {
            Ok(()) => {
                tracing::info!(
                    blobs = orphans.len(),
                    "queued blobs of failed commits for GC"
                );
                self.inner.gc_wake.notify_one();
            }
            Err(e) => {
                tracing::debug!("cannot queue blobs of failed commits yet: {e}");
                self.inner.uploads.lock_orphans().extend(orphans);
            }
        }
    }

    /// One background round: uploads whatever waits in the journal and nobody has claimed.
    /// One upload of what waits in the journal; returns whether to go on at once: only after
    /// a full load (a pack's worth, or [`ROUND`] records). After less, the uploader waits for
    /// more to gather (its pack delay) instead of storing the few records that arrived during
    /// this upload as a tiny blob of their own: a stream of small files otherwise became one
    /// blob per handful of files (3,000 files of 4 KiB: 418 blobs, each costing every node a
    /// sliver, and the index a flush).
    pub(crate) async fn upload_round(&self) -> FsResult<bool> {
        self.requeue_orphans();
        self.inner.index.commit_deferred()?;
        let pending = self.inner.index.journal_pending(0, ROUND)?;
        if pending.is_empty() {
            return Ok(false);
        }
        let mine = self.inner.uploads.claim(pending);
        if mine.is_empty() {
            return Ok(false);
        }
        let bytes: u64 = mine.iter().map(|p| u64::from(p.jchunk.sealed_len)).sum();
        let full = mine.len() >= ROUND || bytes >= PACK_BYTES;
        self.upload(mine).await?;
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::JChunk;

    fn rec(seq: u64, sealed_len: u32) -> Pending {
        Pending {
            ino: 1,
            chunk: seq,
            jchunk: JChunk {
                seq,
                segment: 1,
                offset: 0,
                sealed_len,
                stored_len: 0,
                len: 0,
                version: 1,
                salt: [0; 16],
            },
        }
    }

    #[test]
    fn small_records_share_packs_and_big_ones_go_alone() {
        let mut records: Vec<Pending> = (0..100).map(|s| rec(s, 100_000)).collect();
        records.push(rec(100, 4 << 20));
        records.push(rec(101, 10));
        let plans = plan(&records);
        let alone: Vec<&Plan> = plans.iter().filter(|p| p.records.len() == 1).collect();
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].records[0].jchunk.seq, 100);
        let packed: usize = plans
            .iter()
            .filter(|p| p.records.len() > 1)
            .map(|p| p.records.len())
            .sum();
        assert_eq!(packed, 101);
        for p in &plans {
            assert!(p.bytes <= PACK_BYTES || p.records.len() == 1, "{}", p.bytes);
            let mut at = 0;
            for (r, off) in p.records.iter().zip(&p.offsets) {
                assert_eq!(*off, at, "records sit back to back");
                at += u64::from(r.jchunk.sealed_len);
            }
            assert_eq!(at, p.bytes);
        }
    }

    #[test]
    fn claims_are_exclusive() {
        let u = Uploads::new(1, 4 << 20);
        let a = u.claim(vec![rec(1, 1), rec(2, 1)]);
        assert_eq!(a.len(), 2);
        let b = u.claim(vec![rec(2, 1), rec(3, 1)]);
        assert_eq!(b.iter().map(|r| r.jchunk.seq).collect::<Vec<_>>(), vec![3]);
        u.release(&a);
        assert_eq!(u.claim(vec![rec(1, 1)]).len(), 1);
    }
}
