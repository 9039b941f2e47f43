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
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use error::{FsError, FsResult};
pub use meta::{Attr, RequestCtx, StatFs};

use crate::data::crypto::MasterKey;
use crate::data::store::BlobStore;
use crate::index::Index;
use netcore::codec::BlobId;

/// Tuning of the filesystem core.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Refuse every change.
    pub read_only: bool,
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

type FetchCell = Arc<tokio::sync::OnceCell<Result<Arc<Vec<u8>>, String>>>;

pub(crate) struct Inner<B: BlobStore> {
    pub(crate) index: Index,
    pub(crate) store: Arc<B>,
    pub(crate) key: MasterKey,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) cfg: FsConfig,
    pub(crate) chunk_size: u64,
    /// Files with open handles or unstored data, by inode.
    pub(crate) open: Mutex<HashMap<u64, Arc<files::OpenFile>>>,
    /// Open handles.
    pub(crate) handles: Mutex<HashMap<u64, Arc<files::Handle>>>,
    pub(crate) next_fh: AtomicU64,
    /// Verified plaintext chunks by blob id.
    pub(crate) chunk_cache: cache::MemoryCache<BlobId, Arc<Vec<u8>>>,
    /// Sealed chunks (ciphertext only) on local disk, if configured. Entries are not trusted:
    /// the AEAD authenticates each one when it is opened, and a bad one is refetched.
    pub(crate) disk_cache: Option<cache::DiskCache>,
    /// Fetches in flight, so concurrent readers of one chunk share one network read.
    pub(crate) fetching: Mutex<HashMap<BlobId, FetchCell>>,
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
        index: Index,
        store: Arc<B>,
        key: MasterKey,
        rt: tokio::runtime::Handle,
        cfg: FsConfig,
    ) -> FsResult<Self> {
        Self::with_disk_cache(index, store, key, rt, cfg, None)
    }

    /// [`Fs::new`] with an on-disk cache of sealed chunks.
    pub fn with_disk_cache(
        index: Index,
        store: Arc<B>,
        key: MasterKey,
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
        let files: Vec<_> = self.inner.lock_open().values().cloned().collect();
        let mut failed = 0;
        for file in files {
            if let Err(e) = self.sync_file(&file) {
                tracing::error!(
                    ino = file.ino,
                    "data of inode {} could not be stored at unmount: {e}",
                    file.ino
                );
                failed += 1;
            }
        }
        if let Err(e) = self.inner.index.flush() {
            tracing::error!("index flush at unmount failed: {e}");
        }
        failed
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
        if self.cfg.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }
}
