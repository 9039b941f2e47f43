//! The trees of the index and the transaction wrapper every mutation runs in.
//!
//! Every mutating operation of [`Index`] holds the index's writer lock and runs one sled
//! transaction over all trees, through [`Index::transact`]. Keys a transaction must enumerate
//! are scanned beforehand, under the same hold of the writer lock, into a [`Scan`] (see
//! `scan`). Inside the closure only the transactional trees may be touched: sled holds its
//! global transaction lock while the closure runs, so a plain-tree read there deadlocks.

use std::cell::Cell;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use netcore::codec::{BlobId, BlobMetadata};
use netcore::wire::StorageConfirmation;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::{IVec, Tree};

use super::error::{IndexError, Result};
use super::layout::{
    change_key, decode, encode, ino_key, meta_key, named_key, pair_key, parse_pair_key, Counters,
    DirentVal, TreeId,
};
use super::scan::Scan;
use super::types::{BlobInfo, ChunkRef, FileKind, GcEntry, Ino, InodeAttr, JChunk, Timestamp};
use super::Index;
use crate::data::crypto::Segments;

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
    pub blobs: Tree,
    pub gc: Tree,
    pub orphans: Tree,
    pub meta: Tree,
    pub changes: Tree,
    pub local: Tree,
    pub held: Tree,
    pub jchunks: Tree,
    pub jqueue: Tree,
    /// Every tree, indexed by [`TreeId`] number.
    pub all: Vec<Tree>,
}

impl Trees {
    /// Opens (creating if needed) every tree of `db`.
    pub fn open(db: sled::Db) -> Result<Self> {
        let all = TreeId::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let t = |id: TreeId| all[id as usize].clone();
        Ok(Self {
            inodes: t(TreeId::Inodes),
            dirents: t(TreeId::Dirents),
            dircookies: t(TreeId::Dircookies),
            parents: t(TreeId::Parents),
            symlinks: t(TreeId::Symlinks),
            xattrs: t(TreeId::Xattrs),
            chunks: t(TreeId::Chunks),
            blobs: t(TreeId::Blobs),
            gc: t(TreeId::Gc),
            orphans: t(TreeId::Orphans),
            meta: t(TreeId::Meta),
            changes: t(TreeId::Changes),
            local: t(TreeId::Local),
            held: t(TreeId::Held),
            jchunks: t(TreeId::JChunks),
            jqueue: t(TreeId::JQueue),
            all,
            db,
        })
    }

    /// The tree numbered `id`.
    pub fn tree(&self, id: TreeId) -> &Tree {
        &self.all[id as usize]
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

    /// Reads a blob's record outside a transaction.
    pub fn blob(&self, blob: &BlobId) -> Result<Option<BlobInfo>> {
        self.blobs
            .get(blob.0)?
            .map(|v| decode(&v, "blob record"))
            .transpose()
    }
}

/// One transaction's view of every tree, with typed accessors. Every write to a published tree
/// goes through [`Tx::put`] or [`Tx::del`], which stamp the key in `changes` with the
/// transaction's sequence number, so publishing finds every change.
pub(crate) struct Tx<'a> {
    /// Keys scanned before the transaction.
    scan: &'a Scan,
    /// The transactional trees, indexed by [`TreeId`] number.
    trees: &'a [TransactionalTree],
    /// This transaction's sequence number, taken at its first change.
    seq: Cell<Option<u64>>,
    /// How the index's chunks are sealed (for the sealed bytes a chunk ref holds in its blob).
    segments: Segments,
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
    ///
    /// A transaction that scanned nothing first applies the journal commits closes deferred
    /// (see [`Index::defer_journal`]): a stream of small files then costs one transaction per
    /// file. One that scanned had them applied before its scan ([`Index::writer`]); any queued
    /// since wait for the next (they concern no file it changes: a close and a change of the
    /// same file exclude each other on the file's lock).
    pub(crate) fn transact<R>(&self, scan: &Scan, f: impl Fn(&Tx<'_>) -> TxResult<R>) -> Result<R> {
        if !scan.is_empty() || self.deferred_empty() {
            return self.transact_raw(scan, f);
        }
        let deferred = self.take_deferred();
        let dscan = match self.commits_scan(&deferred) {
            Ok(s) => s,
            Err(e) => {
                self.restore_deferred(deferred);
                return Err(e);
            }
        };
        let res = self.transact_raw(&dscan, |tx| {
            self.apply_deferred(tx, &deferred)?;
            f(tx)
        });
        match res {
            Ok(r) => {
                self.note_applied(&deferred);
                Ok(r)
            }
            Err(e) => {
                // `f` failed (a name taken, say) and took the deferred commits with it: they
                // go in on their own.
                self.restore_deferred(deferred);
                if let Err(e2) = self.commit_deferred_now() {
                    tracing::warn!("committing deferred journal records failed: {e2}");
                }
                Err(e)
            }
        }
    }

    /// [`Index::transact`] without the deferred journal commits.
    pub(crate) fn transact_raw<R>(
        &self,
        scan: &Scan,
        f: impl Fn(&Tx<'_>) -> TxResult<R>,
    ) -> Result<R> {
        let trees: Vec<&Tree> = self.trees.all.iter().collect();
        let segments = self.segments();
        trees
            .as_slice()
            .transaction(|views: &Vec<TransactionalTree>| {
                f(&Tx {
                    scan,
                    trees: views,
                    seq: Cell::new(None),
                    segments,
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => IndexError::Db(e),
            })
            .inspect(|_| self.note_commit())
    }
}

impl Tx<'_> {
    fn tree(&self, id: TreeId) -> &TransactionalTree {
        &self.trees[id as usize]
    }

    /// Reads a key.
    pub fn get(&self, id: TreeId, key: &[u8]) -> TxResult<Option<IVec>> {
        Ok(self.tree(id).get(key)?)
    }

    /// Writes a key (recording the change if the tree is published); returns the old value.
    pub fn put(&self, id: TreeId, key: &[u8], value: impl Into<IVec>) -> TxResult<Option<IVec>> {
        let old = self.tree(id).insert(key, value)?;
        self.record(id, key)?;
        Ok(old)
    }

    /// Removes a key (recording the change if the tree is published and the key was there);
    /// returns the old value. Removing a key that is not there changes nothing (sled writes
    /// nothing for it either), so it is not stamped: a regular file's removal asks to drop
    /// its symlink target and orphan mark, which it does not have, and the stamps were a
    /// write each and a needless entry in the next published change set.
    pub fn del(&self, id: TreeId, key: &[u8]) -> TxResult<Option<IVec>> {
        let old = self.tree(id).remove(key)?;
        if old.is_some() {
            self.record(id, key)?;
        }
        Ok(old)
    }

    /// Stamps `key` of published tree `id` as changed by this transaction.
    fn record(&self, id: TreeId, key: &[u8]) -> TxResult<()> {
        if !id.published() {
            return Ok(());
        }
        let seq = self.seq()?;
        // INV: every change to a published tree is stamped in `changes`, in the transaction
        // that makes it, so no change can be left out of the next published record.
        self.tree(TreeId::Changes)
            .insert(change_key(id, key), &seq.to_be_bytes()[..])?;
        Ok(())
    }

    /// This transaction's sequence number: the counters' `seq` plus one, taken (and the
    /// counters updated) at the first change.
    pub fn seq(&self) -> TxResult<u64> {
        if let Some(seq) = self.seq.get() {
            return Ok(seq);
        }
        let mut c = self.counters()?;
        c.seq = match c.seq.checked_add(1) {
            Some(s) => s,
            None => return abort(IndexError::Corrupt("sequence counter exhausted".into())),
        };
        self.seq.set(Some(c.seq));
        self.tree(TreeId::Meta)
            .insert(meta_key::COUNTERS, ok(encode(&c))?)?;
        self.tree(TreeId::Changes).insert(
            change_key(TreeId::Meta, meta_key::COUNTERS),
            &c.seq.to_be_bytes()[..],
        )?;
        Ok(c.seq)
    }

    /// Reads an inode.
    pub fn inode(&self, ino: Ino) -> TxResult<Option<InodeAttr>> {
        match self.get(TreeId::Inodes, &ino_key(ino))? {
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
        self.put(TreeId::Inodes, &ino_key(attr.ino), ok(encode(attr))?)?;
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
        match self.get(TreeId::Meta, meta_key::COUNTERS)? {
            Some(v) => ok(decode(&v, "counters")),
            None => abort(IndexError::Corrupt("counters missing".into())),
        }
    }

    /// Writes the counters.
    pub fn put_counters(&self, c: &Counters) -> TxResult<()> {
        self.put(TreeId::Meta, meta_key::COUNTERS, ok(encode(c))?)?;
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
        match self.get(TreeId::Dirents, &named_key(parent, name))? {
            Some(v) => ok(decode(&v, "dirent").map(Some)),
            None => Ok(None),
        }
    }

    /// Writes a directory entry with a fixed cookie (the `dircookies` entry must match).
    pub fn put_dirent(&self, parent: Ino, name: &[u8], val: &DirentVal) -> TxResult<()> {
        self.put(TreeId::Dirents, &named_key(parent, name), ok(encode(val))?)?;
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
        self.put(TreeId::Dircookies, &pair_key(parent, cookie), name)?;
        Ok(())
    }

    /// Removes entry `name` (whose value is `val`) from `parent`.
    pub fn remove_dirent(&self, parent: Ino, name: &[u8], val: &DirentVal) -> TxResult<()> {
        // INV: see `insert_dirent`.
        self.del(TreeId::Dirents, &named_key(parent, name))?;
        self.del(TreeId::Dircookies, &pair_key(parent, val.cookie))?;
        Ok(())
    }

    /// Reads a directory's parent.
    pub fn parent(&self, dir: Ino) -> TxResult<Ino> {
        match self.get(TreeId::Parents, &ino_key(dir))? {
            Some(v) => ok(decode(&v, "parent")),
            None => abort(IndexError::Corrupt(format!(
                "directory {dir} has no parent"
            ))),
        }
    }

    /// Records a directory's parent.
    pub fn set_parent(&self, dir: Ino, parent: Ino) -> TxResult<()> {
        self.put(TreeId::Parents, &ino_key(dir), ok(encode(&parent))?)?;
        Ok(())
    }

    /// Whether a directory has no entries (per the scan).
    pub fn dir_is_empty(&self, dir: Ino) -> TxResult<bool> {
        ok(self.scan.has_entries(dir)).map(|has| !has)
    }

    /// Queues a blob for deletion from the network, stamped with this transaction's sequence
    /// number (see [`GcEntry`]).
    pub fn gc_add(&self, blob: &BlobId) -> TxResult<()> {
        let entry = GcEntry {
            dropped_seq: self.seq()?,
            left: None,
        };
        self.put(TreeId::Gc, &blob.0, ok(encode(&entry))?)?;
        Ok(())
    }

    /// Reads a blob's record.
    pub fn blob(&self, blob: &BlobId) -> TxResult<Option<BlobInfo>> {
        match self.get(TreeId::Blobs, &blob.0)? {
            Some(v) => ok(decode(&v, "blob record").map(Some)),
            None => Ok(None),
        }
    }

    /// Records a newly stored blob (with no refs yet) unless it is known; takes it off the GC
    /// queue if a rejected or overtaken upload had put it there.
    /// `confirmations` (the nodes' signed statements that they stored it) are kept as the
    /// blob's proofs.
    pub fn register_blob(
        &self,
        blob: &BlobId,
        metadata: &BlobMetadata,
        confirmations: &[StorageConfirmation],
    ) -> TxResult<()> {
        if self.blob(blob)?.is_none() {
            let info = BlobInfo {
                metadata: metadata.clone(),
                refs: 0,
                live_bytes: 0,
            };
            self.put(TreeId::Blobs, &blob.0, ok(encode(&info))?)?;
            if !confirmations.is_empty() {
                self.put(TreeId::Proofs, &blob.0, ok(encode(&confirmations))?)?;
            }
        }
        // INV: a registered blob is never queued for GC (a failed upload queued it; a retry
        // stored the same bytes, hence the same blob, again).
        if self.get(TreeId::Gc, &blob.0)?.is_some() {
            self.del(TreeId::Gc, &blob.0)?;
        }
        Ok(())
    }

    /// Adds `late` (confirmations of `blob` that came in after it was registered) to its
    /// proofs, one per sliver; nothing if the blob has no record (dropped meanwhile). Returns
    /// how many were new.
    pub fn add_proofs(&self, blob: &BlobId, late: &[&StorageConfirmation]) -> TxResult<usize> {
        if self.blob(blob)?.is_none() {
            return Ok(0);
        }
        let mut proofs: Vec<StorageConfirmation> = match self.get(TreeId::Proofs, &blob.0)? {
            Some(v) => ok(decode(&v, "blob proofs"))?,
            None => Vec::new(),
        };
        let before = proofs.len();
        for c in late {
            if c.blob_id == *blob && !proofs.iter().any(|p| p.index == c.index) {
                proofs.push((*c).clone());
            }
        }
        let added = proofs.len() - before;
        if added > 0 {
            self.put(TreeId::Proofs, &blob.0, ok(encode(&proofs))?)?;
        }
        Ok(added)
    }

    /// Drops a blob's record and its proofs, and queues it for GC.
    fn drop_blob(&self, blob: &BlobId) -> TxResult<()> {
        self.del(TreeId::Blobs, &blob.0)?;
        self.del(TreeId::Proofs, &blob.0)?;
        self.gc_add(blob)
    }

    /// Counts one more ref of `sealed` bytes into a registered blob.
    fn ref_blob(&self, blob: &BlobId, sealed: u64) -> TxResult<()> {
        let Some(mut info) = self.blob(blob)? else {
            return abort(IndexError::Corrupt(format!(
                "chunk ref to unregistered blob {blob}"
            )));
        };
        info.refs += 1;
        info.live_bytes += sealed;
        self.put(TreeId::Blobs, &blob.0, ok(encode(&info))?)?;
        Ok(())
    }

    /// Counts one ref of `sealed` bytes less; at zero the blob is dropped and queued for GC.
    fn unref_blob(&self, blob: &BlobId, sealed: u64) -> TxResult<()> {
        let Some(mut info) = self.blob(blob)? else {
            return abort(IndexError::Corrupt(format!(
                "chunk ref to unregistered blob {blob}"
            )));
        };
        info.refs = info.refs.saturating_sub(1);
        info.live_bytes = info.live_bytes.saturating_sub(sealed);
        if info.refs == 0 {
            // INV: a blob leaves `blobs` exactly when its last ref goes, and is queued for GC
            // in the same transaction: no blob leaks, none is freed while referenced.
            self.drop_blob(blob)?;
        } else {
            self.put(TreeId::Blobs, &blob.0, ok(encode(&info))?)?;
        }
        Ok(())
    }

    /// Drops every registered blob that no ref points into (a commit registered it but all of
    /// its refs were discarded), queueing it for GC.
    pub fn drop_unreferenced(&self, blobs: &[BlobId]) -> TxResult<()> {
        for blob in blobs {
            if let Some(info) = self.blob(blob)? {
                if info.refs == 0 {
                    self.drop_blob(blob)?;
                }
            }
        }
        Ok(())
    }

    /// Writes a key of the local (unpublished) tree.
    pub fn put_local(&self, key: &[u8], value: impl Into<IVec>) -> TxResult<()> {
        self.put(TreeId::Local, key, value)?;
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
            self.put(TreeId::Orphans, &ino_key(attr.ino), &[][..])?;
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
            self.del(TreeId::Xattrs, key)?;
        }
        self.del(TreeId::Symlinks, &ino_key(ino))?;
        self.del(TreeId::Orphans, &ino_key(ino))?;
        self.del(TreeId::Parents, &ino_key(ino))?;
        self.del(TreeId::Inodes, &ino_key(ino))?;
        // INV: `counters.inodes` counts the `inodes` tree, `counters.bytes` the sizes of files.
        self.update_counters(|c| {
            c.inodes = c.inodes.saturating_sub(1);
            if attr.kind == FileKind::File {
                c.bytes = c.bytes.saturating_sub(attr.size);
            }
            Ok(())
        })
    }

    /// Removes the chunk refs (stored and journal) of `ino` with index `>= first` (present
    /// before this transaction, per the scan), dropping their refs to their blobs.
    pub fn remove_chunks_from(&self, ino: Ino, first: u64) -> TxResult<()> {
        for index in ok(self.scan.chunks_from(ino, first))? {
            if let Some(old) = self.del(TreeId::Chunks, &pair_key(ino, index))? {
                let old: ChunkRef = ok(decode(&old, "chunk ref"))?;
                self.unref_blob(&old.blob_id, old.sealed_len(self.segments))?;
            }
        }
        let journal: Vec<u64> = ok(self.scan.jchunks_from(ino, first))?.collect();
        for index in journal {
            self.del_jchunk(ino, index)?;
        }
        Ok(())
    }

    /// Reads a journal chunk.
    pub fn jchunk(&self, ino: Ino, index: u64) -> TxResult<Option<JChunk>> {
        match self.get(TreeId::JChunks, &pair_key(ino, index))? {
            Some(v) => ok(decode(&v, "journal chunk").map(Some)),
            None => Ok(None),
        }
    }

    /// Points chunk `index` of `ino` at a journal record (replacing an older one, whose record
    /// is then dead).
    pub fn put_jchunk(&self, ino: Ino, index: u64, j: &JChunk) -> TxResult<()> {
        let key = pair_key(ino, index);
        if let Some(old) = self.put(TreeId::JChunks, &key, ok(encode(j))?)? {
            let old: JChunk = ok(decode(&old, "journal chunk"))?;
            self.del(TreeId::JQueue, &old.seq.to_be_bytes())?;
        }
        // INV: `jqueue` lists exactly the records `jchunks` points at, by sequence number.
        self.put(TreeId::JQueue, &j.seq.to_be_bytes(), &key[..])?;
        Ok(())
    }

    /// Drops chunk `index` of `ino`'s journal record, if any.
    pub fn del_jchunk(&self, ino: Ino, index: u64) -> TxResult<Option<JChunk>> {
        match self.del(TreeId::JChunks, &pair_key(ino, index))? {
            Some(old) => {
                let old: JChunk = ok(decode(&old, "journal chunk"))?;
                self.del(TreeId::JQueue, &old.seq.to_be_bytes())?;
                Ok(Some(old))
            }
            None => Ok(None),
        }
    }

    /// Cuts the chunk map of `ino` to `new_size` bytes: refs wholly beyond are dropped, the
    /// last partial chunk's `len` is shortened.
    pub fn truncate_chunks(&self, ino: Ino, new_size: u64, chunk_size: u32) -> TxResult<()> {
        let cs = u64::from(chunk_size);
        // INV: every chunk ref `i` of a file covers `[i*cs, i*cs + len)` within `[0, size)`.
        self.remove_chunks_from(ino, new_size.div_ceil(cs))?;
        let tail = new_size % cs;
        if tail != 0 {
            let key = pair_key(ino, new_size / cs);
            if let Some(v) = self.get(TreeId::Chunks, &key)? {
                let mut c: ChunkRef = ok(decode(&v, "chunk ref"))?;
                if u64::from(c.len) > tail {
                    // `tail < cs <= u32::MAX`.
                    c.len = tail as u32;
                    self.put(TreeId::Chunks, &key, ok(encode(&c))?)?;
                }
            }
            if let Some(mut j) = self.jchunk(ino, new_size / cs)? {
                if u64::from(j.len) > tail {
                    j.len = tail as u32;
                    self.put(TreeId::JChunks, &key, ok(encode(&j))?)?;
                }
            }
        }
        Ok(())
    }

    /// Sets chunk ref `index` of `ino` into a registered blob, dropping the replaced ref.
    pub fn put_chunk(&self, ino: Ino, index: u64, c: &ChunkRef) -> TxResult<()> {
        let key = pair_key(ino, index);
        // Count the new ref before dropping the old one: both may point into one blob.
        self.ref_blob(&c.blob_id, c.sealed_len(self.segments))?;
        if let Some(old) = self.put(TreeId::Chunks, &key, ok(encode(c))?)? {
            let old: ChunkRef = ok(decode(&old, "chunk ref"))?;
            self.unref_blob(&old.blob_id, old.sealed_len(self.segments))?;
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
