//! The filesystem core: POSIX semantics over the metadata index, the write-back journal and the
//! blob store, knowing nothing of FUSE (the adapter in `crate::fuse` translates callbacks into
//! these calls).
//!
//! - `meta`: namespace and attribute operations, served from the index alone (never the
//!   network);
//! - `files`: open files and handles;
//! - `buffers`: the one owner of dirty chunk buffers (what writes changed and no record holds
//!   yet) and of the memory they take;
//! - `write`: writes into buffers; flush, spill and fsync: sealing buffers into the journal,
//!   and (fsync) storing them on the network;
//! - `upload`: the uploader, storing journal records as blobs (small ones packed together);
//! - `compact`: rewriting packs whose files were mostly deleted;
//! - `gc`: deleting unreferenced blobs from the nodes;
//! - `read`: reading through buffers, the journal, the chunk cache and the network;
//! - `background`: the tasks that run by themselves (flusher, uploader, journal reclaim, GC),
//!   owned by one [`background::Background`] with a `shutdown`.
//!
//! # Durability (DESIGN invariant 3)
//!
//! A write lands in memory. `close` (flush) seals the file's dirty chunks into the journal and
//! commits them to the index, or, for a small file, queues the commit for the next index
//! transaction and keeps the buffers until then: from then on a killed mount loses nothing
//! (the next mount replays the journal records the index lacks). `fsync`, `walrusfs sync` and
//! unmount store the journal's records on `n - f` nodes, commit them, and make the index
//! durable before they return. With `sync_close`, close does what fsync does.

mod awake;
mod background;
mod buffers;
mod compact;
mod error;
mod files;
mod gc;
mod meta;
mod read;
#[cfg(test)]
mod tests;
mod upload;
mod write;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use error::{note_error, recent_errors, FsError, FsResult};
pub use meta::{Attr, RequestCtx, StatFs};
pub use read::ReadData;

use crate::data::crypto::DataKey;
use crate::data::store::BlobStore;
use crate::index::Index;
use crate::journal::Journal;
use netcore::codec::BlobId;

/// Tuning of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Refuse every change.
    pub read_only: bool,
    /// The filesystem is not part of an archive: nothing is published, so a change counts as
    /// final (for garbage collection) once it is durable on local disk. Unit tests only; a
    /// mount is always an archive's.
    pub local_only: bool,
    /// `close` waits for the network, as `fsync` does (instead of returning once the data is
    /// in the journal).
    pub sync_close: bool,
    /// Memory for dirty chunk buffers across all files; past it, a writer seals its file's
    /// buffers into the journal.
    pub dirty_budget: u64,
    /// Bytes the write-back journal may hold; past it, writers wait for the uploader.
    pub journal_bytes: u64,
    /// How long a writer waits for room in a full journal (the network is not storing data)
    /// before its write fails with EIO. A short outage costs writers time, not errors.
    pub journal_wait: Duration,
    /// Bytes of plaintext chunks cached in memory.
    pub chunk_cache_bytes: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u64,
    /// Blob uploads in flight at once.
    pub upload_concurrency: usize,
    /// Dirty buffers of open files older than this are sealed into the journal in the
    /// background.
    pub writeback_delay: Duration,
    /// Small journal records wait this long for others to share a pack blob with.
    pub pack_delay: Duration,
    /// An unreferenced blob is deleted from the network only this long after its drop was
    /// published: a reader that looked up the chunk just before may still be fetching it.
    pub gc_grace: Duration,
    /// How often packs that are mostly dead are looked for and compacted.
    pub compact_interval: Duration,
    /// How long an fsync (or `walrusfs sync`) keeps retrying a failed upload before it
    /// reports EIO: nodes that just came back may still be reconnecting.
    pub sync_retry: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            read_only: false,
            local_only: true,
            sync_close: false,
            dirty_budget: 256 << 20,
            journal_bytes: 2 << 30,
            journal_wait: Duration::from_secs(300),
            chunk_cache_bytes: 256 << 20,
            readahead_chunks: 4,
            upload_concurrency: 8,
            writeback_delay: Duration::from_secs(3),
            pack_delay: Duration::from_millis(300),
            gc_grace: Duration::from_secs(5),
            compact_interval: Duration::from_secs(60),
            sync_retry: Duration::from_secs(5),
        }
    }
}

/// The filesystem. Cheap to clone; all methods take `&self` and may be called from many
/// threads at once. Network work runs on the tokio runtime given at construction.
pub struct Fs<B: BlobStore> {
    pub(crate) inner: Arc<Inner<B>>,
}

impl<B: BlobStore> Clone for Fs<B> {
    fn clone(&self) -> Self {
        Fs {
            inner: self.inner.clone(),
        }
    }
}

type FetchCell = Arc<tokio::sync::OnceCell<Result<Arc<Vec<u8>>, FetchError>>>;

/// A stored chunk's place: the blob and the offset of the sealed chunk in it.
pub(crate) type ChunkKey = (BlobId, u64);

/// Why a chunk fetch failed, shared by every reader waiting on it.
#[derive(Debug, Clone)]
pub(crate) enum FetchError {
    /// The network could not return the blob.
    Network(String),
    /// The blob came back verified but the chunk failed authentication.
    Integrity(String),
    /// The index could not be read.
    Index(String),
    /// The index has no record of the blob the chunk points into any more (it moved).
    Moved(String),
}

pub(crate) struct Inner<B: BlobStore> {
    pub(crate) index: Arc<Index>,
    /// Sealed chunks waiting to be stored.
    pub(crate) journal: Arc<Journal>,
    /// Refuse changes: set at mount for a read-only mount, and later if the archive's writer
    /// lease is lost.
    pub(crate) read_only: AtomicBool,
    /// File bytes the network can still take, as last measured (`u64::MAX`: not known).
    pub(crate) network_free: AtomicU64,
    /// Signalled whenever data became durable (an fsync, a sync): the archive publishes soon
    /// after.
    pub(crate) durable: Arc<tokio::sync::Notify>,
    pub(crate) store: Arc<B>,
    pub(crate) key: DataKey,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) cfg: FsConfig,
    pub(crate) chunk_size: u64,
    /// Files with open handles or dirty buffers, by inode.
    pub(crate) open: Mutex<HashMap<u64, Arc<files::OpenFile>>>,
    /// Open handles.
    pub(crate) handles: Mutex<HashMap<u64, Arc<files::Handle>>>,
    pub(crate) next_fh: AtomicU64,
    /// Memory held in dirty buffers.
    pub(crate) dirty: buffers::DirtyBudget,
    /// Files whose buffers wait for a queued index commit: (its ticket, inode). See
    /// [`Fs::settle_applied`].
    pub(crate) awaiting: Mutex<Vec<(u64, u64)>>,
    /// Verified plaintext chunks by place.
    pub(crate) chunk_cache: cache::MemoryCache<ChunkKey, Arc<Vec<u8>>>,
    /// Packs of small files fetched whole for one of their chunks, sealed as the client
    /// verified them, so the chunks of the files written with it are cut from it rather than
    /// each fetching the whole pack again (see `read::pack_cache_bytes`).
    pub(crate) pack_cache: cache::MemoryCache<netcore::codec::BlobId, Arc<Vec<u8>>>,
    /// The pack being fetched into the pack cache, if any (see `read::prefetch_pack`).
    pub(crate) pack_fetching: Mutex<Option<netcore::codec::BlobId>>,
    /// Sealed chunks (ciphertext only) on local disk, if configured. Entries are not trusted:
    /// the AEAD authenticates each one when it is opened, and a bad one is refetched.
    pub(crate) disk_cache: Option<cache::DiskCache>,
    /// Writes into `disk_cache` in flight (they run off the readers' path).
    pub(crate) cache_writes: Arc<std::sync::atomic::AtomicUsize>,
    /// The buffers those writes copy sealed chunks into, reused (see `read::cache_on_disk`).
    pub(crate) cache_buffers: Arc<netcore::buffers::BufferPool>,
    /// Buffers written data is sealed into on its way to the journal, reused.
    pub(crate) seal_buffers: Arc<netcore::buffers::BufferPool>,
    /// Fetches in flight, so concurrent readers of one chunk share one network read.
    pub(crate) fetching: Mutex<HashMap<ChunkKey, FetchCell>>,
    /// Late storage confirmations of blobs the index does not record yet (the upload's
    /// commit follows its put), with the ticks they have waited (see
    /// `Fs::keep_late_confirmations`).
    pub(crate) late_waiting: Mutex<Vec<(netcore::wire::StorageConfirmation, u32)>>,
    /// Whole chunks fetched from the network at once at most (see `read::fetch_slots`).
    pub(crate) fetch_slots: tokio::sync::Semaphore,
    /// Keeps one ranged read's wait for the network awake (see `awake`).
    pub(crate) awake: awake::Awake,
    /// The uploader's shared state.
    pub(crate) uploads: upload::Uploads,
    /// Wakes the garbage collector.
    pub(crate) gc_wake: Arc<tokio::sync::Notify>,
    /// Uploads hold it shared from their put to their index commit; a GC round holds it
    /// exclusively from choosing blobs to deleting them. So a blob a failed upload queued for
    /// deletion is never deleted while a retry stores it again (same bytes, same blob): either
    /// the retry's commit takes it off the queue first, or the deletion ends before the retry
    /// stores it.
    pub(crate) gc_gate: tokio::sync::RwLock<()>,
    /// Wakes the journal reclaimer (records were stored, or a writer waits for room).
    pub(crate) reclaim_wake: Arc<tokio::sync::Notify>,
    /// The background tasks, until shut down.
    pub(crate) background: Mutex<Option<background::Background>>,
}

/// What waits to be stored on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes in the write-back journal (sealed records not yet reclaimed).
    pub journal_bytes: u64,
    /// Bytes written and still in memory, not yet sealed into the journal.
    pub memory_bytes: u64,
    /// Chunks waiting in the journal.
    pub chunks: u64,
    /// Files with chunks waiting (counted over the walked part of the queue).
    pub files: u64,
    /// Whether `files` counts the whole queue.
    pub files_exact: bool,
    /// The sequence number of the oldest record waiting, if any.
    pub oldest_seq: Option<u64>,
    /// The sequence number the next record will get.
    pub next_seq: u64,
    /// Blob uploads running now.
    pub uploads_in_flight: u64,
}

/// What a filesystem is made of.
pub struct FsParts<B: BlobStore> {
    /// The metadata index.
    pub index: Arc<Index>,
    /// Where blobs go.
    pub store: Arc<B>,
    /// The key chunks are sealed under.
    pub key: DataKey,
    /// Where network work runs.
    pub rt: tokio::runtime::Handle,
    /// Tuning.
    pub cfg: FsConfig,
    /// On-disk cache of sealed chunks, if any.
    pub disk_cache: Option<cache::DiskCache>,
}

impl<B: BlobStore> Fs<B> {
    /// Builds the filesystem over an opened index and the journal in `journal_dir`: replays the
    /// journal records the index does not have yet (a crash), frees orphans left by a crash
    /// (files unlinked while open), and starts the background tasks.
    pub fn start(parts: FsParts<B>, journal_dir: &Path) -> FsResult<Self> {
        let FsParts {
            index,
            store,
            key,
            rt,
            cfg,
            disk_cache,
        } = parts;
        let (journal, records) = Journal::open(journal_dir, cfg.journal_bytes)?;
        // INV: every record appended from now on is numbered past the index's journal mark,
        // so a replay after a crash never mistakes it for one already committed.
        journal.continue_after(index.journal_mark()?);
        if !cfg.read_only {
            let replayed = write::replay(&index, &records)?;
            if replayed > 0 {
                tracing::info!(
                    replayed,
                    "replayed journal records a crash left uncommitted"
                );
            }
            let purged = index.purge_orphans()?;
            if purged > 0 {
                tracing::info!(purged, "freed files unlinked while open before a crash");
            }
        }
        let chunk_size = u64::from(index.chunk_size());
        let fs = Fs {
            inner: Arc::new(Inner {
                chunk_cache: cache::MemoryCache::new(
                    cfg.chunk_cache_bytes - read::pack_cache_bytes(cfg.chunk_cache_bytes),
                ),
                pack_cache: cache::MemoryCache::new(read::pack_cache_bytes(cfg.chunk_cache_bytes)),
                pack_fetching: Mutex::default(),
                disk_cache,
                cache_writes: Default::default(),
                cache_buffers: netcore::buffers::BufferPool::new(read::cache_entries_bytes(
                    chunk_size,
                )),
                seal_buffers: netcore::buffers::BufferPool::new(read::sealed_chunks_bytes(
                    chunk_size,
                )),
                read_only: AtomicBool::new(cfg.read_only),
                network_free: AtomicU64::new(u64::MAX),
                durable: Arc::new(tokio::sync::Notify::new()),
                journal: Arc::new(journal),
                dirty: buffers::DirtyBudget::new(cfg.dirty_budget),
                awaiting: Mutex::default(),
                late_waiting: Mutex::default(),
                uploads: upload::Uploads::new(cfg.upload_concurrency, chunk_size),
                fetch_slots: tokio::sync::Semaphore::new(read::fetch_slots()),
                awake: awake::Awake::default(),
                index,
                store,
                key,
                rt,
                cfg,
                chunk_size,
                open: Default::default(),
                handles: Default::default(),
                next_fh: AtomicU64::new(1),
                fetching: Default::default(),
                gc_wake: Arc::new(tokio::sync::Notify::new()),
                gc_gate: tokio::sync::RwLock::new(()),
                reclaim_wake: Arc::new(tokio::sync::Notify::new()),
                background: Mutex::new(None),
            }),
        };
        for pool in [
            &fs.inner.cache_buffers,
            &fs.inner.seal_buffers,
            &fs.inner.uploads.buffers,
        ] {
            pool.release_when_idle(&fs.inner.rt, netcore::buffers::IDLE_RELEASE);
        }
        if !fs.inner.cfg.read_only {
            let bg = background::Background::start(&fs);
            *fs.inner
                .background
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(bg);
        }
        Ok(fs)
    }

    /// The chunk size files are cut into.
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk_size
    }

    /// The unmount path: stores everything (see [`Fs::sync_all`]), then stops the background
    /// tasks. On failure, says what could not be stored: it stays in the journal, in the
    /// state directory, and the next mount stores it.
    pub fn shutdown(&self) -> Result<(), String> {
        let stored = self.sync_all();
        self.stop_background();
        stored
    }

    /// Stops the background tasks without storing anything (a crash, for tests; and the last
    /// step of [`Fs::shutdown`]). Waits until they have stopped.
    pub fn stop_background(&self) {
        let bg = self
            .inner
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(bg) = bg {
            self.inner.rt.block_on(bg.shutdown());
        }
        // Cache fills hold the filesystem (and the cache's directory lock) until written.
        self.settle_cache_writes(std::time::Duration::from_secs(10));
    }

    /// Whether the kernel may remember that a name does not exist: only in a writer's mount,
    /// where every change to the namespace goes through this kernel (a follower's tree changes
    /// under it as the writer publishes).
    pub fn caches_missing_names(&self) -> bool {
        !self.inner.cfg.read_only
    }

    /// Refuses (or again accepts) changes from now on.
    pub fn set_read_only(&self, read_only: bool) {
        self.inner.read_only.store(read_only, Ordering::SeqCst);
    }

    /// Records what the network can still take, in file bytes (`statfs` reports it, less
    /// what waits to be stored).
    pub fn set_network_free(&self, bytes: u64) {
        self.inner
            .network_free
            .store(bytes.min(u64::MAX - 1), Ordering::Relaxed);
    }

    /// What [`Fs::set_network_free`] last recorded, if anything.
    pub fn network_free(&self) -> Option<u64> {
        match self.inner.network_free.load(Ordering::Relaxed) {
            u64::MAX => None,
            b => Some(b),
        }
    }

    /// Notified whenever data became durable (fsync); the archive publishes soon after.
    pub fn durable_notify(&self) -> Arc<tokio::sync::Notify> {
        self.inner.durable.clone()
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.inner.index
    }

    /// Cache counters (hits, misses, bytes) of the plaintext chunk cache.
    pub fn cache_stats(&self) -> cache::CacheStats {
        self.inner.chunk_cache.stats()
    }

    /// Cache counters of the cache of fetched packs of small files.
    pub fn pack_cache_stats(&self) -> cache::CacheStats {
        self.inner.pack_cache.stats()
    }

    /// Cache counters of the on-disk sealed-chunk cache, if there is one.
    pub fn disk_cache_stats(&self) -> Option<cache::CacheStats> {
        self.inner.disk_cache.as_ref().map(|c| c.stats())
    }

    /// Blobs waiting to be deleted from the network.
    pub fn gc_backlog(&self) -> u64 {
        self.inner.index.gc_len() as u64
    }

    /// Bytes in dirty buffers (memory).
    pub fn dirty_bytes(&self) -> u64 {
        self.inner.dirty.used()
    }

    /// Bytes in the write-back journal, and the number of chunks it holds not yet stored.
    pub fn journal_backlog(&self) -> (u64, usize) {
        (self.inner.journal.bytes(), self.inner.index.journal_len())
    }

    /// What waits to be stored on the network: see [`Backlog`]. Counting files walks the
    /// journal queue, up to `max_chunks` entries.
    pub fn backlog(&self, max_chunks: usize) -> FsResult<Backlog> {
        let index = &self.inner.index;
        let chunks = index.journal_len() as u64;
        let mut files = std::collections::HashSet::new();
        let mut from = 0;
        let mut walked = 0usize;
        let mut oldest_seq = None;
        while walked < max_chunks {
            let batch = index.journal_pending(from, 1024.min(max_chunks - walked))?;
            let Some(last) = batch.last() else { break };
            from = last.jchunk.seq + 1;
            walked += batch.len();
            for p in &batch {
                oldest_seq.get_or_insert(p.jchunk.seq);
                files.insert(p.ino);
            }
        }
        Ok(Backlog {
            journal_bytes: self.inner.journal.bytes(),
            memory_bytes: self.dirty_bytes(),
            chunks,
            files: files.len() as u64,
            files_exact: (walked as u64) >= chunks,
            oldest_seq,
            next_seq: self.inner.journal.next_seq(),
            uploads_in_flight: self.inner.uploads.in_flight() as u64,
        })
    }

    /// Makes the index durable, the journal first (a durable index must never point at journal
    /// records a power cut could lose).
    pub(crate) fn flush_index(&self) -> FsResult<()> {
        self.inner.journal.sync()?;
        self.inner.index.flush()?;
        Ok(())
    }
}

impl<B: BlobStore> Inner<B> {
    pub(crate) fn lock_open(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<files::OpenFile>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn check_writable(&self) -> FsResult<()> {
        if self.read_only.load(Ordering::Relaxed) {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }
}
