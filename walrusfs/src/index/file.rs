//! Per-inode operations: attributes, symlink targets, the chunk map, chunk versions and
//! orphans.

use super::error::{IndexError, Result};
use super::journal::AttrCommit;
use super::layout::{decode, ino_key, pair_key, parse_blob_id, parse_ino_key, TreeId};
use super::params::SetAttr;
use super::scan::Scan;
use super::tx::{abort, pair_index, Tx, TxResult};
use super::types::{BlobInfo, ChunkRef, FileKind, Ino, InodeAttr, Timestamp};
use super::Index;
use netcore::codec::{BlobId, BlobMetadata};

/// Outcome of the commit transaction: a rejected commit still commits its GC entries.
enum Commit {
    Done(InodeAttr),
    Rejected(IndexError),
}

impl Index {
    /// The target of symlink `ino`. Errors: `NotFound`, `InvalidArgument` (not a symlink).
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let _r = self.read_lock();
        if self.attr_nolock(ino)?.kind != FileKind::Symlink {
            return Err(IndexError::InvalidArgument("not a symlink"));
        }
        match self.trees.symlinks.get(ino_key(ino))? {
            Some(target) => Ok(target.to_vec()),
            None => Err(IndexError::Corrupt(format!("symlink {ino} has no target"))),
        }
    }

    /// Changes attributes. ctime becomes `changes.ctime` or `now` if anything is given.
    ///
    /// A size change (regular files only) sets mtime to `now` unless `changes.mtime` is
    /// given. Shrinking drops the chunk refs wholly beyond the new size (their blobs to GC)
    /// and shortens the last partial chunk's `len`; bytes past a chunk's `len` read as zeros,
    /// so growing only sets the size.
    ///
    /// Errors: `NotFound`, `IsDir` (size of a directory), `InvalidArgument` (size of another
    /// non-file).
    pub fn setattr(&self, ino: Ino, changes: SetAttr, now: Timestamp) -> Result<InodeAttr> {
        // A size change scans the chunks it cuts (see `Index::writer`).
        let _w = if changes.size.is_some() {
            self.writer()?
        } else {
            self.write_lock()
        };
        let scan = self.scan_cut(ino, changes.size)?;
        let attr = self.transact(&scan, |tx| {
            let mut attr = tx.need_inode(ino)?;
            if changes == SetAttr::default() {
                return Ok(attr);
            }
            if let Some(size) = changes.size {
                match attr.kind {
                    FileKind::File => {}
                    FileKind::Dir => return abort(IndexError::IsDir),
                    _ => return abort(IndexError::InvalidArgument("size of a non-regular file")),
                }
                if size != attr.size {
                    self.resize(tx, &mut attr, size)?;
                    attr.mtime = now;
                }
            }
            changes.apply_mode_owner_atime(&mut attr);
            if let Some(mtime) = changes.mtime {
                attr.mtime = mtime;
            }
            attr.ctime = changes.ctime.unwrap_or(now);
            tx.put_inode(&attr)?;
            Ok(attr)
        })?;
        self.note_touched(ino, self.committed());
        Ok(attr)
    }

    /// [`Index::setattr`] of a directory, symlink or special file, queued (see
    /// `index::overlay`): the next transaction applies it, and attribute reads and lookups
    /// see it at once. `tar -x` sets the owner, mode and times of every directory it makes.
    /// A regular file's change (the filesystem core queues those itself, with its buffers),
    /// a size change, or a full queue runs [`Index::setattr`] instead.
    pub fn setattr_queued(&self, ino: Ino, changes: SetAttr, now: Timestamp) -> Result<InodeAttr> {
        if !changes.deferrable() {
            return self.setattr(ino, changes, now);
        }
        let w = self.write_lock();
        let mut attr = self.attr_nolock(ino)?;
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if attr.kind == FileKind::File || deferred.len() >= super::journal::DEFER_MAX {
            drop(deferred);
            drop(w);
            return self.setattr(ino, changes, now);
        }
        // As `setattr` changes it, and as `apply_deferred` will.
        changes.apply_mode_owner_atime(&mut attr);
        if let Some(mtime) = changes.mtime {
            attr.mtime = mtime;
        }
        attr.ctime = changes.ctime.unwrap_or(now);
        deferred.push_attrs(AttrCommit {
            ino,
            set: changes,
            mtime: attr.mtime,
            ctime: attr.ctime,
        });
        self.overlay().set(attr.clone());
        Ok(attr)
    }

    /// Sets a file's size inside a transaction: cuts the chunk map when shrinking and keeps
    /// the byte total right. Does not write `attr`.
    pub(crate) fn resize(&self, tx: &Tx<'_>, attr: &mut InodeAttr, size: u64) -> TxResult<()> {
        if size < attr.size {
            tx.truncate_chunks(attr.ino, size, self.chunk_size())?;
        }
        let old = attr.size;
        // INV: `counters.bytes` is the sum of file sizes.
        tx.update_counters(|c| {
            c.bytes = c.bytes.saturating_sub(old).saturating_add(size);
            Ok(())
        })?;
        attr.size = size;
        Ok(())
    }

    /// Chunk ref `index` of `ino`, if any (a missing chunk reads as zeros).
    pub fn chunk(&self, ino: Ino, index: u64) -> Result<Option<ChunkRef>> {
        let _r = self.read_lock();
        self.trees
            .chunks
            .get(pair_key(ino, index))?
            .map(|v| decode(&v, "chunk ref"))
            .transpose()
    }

    /// The record of a blob chunk refs point into, if any.
    pub fn blob(&self, blob: &BlobId) -> Result<Option<BlobInfo>> {
        let _r = self.read_lock();
        self.trees.blob(blob)
    }

    /// The storage confirmations kept for `blob` (empty if none were: stored before proofs
    /// were kept, or by a store without nodes).
    pub fn proofs(&self, blob: &BlobId) -> Result<Vec<netcore::wire::StorageConfirmation>> {
        let _r = self.read_lock();
        match self.trees.tree(super::layout::TreeId::Proofs).get(blob.0)? {
            Some(v) => decode(&v, "blob proofs"),
            None => Ok(Vec::new()),
        }
    }

    /// Adds confirmations that came in after their blob was committed (slower nodes', see
    /// `Client::take_late_confirmations`) to the blobs' proofs, in one transaction: one per
    /// blob and sliver; those of blobs the index no longer records are dropped. Returns how
    /// many were new.
    pub fn add_confirmations(&self, late: &[netcore::wire::StorageConfirmation]) -> Result<usize> {
        if late.is_empty() {
            return Ok(0);
        }
        let mut by_blob: std::collections::BTreeMap<BlobId, Vec<_>> = Default::default();
        for c in late {
            by_blob.entry(c.blob_id).or_default().push(c);
        }
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            let mut added = 0;
            for (blob, cs) in &by_blob {
                added += tx.add_proofs(blob, cs)?;
            }
            Ok(added)
        })
    }

    /// Every blob chunk refs point into, with its record, in blob id order (what repair and
    /// audit walk).
    pub fn blobs(&self) -> Result<Vec<(BlobId, BlobInfo)>> {
        let _r = self.read_lock();
        self.trees
            .blobs
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((parse_blob_id(&key)?, decode(&value, "blob record")?))
            })
            .collect()
    }

    /// The chunk refs of `ino` with index in `first..=last_inclusive`, in index order
    /// (missing chunks are holes).
    pub fn chunks_in(
        &self,
        ino: Ino,
        first: u64,
        last_inclusive: u64,
    ) -> Result<Vec<(u64, ChunkRef)>> {
        let _r = self.read_lock();
        if first > last_inclusive {
            return Ok(Vec::new());
        }
        self.trees
            .chunks
            .range(pair_key(ino, first)..=pair_key(ino, last_inclusive))
            .map(|item| {
                let (key, value) = item?;
                Ok((pair_index(&key, ino)?, decode(&value, "chunk ref")?))
            })
            .collect()
    }

    /// Commits uploaded chunks of file `ino` in one transaction: registers the newly stored
    /// `blobs` the refs point into, sets each chunk ref (dropping the replaced one's ref to its
    /// blob), then the size, mtime and ctime. Attributes alone: no blobs, no updates.
    ///
    /// `size` is the file's new size. Shrinking below the stored size cuts the chunk map as
    /// [`Index::setattr`] does. Refs starting at or beyond `size` (a truncate raced the
    /// upload) are discarded; a ref's `len` is clamped to end at `size`. A new blob left with
    /// no ref goes to GC.
    ///
    /// If the inode no longer exists, every new blob goes to GC and the result is `NotFound`
    /// (data written to a deleted file must not leak); likewise, with nothing else changed,
    /// `InvalidArgument` if it is not a regular file or a ref's `len` exceeds the chunk size.
    /// An orphan (unlinked, still open) commits normally.
    pub fn commit_chunks(
        &self,
        ino: Ino,
        blobs: &[(BlobId, BlobMetadata)],
        updates: Vec<(u64, ChunkRef)>,
        size: u64,
        mtime: Timestamp,
        ctime: Timestamp,
    ) -> Result<InodeAttr> {
        let cs = u64::from(self.chunk_size());
        let _w = self.writer()?;
        let scan = self.scan_cut(ino, Some(size))?;
        let outcome = self.transact(&scan, |tx| {
            let reject = |err| {
                // INV: a stored blob no ref will point into is queued for GC, not leaked.
                for (blob, _) in blobs {
                    if tx.blob(blob)?.is_none() {
                        tx.gc_add(blob)?;
                    }
                }
                Ok(Commit::Rejected(err))
            };
            let Some(mut attr) = tx.inode(ino)? else {
                return reject(IndexError::NotFound);
            };
            if attr.kind != FileKind::File {
                return reject(IndexError::InvalidArgument("chunks for a non-regular file"));
            }
            if updates.iter().any(|(_, c)| u64::from(c.len) > cs) {
                return reject(IndexError::InvalidArgument(
                    "chunk longer than the chunk size",
                ));
            }
            // Cut first: the cut scans the stored chunk map, which must not yet hold updates.
            if size != attr.size {
                self.resize(tx, &mut attr, size)?;
            }
            for (blob, metadata) in blobs {
                tx.register_blob(blob, metadata, &[])?;
            }
            for (index, c) in &updates {
                let start = index.checked_mul(cs).filter(|&start| start < size);
                let Some(start) = start else {
                    // INV: no chunk ref lies beyond the size (its blob, unless other refs
                    // point into it, is dropped below).
                    continue;
                };
                let mut c = c.clone();
                if u64::from(c.len) > size - start {
                    // `size - start < len <= u32::MAX`.
                    c.len = (size - start) as u32;
                }
                tx.put_chunk(ino, *index, &c)?;
            }
            let ids: Vec<BlobId> = blobs.iter().map(|(b, _)| *b).collect();
            tx.drop_unreferenced(&ids)?;
            attr.mtime = mtime;
            attr.ctime = ctime;
            tx.put_inode(&attr)?;
            Ok(Commit::Done(attr))
        })?;
        self.note_touched(ino, self.committed());
        match outcome {
            Commit::Done(attr) => Ok(attr),
            Commit::Rejected(err) => {
                tracing::debug!(ino, %err, blobs = blobs.len(), "chunk commit rejected, blobs to GC");
                Err(err)
            }
        }
    }

    /// Hands out `count` fresh chunk versions of `ino`: returns the first, `first..first +
    /// count` are now the caller's. Durable (never handed out again, even after a crash) once
    /// [`Index::flush`] returns. Errors: `NotFound`, `InvalidArgument` (counter overflow).
    pub fn reserve_versions(&self, ino: Ino, count: u64) -> Result<u64> {
        let _w = self.write_lock();
        let first = self.transact(&Scan::default(), |tx| {
            let mut attr = tx.need_inode(ino)?;
            let first = attr.next_version;
            // INV: `next_version` only grows, so a version is never handed out twice.
            attr.next_version = match first.checked_add(count) {
                Some(next) => next,
                None => return abort(IndexError::InvalidArgument("version counter overflow")),
            };
            tx.put_inode(&attr)?;
            Ok(first)
        })?;
        self.note_touched(ino, self.committed());
        Ok(first)
    }

    /// Called at the last close of `ino`: if it is an orphan, frees it (chunks to GC).
    /// Returns whether it was freed; an unknown inode is not an error (already freed).
    pub fn release(&self, ino: Ino) -> Result<bool> {
        {
            // The common case, a file that still has names, needs no transaction (each one
            // costs sled two synchronous log writes), nor the queue applied first: nothing
            // queued changes nlink. An orphan never gains a name again, so a 0 read here is
            // still 0 below; the transaction checks again anyway.
            let _r = self.read_lock();
            match self.trees.inode(ino)? {
                Some(attr) if attr.nlink != 0 => return Ok(false),
                None => return Ok(false),
                Some(_) => {}
            }
        }
        let _w = self.writer()?;
        let scan = Scan::for_free(&self.trees, ino)?;
        self.transact(&scan, |tx| {
            let Some(attr) = tx.inode(ino)? else {
                return Ok(false);
            };
            if attr.nlink != 0 {
                return Ok(false);
            }
            tx.free_inode(&attr)?;
            Ok(true)
        })
    }

    /// Frees every orphan: the leftovers of files that were open when the previous mount
    /// ended. Call at mount, before serving requests. Returns how many were freed.
    pub fn purge_orphans(&self) -> Result<usize> {
        let orphans = {
            let _r = self.read_lock();
            self.trees
                .orphans
                .iter()
                .keys()
                .map(|key| parse_ino_key(&key?))
                .collect::<Result<Vec<_>>>()?
        };
        let mut freed = 0;
        for ino in orphans {
            if self.release(ino)? {
                freed += 1;
            } else {
                // INV: orphans have nlink 0; this one does not (or is gone): drop the record.
                let _w = self.writer()?;
                self.transact(&Scan::default(), |tx| {
                    tx.del(TreeId::Orphans, &ino_key(ino))?;
                    Ok(())
                })?;
            }
        }
        if freed > 0 {
            tracing::info!(freed, "freed orphans left by the previous mount");
        }
        Ok(freed)
    }
}
