//! The write path: writes land in memory buffers ([`super::buffers`]); a close, a full chunk,
//! memory pressure or the flusher seals them into the write-back journal and commits them to
//! the index; fsync (and `walrusfs sync`) also has the uploader store them on the network.
//!
//! Durability (DESIGN invariant 3): [`Fs::flush`] (close) returns once the file's data is in
//! the journal and its commit made or queued (a replay redoes a queued one): a killed mount
//! loses nothing of it. [`Fs::fsync`] returns once every chunk of the file is stored on
//! `n - f` nodes, committed, and the index is durable. A failure keeps the data (in memory,
//! or in the journal) and is reported as EIO.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::buffers::{self, FileBuffers, Locked};
use super::files::{FileState, OpenFile};
use super::{Fs, FsError, FsResult};
use crate::data::crypto::ChunkPlace;
use crate::data::store::BlobStore;
use crate::index::types::{JChunk, Timestamp};
use crate::index::{Index, JournalCommit, SetAttr};
use crate::journal::{Append, EntryHeader, Journal, JournalError, Record, RecordAttrs};

/// Largest file offset supported (keeps chunk arithmetic far from overflow).
const MAX_FILE_SIZE: u64 = 1 << 50;
/// Journal records replayed per index transaction.
const REPLAY_BATCH: usize = 256;
/// A close journaling at most this many bytes defers its index commit to the next
/// transaction (see [`Index::defer_journal`]); the buffers stay in memory until then.
const DEFER_BYTES: usize = 128 << 10;

impl Locked for std::sync::MutexGuard<'_, FileState> {
    fn buffers(&mut self) -> &mut FileBuffers {
        &mut self.buf
    }
}

impl<B: BlobStore> Fs<B> {
    /// Writes `data` at `offset` through handle `fh`; returns the bytes written. May wait
    /// (up to the configured journal wait) for room in a full journal.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_inner(fh, offset, data, true)
    }

    /// [`Fs::write`] that never waits for the network: [`FsError::WouldBlock`] (nothing
    /// written) if the journal has no room for what the write may have to seal, or the write
    /// needs a chunk's current content that only the network has.
    pub fn write_nowait(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_inner(fh, offset, data, false)
    }

    fn write_inner(&self, fh: u64, offset: u64, data: &[u8], may_wait: bool) -> FsResult<usize> {
        self.inner.check_writable()?;
        // INV: a write that may wait for the network never does so on a FUSE thread: without
        // room for everything it may seal, it is handed back (see the FUSE adapter).
        if !may_wait && self.writes_may_wait(data.len()) {
            return Err(FsError::WouldBlock);
        }
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Err(FsError::BadHandle);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge)?;
        let file = self.open_file(handle.ino, false)?;
        if !may_wait && self.write_needs_network(&file, offset, end)? {
            return Err(FsError::WouldBlock);
        }
        let cs = self.inner.chunk_size;
        let now = Instant::now();
        let mut full = Vec::new();
        let mut st = file.lock();
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let in_chunk = pos % cs;
            let n = (cs - in_chunk).min(end - pos);
            let src = &data[(pos - offset) as usize..(pos - offset + n) as usize];
            let (held, wrote) = buffers::write_locked(
                st,
                || file.lock(),
                || self.chunk_content(&file, idx),
                idx,
                in_chunk,
                src,
                cs,
                now,
            )?;
            st = held;
            self.inner.dirty.charge(wrote.charged);
            full.extend(wrote.full);
            pos += n;
        }
        st.buf.touch(Timestamp::now());
        drop(st);
        handle.wrote.store(true, Ordering::Release);
        // A sequential writer filled these chunks: journal them now, so memory holds at most
        // the chunk being written. A write that must not wait leaves them in memory if the
        // journal filled up meanwhile (the flusher takes them later).
        let spill = |only: Option<&[u64]>| match self.spill_until(&file, only, may_wait) {
            Err(FsError::Journal(JournalError::Full { .. })) if !may_wait => Ok(()),
            other => other,
        };
        if !full.is_empty() {
            spill(Some(&full))?;
        }
        if self.inner.dirty.above(1, 1) {
            // INV: dirty memory stays near its budget: past it, a writer journals its file's
            // buffers before going on, and buffers kept for queued commits are let go.
            spill(None)?;
            self.settle_applied();
        }
        Ok(data.len())
    }

    /// Whether a write of `offset..end` must first fetch a chunk's current content from the
    /// network: it covers only part of a chunk that has no buffer, and the chunk is stored and
    /// not in the memory cache.
    fn write_needs_network(&self, file: &OpenFile, offset: u64, end: u64) -> FsResult<bool> {
        let cs = self.inner.chunk_size;
        if end <= offset {
            return Ok(false);
        }
        let (first, last) = (offset / cs, (end - 1) / cs);
        let partial: Vec<u64> = {
            let st = file.lock();
            let first_n = (cs - offset % cs).min(end - offset);
            let mut partial = Vec::new();
            if st.buf.needs_base(first, offset % cs, first_n, cs) {
                partial.push(first);
            }
            if last != first && st.buf.needs_base(last, 0, end - last * cs, cs) {
                partial.push(last);
            }
            partial
        };
        for idx in partial {
            if self.inner.index.jchunk(file.ino, idx)?.is_some() {
                continue;
            }
            if let Some(r) = self.inner.index.chunk(file.ino, idx)? {
                if !self.inner.chunk_cache.contains(&(r.blob_id, r.offset)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether a write of `len` bytes may have to wait for the network (the journal is close
    /// to full).
    pub fn writes_may_wait(&self, len: usize) -> bool {
        let j = &self.inner.journal;
        j.bytes() + len as u64 + 2 * self.inner.chunk_size + self.inner.dirty.used() > j.max_bytes()
    }

    /// [`Fs::flush`] that never waits for the network: [`FsError::WouldBlock`] (nothing
    /// changed) if it might.
    pub fn flush_nowait(&self, fh: u64) -> FsResult<()> {
        if self.inner.cfg.sync_close || self.writes_may_wait(0) {
            return Err(FsError::WouldBlock);
        }
        match self.flush_inner(fh, false) {
            Err(FsError::Journal(JournalError::Full { .. })) => Err(FsError::WouldBlock),
            r => r,
        }
    }

    /// Runs `f` on a thread of the blocking pool (work that may wait for the network).
    pub fn offload(&self, f: impl FnOnce() + Send + 'static) {
        drop(self.inner.rt.spawn_blocking(f));
    }

    /// Runs `task` on the runtime (work that waits for the network without blocking).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        drop(self.inner.rt.spawn(task));
    }

    /// Close-time flush of handle `fh`: journals the file's dirty data (and, with
    /// `sync_close`, stores it on the network as [`Fs::fsync`] does).
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        self.flush_inner(fh, true)
    }

    fn flush_inner(&self, fh: u64, may_wait: bool) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Some(file) = self.existing_file(handle.ino) else {
            return Ok(());
        };
        if self.inner.cfg.sync_close {
            return self.sync_file(&file);
        }
        let index = &self.inner.index;
        self.spill_until(&file, None, may_wait)?;
        if !handle.wrote.load(Ordering::Acquire) {
            // Nothing was written through this handle (a shell's `> f` closes its first
            // descriptor before writing, `touch` never writes): no data to protect, only,
            // for a new file, its creation.
            return self.journal_creation(handle.ino);
        }
        // INV (DESIGN 3): what close returned for survives a killed mount: the journal has the
        // data (written to the kernel), and the index changes the data depends on are handed
        // to the kernel too: a truncation, a link, an attribute-only commit, any change of the
        // file the records do not carry, or, for a file created moments ago, only what its
        // creation record relies on (the parent's mkdir, the removal of an earlier file of that
        // name; see `index::fresh`). The commit of the new records need not be (it is often
        // deferred to the next transaction): the next mount replays the records the index
        // lacks, with the mode, owner and atime changes they carry, creating the file from its
        // creation record if the index lost it.
        //
        // The rest reaches the kernel with the flusher's next tick (`log_index_soon`): one
        // flush for the closes of many files. (A flush per close, even off this thread, cost
        // the next create its wait for the flush's read lock: 10% of a create loop.)
        index.flush_log_through(index.creation_guard(handle.ino))?;
        // Tests die here: the state a kill right after close returns leaves.
        crate::faults::crash_point("close.done");
        Ok(())
    }

    /// A close with no data to journal: if the index may still lose the file's creation to a
    /// kill (a new empty file; see `index::fresh`), appends its creation record on its own,
    /// as a written file's close does ahead of its data, so the next mount creates the file.
    /// With the journal full, commits the index's queue and hands its log to the kernel
    /// instead: a close never waits for the network.
    fn journal_creation(&self, ino: u64) -> FsResult<()> {
        let index = &self.inner.index;
        let Some(creation) = index.fresh_creation(ino) else {
            return Ok(());
        };
        let body = creation.encode();
        let items = [Append {
            header: creation.header(ino),
            attrs: None,
            body: &body,
        }];
        let appended = self
            .inner
            .journal
            .append(&items, std::time::Duration::ZERO, |assigned| {
                // No chunk to commit: the record only moves the journal mark.
                let mark = assigned.last().map_or(0, |(s, _)| *s);
                match index.defer_journal(&[], mark) {
                    Some(_) => Ok(()),
                    None => index.commit_journal(&[], mark),
                }
            });
        match appended {
            Ok(committed) => committed?,
            Err(JournalError::Full { .. }) => {
                index.commit_deferred()?;
                index.flush_log()?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        index.flush_log_through(index.creation_guard(ino))?;
        crate::faults::crash_point("close.done");
        Ok(())
    }

    /// Hands the index's committed changes to the kernel soon, on a blocking-pool thread;
    /// at most one such flush is queued at a time. The flusher calls it every tick.
    pub(crate) fn log_index_soon(&self) {
        if crate::faults::held(crate::faults::HOLD_INDEX_LOG) || !self.inner.index.queue_log_flush()
        {
            return;
        }
        let index = self.inner.index.clone();
        self.offload(move || {
            if let Err(e) = index.run_queued_log_flush() {
                tracing::warn!("index log flush failed: {e}");
            }
        });
    }

    /// Stores every chunk of `ino` written so far on the network, commits it, and makes the
    /// index durable.
    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        match self.existing_file(ino) {
            Some(file) => self.sync_file(&file),
            None => {
                self.inner.rt.block_on(self.drain(Some(ino)))?;
                self.flush_index()
            }
        }
    }

    pub(crate) fn sync_file(&self, file: &Arc<OpenFile>) -> FsResult<()> {
        self.spill(file, None)?;
        self.inner.rt.block_on(self.drain(Some(file.ino)))?;
        // INV: success is returned only after the index (chunk map + size) is on disk.
        self.flush_index()?;
        self.inner.durable.notify_one();
        self.forget_if_idle(file);
        Ok(())
    }

    /// Stores everything written so far on the network, commits it and makes the index
    /// durable (`walrusfs sync`, unmount). On failure, says what could not be stored (it stays
    /// in memory or in the journal).
    pub fn sync_all(&self) -> Result<(), String> {
        let files: Vec<_> = self.inner.lock_open().values().cloned().collect();
        let mut failed = Vec::new();
        for file in &files {
            if let Err(e) = self.spill(file, None) {
                tracing::error!(
                    ino = file.ino,
                    "data of inode {} could not be journaled: {e}",
                    file.ino
                );
                failed.push(format!("inode {}: {e}", file.ino));
            }
        }
        if let Err(e) = self.inner.rt.block_on(self.drain(None)) {
            let (bytes, chunks) = self.journal_backlog();
            tracing::error!(chunks, bytes, "data could not be stored on the network: {e}; it stays in the journal and is stored later");
            failed.push(format!("{chunks} chunk(s) not stored on the network: {e}"));
        }
        // The slower nodes' confirmations that are in by now go out with what follows.
        self.keep_late_confirmations();
        if let Err(e) = self.flush_index() {
            tracing::error!("index flush failed: {e}");
            failed.push(format!("index flush: {e}"));
        }
        self.inner.durable.notify_one();
        for file in &files {
            self.forget_if_idle(file);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// Seals the dirty buffers of `file` (those of `only`, or all) into the journal and commits
    /// them, with the file's size and times, to the index; with nothing to seal, commits
    /// pending attributes. While the journal is full it waits (up to the configured wait)
    /// without holding the file's lock, so nothing else waits for the network with it.
    pub(crate) fn spill(&self, file: &OpenFile, only: Option<&[u64]>) -> FsResult<()> {
        self.spill_until(file, only, true)
    }

    /// [`Fs::spill`]; without `may_wait`, a full journal is an immediate
    /// [`JournalError::Full`].
    fn spill_until(&self, file: &OpenFile, only: Option<&[u64]>, may_wait: bool) -> FsResult<()> {
        let wait = if may_wait {
            self.inner.cfg.journal_wait
        } else {
            std::time::Duration::ZERO
        };
        let deadline = Instant::now() + wait;
        loop {
            let need = {
                let st = file.lock();
                // The dirty chunks, and a creation record in case one goes ahead of them.
                let dirty = st.buf.dirty(only);
                let creation = (!dirty.is_empty()).then_some(crate::journal::MAX_CREATION);
                let segments = self.inner.index.segments();
                Journal::needed(
                    dirty
                        .iter()
                        .map(|(_, d)| segments.sealed_len(d.len()))
                        .chain(creation),
                )
            };
            if need + self.inner.journal.bytes() > self.inner.journal.max_bytes() {
                // Full: make sure the uploader and the reclaimer are at it, then wait.
                self.inner.uploads.wake.notify_one();
                self.inner.reclaim_wake.notify_one();
            }
            self.inner.journal.wait_for_space(need, deadline)?;
            let mut st = file.lock();
            match self.spill_locked(file, &mut st, only) {
                Err(FsError::Journal(JournalError::Full { .. })) if Instant::now() < deadline => {
                    // Another writer took the room meanwhile: wait again, unlocked.
                }
                other => return other,
            }
        }
    }

    /// [`Fs::spill`] with the file's lock held (`st`) and no waiting for journal room.
    pub(crate) fn spill_locked(
        &self,
        file: &OpenFile,
        st: &mut FileState,
        only: Option<&[u64]>,
    ) -> FsResult<()> {
        let ino = file.ino;
        self.settle(st);
        let dirty = st.buf.dirty(only);
        if dirty.is_empty() {
            if only.is_none() && st.buf.attr_dirty {
                let b = &st.buf;
                let index = &self.inner.index;
                let committed = index
                    .commit_chunks(ino, &[], Vec::new(), b.size, b.mtime, b.ctime)
                    .map(drop);
                // Deferred mode/owner changes, once the buffers they waited for were cut away
                // (a truncation): their own transaction.
                let committed = match (committed, b.set) {
                    (Ok(()), Some(set)) => {
                        let times = SetAttr {
                            mtime: Some(b.mtime),
                            ctime: Some(b.ctime),
                            ..set
                        };
                        index.setattr(ino, times, b.ctime).map(drop)
                    }
                    (other, _) => other,
                };
                match committed {
                    // A file deleted meanwhile has nothing left to commit.
                    Ok(()) | Err(crate::index::IndexError::NotFound) => {
                        st.buf.set = None;
                        st.buf.attrs_committed();
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        // INV: versions come from the range the create reserved, or from a durable reservation;
        // either way none is handed out twice.
        let first_version = match st.buf.take_versions(dirty.len() as u64) {
            Some(v) => v,
            None => self.inner.index.reserve_versions(ino, dirty.len() as u64)?,
        };
        let segments = self.inner.index.segments();
        // Sealed into reused buffers, which go back once the records are in the journal.
        let sealed: Vec<(u64, ChunkPlace, u32, netcore::buffers::Pooled)> = dirty
            .iter()
            .enumerate()
            .map(|(i, (idx, data))| {
                let place = ChunkPlace {
                    ino,
                    index: *idx,
                    version: first_version + i as u64,
                    salt: rand::random(),
                };
                let mut body = self
                    .inner
                    .seal_buffers
                    .take(segments.sealed_len(data.len()));
                self.inner
                    .key
                    .seal_into(segments, &place, data, body.vec_mut());
                (*idx, place, data.len() as u32, body)
            })
            .collect();
        crate::faults::crash_point("spill.sealed");
        let b = &st.buf;
        // Mode, owner and atime changes waiting for this data go with its first record, so a
        // replay restores them with it.
        let attrs = b.set.as_ref().map(record_attrs);
        let index = &self.inner.index;
        // A file whose creation the index may still lose to a kill: the creation goes first,
        // so a replay can create the file for its data (see `index::fresh`).
        let creation = index
            .fresh_creation(ino)
            .map(|c| (c.header(ino), c.encode()));
        let creation_item = creation.as_ref().map(|(header, body)| Append {
            header: *header,
            attrs: None,
            body,
        });
        let skip = usize::from(creation_item.is_some());
        let items: Vec<Append<'_>> = creation_item
            .into_iter()
            .chain(
                sealed
                    .iter()
                    .enumerate()
                    .map(|(i, (idx, place, stored_len, body))| Append {
                        attrs: if i == 0 { attrs } else { None },
                        header: EntryHeader {
                            seq: 0,
                            ino,
                            chunk: *idx,
                            version: place.version,
                            salt: place.salt,
                            stored_len: *stored_len,
                            size: b.size,
                            mtime: b.mtime,
                            ctime: b.ctime,
                        },
                        body,
                    }),
            )
            .collect();
        // A close of a small file (all of it journaled) leaves its commit to the next index
        // transaction, usually the next file's create. What close promises still holds: the
        // next mount replays the records the index lacks, with the attribute changes they
        // carry. Not past half the dirty budget, though: buffers waiting for a queued commit
        // stay charged, so there a close commits, which applies the queue; what waited for it
        // goes at the next `settle_applied` (a writer past the budget, a create, the flusher).
        let defer = only.is_none()
            && !self.inner.cfg.sync_close
            && !self.inner.dirty.above(1, 2)
            && dirty.iter().map(|(_, d)| d.len()).sum::<usize>() <= DEFER_BYTES;
        let committed =
            self.inner
                .journal
                .append(&items, std::time::Duration::ZERO, |assigned| {
                    let mut commits: Vec<JournalCommit> = items
                        .iter()
                        .zip(assigned)
                        .skip(skip)
                        .map(|(item, (seq, loc))| commit_of(&item.header, *seq, loc))
                        .collect();
                    if let Some(first) = commits.first_mut() {
                        first.set = b.set;
                    }
                    let mark = assigned.last().map_or(0, |(s, _)| *s);
                    if defer {
                        if let Some(ticket) = index.defer_journal(&commits, mark) {
                            return Ok(Some(ticket));
                        }
                    }
                    index.commit_journal(&commits, mark).map(|()| None)
                })?;
        let deferred = committed?;
        let done: Vec<u64> = sealed.iter().map(|(idx, ..)| *idx).collect();
        let freed = if let Some(ticket) = deferred {
            self.inner
                .awaiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((ticket, ino));
            st.buf.sealed(&done, ticket)
        } else {
            st.buf.set = None;
            st.buf.journaled(&done)
        };
        self.inner.dirty.release(freed);
        self.inner.uploads.wake.notify_one();
        Ok(())
    }

    /// Lets go of the buffers that waited for queued index commits the index has applied since,
    /// and of the open-file records only they kept: after a create (which usually applies the
    /// queue), when a writer finds the budget spent, and each flusher round, rather than only
    /// when the file is next touched. Takes file locks: call it holding none.
    pub(crate) fn settle_applied(&self) {
        let applied = self.inner.index.applied_ticket();
        let ready: Vec<u64> = {
            let mut awaiting = self
                .inner
                .awaiting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let mut ready = Vec::new();
            awaiting.retain(|&(ticket, ino)| {
                let keep = ticket > applied;
                if !keep {
                    ready.push(ino);
                }
                keep
            });
            ready
        };
        for ino in ready {
            if let Some(file) = self.existing_file(ino) {
                // Settles the file's buffers; drops its record if nothing else keeps it.
                self.forget_if_idle(&file);
            }
        }
    }

    /// Drops from `st` what waited for deferred index commits that have been applied since.
    pub(crate) fn settle(&self, st: &mut FileState) {
        if st.buf.awaits_commit() {
            let freed = st.buf.release_applied(self.inner.index.applied_ticket());
            self.inner.dirty.release(freed);
        }
    }

    /// Truncates or extends an open file's buffers to `size` (the index is updated by the
    /// caller in the same operation).
    pub(crate) fn truncate_buffers(&self, file: &Arc<OpenFile>, size: u64) {
        let cs = self.inner.chunk_size;
        let freed = file.lock().buf.truncate(size, cs, Timestamp::now());
        self.inner.dirty.release(freed);
    }
}

/// What a record carries of a deferred attribute change (size, mtime and ctime travel in its
/// header).
fn record_attrs(set: &SetAttr) -> RecordAttrs {
    RecordAttrs {
        perm: set.perm,
        uid: set.uid,
        gid: set.gid,
        atime: set.atime,
    }
}

/// The attribute change a record carries.
fn set_of(a: &RecordAttrs) -> SetAttr {
    SetAttr {
        perm: a.perm,
        uid: a.uid,
        gid: a.gid,
        atime: a.atime,
        ..SetAttr::default()
    }
}

/// The index commit of a journal record.
fn commit_of(h: &EntryHeader, seq: u64, loc: &crate::journal::Loc) -> JournalCommit {
    JournalCommit {
        ino: h.ino,
        chunk: h.chunk,
        jchunk: JChunk {
            seq,
            segment: loc.segment,
            offset: loc.offset,
            sealed_len: loc.len,
            stored_len: h.stored_len,
            len: h.stored_len,
            version: h.version,
            salt: h.salt,
        },
        size: h.size,
        mtime: h.mtime,
        ctime: h.ctime,
        set: None,
    }
}

/// Commits the journal records the index does not have yet (those after its journal mark),
/// in order: what a crash between a record's append and its commit left. Returns how many.
pub(crate) fn replay(index: &Index, records: &[Record]) -> FsResult<usize> {
    let mark = index.journal_mark()?;
    let segments = index.segments();
    let todo: Vec<&Record> = records.iter().filter(|r| r.header.seq > mark).collect();
    // First the files whose creation the index lost (see `index::fresh`), so their data,
    // whichever record carries it, has a file to go in; chunk versions past any their records
    // used.
    let mut versions_used: std::collections::HashMap<u64, u64> = Default::default();
    for r in todo.iter().filter(|r| r.creation.is_none()) {
        let v = versions_used.entry(r.header.ino).or_default();
        *v = (*v).max(r.header.version.saturating_add(1));
    }
    for r in &todo {
        let Some(c) = &r.creation else {
            continue;
        };
        let ino = r.header.ino;
        let next_version = versions_used.get(&ino).copied().unwrap_or(0);
        match index.recreate_file(ino, c, next_version) {
            Ok(Some((dir, name))) => {
                let moved = dir != c.parent || name != c.name;
                let name = String::from_utf8_lossy(&name);
                if moved {
                    tracing::warn!(ino, dir, %name, "a file whose creation a crash lost was recreated elsewhere: its directory or name is gone");
                } else {
                    tracing::info!(ino, dir, %name, "recreated a file whose creation a crash lost");
                }
            }
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for batch in todo.chunks(REPLAY_BATCH) {
        let commits: Vec<JournalCommit> = batch
            .iter()
            // Creation records were done above; a chunk record's body is its sealed chunk.
            .filter(|r| {
                r.creation.is_none()
                    && r.loc.len as usize == segments.sealed_len(r.header.stored_len as usize)
            })
            .map(|r| JournalCommit {
                set: r.attrs.as_ref().map(set_of),
                ..commit_of(&r.header, r.header.seq, &r.loc)
            })
            .collect();
        let last = batch.last().map_or(mark, |r| r.header.seq);
        index.commit_journal(&commits, last)?;
    }
    Ok(todo.len())
}
