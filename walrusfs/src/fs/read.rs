//! The read path: buffers of open files first, then the plaintext chunk cache, then the
//! network (verified by the client, then authenticated by the AEAD). Concurrent readers of a
//! chunk share one fetch; sequential readers get the next chunks fetched ahead. A read that
//! does not continue the one before (a seek: a database page, a video player jumping) fetches
//! only the sealed segments it needs, as a verified range of the blob, when those are less than
//! half the chunk; it falls back to the whole chunk if the range read fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::files::{Handle, OpenFile};
use super::{ChunkKey, FetchError, Fs, FsError, FsResult};
use crate::data::store::BlobStore;
use crate::index::types::{ChunkRef, JChunk};
use crate::journal::{JournalError, Loc};

/// Where the bytes of one chunk come from for a read.
enum Source {
    /// A buffer of an open file (a snapshot of it).
    Buffer(Arc<Vec<u8>>),
    /// A chunk whose latest content is in the write-back journal.
    Journal(JChunk),
    /// A stored chunk.
    Stored(ChunkRef),
    /// A hole: zeros.
    Hole,
}

/// What a read answers with: the bytes, borrowed from the one chunk they lie in (a buffer, a
/// cached chunk, a journal record read back) when they do, so a read within a chunk (nearly
/// every read: the kernel asks at most 1 MiB at a time) is not copied on its way to the kernel;
/// or assembled from several chunks and holes.
#[derive(Clone)]
pub enum ReadData {
    /// `range` of a chunk's bytes.
    Shared {
        /// The bytes of the chunk (from some base offset on).
        chunk: Arc<Vec<u8>>,
        /// The part read.
        range: std::ops::Range<usize>,
    },
    /// Bytes assembled for this read.
    Owned(Vec<u8>),
}

impl std::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Shared { chunk, range } => &chunk[range.clone()],
            ReadData::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for ReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadData({} bytes)", self.len())
    }
}

impl PartialEq<[u8]> for ReadData {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for ReadData {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<u8>> for ReadData {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for ReadData {
    fn eq(&self, other: &&[u8; N]) -> bool {
        **self == other[..]
    }
}

impl From<ReadData> for Vec<u8> {
    fn from(d: ReadData) -> Vec<u8> {
        match d {
            ReadData::Owned(v) => v,
            shared => shared.to_vec(),
        }
    }
}

/// How often a read looks its chunks up again when one moved while it was being read (each
/// move needs a compaction or a newer version committed in between). Bounded: an index that
/// points at a record that is gone for good (a damaged state directory) fails the read.
const MOVED_RETRIES: usize = 3;

/// Whether `e` says that a chunk moved between its lookup and its read: a journal segment
/// was reclaimed (the chunk is stored now), or a stored chunk moved to another blob
/// (compaction, a newer version). Looking it up again finds it.
fn moved_meanwhile(e: &FsError) -> bool {
    matches!(
        e,
        FsError::Journal(JournalError::Gone(_)) | FsError::Moved(_)
    )
}
/// Sealed chunks waiting to be written into the on-disk cache at most (see `cache_on_disk`).
const MAX_CACHE_WRITES: usize = 4;

/// Largest blob kept in the pack cache: a pack is at most `PACK_BYTES` of records (a blob of
/// one bigger record holds just that chunk, and is not a pack).
const MAX_CACHED_PACK: u64 = 2 * super::upload::PACK_BYTES;

/// Largest sealed chunk of a pack read as a range of its own (with the pack fetched behind
/// it): a small file or tail. A bigger one fetches its pack whole, as a chunk of its own blob
/// is fetched, and the pack is kept all the same.
const SMALL_MEMBER: usize = 64 << 10;

/// The share of the memory cache's budget (`--cache-mib`) that holds fetched packs of small
/// files (sealed, as the client verified them): a quarter, 64 MiB of the default 256, sixteen
/// packs, some 16,000 files of 4 KiB; the plaintext chunk cache gets the rest.
pub(crate) fn pack_cache_bytes(cache_bytes: usize) -> usize {
    cache_bytes / 4
}

/// Bytes a pool of sealed-chunk buffers keeps: [`MAX_CACHE_WRITES`] sealed chunks of
/// `chunk_size` bytes (in the smallest segments, so the most tags). The disk cache's copies
/// wait in at most that many writes; written data is sealed by as many writers at once.
pub(crate) fn sealed_chunks_bytes(chunk_size: u64) -> usize {
    let chunk = usize::try_from(chunk_size).unwrap_or(usize::MAX);
    crate::data::crypto::Segments::SMALLEST
        .sealed_len(chunk)
        .saturating_mul(MAX_CACHE_WRITES)
}

/// Bytes the pool of disk-cache entries keeps: [`MAX_CACHE_WRITES`] entries, each a sealed
/// chunk (see [`sealed_chunks_bytes`]) with its header, aligned for `O_DIRECT`.
pub(crate) fn cache_entries_bytes(chunk_size: u64) -> usize {
    let entry_extra = cache::DiskCache::ENTRY_HEADER_LEN + cache::direct::ALIGN;
    sealed_chunks_bytes(chunk_size).saturating_add(entry_extra * MAX_CACHE_WRITES)
}

/// Whole chunks fetched from the network at once, readahead included: two per core, 4 to 16.
/// Each holds about three chunks of memory while it is decoded and opened, and reads waiting
/// for the network do not hold FUSE's threads, so without a bound parallel readers take
/// memory without limit: 16 cold readers of 32 MiB files peaked at 0.9-1.0 GiB with 512 MiB of
/// budgets, and took 4.6-4.8 s. On two cores, 8 slots: 430-445 MiB, 2.0-2.3 s; 4 slots:
/// 373-386 MiB, 1.7-1.8 s.
pub(crate) fn fetch_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (2 * cores).clamp(4, 16)
}

impl<B: BlobStore> Fs<B> {
    /// Reads up to `size` bytes at `offset` through handle `fh` (not on a thread of the
    /// runtime: it waits there for the network).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        self.inner
            .rt
            .block_on(self.read_inner(fh, offset, size, true))
    }

    /// [`Fs::read`] as a task of the runtime: the fetches it waits for are driven there, so
    /// an answer from the network wakes no other thread to finish the read.
    pub async fn read_async(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        self.read_inner(fh, offset, size, true).await
    }

    /// [`Fs::read`] that never waits for the network: [`FsError::WouldBlock`] (nothing read,
    /// nothing noted) if part of the range is only on the network, not in a buffer, the
    /// journal or the memory cache.
    pub fn read_nowait(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        self.inner
            .rt
            .block_on(self.read_inner(fh, offset, size, false))
    }

    /// The read; with `may_wait` false it answers [`FsError::WouldBlock`] before anything
    /// that would wait for the network (the journal and the index are local: read in place).
    async fn read_inner(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        may_wait: bool,
    ) -> FsResult<ReadData> {
        let handle = self.handle(fh)?;
        let ino = handle.ino;
        let cs = self.inner.chunk_size;
        let file = self.existing_file(ino);
        let pending = file.as_ref().and_then(|f| {
            let st = f.lock();
            OpenFile::has_unstored(&st).then_some(st.buf.size)
        });
        let file_size = match pending {
            Some(size) => size,
            None => self.inner.index.get_attr(ino)?.size,
        };
        if offset >= file_size || size == 0 {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let end = file_size.min(offset + u64::from(size));
        let (first, last) = (offset / cs, (end - 1) / cs);
        let sources = self.sources(ino, file.as_ref(), first, last)?;
        if !may_wait
            && sources.iter().any(|(_, s)| match s {
                Source::Stored(r) => !self.inner.chunk_cache.contains(&(r.blob_id, r.offset)),
                _ => false,
            })
        {
            // Before `note_read`: the read that follows, off this thread, is this one.
            return Err(FsError::WouldBlock);
        }
        let sequential = self.note_read(&handle, offset, end, last, file_size);
        let mut result = self
            .read_sources(ino, offset, end, sources, !sequential, file_size)
            .await;
        for _ in 0..MOVED_RETRIES {
            match result {
                // Look again (a rare race: this may wait for the network even without
                // `may_wait`).
                Err(e) if moved_meanwhile(&e) => {
                    let sources = self.sources(ino, file.as_ref(), first, last)?;
                    result = self
                        .read_sources(ino, offset, end, sources, !sequential, file_size)
                        .await;
                }
                _ => break,
            }
        }
        result
    }

    /// Bytes `offset..end` of `ino` (a file of `file_size` bytes) from `sources`, the places
    /// of its chunks.
    async fn read_sources(
        &self,
        ino: u64,
        offset: u64,
        end: u64,
        sources: Vec<(u64, Source)>,
        random: bool,
        file_size: u64,
    ) -> FsResult<ReadData> {
        let cs = self.inner.chunk_size;
        let keep = self.keeps_on_disk(!random, file_size);

        // Fetch all stored chunks of the range concurrently.
        let fetches = sources.iter().filter_map(|(idx, s)| match s {
            Source::Stored(r) => {
                let chunk_start = idx * cs;
                let (from, to) = (offset.max(chunk_start) - chunk_start, end - chunk_start);
                let part = (from, to.min(cs));
                Some(self.fetch_for_read(ino, *idx, r.clone(), part, random, keep))
            }
            _ => None,
        });
        let mut fetched = futures::future::join_all(fetches).await.into_iter();

        let one = sources.len() == 1;
        let mut out = Vec::new();
        for (idx, source) in sources {
            let chunk_start = idx * cs;
            let from = offset.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + cs) - chunk_start;
            // `bytes` holds the chunk's bytes from `base` on (0 unless only part was fetched).
            let (base, bytes, valid): (u64, Arc<Vec<u8>>, u64) = match source {
                Source::Buffer(b) => {
                    let len = b.len() as u64;
                    (0, b, len)
                }
                Source::Stored(r) => {
                    let (base, data) = fetched.next().ok_or(FsError::Invalid("fetch count"))??;
                    (base, data, u64::from(r.len))
                }
                Source::Journal(j) => {
                    let (base, bytes) = self.journal_part(ino, idx, &j, from, to)?;
                    (base, bytes, u64::from(j.len))
                }
                Source::Hole => (0, Arc::new(Vec::new()), 0),
            };
            let valid = valid.min(base + bytes.len() as u64);
            // Bytes past the chunk's valid length (truncated away, or never written) are zeros.
            let copy_to = to.min(valid);
            if one && from < copy_to && copy_to == to {
                // All of it in one chunk's bytes: borrowed, not copied.
                let range = (from - base) as usize..(copy_to - base) as usize;
                return Ok(ReadData::Shared {
                    chunk: bytes,
                    range,
                });
            }
            if out.capacity() == 0 {
                out.reserve_exact((end - offset) as usize);
            }
            if from < copy_to {
                // INV: a part fetched for this read starts at or before `from` (see
                // `fetch_for_read`), and `valid` ends within it.
                out.extend_from_slice(&bytes[(from - base) as usize..(copy_to - base) as usize]);
            }
            let zeros = to - from.max(copy_to);
            out.resize(out.len() + zeros as usize, 0);
        }
        Ok(ReadData::Owned(out))
    }

    /// The current content of chunk `idx` of an open file whose buffers lack it, cut to the
    /// file's size (for a partial overwrite).
    pub(crate) fn chunk_content(&self, file: &Arc<OpenFile>, idx: u64) -> FsResult<Vec<u8>> {
        let mut result = self.chunk_content_once(file, idx);
        for _ in 0..MOVED_RETRIES {
            match result {
                Err(e) if moved_meanwhile(&e) => result = self.chunk_content_once(file, idx),
                _ => break,
            }
        }
        result
    }

    /// [`Fs::chunk_content`], one lookup.
    fn chunk_content_once(&self, file: &Arc<OpenFile>, idx: u64) -> FsResult<Vec<u8>> {
        let cs = self.inner.chunk_size;
        let size = file.lock().buf.size;
        let visible = size.saturating_sub(idx * cs).min(cs);
        // The journal first: a chunk leaves it for `chunks` in one transaction.
        let (data, valid) = match self.inner.index.jchunk(file.ino, idx)? {
            Some(j) => (self.journal_chunk(file.ino, idx, &j)?, u64::from(j.len)),
            None => {
                let Some(r) = self.inner.index.chunk(file.ino, idx)? else {
                    return Ok(vec![0; visible as usize]);
                };
                let len = u64::from(r.len);
                (
                    self.inner
                        .rt
                        .block_on(self.fetch_chunk(file.ino, idx, r, true))?,
                    len,
                )
            }
        };
        let valid = valid.min(visible);
        let mut v = Vec::with_capacity(cs as usize);
        v.extend_from_slice(&data[..(valid as usize).min(data.len())]);
        v.resize(visible as usize, 0);
        Ok(v)
    }

    fn sources(
        &self,
        ino: u64,
        file: Option<&Arc<OpenFile>>,
        first: u64,
        last: u64,
    ) -> FsResult<Vec<(u64, Source)>> {
        // Buffers are consulted under the file lock and stored chunks looked up after it;
        // a chunk committed in between was in a buffer until its commit, and the index has it
        // after, so either way the read sees it.
        // Buffers, then journal chunks, then stored chunks, each looked up after the one
        // before: a chunk moves only in that direction (buffer -> journal on a spill, journal
        // -> stored on an upload commit), each move in one step, so the read sees every chunk
        // in one of its places.
        let mut buffers: std::collections::HashMap<u64, Arc<Vec<u8>>> = match file {
            Some(f) => f.lock().buf.range(first, last).into_iter().collect(),
            None => Default::default(),
        };
        let all = last - first + 1;
        // INV: the three maps are disjoint (a buffer shadows an older journal record of its
        // chunk), so their sizes tell when every chunk of the range has been found.
        let mut journal: std::collections::HashMap<u64, JChunk> = if buffers.len() as u64 == all {
            Default::default()
        } else {
            self.inner
                .index
                .jchunks_in(ino, first, last)?
                .into_iter()
                .filter(|(idx, _)| !buffers.contains_key(idx))
                .collect()
        };
        let mut stored: std::collections::HashMap<u64, ChunkRef> =
            if (buffers.len() + journal.len()) as u64 == all {
                Default::default()
            } else {
                self.inner
                    .index
                    .chunks_in(ino, first, last)?
                    .into_iter()
                    .collect()
            };
        Ok((first..=last)
            .map(|idx| {
                let s = if let Some(b) = buffers.remove(&idx) {
                    Source::Buffer(b)
                } else if let Some(j) = journal.remove(&idx) {
                    Source::Journal(j)
                } else if let Some(r) = stored.remove(&idx) {
                    Source::Stored(r)
                } else {
                    Source::Hole
                };
                (idx, s)
            })
            .collect())
    }

    /// Tracks sequential access and starts readahead of the chunks after `last` (of a file of
    /// `file_size` bytes). Returns whether the read continues the one before (or starts the
    /// file).
    fn note_read(&self, handle: &Handle, offset: u64, end: u64, last: u64, file_size: u64) -> bool {
        let previous = handle.last_read_end.swap(end, Ordering::Relaxed);
        if previous != offset && offset != 0 {
            handle.seeks.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let ahead = self.inner.cfg.readahead_chunks;
        // Many FUSE reads fall in one chunk: look ahead once per chunk, not on every read.
        let cs = self.inner.chunk_size;
        let same_chunk = offset != 0 && previous.saturating_sub(1) / cs == last;
        if ahead == 0 || same_chunk {
            return true;
        }
        let Ok(refs) = self
            .inner
            .index
            .chunks_in(handle.ino, last + 1, last + ahead)
        else {
            return true;
        };
        let keep = self.keeps_on_disk(true, file_size);
        for (idx, r) in refs {
            if self.inner.chunk_cache.contains(&(r.blob_id, r.offset)) {
                continue;
            }
            let fs = self.clone();
            let ino = handle.ino;
            self.inner.rt.spawn(async move {
                if let Err(e) = fs.fetch_chunk(ino, idx, r, keep).await {
                    tracing::debug!(ino, chunk = idx, "readahead failed: {e}");
                }
            });
        }
        true
    }

    /// Whether chunks fetched for a read of a file of `file_size` bytes go into the on-disk
    /// cache: yes, unless the read is part of a `sequential` stream through a file the cache
    /// cannot hold. Such a stream would evict its own start, and everything else the cache
    /// held, before any of it is read again (a video played, a large archive restored); and
    /// keeping each chunk costs a copy and a disk write (a tenth of the mount's CPU in a
    /// cold read).
    fn keeps_on_disk(&self, sequential: bool, file_size: u64) -> bool {
        self.inner
            .disk_cache
            .as_ref()
            .is_some_and(|disk| !sequential || file_size < disk.capacity())
    }

    /// Bytes `from..to` (`part`) of stored chunk `idx` for a read, as `(base, bytes)`: the
    /// bytes of the chunk from `base` on, `base <= from`; fetched chunks go into the on-disk
    /// cache if `keep` (see [`Fs::fetch_chunk`]). A `random` read fetches just the segments it
    /// needs when that is worth it (see [`Fs::segments_for`]); otherwise, or if that fails,
    /// the whole chunk (`base` 0).
    async fn fetch_for_read(
        &self,
        ino: u64,
        idx: u64,
        r: ChunkRef,
        (from, to): (u64, u64),
        random: bool,
        keep: bool,
    ) -> FsResult<(u64, Arc<Vec<u8>>)> {
        if from >= u64::from(r.len) {
            // Past the chunk's valid bytes: zeros, nothing to fetch.
            return Ok((from, Arc::new(Vec::new())));
        }
        if let Some(segments) = random.then(|| self.segments_for(&r, from, to)).flatten() {
            match self.fetch_segments(ino, idx, &r, segments).await {
                Ok(part) => return Ok(part),
                Err(e) => tracing::info!(
                    ino, chunk = idx, blob = %r.blob_id,
                    "range read failed ({e}); reading the whole chunk"
                ),
            }
        }
        Ok((0, self.fetch_chunk(ino, idx, r, keep).await?))
    }

    /// The segments `first..=last` of stored chunk `r` that hold its valid bytes in
    /// `from..to`, if fetching just them is worth it: they are at most half the chunk, and the
    /// whole chunk is neither cached nor already on its way.
    fn segments_for(&self, r: &ChunkRef, from: u64, to: u64) -> Option<(usize, usize)> {
        let to = to.min(u64::from(r.len));
        if from >= to {
            return None;
        }
        let segments = self.inner.index.segments();
        let total = segments.count(r.stored_len as usize);
        let (first, last) = segments.covering(from as usize, to as usize);
        if 2 * (last - first + 1) > total {
            return None;
        }
        let key: ChunkKey = (r.blob_id, r.offset);
        let inflight = self
            .inner
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key);
        let on_disk = self
            .inner
            .disk_cache
            .as_ref()
            .is_some_and(|d| d.contains(&cache::DiskKey::new(r.blob_id.0, r.offset)));
        if inflight || on_disk || self.inner.chunk_cache.contains(&key) {
            return None;
        }
        Some((first, last))
    }

    /// Fetches segments `first..=last` of stored chunk `r` as a verified range of its blob and
    /// opens them; returns `(base, plaintext)` with `base` where segment `first` starts.
    async fn fetch_segments(
        &self,
        ino: u64,
        idx: u64,
        r: &ChunkRef,
        (first, last): (usize, usize),
    ) -> FsResult<(u64, Arc<Vec<u8>>)> {
        let plain_len = r.stored_len as usize;
        let segments = self.inner.index.segments();
        let range = segments.sealed_range((first, last), r.sealed_len(segments) as usize);
        let (start, end) = (range.start as u64, range.end as u64);
        let info = self
            .inner
            .index
            .blob(&r.blob_id)?
            .ok_or_else(|| FsError::Moved(format!("no record of blob {}", r.blob_id)))?;
        // A random read waits for one round trip: awake (see `awake`).
        let request =
            self.inner
                .store
                .get_range(r.blob_id, info.metadata, r.offset + start, end - start);
        let sealed = self
            .inner
            .awake
            .wait(request, super::awake::ANSWER_SPIN)
            .await
            .map_err(|e| FsError::Network(e.to_string()))?;
        let place = r.place(ino, idx);
        // INV: the range was verified against the blob id by the store, and the AEAD
        // authenticates each segment for exactly this file, position and version.
        let plain = self
            .inner
            .key
            .open_segments(segments, &place, plain_len, first, sealed)
            .map_err(|e| FsError::Integrity(format!("chunk {idx} of inode {ino}: {e}")))?;
        Ok(((first * segments.plain()) as u64, Arc::new(plain)))
    }

    /// Bytes `from..to` of a chunk whose latest content is journal record `j`, as `(base,
    /// bytes)`: the plaintext of just the segments that hold them (`base` where the first one
    /// starts), read from the journal and opened. A file read back while it is written, or soon
    /// after, reads a few segments per request, not the whole chunk (a 4 KiB read of a 4 MiB
    /// chunk read and decrypted all 4 MiB).
    fn journal_part(
        &self,
        ino: u64,
        idx: u64,
        j: &JChunk,
        from: u64,
        to: u64,
    ) -> FsResult<(u64, Arc<Vec<u8>>)> {
        let to = to.min(u64::from(j.len));
        if from >= to {
            // Past the chunk's valid bytes: zeros, nothing to read.
            return Ok((from, Arc::new(Vec::new())));
        }
        let segments = self.inner.index.segments();
        let plain_len = j.stored_len as usize;
        let (first, last) = segments.covering(from as usize, to as usize);
        let std::ops::Range { start, end } =
            segments.sealed_range((first, last), j.sealed_len as usize);
        if start >= end {
            return Err(FsError::Integrity(format!(
                "journal record {}: {} sealed bytes hold no segment {first}",
                j.seq, j.sealed_len
            )));
        }
        let sealed = self.inner.journal.read(&Loc {
            segment: j.segment,
            offset: j.offset + start as u64,
            len: (end - start) as u32,
        })?;
        // INV: journal bytes reach a reader only if they authenticate for this very chunk and
        // these very segments (the AAD binds each segment's index and whether it is the last).
        let plain = self
            .inner
            .key
            .open_segments(segments, &j.place(ino, idx), plain_len, first, sealed)
            .map_err(|e| FsError::Integrity(format!("journal record {}: {e}", j.seq)))?;
        Ok(((first * segments.plain()) as u64, Arc::new(plain)))
    }

    /// A journal chunk's plaintext (its `stored_len` bytes), read from the journal and opened.
    fn journal_chunk(&self, ino: u64, idx: u64, j: &JChunk) -> FsResult<Arc<Vec<u8>>> {
        let sealed = self.inner.journal.read(&Loc {
            segment: j.segment,
            offset: j.offset,
            len: j.sealed_len,
        })?;
        // INV: journal bytes reach a reader only if they authenticate for this very chunk.
        let plain = self
            .inner
            .key
            .open(
                self.inner.index.segments(),
                &j.place(ino, idx),
                j.stored_len as usize,
                sealed,
            )
            .map_err(|e| FsError::Integrity(format!("journal record {}: {e}", j.seq)))?;
        Ok(Arc::new(plain))
    }

    /// A stored chunk's plaintext (its `stored_len` bytes): from the cache, from a fetch already
    /// in flight, or fetched now (verified by the client, opened with the chunk's key) and
    /// cached in memory, and on disk if `keep` (a fetch already in flight decides that).
    pub(crate) async fn fetch_chunk(
        &self,
        ino: u64,
        idx: u64,
        r: ChunkRef,
        keep: bool,
    ) -> FsResult<Arc<Vec<u8>>> {
        let key: ChunkKey = (r.blob_id, r.offset);
        if let Some(hit) = self.inner.chunk_cache.get(&key) {
            return Ok(hit);
        }
        let cell = {
            let mut inflight = self
                .inner
                .fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            inflight.entry(key).or_default().clone()
        };
        let result = cell
            .get_or_init(|| self.fetch_uncached(ino, idx, &r, keep))
            .await
            .clone();
        self.inner
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        result.map_err(|e| {
            tracing::warn!(ino, chunk = idx, blob = %r.blob_id, "chunk read failed: {e:?}");
            match e {
                FetchError::Integrity(e) => FsError::Integrity(e),
                FetchError::Network(e) => FsError::Network(e),
                FetchError::Index(e) => FsError::Network(e),
                FetchError::Moved(e) => FsError::Moved(e),
            }
        })
    }

    /// Keeps a fetched sealed chunk in the on-disk cache, off the reader's path: written by a
    /// blocking task while the reader goes on (no checksum: the AEAD authenticates what is
    /// read back, see `DiskCache::open_unsummed`). Best effort: with
    /// [`MAX_CACHE_WRITES`] already waiting, the chunk is not cached (a cold sequential
    /// stream then does not queue up writes the cache would evict anyway).
    pub(super) fn cache_on_disk(&self, key: cache::DiskKey, sealed: &[u8]) {
        let Some(disk) = &self.inner.disk_cache else {
            return;
        };
        let pending = &self.inner.cache_writes;
        if pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_CACHE_WRITES {
            pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let fs = self.clone();
        let pending = pending.clone();
        // The chunk is opened in place next, so the cache gets a copy: into a buffer of an
        // earlier write, not a fresh one whose pages the kernel would fault in and zero (half
        // of the mount's page faults in a cold read). Laid out as the cache's entry (the
        // header, no checksum in the mount's cache) at an address aligned for `O_DIRECT`, so
        // this is the only copy: the file is written straight from it.
        let header = disk.entry_header(sealed);
        let mut entry = self
            .inner
            .cache_buffers
            .take_aligned(header.len() + sealed.len(), cache::direct::ALIGN);
        entry.vec_mut().extend_from_slice(&header);
        entry.vec_mut().extend_from_slice(sealed);
        self.inner.rt.spawn_blocking(move || {
            if let Some(disk) = &fs.inner.disk_cache {
                if let Err(e) = disk.insert_entry(key, &entry) {
                    tracing::debug!("disk cache insert failed: {e}");
                }
            }
            // Let go of the filesystem (and its cache) before saying the write is done.
            drop(fs);
            pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// Waits (up to `limit`) until no write into the on-disk cache is pending.
    pub fn settle_cache_writes(&self, limit: std::time::Duration) {
        let start = std::time::Instant::now();
        while self
            .inner
            .cache_writes
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && start.elapsed() < limit
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Fetches pack `blob_id` whole into the pack cache in the background, unless it is
    /// cached, on its way, or too big for the cache; one pack at a time, and only with a
    /// whole-chunk fetch slot free (a pack is never fetched ahead of a reader's chunk).
    fn prefetch_pack(
        &self,
        blob_id: netcore::codec::BlobId,
        metadata: netcore::codec::BlobMetadata,
    ) {
        if metadata.blob_len > MAX_CACHED_PACK || self.inner.pack_cache.contains(&blob_id) {
            return;
        }
        {
            let mut fetching = self
                .inner
                .pack_fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if fetching.is_some() {
                return;
            }
            *fetching = Some(blob_id);
        }
        let fs = self.clone();
        self.spawn(async move {
            if let Ok(_slot) = fs.inner.fetch_slots.try_acquire() {
                match fs.inner.store.get(blob_id, metadata).await {
                    // INV: the client verified the blob against its id.
                    Ok(blob) => {
                        fs.inner.pack_cache.insert(blob_id, Arc::new(blob));
                    }
                    Err(e) => tracing::debug!(blob = %blob_id, "pack prefetch failed: {e}"),
                }
            }
            *fs.inner
                .pack_fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        });
    }

    async fn fetch_uncached(
        &self,
        ino: u64,
        idx: u64,
        r: &ChunkRef,
        keep: bool,
    ) -> Result<Arc<Vec<u8>>, FetchError> {
        let place = r.place(ino, idx);
        let key: ChunkKey = (r.blob_id, r.offset);
        let plain_len = r.stored_len as usize;
        let segments = self.inner.index.segments();
        let disk_key = cache::DiskKey::new(r.blob_id.0, r.offset);
        if let Some(disk) = &self.inner.disk_cache {
            // A file read and a chunk opened: on a worker of the runtime (readahead, a read
            // waiting for the network), the worker's other tasks move to another thread
            // meanwhile (`cpu_bound`).
            let cached = netcore::client::cpu_bound(plain_len, || {
                let sealed = disk.get(&disk_key).ok().flatten()?;
                Some(self.inner.key.open(segments, &place, plain_len, sealed))
            });
            if let Some(opened) = cached {
                // INV: a cached sealed chunk is used only if it authenticates.
                match opened {
                    Ok(plain) => {
                        let plain = Arc::new(plain);
                        self.inner.chunk_cache.insert(key, plain.clone());
                        return Ok(plain);
                    }
                    Err(_) => {
                        tracing::warn!(blob = %r.blob_id, "disk cache entry failed authentication; refetching");
                        let _ = disk.remove(&disk_key);
                    }
                }
            }
        }
        let (from, to) = (
            r.offset as usize,
            r.offset as usize + r.sealed_len(segments) as usize,
        );
        let cut = |blob: &[u8]| {
            blob.get(from..to).map(<[u8]>::to_vec).ok_or_else(|| {
                FetchError::Integrity(format!(
                    "blob {} of {} bytes cannot hold a chunk at {from}..{to}",
                    r.blob_id,
                    blob.len()
                ))
            })
        };
        let sealed = if let Some(pack) = self.inner.pack_cache.get(&r.blob_id) {
            // INV: a cached pack is a blob the client verified; the AEAD below authenticates
            // the chunk cut from it for exactly this file, position and version.
            cut(&pack)?
        } else {
            let info = self
                .inner
                .index
                .blob(&r.blob_id)
                .map_err(|e| FetchError::Index(e.to_string()))?
                .ok_or_else(|| FetchError::Moved(format!("no record of blob {}", r.blob_id)))?;
            let member = info.metadata.blob_len > (to - from) as u64;
            if member && to - from <= SMALL_MEMBER {
                // A small file (or tail) in a pack: just its bytes, as a verified range, one
                // round trip; the pack follows in the background, for the files written with
                // this one, which are usually read with it (a tree read back).
                self.prefetch_pack(r.blob_id, info.metadata.clone());
                let request = self.inner.store.get_range(
                    r.blob_id,
                    info.metadata,
                    from as u64,
                    (to - from) as u64,
                );
                self.inner
                    .awake
                    .wait(request, super::awake::ANSWER_SPIN)
                    .await
                    .map_err(|e| FetchError::Network(e.to_string()))?
            } else {
                // INV: at most `fetch_slots()` whole chunks are on their way in at once
                // (memory).
                let _slot = self
                    .inner
                    .fetch_slots
                    .acquire()
                    .await
                    .map_err(|e| FetchError::Network(e.to_string()))?;
                let blob = self
                    .inner
                    .store
                    .get(r.blob_id, info.metadata)
                    .await
                    .map_err(|e| FetchError::Network(e.to_string()))?;
                if from == 0 && to == blob.len() {
                    blob
                } else {
                    let sealed = cut(&blob)?;
                    if blob.len() as u64 <= MAX_CACHED_PACK {
                        // INV: the client verified the blob against its id.
                        self.inner.pack_cache.insert(r.blob_id, Arc::new(blob));
                    }
                    sealed
                }
            }
        };
        if keep {
            self.cache_on_disk(disk_key, &sealed);
        }
        // INV: bytes reach a reader only after the client verified the blob and the AEAD
        // authenticated it for exactly this file, position and version.
        let plain = netcore::client::cpu_bound(plain_len, || {
            self.inner.key.open(segments, &place, plain_len, sealed)
        })
        .map_err(|e| FetchError::Integrity(e.to_string()))?;
        let plain = Arc::new(plain);
        self.inner.chunk_cache.insert(key, plain.clone());
        Ok(plain)
    }
}
