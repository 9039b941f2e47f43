//! Directory operations: lookup, readdir, create, link, unlink, rmdir.

use super::error::{IndexError, Result};
use super::layout::{
    decode, ino_key, pair_key, validate_name, Counters, TreeId, NAME_MAX, SYMLINK_MAX,
};
use super::overlay::NewFile;
use super::params::{NewNode, Unlinked};
use super::scan::Scan;
use super::tx::{abort, pair_index, Tx, TxResult};
use super::types::{DirEntry, FileKind, Ino, InodeAttr, Timestamp};
use super::{Index, FIRST_VERSION, ROOT_INO};
use crate::journal::Creation;

/// How often a read retries when a concurrent mutation removed what it was reading, before
/// calling the index corrupt. One retry suffices for any real race; a few more are cheap.
const READ_RETRIES: usize = 4;

impl Index {
    /// Looks up `name` in directory `parent`.
    ///
    /// Errors: `NotFound` (no such entry or parent), `NotDir` (parent is not a directory),
    /// `InvalidName`/`NameTooLong` (`.` and `..` are the FUSE layer's job; see
    /// [`Index::parent_of`]).
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<InodeAttr> {
        let _r = self.read_lock();
        validate_name(name)?;
        if let Some(attr) = self.overlay().lookup(parent, name) {
            return Ok(attr);
        }
        for _ in 0..READ_RETRIES {
            let Some(entry) = self.trees.dirent(parent, name)? else {
                // Only directories have entries; tell a missing entry from a bad parent.
                let dir = self.attr_nolock(parent)?;
                if dir.kind != FileKind::Dir {
                    return Err(IndexError::NotDir);
                }
                return Err(IndexError::NotFound);
            };
            // The entry and the inode are read separately: an unlink may commit in between.
            if let Some(attr) = self.overlay().attr(entry.ino) {
                return Ok(attr);
            }
            if let Some(attr) = self.trees.inode(entry.ino)? {
                return Ok(attr);
            }
        }
        Err(IndexError::Corrupt(format!(
            "entry {:?} of {parent} points to a missing inode",
            String::from_utf8_lossy(name)
        )))
    }

    /// The parent of directory `dir` (the root is its own parent), for `..`.
    pub fn parent_of(&self, dir: Ino) -> Result<Ino> {
        let _r = self.read_lock();
        match self.trees.parents.get(ino_key(dir))? {
            Some(v) => decode(&v, "parent"),
            None => match self.attr_nolock(dir)?.kind {
                FileKind::Dir => Err(IndexError::Corrupt(format!(
                    "directory {dir} has no parent"
                ))),
                _ => Err(IndexError::NotDir),
            },
        }
    }

    /// Up to `limit` entries of `dir` with cookie `> after_cookie`, in cookie order. Pass the
    /// last returned cookie to continue; start with any value below 3. `.` and `..` are not
    /// included. An entry present for the whole listing is returned exactly once; one added
    /// or removed meanwhile may or may not be.
    pub fn readdir(&self, dir: Ino, after_cookie: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.apply_creations()?;
        let _r = self.read_lock();
        if self.attr_nolock(dir)?.kind != FileKind::Dir {
            return Err(IndexError::NotDir);
        }
        let mut out = Vec::new();
        let Some(first) = after_cookie.checked_add(1) else {
            return Ok(out);
        };
        if limit == 0 {
            return Ok(out);
        }
        for item in self
            .trees
            .dircookies
            .range(pair_key(dir, first)..=pair_key(dir, u64::MAX))
        {
            let (key, name) = item?;
            let cookie = pair_index(&key, dir)?;
            // A mutation may commit between the scan and this read: an entry that is gone, or
            // that moved to a new cookie (renamed in place), is skipped here.
            match self.trees.dirent(dir, &name)? {
                Some(entry) if entry.cookie == cookie => out.push(DirEntry {
                    name: name.to_vec(),
                    ino: entry.ino,
                    kind: entry.kind,
                    cookie,
                }),
                _ => continue,
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Creates `name` in directory `parent`: a file, directory, symlink, fifo, device or
    /// socket. A directory gets `nlink` 2 and adds one to its parent's; the parent's mtime
    /// and ctime become `now`. The new inode's times are all `now`, its size 0 (symlinks: the
    /// target length).
    ///
    /// Errors: `Exists`, `NotDir` (parent is not a directory), `NotFound` (parent missing or
    /// deleted), `InvalidName`/`NameTooLong`, `InvalidArgument` (symlink target missing or
    /// empty, or given for a non-symlink), `NameTooLong` (target over
    /// [`SYMLINK_MAX`]).
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        node: NewNode,
        now: Timestamp,
    ) -> Result<InodeAttr> {
        validate_name(name)?;
        let size = match (&node.symlink_target, node.kind) {
            (Some(target), FileKind::Symlink) => {
                if target.is_empty() {
                    return Err(IndexError::InvalidArgument("empty symlink target"));
                }
                if target.len() > SYMLINK_MAX {
                    return Err(IndexError::NameTooLong);
                }
                target.len() as u64
            }
            (None, FileKind::Symlink) => {
                return Err(IndexError::InvalidArgument("symlink without a target"))
            }
            (Some(_), _) => return Err(IndexError::InvalidArgument("target for a non-symlink")),
            (None, _) => 0,
        };
        let _w = self.write_lock();
        let attr = self.transact(&Scan::default(), |tx| {
            tx.need_dir(parent)?;
            if tx.dirent(parent, name)?.is_some() {
                return abort(IndexError::Exists);
            }
            let mut ino = 0;
            tx.update_counters(|c: &mut Counters| {
                ino = c.next_ino;
                // INV: inode numbers are allocated in the creating transaction, never reused.
                c.next_ino = c
                    .next_ino
                    .checked_add(1)
                    .ok_or(IndexError::Corrupt("inode counter exhausted".into()))?;
                c.inodes += 1;
                Ok(())
            })?;
            let attr = new_inode(ino, &node, size, now);
            tx.put_inode(&attr)?;
            if let Some(target) = &node.symlink_target {
                tx.put(TreeId::Symlinks, &ino_key(ino), target.as_slice())?;
            }
            if node.kind == FileKind::Dir {
                // INV: a directory's nlink is 2 + its subdirectories; it records its parent.
                tx.adjust_nlink(parent, 1)?;
                tx.set_parent(ino, parent)?;
            }
            tx.touch_dir(parent, now)?;
            tx.insert_dirent(parent, name, ino, node.kind)?;
            Ok(attr)
        })?;
        self.note_created(parent, name, &attr, self.committed());
        Ok(attr)
    }

    /// Creates regular file `name` in `parent` as [`Index::create`] does, with the same
    /// checks and errors, but queues the transaction (see `index::overlay`): the next one
    /// applies it. Lookups and attribute reads see the file at once. Falls back to
    /// [`Index::create`] when the queue is full, and for anything but a plain file.
    pub fn create_file(
        &self,
        parent: Ino,
        name: &[u8],
        node: NewNode,
        now: Timestamp,
    ) -> Result<InodeAttr> {
        if node.kind != FileKind::File || node.symlink_target.is_some() {
            return self.create(parent, name, node, now);
        }
        validate_name(name)?;
        let w = self.write_lock();
        // The transaction's checks, against the index and the queue (`attr_nolock` and
        // `dirent_nolock` see both): a live directory, a free name.
        let mut dir = self.attr_nolock(parent)?;
        if dir.kind != FileKind::Dir {
            return Err(IndexError::NotDir);
        }
        if dir.nlink == 0 {
            return Err(IndexError::NotFound);
        }
        if self.dirent_nolock(parent, name)?.is_some() {
            return Err(IndexError::Exists);
        }
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if deferred.len() >= super::journal::DEFER_MAX {
            drop(deferred);
            drop(w);
            return self.create(parent, name, node, now);
        }
        let mut overlay = self.overlay();
        // INV: inode numbers are never reused: the queue's are past the counter and past each
        // other, and applying them moves the counter past them.
        let ino = overlay.next_ino(self.trees.counters()?.next_ino);
        if ino == u64::MAX {
            return Err(IndexError::Corrupt("inode counter exhausted".into()));
        }
        let attr = new_inode(ino, &node, 0, now);
        overlay.create(parent, name, attr.clone());
        // As `apply_create` will leave the directory.
        dir.mtime = now;
        dir.ctime = now;
        overlay.set(dir);
        deferred.push_create(NewFile {
            parent,
            name: name.to_vec(),
            attr: attr.clone(),
        });
        drop(overlay);
        drop(deferred);
        self.note_created(parent, name, &attr, super::fresh::QUEUED);
        Ok(attr)
    }

    /// Applies a queued creation inside a transaction. Its checks were made when it was
    /// queued, and every change since applied the queue first; should the directory be gone
    /// or the name taken all the same, the file goes where [`Index::recreate_file`] would put
    /// it: found, not lost.
    pub(super) fn apply_create(&self, tx: &Tx<'_>, c: &NewFile) -> TxResult<()> {
        let ino = c.attr.ino;
        if tx.inode(ino)?.is_some() {
            return abort(IndexError::Corrupt(format!(
                "queued new file {ino} exists already"
            )));
        }
        let (parent, name) = placement(tx, ino, c.parent, &c.name)?;
        if (parent, name.as_slice()) != (c.parent, c.name.as_slice()) {
            tracing::warn!(
                ino,
                parent,
                name = %String::from_utf8_lossy(&name),
                "a queued new file's directory or name was gone when it was applied"
            );
        }
        tx.update_counters(|counters: &mut Counters| {
            counters.next_ino = counters.next_ino.max(ino + 1);
            counters.inodes += 1;
            Ok(())
        })?;
        tx.put_inode(&c.attr)?;
        tx.touch_dir(parent, c.attr.ctime)?;
        tx.insert_dirent(parent, &name, ino, FileKind::File)
    }

    /// Creates regular file `ino` again from its journal creation record, if the index lacks
    /// it (a killed mount lost the transaction that created it; see `index::fresh`), with
    /// chunk versions from `min_next_version` on free. Returns the name it got, or None if the
    /// inode exists.
    ///
    /// It goes where it was created. Should that directory be gone, or the name taken (which
    /// the close that wrote the record rules out), it goes in the root, or under the name with
    /// `.recovered-INO` appended: found, not lost. Errors: `InvalidArgument` (`ino` is the root
    /// or beyond the inode counter's range).
    pub fn recreate_file(
        &self,
        ino: Ino,
        c: &Creation,
        min_next_version: u64,
    ) -> Result<Option<(Ino, Vec<u8>)>> {
        if ino <= ROOT_INO || ino == u64::MAX {
            return Err(IndexError::InvalidArgument("recreated inode number"));
        }
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            if tx.inode(ino)?.is_some() {
                return Ok(None);
            }
            let (parent, name) = placement(tx, ino, c.parent, &c.name)?;
            tx.update_counters(|counters: &mut Counters| {
                // INV: inode numbers are never reused: the counter moves past this one.
                counters.next_ino = counters.next_ino.max(ino + 1);
                counters.inodes += 1;
                Ok(())
            })?;
            let node = NewNode {
                kind: FileKind::File,
                perm: c.perm,
                uid: c.uid,
                gid: c.gid,
                rdev: 0,
                symlink_target: None,
            };
            let mut attr = new_inode(ino, &node, 0, c.time);
            // INV: versions the lost creator may have used are never handed out again.
            attr.next_version = attr.next_version.max(min_next_version);
            tx.put_inode(&attr)?;
            tx.touch_dir(parent, c.time)?;
            tx.insert_dirent(parent, &name, ino, FileKind::File)?;
            Ok(Some((parent, name)))
        })
    }

    /// Adds a hard link `new_parent/new_name` to `ino`: nlink + 1, ctime `now`; the new
    /// parent's mtime and ctime become `now`.
    ///
    /// Errors: `NotPermitted` (directory), `NotFound` (no such inode, or an orphan),
    /// `Exists`, `NotDir`, `InvalidName`/`NameTooLong`, `InvalidArgument` (too many links).
    pub fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &[u8],
        now: Timestamp,
    ) -> Result<InodeAttr> {
        validate_name(new_name)?;
        let _w = self.write_lock();
        let attr = self.transact(&Scan::default(), |tx| {
            let mut attr = tx.need_inode(ino)?;
            if attr.kind == FileKind::Dir {
                return abort(IndexError::NotPermitted);
            }
            if attr.nlink == 0 {
                return abort(IndexError::NotFound);
            }
            tx.need_dir(new_parent)?;
            if tx.dirent(new_parent, new_name)?.is_some() {
                return abort(IndexError::Exists);
            }
            // INV: a file's nlink is the number of entries pointing at it.
            attr.nlink = match attr.nlink.checked_add(1) {
                Some(n) => n,
                None => return abort(IndexError::InvalidArgument("too many links")),
            };
            attr.ctime = now;
            tx.put_inode(&attr)?;
            tx.touch_dir(new_parent, now)?;
            tx.insert_dirent(new_parent, new_name, ino, attr.kind)?;
            Ok(attr)
        })?;
        self.note_touched(ino, self.committed());
        Ok(attr)
    }

    /// Removes entry `name` (not a directory) from `parent`. The inode loses a link (ctime
    /// `now`); at zero links it becomes an orphan if `is_open(ino)`, else it is deleted with
    /// its chunks (blobs to GC), xattrs and symlink target. The parent's mtime and ctime become
    /// `now`.
    ///
    /// `is_open` is called without the index's writer lock held, possibly more than once.
    ///
    /// Errors: `NotFound`, `NotDir` (parent), `IsDir`, `InvalidName`/`NameTooLong`.
    pub fn unlink(
        &self,
        parent: Ino,
        name: &[u8],
        now: Timestamp,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<Unlinked> {
        validate_name(name)?;
        loop {
            // Ask `is_open` before taking the lock (it is the caller's code); the transaction
            // retries if the entry changed in between.
            let expected = self.read_lock_dirent(parent, name)?;
            let open = expected.is_some_and(is_open);
            let _w = self.writer()?;
            let scan = self.scan_for_free(expected)?;
            let done = self.transact(&scan, |tx| {
                tx.need_dir(parent)?;
                let Some(entry) = tx.dirent(parent, name)? else {
                    return abort(IndexError::NotFound);
                };
                if Some(entry.ino) != expected {
                    return Ok(None);
                }
                let attr = tx.linked_inode(entry.ino)?;
                if attr.kind == FileKind::Dir {
                    return abort(IndexError::IsDir);
                }
                tx.remove_dirent(parent, name, &entry)?;
                tx.touch_dir(parent, now)?;
                let freed = tx.drop_link(attr, now, open)?;
                Ok(Some(Unlinked {
                    ino: entry.ino,
                    freed,
                }))
            })?;
            if let Some(unlinked) = done {
                let at = self.committed();
                self.note_touched(unlinked.ino, at);
                self.note_freed(parent, name, at);
                return Ok(unlinked);
            }
        }
    }

    /// Removes the empty directory `name` from `parent` and deletes it (with its xattrs);
    /// the parent loses a link and its mtime and ctime become `now`. Returns the removed
    /// directory's inode. A removed directory is gone at once, even if open.
    ///
    /// Errors: `NotFound`, `NotDir` (parent, or `name` is not a directory), `NotEmpty`,
    /// `InvalidName`/`NameTooLong`.
    pub fn rmdir(&self, parent: Ino, name: &[u8], now: Timestamp) -> Result<Ino> {
        validate_name(name)?;
        let _w = self.writer()?;
        // The writer lock is held: the entry read here is the one the transaction sees.
        let scan = self.scan_for_free(self.trees.dirent(parent, name)?.map(|e| e.ino))?;
        let ino = self.transact(&scan, |tx| {
            tx.need_dir(parent)?;
            let Some(entry) = tx.dirent(parent, name)? else {
                return abort(IndexError::NotFound);
            };
            let attr = tx.linked_inode(entry.ino)?;
            if attr.kind != FileKind::Dir {
                return abort(IndexError::NotDir);
            }
            if !tx.dir_is_empty(entry.ino)? {
                return abort(IndexError::NotEmpty);
            }
            tx.remove_dirent(parent, name, &entry)?;
            tx.adjust_nlink(parent, -1)?;
            tx.touch_dir(parent, now)?;
            tx.free_inode(&attr)?;
            Ok(entry.ino)
        })?;
        let at = self.committed();
        self.note_touched(ino, at);
        self.note_freed(parent, name, at);
        Ok(ino)
    }
}

/// A new inode's attributes: times all `now`, one link (a directory two), the first chunk
/// versions reserved for a regular file's creator.
/// Where file `ino`, meant to be `name` in `parent`, can go: there if `parent` is a live
/// directory and the name is valid and free; else in the root, and under the name with
/// `.recovered-INO` appended if it is taken there.
fn placement(tx: &Tx<'_>, ino: Ino, parent: Ino, name: &[u8]) -> TxResult<(Ino, Vec<u8>)> {
    let parent = match tx.inode(parent)? {
        Some(p) if p.kind == FileKind::Dir && p.nlink > 0 => parent,
        _ => ROOT_INO,
    };
    let mut name = name.to_vec();
    if validate_name(&name).is_err() || tx.dirent(parent, &name)?.is_some() {
        let suffix = format!(".recovered-{ino}");
        name.truncate(NAME_MAX - suffix.len());
        name.extend_from_slice(suffix.as_bytes());
        if validate_name(&name).is_err() || tx.dirent(parent, &name)?.is_some() {
            name = suffix.trim_start_matches('.').as_bytes().to_vec();
        }
    }
    Ok((parent, name))
}

fn new_inode(ino: Ino, node: &NewNode, size: u64, now: Timestamp) -> InodeAttr {
    InodeAttr {
        ino,
        kind: node.kind,
        perm: node.perm & 0o7777,
        uid: node.uid,
        gid: node.gid,
        nlink: if node.kind == FileKind::Dir { 2 } else { 1 },
        size,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: node.rdev,
        next_version: if node.kind == FileKind::File {
            FIRST_VERSION + super::CREATOR_VERSIONS
        } else {
            FIRST_VERSION
        },
    }
}
