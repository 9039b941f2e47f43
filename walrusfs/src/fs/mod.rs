//! The filesystem core: POSIX semantics over the metadata index and the blob store, knowing
//! nothing of FUSE (the adapter in `crate::fuse` translates callbacks into these calls).
//!
//! - `meta`: namespace and attribute operations, served from the index alone (never the
//!   network);
//! - `files`: open files, their in-memory chunk buffers, and handles;
//! - `write`: buffering writes, sealing and uploading chunks, flush/fsync durability;
//! - `read`: reading through buffers, the chunk cache and the network, with readahead;
//! - `background`: the periodic flusher and the garbage collector of unreferenced blobs.

mod background;
mod error;
mod files;
mod meta;
mod read;
#[cfg(test)]
mod tests;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use error::{FsError, FsResult};
pub use meta::{Attr, RequestCtx, StatFs};

use crate::data::crypto::DataKey;
use crate::data::store::BlobStore;
use crate::index::Index;
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
    /// Dirty (not yet stored) bytes held in memory across all files; writers wait beyond it.
    pub dirty_budget: u64,
    /// Bytes of plaintext chunks cached in memory.
    pub chunk_cache_bytes: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u64,
    /// Chunk uploads in flight at once.
    pub upload_concurrency: usize,
    /// Dirty data older than this is uploaded in the background.
    pub writeback_delay: Duration,
    /// An unreferenced blob is deleted from the network only this long after it was queued:
    /// a reader that looked up the chunk just before may still be fetching it.
    pub gc_grace: Duration,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            read_only: false,
            local_only: true,
            dirty_budget: 256 << 20,
            chunk_cache_bytes: 256 << 20,
            readahead_chunks: 4,
            upload_concurrency: 8,
            writeback_delay: Duration::from_secs(3),
            gc_grace: Duration::from_secs(5),
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
    /// The index has no record of the blob the chunk points into.
    Index(String),
}

pub(crate) struct Inner<B: BlobStore> {
    pub(crate) index: Arc<Index>,
    /// Refuse changes: set at mount for a read-only mount, and later if the archive's writer
    /// lease is lost.
    pub(crate) read_only: AtomicBool,
    /// Signalled whenever data became durable (an fsync, a sync): the archive publishes soon
    /// after.
    pub(crate) durable: Arc<tokio::sync::Notify>,
    pub(crate) store: Arc<B>,
    pub(crate) key: DataKey,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) cfg: FsConfig,
    pub(crate) chunk_size: u64,
    /// Files with open handles or unstored data, by inode.
    pub(crate) open: Mutex<HashMap<u64, Arc<files::OpenFile>>>,
    /// Open handles.
    pub(crate) handles: Mutex<HashMap<u64, Arc<files::Handle>>>,
    pub(crate) next_fh: AtomicU64,
    /// Verified plaintext chunks by blob id.
    pub(crate) chunk_cache: cache::MemoryCache<ChunkKey, Arc<Vec<u8>>>,
    /// Sealed chunks (ciphertext only) on local disk, if configured. Entries are not trusted:
    /// the AEAD authenticates each one when it is opened, and a bad one is refetched.
    pub(crate) disk_cache: Option<cache::DiskCache>,
    /// Fetches in flight, so concurrent readers of one chunk share one network read.
    pub(crate) fetching: Mutex<HashMap<ChunkKey, FetchCell>>,
    /// Bytes in chunk buffers not yet stored, and a condvar signalled when it drops.
    pub(crate) dirty_bytes: Mutex<u64>,
    pub(crate) dirty_dropped: Condvar,
    pub(crate) upload_slots: Arc<tokio::sync::Semaphore>,
    /// Wakes the garbage collector (shared with its task, which must not keep `Inner` alive).
    pub(crate) gc_wake: Arc<tokio::sync::Notify>,
}

impl<B: BlobStore> Fs<B> {
    /// Builds the filesystem over an opened index. Frees orphans left by a crash (files
    /// unlinked while open) and starts the background flusher and garbage collector on `rt`.
    pub fn new(
        index: Arc<Index>,
        store: Arc<B>,
        key: DataKey,
        rt: tokio::runtime::Handle,
        cfg: FsConfig,
    ) -> FsResult<Self> {
        Self::with_disk_cache(index, store, key, rt, cfg, None)
    }

    /// [`Fs::new`] with an on-disk cache of sealed chunks.
    pub fn with_disk_cache(
        index: Arc<Index>,
        store: Arc<B>,
        key: DataKey,
        rt: tokio::runtime::Handle,
        cfg: FsConfig,
        disk_cache: Option<cache::DiskCache>,
    ) -> FsResult<Self> {
        if !cfg.read_only {
            let purged = index.purge_orphans()?;
            if purged > 0 {
                tracing::info!(purged, "freed files unlinked while open before a crash");
            }
        }
        let chunk_size = u64::from(index.chunk_size());
        let fs = Fs {
            inner: Arc::new(Inner {
                chunk_cache: cache::MemoryCache::new(cfg.chunk_cache_bytes),
                disk_cache,
                upload_slots: Arc::new(tokio::sync::Semaphore::new(cfg.upload_concurrency.max(1))),
                read_only: AtomicBool::new(cfg.read_only),
                durable: Arc::new(tokio::sync::Notify::new()),
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
                dirty_bytes: Mutex::new(0),
                dirty_dropped: Condvar::new(),
                gc_wake: Arc::new(tokio::sync::Notify::new()),
            }),
        };
        if !fs.inner.cfg.read_only {
            background::start(&fs);
        }
        Ok(fs)
    }

    /// The chunk size files are cut into.
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk_size
    }

    /// Stores every file's unstored data and makes the index durable: the unmount path.
    /// Returns the number of files whose data could not be stored (their data is lost when
    /// the process exits; each is logged).
    pub fn shutdown(&self) -> usize {
        match self.sync_all() {
            Ok(()) => 0,
            Err(failed) => failed.len(),
        }
    }

    /// Stores every file's unstored data on the network, commits it and makes the index
    /// durable (`walrusfs sync`). On failure, lists the inodes whose data could not be stored
    /// (each logged; the data stays buffered).
    pub fn sync_all(&self) -> Result<(), Vec<u64>> {
        let files: Vec<_> = self.inner.lock_open().values().cloned().collect();
        let mut failed = Vec::new();
        for file in files {
            if let Err(e) = self.sync_file(&file) {
                tracing::error!(
                    ino = file.ino,
                    "data of inode {} could not be stored: {e}",
                    file.ino
                );
                failed.push(file.ino);
            }
        }
        if let Err(e) = self.inner.index.flush() {
            tracing::error!("index flush failed: {e}");
            failed.push(0);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Refuses (or again accepts) changes from now on.
    pub fn set_read_only(&self, read_only: bool) {
        self.inner.read_only.store(read_only, Ordering::SeqCst);
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

    /// Cache counters of the on-disk sealed-chunk cache, if there is one.
    pub fn disk_cache_stats(&self) -> Option<cache::CacheStats> {
        self.inner.disk_cache.as_ref().map(|c| c.stats())
    }

    /// Blobs waiting to be deleted from the network.
    pub fn gc_backlog(&self) -> u64 {
        self.inner.index.gc_len() as u64
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
