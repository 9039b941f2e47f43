//! A byte-bounded LRU cache of byte blobs in a local directory, surviving restarts.
//!
//! Holds verified ciphertext (sealed chunks, slivers) so a hit saves a network round trip.
//! One file per entry, named after its [`DiskKey`], written to a temporary name and renamed into
//! place, so a reader sees either the whole old entry, the whole new one, or nothing. There is no
//! fsync: a crash may lose entries, and may leave a renamed file whose data never reached the
//! disk; the header's length and checksum catch that, and such an entry is removed and reported
//! as a miss. Callers still verify content cryptographically before serving it. A cache opened
//! with [`DiskCache::open_unsummed`] leaves the checksum out: its caller's verification is what
//! catches a zero-filled entry, and it removes the entry then.
//!
//! Recency is kept in memory and approximated on disk by file modification times (set on insert
//! and refreshed on every hit), which [`DiskCache::open`] uses to rebuild the LRU order.
//!
//! One `DiskCache` owns its directory: `open` takes an exclusive lock on a `LOCK` file in it, so
//! a second instance (in this process or another) fails with [`DiskCacheError::Locked`] instead
//! of deleting the first one's temporary files.

mod format;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;

pub use self::format::DiskKey;
use self::format::{decode_header, encode_header, invalid, HEADER_LEN};
use crate::stats::{CacheStats, Counters};

/// Name of the lock file that marks a directory as owned by an open [`DiskCache`].
const LOCK_FILE: &str = "LOCK";

/// Prefix of in-progress writes. Anything with this prefix found by `open` is a leftover from a
/// crash (the directory lock rules out a live writer) and is deleted.
const TEMP_PREFIX: &str = ".tmp-";

/// Errors from [`DiskCache`]. Damaged or vanished entries are not errors: they are dropped and
/// reported as misses.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// A filesystem operation on the cache directory failed (for example disk full, permission
    /// denied, or the directory was removed).
    #[error("disk cache: cannot {op} {path}: {source}")]
    Io {
        /// What was being done: "create", "lock", "list", "write", "rename", "delete".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another `DiskCache`, in this or another process, has the directory open.
    #[error("disk cache directory {0} is already in use by another cache")]
    Locked(PathBuf),
    /// An entry given whole ([`DiskCache::insert_entry`]) whose header does not describe it.
    #[error("disk cache: an entry's header does not match its value")]
    BadEntry,
}

/// Builds a closure that wraps an `io::Error` with what was being done and to which path.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiskCacheError + 'a {
    move |source| DiskCacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Deletes a file, treating "already gone" as success.
fn remove_file_if_present(path: &Path) -> Result<(), DiskCacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("delete", path)(e)),
        _ => Ok(()),
    }
}

/// A byte-bounded LRU cache of blobs stored as files in one directory.
///
/// Capacity counts whole file sizes (header included; filesystem block rounding is not). Safe to
/// share between threads: reads and the data part of writes happen outside the internal lock;
/// renames and deletions happen under it, so index and directory change together.
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    /// Whether new entries carry a checksum (format version 1), and entries without one are
    /// refused.
    summed: bool,
    /// Entries are written around the page cache: a chunk read through the mount is in the
    /// kernel's cache already, in plaintext; its ciphertext need not be there too.
    direct: crate::direct::DirectWrites,
    inner: Mutex<Inner>,
    next_temp: AtomicU64,
    /// Held for its lock: the directory is ours while this file is open.
    _lock: File,
}

struct Slot {
    /// File size, header included.
    size: u64,
    /// Changes whenever the file at this key's path is replaced, so a reader that found the old
    /// file damaged does not delete a newer one.
    generation: u64,
}

struct Inner {
    lru: LruCache<DiskKey, Slot>,
    /// INV: the sum of `size` over `lru`, and `<= capacity` after every operation.
    bytes: u64,
    next_generation: u64,
    counters: Counters,
}

impl Inner {
    fn track(&mut self, key: DiskKey, size: u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Some(old) = self.lru.put(key, Slot { size, generation }) {
            self.bytes -= old.size;
        }
        self.bytes += size;
    }

    fn untrack(&mut self, key: &DiskKey) -> bool {
        match self.lru.pop(key) {
            Some(slot) => {
                self.bytes -= slot.size;
                true
            }
            None => false,
        }
    }
}

impl DiskCache {
    /// Opens (creating if needed) the cache in `dir`, bounded by `capacity_bytes` of entry files.
    ///
    /// Rebuilds the index from the entry files present, oldest modification time first, deletes
    /// temporary leftovers and empty or headerless entry files, then evicts least recent entries
    /// until the total fits `capacity_bytes`. Files with other names are left alone and not
    /// counted. Reading entry contents is deferred to [`get`](Self::get).
    pub fn open(dir: impl AsRef<Path>, capacity_bytes: u64) -> Result<Self, DiskCacheError> {
        Self::open_with(dir.as_ref(), capacity_bytes, true)
    }

    /// As [`open`](Self::open), for a caller that authenticates every value it gets (a MAC,
    /// an AEAD, a hash it knows): entries are written without a checksum, and read without
    /// one unless they have it (entries of an older version). Saves a pass over every byte
    /// inserted and every byte read; a damaged entry of the same length is then served, and
    /// the caller must [`remove`](Self::remove) it when it fails authentication.
    pub fn open_unsummed(
        dir: impl AsRef<Path>,
        capacity_bytes: u64,
    ) -> Result<Self, DiskCacheError> {
        Self::open_with(dir.as_ref(), capacity_bytes, false)
    }

    fn open_with(dir: &Path, capacity_bytes: u64, summed: bool) -> Result<Self, DiskCacheError> {
        let dir = dir.to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("create", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(DiskCacheError::Locked(dir)),
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }

        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                remove_file_if_present(&entry.path())?;
                continue;
            }
            let Some(key) = DiskKey::from_file_name(name) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted behind our back between listing and stat: nothing to index.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &entry.path())(e)),
            };
            if !meta.is_file() {
                continue;
            }
            if meta.len() < HEADER_LEN as u64 {
                remove_file_if_present(&entry.path())?;
                continue;
            }
            let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
            found.push((mtime, key, meta.len()));
        }
        // Oldest first, so the most recently used file ends up most recent in the LRU.
        found.sort_unstable();

        let mut inner = Inner {
            lru: LruCache::unbounded(),
            bytes: 0,
            next_generation: 0,
            counters: Counters::default(),
        };
        for (_, key, size) in found {
            inner.track(key, size);
        }
        let cache = Self {
            dir,
            capacity: capacity_bytes,
            summed,
            direct: crate::direct::DirectWrites::new(true),
            inner: Mutex::new(inner),
            next_temp: AtomicU64::new(0),
            _lock: lock,
        };
        cache.evict_to_fit(&mut cache.lock(), 0)?;
        Ok(cache)
    }

    /// Returns the stored bytes for `key` and marks the entry most recently used.
    ///
    /// A missing, unreadable, truncated or otherwise damaged entry is removed and reported as
    /// `Ok(None)`. `Err` means only that removing such an entry's file failed.
    pub fn get(&self, key: &DiskKey) -> Result<Option<Vec<u8>>, DiskCacheError> {
        let generation = {
            let mut inner = self.lock();
            match inner.lru.get(key) {
                Some(slot) => slot.generation,
                None => {
                    inner.counters.misses += 1;
                    return Ok(None);
                }
            }
        };
        let path = self.entry_path(key);
        // The read runs without the lock; if the entry is evicted or replaced meanwhile, the
        // open file still refers to the complete old entry (rename and unlink are atomic).
        let read = read_entry(&path, self.summed);
        let mut inner = self.lock();
        match read {
            Ok(data) => {
                inner.counters.hits += 1;
                Ok(Some(data))
            }
            Err(_) => {
                inner.counters.misses += 1;
                let same_file = inner.lru.peek(key).map(|slot| slot.generation) == Some(generation);
                if same_file {
                    inner.untrack(key);
                    remove_file_if_present(&path)?;
                }
                Ok(None)
            }
        }
    }

    /// Whether `key` is indexed, without reading it or touching its recency or the counters.
    pub fn contains(&self, key: &DiskKey) -> bool {
        self.lock().lru.contains(key)
    }

    /// Stores `value` under `key` (replacing any previous entry) as the most recently used
    /// entry, evicting least recently used entries until the total fits the capacity.
    ///
    /// Returns `Ok(false)` without writing if the entry file (value plus a 24-byte header) would
    /// exceed the capacity; any previous entry for `key` is removed then, as it is superseded.
    /// While a write is in progress the directory may hold that value on top of the capacity.
    ///
    /// On `Err` the previous entry for `key` is still served if the new one could not be put in
    /// place; if only deleting an evicted file failed, the new value is cached and the stray
    /// file is cleaned up by the next [`open`](Self::open).
    pub fn insert(&self, key: DiskKey, value: &[u8]) -> Result<bool, DiskCacheError> {
        self.insert_parts(key, &[&encode_header(value, self.summed), value])
    }

    /// Bytes of an entry's header: [`DiskCache::insert_entry`] takes them before the value.
    pub const ENTRY_HEADER_LEN: usize = HEADER_LEN;

    /// The header that goes before `value` in an entry of this cache (see
    /// [`DiskCache::insert_entry`]).
    pub fn entry_header(&self, value: &[u8]) -> [u8; HEADER_LEN] {
        encode_header(value, self.summed)
    }

    /// [`DiskCache::insert`] of an entry laid out by the caller in one buffer:
    /// [`DiskCache::entry_header`] of the value, then the value. A buffer whose start is
    /// aligned for `O_DIRECT` (see [`crate::direct::ALIGN`]) is then written without a copy.
    /// An entry whose header does not describe the bytes after it is refused
    /// ([`DiskCacheError::BadEntry`]) and nothing is written.
    pub fn insert_entry(&self, key: DiskKey, entry: &[u8]) -> Result<bool, DiskCacheError> {
        let (header, value) = entry.split_at(HEADER_LEN.min(entry.len()));
        if header != self.entry_header(value) {
            return Err(DiskCacheError::BadEntry);
        }
        self.insert_parts(key, &[entry])
    }

    fn insert_parts(&self, key: DiskKey, parts: &[&[u8]]) -> Result<bool, DiskCacheError> {
        let size: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if size > self.capacity {
            self.remove(&key)?;
            return Ok(false);
        }
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(e) = self.direct.write_new(&temp, parts).map(drop) {
            // Best effort: a leftover is deleted by the next `open` anyway.
            let _ = fs::remove_file(&temp);
            return Err(io_err("write", &temp)(e));
        }
        let path = self.entry_path(&key);
        let mut inner = self.lock();
        if let Err(e) = fs::rename(&temp, &path) {
            drop(inner);
            let _ = fs::remove_file(&temp);
            return Err(io_err("rename", &temp)(e));
        }
        inner.untrack(&key);
        let evicted = self.evict_to_fit(&mut inner, size);
        inner.track(key, size);
        inner.counters.inserts += 1;
        evicted.map(|()| true)
    }

    /// Removes the entry for `key`; returns whether it was cached.
    pub fn remove(&self, key: &DiskKey) -> Result<bool, DiskCacheError> {
        let mut inner = self.lock();
        if !inner.untrack(key) {
            return Ok(false);
        }
        remove_file_if_present(&self.entry_path(key))?;
        Ok(true)
    }

    /// Number of indexed entries.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total size of the indexed entry files, headers included. Never above the capacity.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The configured bound on [`bytes`](Self::bytes).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The directory this cache owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A consistent snapshot of the counters (since `open`, evictions made by `open` included)
    /// and the current contents.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        inner.counters.snapshot(inner.bytes, inner.lru.len() as u64)
    }

    fn entry_path(&self, key: &DiskKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Evicts least recently used entries until `incoming` more bytes fit. Every victim leaves
    /// the index even if deleting its file fails; the first such failure is returned.
    fn evict_to_fit(&self, inner: &mut Inner, incoming: u64) -> Result<(), DiskCacheError> {
        let mut result = Ok(());
        while inner.bytes + incoming > self.capacity {
            let Some((victim, slot)) = inner.lru.pop_lru() else {
                break;
            };
            inner.bytes -= slot.size;
            inner.counters.evictions += 1;
            if let Err(e) = remove_file_if_present(&self.entry_path(&victim)) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Locks the index. A panic while holding it cannot leave the index inconsistent in a way
    /// that matters here (every update is a few integer and list operations that do not panic),
    /// so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Reads and checks a whole entry; any failure (including damage, as `InvalidData`) means the
/// entry must not be served. A good read refreshes the file's modification time, best effort,
/// so recency survives a restart. An entry without a checksum is accepted only if `!summed`.
fn read_entry(path: &Path, summed: bool) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header)?;
    let (len, sum) = decode_header(&header)?;
    // INV: the length is checked against the file before allocating, so a damaged header cannot
    // trigger a huge allocation.
    if Some(file_len) != len.checked_add(HEADER_LEN as u64) {
        return Err(invalid("length mismatch"));
    }
    let len = usize::try_from(len).map_err(|_| invalid("length overflow"))?;
    let mut data = Vec::with_capacity(len);
    file.read_to_end(&mut data)?;
    if data.len() != len {
        return Err(invalid("file changed size while reading"));
    }
    match sum {
        Some(sum) if format::checksum(&data) != sum => return Err(invalid("checksum mismatch")),
        None if summed => return Err(invalid("no checksum in a checksummed cache")),
        _ => {}
    }
    let _ = file.set_modified(SystemTime::now());
    Ok(data)
}
