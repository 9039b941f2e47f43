//! The metadata index: inodes, directory entries, chunk maps, symlinks, xattrs, orphans and
//! the garbage-collection queue, in one sled database. It never touches the network.
//!
//! The filesystem core calls [`Index`] for every metadata operation. `Index` is `Send + Sync`
//! with `&self` methods. Reads share one lock, mutations take it exclusively (sled 0.34 can
//! deadlock when an iterator runs alongside a multi-tree transaction, and sled serializes its
//! transactions anyway). Each mutation runs as a single sled transaction over all trees, so a
//! crash at any point leaves either the state before or the state after every operation
//! (durable once [`Index::flush`] returned).
//!
//! # On-disk layout (format version 1)
//!
//! This layout is an on-disk contract: change it only with a format version bump. Integers in
//! keys are big-endian (`be64`), so range scans visit them in numeric order; values are postcard
//! unless noted; `++` is concatenation.
//!
//! | tree         | key                              | value                               |
//! |--------------|----------------------------------|-------------------------------------|
//! | `inodes`     | `be64 ino`                       | [`InodeAttr`]                       |
//! | `dirents`    | `be64 parent ++ name`            | `DirentVal { ino, kind, cookie }`   |
//! | `dircookies` | `be64 parent ++ be64 cookie`     | name (raw bytes)                    |
//! | `parents`    | `be64 dir`                       | `u64` parent dir (root: itself)     |
//! | `symlinks`   | `be64 ino`                       | target (raw bytes)                  |
//! | `xattrs`     | `be64 ino ++ name`               | value (raw bytes)                   |
//! | `chunks`     | `be64 ino ++ be64 chunk index`   | [`ChunkRef`]                        |
//! | `gc`         | blob id (32 bytes)               | empty                               |
//! | `orphans`    | `be64 ino`                       | empty                               |
//! | `meta`       | `format_version`                 | `u32` format version                |
//! |              | `fs_id`                          | `[u8; 16]`, random, made at creation|
//! |              | `chunk_size`                     | `u32`, fixed at creation            |
//! |              | `segment_size`                   | `u32`, fixed at creation (format 4; absent: 65536) |
//! |              | `counters`                       | `Counters { next_ino, next_cookie, inodes, bytes }` |
//!
//! Invariants (each is kept inside the transactions that touch it, marked `// INV:`):
//! - `dirents` and `dircookies` hold the same entries; cookies come from the global
//!   `next_cookie` counter, start at 3 (0, 1, 2 are the FUSE layer's: start, `.`, `..`) and are
//!   never reused, so `readdir` resumed after cookie `c` neither skips nor repeats an entry that
//!   existed throughout. A renamed entry gets a fresh cookie; an exchange keeps both cookies.
//! - Every entry points to an existing inode of the recorded kind. A file's `nlink` is its
//!   number of entries; a directory has one entry, `nlink = 2 + subdirectories`, and a
//!   `parents` record. Inode numbers come from `next_ino` and are never reused.
//! - An inode has `nlink == 0` exactly when it is in `orphans` (unlinked while open); orphans
//!   are freed by [`Index::release`] or, after a crash, [`Index::purge_orphans`].
//! - Chunk ref `i` of a file covers `[i * chunk_size, i * chunk_size + len)`, inside the file's
//!   size. Whenever a ref is dropped or replaced (truncate, overwrite, delete), its blob id is
//!   queued in `gc` in the same transaction, so no blob leaks and none is freed while
//!   referenced.
//! - `counters.inodes` and `counters.bytes` equal the number of inodes and the sum of file
//!   sizes, so [`Index::stats`] is O(1). [`Index::check`] verifies all of the above.
//!
//! The index holds no absolute paths, host names or other machine-specific data: the whole
//! database can later be exported (e.g. published as blobs) and restored on another machine.

mod check;
mod dir;
mod error;
mod file;
mod fresh;
mod gc;
mod journal;
mod layout;
mod overlay;
mod params;
mod records;
mod rename;
mod scan;
mod tx;
pub mod types;
mod xattr;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::data::crypto::Segments;

pub use check::CheckReport;
pub use error::{IndexError, Result};
pub use journal::{AttrCommit, JournalCommit, Move, Pending, Stored};
pub use layout::{NAME_MAX, SYMLINK_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX};
pub use params::{
    IndexOptions, IndexStats, NewNode, RenameFlags, RenameOutcome, SetAttr, Unlinked, XattrFlags,
};
pub use records::{Capture, RecordEntry};
pub use types::{
    BlobInfo, ChunkRef, DirEntry, FileKind, GcEntry, Ino, InodeAttr, JChunk, Timestamp, ROOT_INO,
};

pub use layout::TreeId;
use layout::{
    decode, encode, ino_key, meta_key, Counters, FIRST_COOKIE, FORMAT_VERSION, MIN_FORMAT_VERSION,
};
pub(crate) use scan::Scan;
use tx::Trees;

/// The metadata index of one filesystem. See the [module doc](self) for layout and invariants.
pub struct Index {
    trees: Trees,
    /// Mutations take it exclusively, reads shared (see `tx::Index::read_lock`).
    lock: RwLock<()>,
    /// Serializes flushes.
    flush_lock: Mutex<()>,
    /// sled's log file, fsynced by `flush`.
    log_file: std::fs::File,
    /// Transactions committed since open.
    committed: AtomicU64,
    /// A background [`Index::flush_log`] is queued ([`Index::queue_log_flush`]).
    log_flush_queued: AtomicBool,
    /// Every transaction up to this count is handed to the kernel (in sled's log file): a
    /// killed process loses none of them.
    logged: AtomicU64,
    /// Journal commits and attribute changes queued for the next transaction (see
    /// [`Index::defer_journal`], [`Index::defer_attrs`]).
    deferred: Mutex<journal::Deferred>,
    /// Tickets handed out to queued changes.
    next_ticket: AtomicU64,
    /// See [`Index::applied_ticket`].
    applied_ticket: AtomicU64,
    /// Changes not yet handed to the kernel that new files' creation records rely on.
    fresh: Mutex<fresh::Fresh>,
    /// What `deferred` will change, as reads must see it (new files, queued attribute changes
    /// of other inodes).
    overlay: Mutex<overlay::Overlay>,
    /// From `meta` (0 until an index being restored has one).
    chunk_size: AtomicU32,
    /// Plaintext bytes per sealed segment (0 until the meta records are loaded).
    segment_size: AtomicU32,
    /// From `meta`.
    fs_id: Mutex<[u8; 16]>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("chunk_size", &self.chunk_size())
            .field("fs_id", &self.filesystem_id())
            .finish_non_exhaustive()
    }
}

/// How long opening an index waits for sled's file lock: a handle of this process just dropped
/// releases it only once sled's own threads let go of the database, which on a loaded machine
/// takes a moment (an index reopened right after it was closed failed with "could not acquire
/// lock" under the full test suite's load). Another process holding it still fails, after this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `config.open()`, retried while the database's lock is held, for up to [`LOCK_WAIT`].
fn open_waiting_for_lock(config: &sled::Config) -> std::result::Result<sled::Db, sled::Error> {
    let start = std::time::Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl Index {
    /// Opens the index in directory `path`, creating it (with a root directory, ino
    /// [`ROOT_INO`], owned as `options` say, and `options.chunk_size`) if it does not exist.
    /// An existing index keeps the chunk size it was created with.
    ///
    /// Fails with `InvalidArgument` if `options.chunk_size` is 0, and with `Format` on an
    /// index of another format version.
    pub fn open(path: &Path, options: IndexOptions) -> Result<Self> {
        if options.chunk_size == 0 {
            return Err(IndexError::InvalidArgument("chunk size must be non-zero"));
        }
        let index = Self::open_raw(path)?;
        if index.trees.meta.get(meta_key::FORMAT)?.is_none() {
            index.create_root(options)?;
        }
        index.load_meta()?;
        index.upgrade_format()?;
        tracing::debug!(path = %path.display(), chunk_size = index.chunk_size(), "index opened");
        Ok(index)
    }

    /// Creates the root directory and meta records of an empty index (see
    /// [`Index::open_replica`]); does nothing to one that has them.
    pub fn initialize(&self, options: IndexOptions) -> Result<()> {
        if options.chunk_size == 0 {
            return Err(IndexError::InvalidArgument("chunk size must be non-zero"));
        }
        if self.trees.meta.get(meta_key::FORMAT)?.is_none() {
            self.create_root(options)?;
        }
        self.load_meta()
    }

    /// Marks an index of an older, compatible format as the current one (see
    /// [`FORMAT_VERSION`]'s history: the upgrades so far add trees, which sled creates).
    fn upgrade_format(&self) -> Result<()> {
        let format: u32 = decode(
            &required(&self.trees.meta, meta_key::FORMAT)?,
            "format version",
        )?;
        if format < FORMAT_VERSION {
            let value = encode(&FORMAT_VERSION)?;
            let _w = self.write_lock();
            self.transact(&Scan::default(), |tx| {
                tx.put(TreeId::Meta, meta_key::FORMAT, value.as_slice())
            })?;
            tracing::info!(from = format, to = FORMAT_VERSION, "index format upgraded");
        }
        Ok(())
    }

    /// Empties every tree but the local records (an index about to be rebuilt).
    pub fn reset(&self) -> Result<()> {
        let _w = self.write_lock();
        for tree in TreeId::ALL {
            if tree != TreeId::Local {
                self.trees.tree(tree).clear()?;
            }
        }
        self.chunk_size.store(0, Ordering::Relaxed);
        self.segment_size.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Opens an existing index, or an empty one (no root, no meta) to be filled by
    /// [`Index::apply_entries`] from published records: a replica, or a restore. Everything but
    /// `apply_entries` expects the meta records, which a full record brings.
    pub fn open_replica(path: &Path) -> Result<Self> {
        let index = Self::open_raw(path)?;
        if index.trees.meta.get(meta_key::FORMAT)?.is_some() {
            index.load_meta()?;
        }
        Ok(index)
    }

    /// Turns this index into one as a release before format 4 made it: format 3, no segment
    /// size (so its chunks are sealed in 64 KiB segments).
    #[cfg(test)]
    pub(crate) fn make_format_3(&self) {
        #![allow(clippy::unwrap_used)]
        let three = encode(&3u32).unwrap();
        self.transact(&Scan::default(), |tx| {
            tx.put(TreeId::Meta, meta_key::FORMAT, three.as_slice())?;
            tx.del(TreeId::Meta, meta_key::SEGMENT_SIZE)?;
            Ok(())
        })
        .unwrap();
        self.flush().unwrap();
        self.load_meta().unwrap();
    }

    /// Whether the index has its meta records (a replica being restored has none yet).
    pub fn is_initialized(&self) -> bool {
        self.chunk_size() != 0
    }

    fn open_raw(path: &Path) -> Result<Self> {
        let mut config = sled::Config::new().path(path);
        if crate::faults::held(crate::faults::HOLD_INDEX_LOG) {
            // Tests: only the mount's own flushes hand the log to the kernel.
            config = config.flush_every_ms(None);
        }
        let db = open_waiting_for_lock(&config)?;
        // sled 0.34 keeps its log in `PATH/db`; opened here only to fsync it (see `flush`).
        let log_file =
            std::fs::File::open(path.join("db")).map_err(|e| IndexError::Db(sled::Error::Io(e)))?;
        Ok(Self {
            trees: Trees::open(db)?,
            deferred: Mutex::new(journal::Deferred::default()),
            next_ticket: AtomicU64::new(0),
            applied_ticket: AtomicU64::new(0),
            log_file,
            committed: AtomicU64::new(0),
            log_flush_queued: AtomicBool::new(false),
            logged: AtomicU64::new(0),
            fresh: Mutex::new(fresh::Fresh::default()),
            overlay: Mutex::new(overlay::Overlay::default()),
            lock: RwLock::new(()),
            flush_lock: Mutex::new(()),
            chunk_size: AtomicU32::new(0),
            segment_size: AtomicU32::new(0),
            fs_id: Mutex::new([0; 16]),
        })
    }

    /// Reads and checks the meta records (format version, chunk size, filesystem id,
    /// counters).
    pub(crate) fn load_meta(&self) -> Result<()> {
        let meta = &self.trees.meta;
        let format: u32 = decode(&required(meta, meta_key::FORMAT)?, "format version")?;
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&format) {
            return Err(IndexError::Format {
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        let chunk_size: u32 = decode(&required(meta, meta_key::CHUNK_SIZE)?, "chunk size")?;
        if chunk_size == 0 {
            return Err(IndexError::Corrupt("chunk size 0".into()));
        }
        let fs_id: [u8; 16] = decode(&required(meta, meta_key::FS_ID)?, "filesystem id")?;
        let segments = match meta.get(meta_key::SEGMENT_SIZE)? {
            None => Segments::LEGACY,
            Some(v) => {
                let bytes: u32 = decode(&v, "segment size")?;
                Segments::new(bytes)
                    .ok_or_else(|| IndexError::Corrupt(format!("segment size {bytes}")))?
            }
        };
        self.trees.counters()?;
        // `plain() <= Segments::MAX`, a u32.
        self.segment_size
            .store(segments.plain() as u32, Ordering::Relaxed);
        self.chunk_size.store(chunk_size, Ordering::Relaxed);
        *self.fs_id.lock().unwrap_or_else(|p| p.into_inner()) = fs_id;
        Ok(())
    }

    /// Writes the meta records and the root directory of a new index, in one transaction.
    fn create_root(&self, options: IndexOptions) -> Result<()> {
        let _w = self.write_lock();
        let now = Timestamp::now();
        let root = InodeAttr {
            ino: ROOT_INO,
            kind: FileKind::Dir,
            perm: options.root_perm & 0o7777,
            uid: options.root_uid,
            gid: options.root_gid,
            nlink: 2,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            next_version: FIRST_VERSION,
        };
        let fs_id: [u8; 16] = rand::random();
        let counters = Counters {
            seq: 0,
            next_ino: ROOT_INO + 1,
            next_cookie: FIRST_COOKIE,
            inodes: 1,
            bytes: 0,
        };
        let format = encode(&FORMAT_VERSION)?;
        let chunk_size = encode(&options.chunk_size)?;
        // `plain() <= Segments::MAX`, a u32.
        let segment_size = encode(&(Segments::DEFAULT.plain() as u32))?;
        let fs_id = encode(&fs_id)?;
        self.transact(&Scan::default(), |tx| {
            // INV: the format version is written in the same transaction as everything else,
            // so an index that has one is complete.
            // The counters first: every later write takes its sequence number from them.
            tx.put_counters(&counters)?;
            tx.put(TreeId::Meta, meta_key::FORMAT, format.as_slice())?;
            tx.put(TreeId::Meta, meta_key::CHUNK_SIZE, chunk_size.as_slice())?;
            tx.put(
                TreeId::Meta,
                meta_key::SEGMENT_SIZE,
                segment_size.as_slice(),
            )?;
            tx.put(TreeId::Meta, meta_key::FS_ID, fs_id.as_slice())?;
            tx.put_inode(&root)?;
            tx.set_parent(ROOT_INO, ROOT_INO)
        })?;
        tracing::info!(chunk_size = options.chunk_size, "index created");
        Ok(())
    }

    /// Makes every change so far durable on disk (used by fsync).
    pub fn flush(&self) -> Result<()> {
        // Deferred journal commits are part of "every change so far".
        self.commit_deferred()?;
        let _f = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let through = {
            let _r = self.read_lock();
            self.write_log()?
        };
        // sled 0.34 makes its log stable with sync_file_range on Linux, which neither writes
        // the file's metadata (its grown size) nor flushes the disk's write cache: enough for
        // a killed process, not for a power cut. An fsync of the same file covers both, and
        // everything written to it before: it needs no lock, so transactions (a create) need
        // not wait for the disk meanwhile.
        self.log_file.sync_all().map_err(sled::Error::Io)?;
        self.note_logged(through);
        Ok(())
    }

    /// Hands every committed change to the operating system (sled's log buffers written out,
    /// without an fsync): enough that a killed process loses none of it, not a power cut.
    /// Cheap when nothing is pending. [`Index::flush`] goes further.
    pub fn flush_log(&self) -> Result<()> {
        let _r = self.read_lock();
        let through = self.write_log()?;
        self.note_logged(through);
        Ok(())
    }

    /// Every transaction up to `through` is in the kernel.
    fn note_logged(&self, through: u64) {
        let logged = self
            .logged
            .fetch_max(through, Ordering::AcqRel)
            .max(through);
        self.fresh().prune(logged);
    }

    /// Writes sled's log out (the read lock held); returns the transaction count it covers.
    fn write_log(&self) -> Result<u64> {
        let through = self.committed.load(Ordering::Acquire);
        self.trees.db.flush()?;
        Ok(through)
    }

    /// Claims the one queued background log flush: true if the caller is to run
    /// [`Index::run_queued_log_flush`] (somewhere it may block), false if nothing is pending
    /// or a flush is already queued.
    pub fn queue_log_flush(&self) -> bool {
        self.logged.load(Ordering::Acquire) < self.committed.load(Ordering::Acquire)
            && !self.log_flush_queued.swap(true, Ordering::AcqRel)
    }

    /// Runs the flush [`Index::queue_log_flush`] queued.
    pub fn run_queued_log_flush(&self) -> Result<()> {
        self.log_flush_queued.store(false, Ordering::Release);
        self.flush_log()
    }

    /// Counts a committed mutation (every transaction and batch calls it once it is applied).
    pub(crate) fn note_commit(&self) {
        self.committed.fetch_add(1, Ordering::AcqRel);
    }

    /// How many transactions this index has committed since it was opened: a mark for
    /// [`Index::flush_log_through`].
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// [`Index::flush_log`] unless every transaction up to `mark` (a [`Index::committed`]
    /// value) is already handed to the kernel. Close uses it: the transactions a file's
    /// journal records depend on (its creation, a truncation) must survive a killed mount,
    /// while the one committing the records need not (the next mount replays them).
    pub fn flush_log_through(&self, mark: u64) -> Result<()> {
        if self.logged.load(Ordering::Acquire) >= mark {
            return Ok(());
        }
        if mark == fresh::QUEUED {
            // A change still queued: applied first, so the flush covers it.
            self.commit_deferred()?;
        }
        self.flush_log()
    }

    /// The chunk size fixed at creation.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size.load(Ordering::Relaxed)
    }

    /// How this index's chunks are sealed ([`Segments::LEGACY`] before the meta records are
    /// loaded, which is also what an index created before format 4 has).
    pub fn segments(&self) -> Segments {
        Segments::new(self.segment_size.load(Ordering::Relaxed)).unwrap_or(Segments::LEGACY)
    }

    /// The random 16-byte filesystem id created with the index.
    pub fn filesystem_id(&self) -> [u8; 16] {
        *self.fs_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Filesystem totals for statfs, O(1).
    pub fn stats(&self) -> Result<IndexStats> {
        self.apply_creations()?;
        let _r = self.read_lock();
        let c = self.trees.counters()?;
        Ok(IndexStats {
            inodes: c.inodes,
            bytes: c.bytes,
        })
    }

    /// Attributes of an inode (orphans included).
    pub fn get_attr(&self, ino: Ino) -> Result<InodeAttr> {
        let _r = self.read_lock();
        self.attr_nolock(ino)
    }

    /// [`Index::get_attr`] for callers already holding the lock.
    pub(crate) fn attr_nolock(&self, ino: Ino) -> Result<InodeAttr> {
        if let Some(attr) = self.overlay().attr(ino) {
            return Ok(attr);
        }
        self.trees.inode(ino)?.ok_or(IndexError::NotFound)
    }

    /// The inode entry `parent/name` points to, queued creations included; for callers
    /// holding a lock.
    pub(crate) fn dirent_nolock(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        if let Some(attr) = self.overlay().lookup(parent, name) {
            return Ok(Some(attr.ino));
        }
        Ok(self.trees.dirent(parent, name)?.map(|e| e.ino))
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, overlay::Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the queue if it holds new files: for reads that see more than the overlay
    /// answers for (a directory's entries, the inode count).
    fn apply_creations(&self) -> Result<()> {
        if !self.overlay().has_creations() {
            return Ok(());
        }
        self.commit_deferred()
    }

    /// Whether `ino` is an orphan (unlinked while open, not yet released).
    pub fn is_orphan(&self, ino: Ino) -> Result<bool> {
        let _r = self.read_lock();
        Ok(self.trees.orphans.contains_key(ino_key(ino))?)
    }
}

/// The first chunk version of a new inode (0 is left free as "no version").
pub(crate) const FIRST_VERSION: u64 = 1;

/// Chunk versions a new regular file starts with already reserved for its creator:
/// `FIRST_VERSION..FIRST_VERSION + CREATOR_VERSIONS` are made durable by the create itself, so
/// the filesystem core can hand them out from memory to the file it just created, without a
/// transaction per close (each costs sled two synchronous log writes). Versions never repeat:
/// after a crash the creator's memory is gone and `next_version` is already past them.
pub const CREATOR_VERSIONS: u64 = 64;

/// Reads a `meta` record that must exist.
fn required(meta: &sled::Tree, key: &[u8]) -> Result<sled::IVec> {
    meta.get(key)?.ok_or_else(|| {
        IndexError::Corrupt(format!(
            "meta record {} missing",
            String::from_utf8_lossy(key)
        ))
    })
}
