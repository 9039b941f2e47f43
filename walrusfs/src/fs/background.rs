//! The work that runs by itself, owned by one [`Background`] with a `shutdown`:
//!
//! - the flusher seals buffers that have been dirty longer than the write-back delay (all of
//!   them while memory is more than half used) into the journal, commits pending attributes,
//!   and forgets closed files with nothing dirty;
//! - the uploader stores journal records on the network as they come (waiting a moment so
//!   small ones share a pack), retrying with back-off while the network fails;
//! - the reclaimer deletes journal segments no chunk points into any more;
//! - the garbage collector deletes blobs no longer referenced (see `gc`), and now and then
//!   compacts packs that are mostly dead (see `compact`).
//!
//! Tasks hold the filesystem weakly: dropping it (a crash, in tests) ends them too.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::files::OpenFile;
use super::{Fs, Inner};
use crate::data::store::BlobStore;

/// How often the flusher looks at open files.
const FLUSH_TICK: Duration = Duration::from_millis(500);
/// How often the uploader looks at the journal when nothing wakes it.
const UPLOAD_TICK: Duration = Duration::from_secs(1);
/// Longest back-off between upload attempts while the network fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the reclaimer runs.
const RECLAIM_TICK: Duration = Duration::from_secs(2);
/// How often the garbage collector runs when nothing wakes it.
const GC_TICK: Duration = Duration::from_secs(10);
/// Calls of `Fs::keep_late_confirmations` (one per flush tick, and one per sync) a late
/// confirmation waits for its blob's record: 20 ticks, 10 s.
pub(super) const LATE_WAIT_TICKS: u32 = 20;

/// The background tasks of one filesystem.
pub(crate) struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts every task on the filesystem's runtime.
    pub(crate) fn start<B: BlobStore>(fs: &Fs<B>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let weak = Arc::downgrade(&fs.inner);
        let rt = &fs.inner.rt;
        let tasks = vec![
            rt.spawn(flusher(weak.clone(), stop_rx.clone())),
            rt.spawn(uploader(
                weak.clone(),
                fs.inner.uploads.wake.clone(),
                stop_rx.clone(),
            )),
            rt.spawn(reclaimer(
                weak.clone(),
                fs.inner.reclaim_wake.clone(),
                stop_rx.clone(),
            )),
            rt.spawn(collector(weak, fs.inner.gc_wake.clone(), stop_rx)),
        ];
        Background { stop, tasks }
    }

    /// Stops every task and waits until they have stopped.
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Sleeps `d`, or less if woken by `wake`; false if told to stop.
async fn pause(
    d: Duration,
    wake: Option<&tokio::sync::Notify>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if *stop.borrow() {
        return false;
    }
    let woken = async {
        match wake {
            Some(w) => w.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = woken => true,
        _ = stop.changed() => false,
    }
}

fn upgrade<B: BlobStore>(weak: &Weak<Inner<B>>) -> Option<Fs<B>> {
    weak.upgrade().map(|inner| Fs { inner })
}

async fn flusher<B: BlobStore>(weak: Weak<Inner<B>>, mut stop: watch::Receiver<bool>) {
    while pause(FLUSH_TICK, None, &mut stop).await {
        let Some(fs) = upgrade(&weak) else { break };
        // Sealing and index commits block: off the async workers.
        let _ = tokio::task::spawn_blocking(move || fs.flush_round()).await;
    }
}

async fn uploader<B: BlobStore>(
    weak: Weak<Inner<B>>,
    wake: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let wait = if backoff.is_zero() {
            UPLOAD_TICK
        } else {
            backoff
        };
        if !pause(wait, Some(&wake), &mut stop).await {
            break;
        }
        let Some(fs) = upgrade(&weak) else { break };
        if crate::faults::held(crate::faults::HOLD_INDEX_LOG) {
            // Tests: an upload makes the index durable first (`upload::intend`).
            continue;
        }
        if backoff.is_zero() {
            // Small records arriving together share a pack: give the burst a moment (a stop
            // ends the wait: shutdown stores nothing more; what must be stored first, unmount
            // and sync drain themselves).
            let delay = fs.inner.cfg.pack_delay;
            if !pause(delay, None, &mut stop).await {
                break;
            }
        }
        loop {
            match fs.upload_round().await {
                Ok(true) => {
                    backoff = Duration::ZERO;
                    if *stop.borrow() {
                        break;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    tracing::warn!("storing journal records failed: {e}; retrying in {backoff:?}");
                    break;
                }
            }
        }
    }
}

async fn reclaimer<B: BlobStore>(
    weak: Weak<Inner<B>>,
    wake: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    while pause(RECLAIM_TICK, Some(&wake), &mut stop).await {
        let Some(fs) = upgrade(&weak) else { break };
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = fs.reclaim_journal() {
                tracing::warn!("reclaiming journal space failed: {e}");
            }
        })
        .await;
    }
}

async fn collector<B: BlobStore>(
    weak: Weak<Inner<B>>,
    wake: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = std::collections::HashMap::new();
    let mut cursor = None;
    let mut more = false;
    let mut compacted = Instant::now();
    loop {
        let wait = if more { Duration::ZERO } else { GC_TICK };
        if !pause(wait, Some(&wake), &mut stop).await {
            break;
        }
        let Some(fs) = upgrade(&weak) else { break };
        more = fs.gc_round(&mut cursor, &mut seen).await;
        if !more && compacted.elapsed() >= fs.inner.cfg.compact_interval {
            compacted = Instant::now();
            if let Err(e) = fs.compact_round().await {
                tracing::warn!("compacting packs failed (retrying later): {e}");
            }
        }
    }
}

impl<B: BlobStore> Fs<B> {
    /// Adds the confirmations of nodes slower than their uploads' quorum to the blobs'
    /// proofs (evidence for `walrusfs audit`; published with the index). One whose blob the
    /// index does not record yet (its upload's commit has not run) waits for a few more
    /// calls (`LATE_WAIT_TICKS`); a blob that never gets a record (its upload was overtaken
    /// and the blob freed) does not keep it forever.
    pub(crate) fn keep_late_confirmations(&self) {
        let mut waiting = self
            .inner
            .late_waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let late: Vec<_> = std::mem::take(&mut *waiting)
            .into_iter()
            .chain(
                self.inner
                    .store
                    .take_late_confirmations()
                    .into_iter()
                    .map(|c| (c, 0)),
            )
            .collect();
        if late.is_empty() {
            return;
        }
        let index = &self.inner.index;
        let (known, unknown): (Vec<_>, Vec<_>) = late
            .into_iter()
            .partition(|(c, _)| index.blob(&c.blob_id).is_ok_and(|b| b.is_some()));
        waiting.extend(
            unknown
                .into_iter()
                .filter(|(_, ticks)| *ticks < LATE_WAIT_TICKS)
                .map(|(c, ticks)| (c, ticks + 1)),
        );
        drop(waiting);
        let known: Vec<_> = known.into_iter().map(|(c, _)| c).collect();
        match index.add_confirmations(&known) {
            Ok(added) if added > 0 => tracing::debug!(added, "late storage confirmations kept"),
            Ok(_) => {}
            Err(e) => tracing::warn!("keeping late storage confirmations failed: {e}"),
        }
    }

    fn flush_round(&self) {
        self.keep_late_confirmations();
        // Closes defer the index commits of small files to the next transaction; without one,
        // this is it.
        if let Err(e) = self.inner.index.commit_deferred() {
            tracing::warn!("committing journal records failed (retrying): {e}");
        }
        self.settle_applied();
        let files: Vec<Arc<OpenFile>> = self.inner.lock_open().values().cloned().collect();
        let pressure = self.inner.dirty.above(1, 2);
        let cutoff = Instant::now()
            .checked_sub(self.inner.cfg.writeback_delay)
            .unwrap_or_else(Instant::now);
        for file in files {
            let (due, idle) = {
                let st = file.lock();
                let due = if pressure {
                    None
                } else {
                    Some(st.buf.older_than(cutoff))
                };
                (due, st.handles == 0)
            };
            let result = match &due {
                Some(old) if old.is_empty() && !idle => Ok(()),
                Some(old) if !old.is_empty() => self.spill(&file, Some(old)),
                _ => self.spill(&file, None),
            };
            if let Err(e) = result {
                tracing::warn!(
                    ino = file.ino,
                    "journaling dirty data failed (retrying): {e}"
                );
            }
            if idle {
                self.forget_if_idle(&file);
            }
        }
        // Metadata changes no close waited for (a mkdir, a rename, an unlink) reach the kernel
        // within a tick, and the index's record of what may still be lost stays small.
        self.log_index_soon();
    }

    /// Deletes journal segments no chunk points into, once the index saying so is durable.
    pub(crate) fn reclaim_journal(&self) -> super::FsResult<u64> {
        let journal = &self.inner.journal;
        if journal.bytes() == 0 {
            return Ok(0);
        }
        // Taken under the journal's order lock, so no record is appended but not yet
        // committed: the oldest record a chunk points at is kept, and every later one.
        let keep_from = journal.quiesced(|next| {
            // Deferred commits first: their records are pointed at only once committed.
            self.inner.index.commit_deferred()?;
            self.inner
                .index
                .oldest_journal_record()
                .map(|oldest| oldest.map_or(next, |o| o.min(next)))
        })?;
        if !journal.reclaimable(keep_from) {
            // Nothing to delete: no need to make the index durable (an fsync) for it.
            return Ok(0);
        }
        // INV: a segment is deleted only after the index no longer pointing into it is durable.
        self.flush_index()?;
        Ok(journal.reclaim(keep_from)?)
    }
}
