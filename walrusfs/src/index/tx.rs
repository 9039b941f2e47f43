//! The trees of the index and the transaction wrapper every mutation runs in.
//!
//! Every mutating operation of [`Index`] holds the index's writer lock and runs one sled
//! transaction over all trees, through [`Index::transact`]. Keys a transaction must enumerate
//! are scanned beforehand, under the same hold of the writer lock, into a [`Scan`] (see
//! `scan`). Inside the closure only the transactional trees may be touched: sled holds its
//! global transaction lock while the closure runs, so a plain-tree read there deadlocks.

use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use netcore::codec::BlobId;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::Tree;

use super::error::{IndexError, Result};
use super::layout::{
    decode, encode, ino_key, meta_key, named_key, pair_key, parse_pair_key, tree, Counters,
    DirentVal,
};
use super::scan::Scan;
use super::types::{ChunkRef, FileKind, Ino, InodeAttr, Timestamp};
use super::Index;

/// Result inside a transaction closure.
pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<IndexError>>;

/// Aborts the transaction with `err`.
pub(crate) fn abort<T>(err: IndexError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

/// Turns an index result into a transaction result (errors abort).
pub(crate) fn ok<T>(res: Result<T>) -> TxResult<T> {
    res.map_err(ConflictableTransactionError::Abort)
}

/// The plain (non-transactional) trees.
pub(crate) struct Trees {
    pub db: sled::Db,
    pub inodes: Tree,
    pub dirents: Tree,
    pub dircookies: Tree,
    pub parents: Tree,
    pub symlinks: Tree,
    pub xattrs: Tree,
    pub chunks: Tree,
    pub gc: Tree,
    pub orphans: Tree,
    pub meta: Tree,
}

impl Trees {
    /// Opens (creating if needed) every tree of `db`.
    pub fn open(db: sled::Db) -> Result<Self> {
        Ok(Self {
            inodes: db.open_tree(tree::INODES)?,
            dirents: db.open_tree(tree::DIRENTS)?,
            dircookies: db.open_tree(tree::DIRCOOKIES)?,
            parents: db.open_tree(tree::PARENTS)?,
            symlinks: db.open_tree(tree::SYMLINKS)?,
            xattrs: db.open_tree(tree::XATTRS)?,
            chunks: db.open_tree(tree::CHUNKS)?,
            gc: db.open_tree(tree::GC)?,
            orphans: db.open_tree(tree::ORPHANS)?,
            meta: db.open_tree(tree::META)?,
            db,
        })
    }

    /// Reads an inode outside a transaction.
    pub fn inode(&self, ino: Ino) -> Result<Option<InodeAttr>> {
        self.inodes
            .get(ino_key(ino))?
            .map(|v| decode(&v, "inode"))
            .transpose()
    }

    /// Reads a directory entry outside a transaction.
    pub fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirentVal>> {
        self.dirents
            .get(named_key(parent, name))?
            .map(|v| decode(&v, "dirent"))
            .transpose()
    }

    /// Reads the counters outside a transaction.
    pub fn counters(&self) -> Result<Counters> {
        match self.meta.get(meta_key::COUNTERS)? {
            Some(v) => decode(&v, "counters"),
            None => Err(IndexError::Corrupt("counters missing".into())),
        }
    }
}

/// One transaction's view of every tree, with typed accessors.
pub(crate) struct Tx<'a> {
    /// Keys scanned before the transaction.
    scan: &'a Scan,
    inodes: &'a TransactionalTree,
    dirents: &'a TransactionalTree,
    dircookies: &'a TransactionalTree,
    parents: &'a TransactionalTree,
    pub symlinks: &'a TransactionalTree,
    pub xattrs: &'a TransactionalTree,
    pub chunks: &'a TransactionalTree,
    gc: &'a TransactionalTree,
    pub orphans: &'a TransactionalTree,
    pub meta: &'a TransactionalTree,
}

impl Index {
    /// Takes the writer lock. A panic while it was held cannot have left a half-applied
    /// change (transactions are atomic), so a poisoned lock is simply taken over.
    pub(crate) fn write_lock(&self) -> RwLockWriteGuard<'_, ()> {
        self.lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the lock shared, for reads. sled 0.34 can deadlock when an iterator or a flush
    /// runs concurrently with a multi-tree transaction (sled issues #1301, #1308; seen here as
    /// a hang between `gc_pending` and `setattr`), so reads exclude mutations. Public read
    /// methods take it once; internal helpers never take it again (no recursive locking).
    pub(crate) fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` as one transaction over every tree. The caller must hold the writer lock and
    /// have made `scan` under it (see the module doc). `f` may run more than once; it must act
    /// only through `Tx`.
    pub(crate) fn transact<R>(&self, scan: &Scan, f: impl Fn(&Tx<'_>) -> TxResult<R>) -> Result<R> {
        let t = &self.trees;
        (
            &t.inodes,
            &t.dirents,
            &t.dircookies,
            &t.parents,
            &t.symlinks,
            &t.xattrs,
            &t.chunks,
            &t.gc,
            &t.orphans,
            &t.meta,
        )
            .transaction(
                |(
                    inodes,
                    dirents,
                    dircookies,
                    parents,
                    symlinks,
                    xattrs,
                    chunks,
                    gc,
                    orphans,
                    meta,
                )| {
                    f(&Tx {
                        scan,
                        inodes,
                        dirents,
                        dircookies,
                        parents,
                        symlinks,
                        xattrs,
                        chunks,
                        gc,
                        orphans,
                        meta,
                    })
                },
            )
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => IndexError::Db(e),
            })
    }
}

impl Tx<'_> {
    /// Reads an inode.
    pub fn inode(&self, ino: Ino) -> TxResult<Option<InodeAttr>> {
        match self.inodes.get(ino_key(ino))? {
            Some(v) => ok(decode(&v, "inode").map(Some)),
            None => Ok(None),
        }
    }

    /// Reads an inode that must exist.
    pub fn need_inode(&self, ino: Ino) -> TxResult<InodeAttr> {
        match self.inode(ino)? {
            Some(attr) => Ok(attr),
            None => abort(IndexError::NotFound),
        }
    }

    /// Reads an inode that a directory entry points to: missing means corruption.
    pub fn linked_inode(&self, ino: Ino) -> TxResult<InodeAttr> {
        match self.inode(ino)? {
            Some(attr) => Ok(attr),
            None => abort(IndexError::Corrupt(format!(
                "entry points to missing inode {ino}"
            ))),
        }
    }

    /// Reads a live directory: NotFound if missing or unlinked, NotDir if not a directory.
    pub fn need_dir(&self, ino: Ino) -> TxResult<InodeAttr> {
        let attr = self.need_inode(ino)?;
        if attr.kind != FileKind::Dir {
            return abort(IndexError::NotDir);
        }
        if attr.nlink == 0 {
            return abort(IndexError::NotFound);
        }
        Ok(attr)
    }

    /// Writes an inode.
    pub fn put_inode(&self, attr: &InodeAttr) -> TxResult<()> {
        self.inodes.insert(&ino_key(attr.ino), ok(encode(attr))?)?;
        Ok(())
    }

    /// Read-modify-write of an inode that must exist.
    pub fn update_inode(
        &self,
        ino: Ino,
        f: impl FnOnce(&mut InodeAttr) -> Result<()>,
    ) -> TxResult<()> {
        let mut attr = self.linked_inode(ino)?;
        ok(f(&mut attr))?;
        self.put_inode(&attr)
    }

    /// Sets a directory's mtime and ctime (its entries changed).
    pub fn touch_dir(&self, dir: Ino, now: Timestamp) -> TxResult<()> {
        self.update_inode(dir, |a| {
            a.mtime = now;
            a.ctime = now;
            Ok(())
        })
    }

    /// Adds `delta` (+1 or -1) to a directory's link count (a subdirectory came or went).
    pub fn adjust_nlink(&self, dir: Ino, delta: i32) -> TxResult<()> {
        self.update_inode(dir, |a| {
            a.nlink = a
                .nlink
                .checked_add_signed(delta)
                .ok_or(IndexError::InvalidArgument(
                    "directory link count out of range",
                ))?;
            Ok(())
        })
    }

    /// Reads the counters.
    pub fn counters(&self) -> TxResult<Counters> {
        match self.meta.get(meta_key::COUNTERS)? {
            Some(v) => ok(decode(&v, "counters")),
            None => abort(IndexError::Corrupt("counters missing".into())),
        }
    }

    /// Writes the counters.
    pub fn put_counters(&self, c: &Counters) -> TxResult<()> {
        self.meta.insert(meta_key::COUNTERS, ok(encode(c))?)?;
        Ok(())
    }

    /// Read-modify-write of the counters.
    pub fn update_counters(&self, f: impl FnOnce(&mut Counters) -> Result<()>) -> TxResult<()> {
        let mut c = self.counters()?;
        ok(f(&mut c))?;
        self.put_counters(&c)
    }

    /// Reads a directory entry.
    pub fn dirent(&self, parent: Ino, name: &[u8]) -> TxResult<Option<DirentVal>> {
        match self.dirents.get(named_key(parent, name))? {
            Some(v) => ok(decode(&v, "dirent").map(Some)),
            None => Ok(None),
        }
    }

    /// Writes a directory entry with a fixed cookie (the `dircookies` entry must match).
    pub fn put_dirent(&self, parent: Ino, name: &[u8], val: &DirentVal) -> TxResult<()> {
        self.dirents
            .insert(named_key(parent, name), ok(encode(val))?)?;
        Ok(())
    }

    /// Adds entry `name -> ino` to `parent` under a fresh cookie.
    pub fn insert_dirent(
        &self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
    ) -> TxResult<()> {
        let mut cookie = 0;
        self.update_counters(|c| {
            cookie = c.next_cookie;
            c.next_cookie = c
                .next_cookie
                .checked_add(1)
                .ok_or(IndexError::Corrupt("cookie counter exhausted".into()))?;
            Ok(())
        })?;
        // INV: `dirents` and `dircookies` are two views of one set: each entry is in both,
        // with the same cookie, and a cookie is never reused, so readdir resumes correctly.
        self.put_dirent(parent, name, &DirentVal { ino, kind, cookie })?;
        self.dircookies.insert(&pair_key(parent, cookie), name)?;
        Ok(())
    }

    /// Removes entry `name` (whose value is `val`) from `parent`.
    pub fn remove_dirent(&self, parent: Ino, name: &[u8], val: &DirentVal) -> TxResult<()> {
        // INV: see `insert_dirent`.
        self.dirents.remove(named_key(parent, name))?;
        self.dircookies.remove(&pair_key(parent, val.cookie))?;
        Ok(())
    }

    /// Reads a directory's parent.
    pub fn parent(&self, dir: Ino) -> TxResult<Ino> {
        match self.parents.get(ino_key(dir))? {
            Some(v) => ok(decode(&v, "parent")),
            None => abort(IndexError::Corrupt(format!(
                "directory {dir} has no parent"
            ))),
        }
    }

    /// Records a directory's parent.
    pub fn set_parent(&self, dir: Ino, parent: Ino) -> TxResult<()> {
        self.parents.insert(&ino_key(dir), ok(encode(&parent))?)?;
        Ok(())
    }

    /// Whether a directory has no entries (per the scan).
    pub fn dir_is_empty(&self, dir: Ino) -> TxResult<bool> {
        ok(self.scan.has_entries(dir)).map(|has| !has)
    }

    /// Queues a blob for deletion from the network.
    pub fn gc_add(&self, blob: &BlobId) -> TxResult<()> {
        self.gc.insert(&blob.0[..], &[][..])?;
        Ok(())
    }

    /// Drops one link of a non-directory inode, after its entry was removed. At zero links the
    /// inode becomes an orphan if `open`, else it is freed. Returns whether it was freed.
    pub fn drop_link(&self, mut attr: InodeAttr, now: Timestamp, open: bool) -> TxResult<bool> {
        attr.nlink = match attr.nlink.checked_sub(1) {
            Some(n) => n,
            None => {
                return abort(IndexError::Corrupt(format!(
                    "inode {} had no links",
                    attr.ino
                )))
            }
        };
        attr.ctime = now;
        if attr.nlink > 0 {
            self.put_inode(&attr)?;
            return Ok(false);
        }
        if open {
            // INV: an inode has nlink 0 exactly when it is in `orphans`; its data stays until
            // `release` or `purge_orphans` frees it.
            self.put_inode(&attr)?;
            self.orphans.insert(&ino_key(attr.ino), &[][..])?;
            return Ok(false);
        }
        self.free_inode(&attr)?;
        Ok(true)
    }

    /// Deletes an inode and everything hanging off it; its blobs go to `gc`. The inode has no
    /// entries left pointing at it.
    pub fn free_inode(&self, attr: &InodeAttr) -> TxResult<()> {
        let ino = attr.ino;
        // INV: no chunk ref outlives its inode; every dropped ref's blob is queued in `gc`.
        self.remove_chunks_from(ino, 0)?;
        for key in ok(self.scan.xattr_keys(ino))? {
            self.xattrs.remove(key)?;
        }
        self.symlinks.remove(&ino_key(ino))?;
        self.orphans.remove(&ino_key(ino))?;
        self.parents.remove(&ino_key(ino))?;
        self.inodes.remove(&ino_key(ino))?;
        // INV: `counters.inodes` counts the `inodes` tree, `counters.bytes` the sizes of files.
        self.update_counters(|c| {
            c.inodes = c.inodes.saturating_sub(1);
            if attr.kind == FileKind::File {
                c.bytes = c.bytes.saturating_sub(attr.size);
            }
            Ok(())
        })
    }

    /// Removes the chunk refs of `ino` with index `>= first` (present before this
    /// transaction, per the scan), queueing their blobs in `gc`.
    pub fn remove_chunks_from(&self, ino: Ino, first: u64) -> TxResult<()> {
        for index in ok(self.scan.chunks_from(ino, first))? {
            if let Some(old) = self.chunks.remove(&pair_key(ino, index))? {
                let old: ChunkRef = ok(decode(&old, "chunk ref"))?;
                self.gc_add(&old.blob_id)?;
            }
        }
        Ok(())
    }

    /// Cuts the chunk map of `ino` to `new_size` bytes: refs wholly beyond go to `gc`, the last
    /// partial chunk's `len` is shortened.
    pub fn truncate_chunks(&self, ino: Ino, new_size: u64, chunk_size: u32) -> TxResult<()> {
        let cs = u64::from(chunk_size);
        // INV: every chunk ref `i` of a file covers `[i*cs, i*cs + len)` within `[0, size)`.
        self.remove_chunks_from(ino, new_size.div_ceil(cs))?;
        let tail = new_size % cs;
        if tail != 0 {
            let key = pair_key(ino, new_size / cs);
            if let Some(v) = self.chunks.get(key)? {
                let mut c: ChunkRef = ok(decode(&v, "chunk ref"))?;
                if u64::from(c.len) > tail {
                    // `tail < cs <= u32::MAX`.
                    c.len = tail as u32;
                    self.chunks.insert(&key, ok(encode(&c))?)?;
                }
            }
        }
        Ok(())
    }

    /// Sets chunk ref `index` of `ino`, queueing the replaced ref's blob in `gc`.
    pub fn put_chunk(&self, ino: Ino, index: u64, c: &ChunkRef) -> TxResult<()> {
        let key = pair_key(ino, index);
        if let Some(old) = self.chunks.insert(&key, ok(encode(c))?)? {
            let old: ChunkRef = ok(decode(&old, "chunk ref"))?;
            if old.blob_id != c.blob_id {
                self.gc_add(&old.blob_id)?;
            }
        }
        Ok(())
    }
}

/// Checks that a pair key read by a scan belongs to `ino` (ranges guarantee it; this guards
/// against a corrupt key length).
pub(crate) fn pair_index(key: &[u8], ino: Ino) -> Result<u64> {
    let (owner, n) = parse_pair_key(key)?;
    if owner != ino {
        return Err(IndexError::Corrupt(format!(
            "key of inode {owner} in range of {ino}"
        )));
    }
    Ok(n)
}
