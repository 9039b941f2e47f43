//! The write path: writes land in per-chunk buffers; full chunks, flushes, fsyncs and the
//! background flusher seal and upload them; each stored chunk is committed to the index.
//!
//! Durability (DESIGN invariant 3): [`Fs::fsync`] and [`Fs::flush`] return success only once
//! every buffer of the file is stored on `n - f` nodes, committed to the index, and the index
//! is flushed to disk. An upload failure leaves the buffer dirty (nothing is dropped) and is
//! reported as EIO by the next flush/fsync.

use std::sync::Arc;
use std::time::Instant;

use super::files::{BufState, ChunkBuf, FileState, OpenFile};
use super::{Fs, FsError, FsResult};
use crate::data::crypto::ChunkPlace;
use crate::data::store::BlobStore;
use crate::index::types::{ChunkRef, Timestamp};

/// Upload rounds an fsync makes for buffers that keep being rewritten or failing before it
/// gives up with EIO.
const MAX_SYNC_ROUNDS: u32 = 64;

/// Largest file offset supported (keeps chunk arithmetic far from overflow).
const MAX_FILE_SIZE: u64 = 1 << 50;

impl<B: BlobStore> Fs<B> {
    /// Writes `data` at `offset` through handle `fh`; returns the bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.inner.check_writable()?;
        let handle = self.handle(fh)?;
        if !handle.writable {
            return Err(FsError::BadHandle);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::TooLarge)?;
        self.wait_for_dirty_budget(handle.ino)?;
        let file = self.open_file(handle.ino, false)?;
        let cs = self.inner.chunk_size;
        let mut added = 0u64;
        let mut st = file.lock();
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let in_chunk = (pos % cs) as usize;
            let n = ((cs - pos % cs).min(end - pos)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if !st.bufs.contains_key(&idx) {
                // A partial write of a chunk holding data needs that data first.
                let chunk_start = idx * cs;
                let nothing_to_keep = chunk_start >= st.size
                    || n as u64 == cs
                    || (in_chunk == 0 && pos + n as u64 >= st.size);
                let base = if nothing_to_keep {
                    Vec::new()
                } else {
                    drop(st);
                    let base = self.chunk_content(&file, idx)?;
                    st = file.lock();
                    base
                };
                if !st.bufs.contains_key(&idx) {
                    let gen = next_gen(&mut st);
                    added += cs;
                    st.bufs.insert(
                        idx,
                        ChunkBuf {
                            data: Arc::new(base),
                            gen,
                            state: BufState::Dirty,
                            dirty_since: Instant::now(),
                        },
                    );
                }
            }
            let gen = next_gen(&mut st);
            let Some(buf) = st.bufs.get_mut(&idx) else {
                return Err(FsError::Invalid("chunk buffer vanished"));
            };
            let bytes = Arc::make_mut(&mut buf.data);
            if bytes.len() < in_chunk + n {
                bytes.resize(in_chunk + n, 0);
            }
            bytes[in_chunk..in_chunk + n].copy_from_slice(src);
            let full = bytes.len() as u64 == cs;
            if buf.state != BufState::Dirty {
                buf.dirty_since = Instant::now();
            }
            buf.state = BufState::Dirty;
            buf.gen = gen;
            // A sequential writer filled this chunk: store it now, overlapping with the
            // writes that follow.
            if full && in_chunk + n == cs as usize {
                self.start_upload(&file, &mut st, idx);
            }
            pos += n as u64;
        }
        st.size = st.size.max(end);
        let now = Timestamp::now();
        st.mtime = now;
        st.ctime = now;
        st.attr_dirty = true;
        drop(st);
        self.add_dirty(added);
        Ok(data.len())
    }

    /// Close-time flush of handle `fh`: stores the file's data (see [`Fs::fsync`]).
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let handle = self.handle(fh)?;
        let Some(file) = self.existing_file(handle.ino) else {
            return Ok(());
        };
        let pending = {
            let st = file.lock();
            OpenFile::has_unstored(&st) || st.error.is_some()
        };
        if pending {
            self.sync_file(&file)
        } else {
            Ok(())
        }
    }

    /// Stores every buffered chunk of `ino` on the network, commits the chunk map, size and
    /// times to the index and flushes the index to disk.
    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        match self.existing_file(ino) {
            Some(file) => self.sync_file(&file),
            None => Ok(self.inner.index.flush()?),
        }
    }

    pub(crate) fn sync_file(&self, file: &Arc<OpenFile>) -> FsResult<()> {
        let mut st = file.lock();
        // A failure of a background upload since the last sync is reported now, once.
        let earlier = st.error.take();
        // Every buffer present now holds data written before this call: none may remain
        // unstored when it returns Ok, whoever else is syncing or writing the file meanwhile.
        let targets: Vec<u64> = st.bufs.keys().copied().collect();
        let mut rounds = 0;
        loop {
            self.upload_dirty(file, &mut st, |_| true);
            while st.uploading > 0 {
                st = file.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if let Some(e) = st.error.take().or_else(|| earlier.clone()) {
                return Err(FsError::WriteBack(e));
            }
            let pending = targets.iter().any(|i| st.bufs.contains_key(i));
            if !pending {
                break;
            }
            // INV: a target buffer is still here because another waiter took the error of
            // its failed upload, or a writer changed it again; upload it (again) rather than
            // report success for data that is not stored.
            rounds += 1;
            if rounds >= MAX_SYNC_ROUNDS {
                return Err(FsError::WriteBack(format!(
                    "data still changing after {MAX_SYNC_ROUNDS} upload rounds"
                )));
            }
        }
        if st.attr_dirty {
            self.inner
                .index
                .commit_chunks(file.ino, &[], Vec::new(), st.size, st.mtime, st.ctime)
                .map_err(|e| {
                    tracing::warn!(ino = file.ino, "committing file size failed: {e}");
                    e
                })?;
            st.attr_dirty = false;
        }
        drop(st);
        // INV: success is returned only after the index (chunk map + size) is on disk.
        self.inner.index.flush()?;
        self.inner.durable.notify_one();
        self.forget_if_idle(file);
        Ok(())
    }

    /// Starts uploads of the file's dirty buffers that `due` selects.
    pub(crate) fn upload_dirty(
        &self,
        file: &Arc<OpenFile>,
        st: &mut FileState,
        due: impl Fn(&ChunkBuf) -> bool,
    ) {
        let dirty: Vec<u64> = st
            .bufs
            .iter()
            .filter(|(_, b)| b.state == BufState::Dirty && due(b))
            .map(|(i, _)| *i)
            .collect();
        for idx in dirty {
            self.start_upload(file, st, idx);
        }
    }

    /// Starts uploading chunk `idx`'s buffer (sealed under a fresh version) in the background.
    pub(crate) fn start_upload(&self, file: &Arc<OpenFile>, st: &mut FileState, idx: u64) {
        let Some(buf) = st.bufs.get_mut(&idx) else {
            return;
        };
        if buf.state != BufState::Dirty {
            return;
        }
        buf.state = BufState::Uploading;
        let gen = buf.gen;
        let data = buf.data.clone();
        st.uploading += 1;
        let fs = self.clone();
        let file = file.clone();
        self.inner.rt.spawn(async move {
            let result = fs.upload_chunk(file.ino, idx, &data).await;
            fs.finish_upload(&file, idx, gen, result, data.len());
        });
    }

    async fn upload_chunk(&self, ino: u64, idx: u64, data: &[u8]) -> FsResult<Uploaded> {
        let _slot = self
            .inner
            .upload_slots
            .acquire()
            .await
            .map_err(|_| FsError::Network("shutting down".into()))?;
        let version = self.inner.index.reserve_versions(ino, 1)?;
        let place = ChunkPlace {
            ino,
            index: idx,
            version,
            salt: rand::random(),
        };
        let sealed = self.inner.key.seal(&place, data);
        let stored = match self.inner.store.put(sealed).await {
            Ok(stored) => stored,
            Err(e) => {
                // Nodes that did store a sliver of the failed blob must not keep it forever.
                if let Some(blob) = e.partial_blob {
                    if let Err(qe) = self.inner.index.gc_enqueue(&[blob]) {
                        tracing::warn!(blob = %blob, "cannot queue a failed blob for deletion: {qe}");
                    }
                }
                return Err(FsError::Network(e.message));
            }
        };
        Ok(Uploaded {
            chunk: ChunkRef {
                blob_id: stored.blob_id,
                offset: 0,
                stored_len: data.len() as u32,
                len: data.len() as u32,
                version,
                salt: place.salt,
            },
            metadata: stored.metadata,
        })
    }

    /// Records an upload's outcome: commits the chunk if the buffer is unchanged since, or
    /// discards the blob if it was overtaken; on failure the buffer stays dirty.
    fn finish_upload(
        &self,
        file: &Arc<OpenFile>,
        idx: u64,
        gen: u64,
        result: FsResult<Uploaded>,
        len: usize,
    ) {
        let mut st = file.lock();
        st.uploading -= 1;
        let current = st.bufs.get(&idx).map(|b| b.gen) == Some(gen);
        match result {
            Ok(Uploaded { chunk, metadata }) if current => {
                let blob_id = chunk.blob_id;
                let commit = self.inner.index.commit_chunks(
                    file.ino,
                    &[(blob_id, metadata)],
                    vec![(idx, chunk)],
                    st.size,
                    st.mtime,
                    st.ctime,
                );
                match commit {
                    Ok(_) => {
                        if let Some(buf) = st.bufs.remove(&idx) {
                            self.inner.chunk_cache.insert((blob_id, 0), buf.data);
                            self.sub_dirty(self.inner.chunk_size);
                        }
                    }
                    Err(e) => {
                        // The inode is gone (unlinked and released) or the index failed; the
                        // index queued the blob for deletion in the first case.
                        if let Some(buf) = st.bufs.get_mut(&idx) {
                            buf.state = BufState::Dirty;
                        }
                        if !matches!(e, crate::index::IndexError::NotFound) {
                            st.error = Some(e.to_string());
                        } else if st.bufs.remove(&idx).is_some() {
                            self.sub_dirty(self.inner.chunk_size);
                        }
                    }
                }
            }
            Ok(Uploaded { chunk, .. }) => {
                // Overtaken by a newer write: this blob is garbage already.
                if let Err(e) = self.inner.index.gc_enqueue(&[chunk.blob_id]) {
                    tracing::warn!("cannot queue overtaken blob for deletion: {e}");
                }
                self.inner.gc_wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(ino = file.ino, chunk = idx, len, "upload failed: {e}");
                if let Some(buf) = st.bufs.get_mut(&idx) {
                    if buf.gen == gen {
                        buf.state = BufState::Dirty;
                        // The background flusher retries after the write-back delay, not at
                        // once: the network is failing.
                        buf.dirty_since = Instant::now();
                    }
                }
                st.error = Some(e.to_string());
            }
        }
        drop(st);
        file.changed.notify_all();
    }

    /// Truncates or extends an open file's buffers to `size` (the index is updated by the
    /// caller in the same operation).
    pub(crate) fn truncate_buffers(&self, file: &Arc<OpenFile>, size: u64) {
        let cs = self.inner.chunk_size;
        let mut st = file.lock();
        let mut freed = 0u64;
        let beyond: Vec<u64> = st
            .bufs
            .range(size.div_ceil(cs)..)
            .map(|(i, _)| *i)
            .collect();
        for idx in beyond {
            if st.bufs.remove(&idx).is_some() {
                freed += cs;
            }
        }
        if !size.is_multiple_of(cs) {
            let gen = next_gen(&mut st);
            if let Some(buf) = st.bufs.get_mut(&(size / cs)) {
                let keep = (size % cs) as usize;
                if buf.data.len() > keep {
                    Arc::make_mut(&mut buf.data).truncate(keep);
                    buf.gen = gen;
                    buf.state = BufState::Dirty;
                }
            }
        }
        st.size = size;
        let now = Timestamp::now();
        st.mtime = now;
        st.ctime = now;
        drop(st);
        self.sub_dirty(freed);
    }

    fn add_dirty(&self, bytes: u64) {
        if bytes > 0 {
            *self
                .inner
                .dirty_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner()) += bytes;
        }
    }

    fn sub_dirty(&self, bytes: u64) {
        if bytes > 0 {
            let mut d = self
                .inner
                .dirty_bytes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *d = d.saturating_sub(bytes);
            drop(d);
            self.inner.dirty_dropped.notify_all();
        }
    }

    /// Bytes buffered and not yet stored, across all files.
    pub fn dirty_bytes(&self) -> u64 {
        *self
            .inner
            .dirty_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// INV: memory held in write buffers stays near `dirty_budget`: past it, a writer first
    /// uploads its own file's buffers and waits for uploads to drain.
    fn wait_for_dirty_budget(&self, ino: u64) -> FsResult<()> {
        let budget = self.inner.cfg.dirty_budget;
        if self.dirty_bytes() <= budget {
            return Ok(());
        }
        if let Some(file) = self.existing_file(ino) {
            let mut st = file.lock();
            if let Some(e) = st.error.clone() {
                // Stores are failing: do not keep accepting data that cannot be stored.
                return Err(FsError::WriteBack(e));
            }
            self.upload_dirty(&file, &mut st, |_| true);
        }
        let mut d = self
            .inner
            .dirty_bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while *d > budget {
            let (guard, timeout) = self
                .inner
                .dirty_dropped
                .wait_timeout(d, std::time::Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner());
            d = guard;
            if timeout.timed_out() {
                // Other files' buffers hold the budget; the background flusher is storing
                // them. Re-check our own file's health while waiting.
                drop(d);
                if let Some(file) = self.existing_file(ino) {
                    if let Some(e) = file.lock().error.clone() {
                        return Err(FsError::WriteBack(e));
                    }
                }
                d = self
                    .inner
                    .dirty_bytes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        Ok(())
    }
}

/// A chunk stored on the network, ready to commit.
struct Uploaded {
    chunk: ChunkRef,
    metadata: netcore::codec::BlobMetadata,
}

fn next_gen(st: &mut FileState) -> u64 {
    st.next_gen += 1;
    st.next_gen
}
