//! `rename` with POSIX semantics and the `renameat2` flags, in one transaction.

use super::error::{IndexError, Result};
use super::layout::{validate_name, DirentVal};
use super::params::{RenameFlags, RenameOutcome, Unlinked};
use super::tx::{abort, Tx, TxResult};
use super::types::{FileKind, Ino, Timestamp, ROOT_INO};
use super::Index;

/// Upper bound on directory depth when walking up to the root; deeper means a cycle in
/// `parents`, i.e. corruption. Far beyond anything `PATH_MAX` allows.
const MAX_DEPTH: usize = 1 << 20;

/// One side of a rename: a directory and a name in it.
#[derive(Clone, Copy)]
struct Side<'a> {
    dir: Ino,
    name: &'a [u8],
}

impl Index {
    /// Renames `parent/name` to `new_parent/new_name`, atomically.
    ///
    /// - An existing target is replaced (file over file; directory over an empty directory)
    ///   and unlinked exactly like [`Index::unlink`] / [`Index::rmdir`] would: returned in
    ///   [`RenameOutcome::replaced`]. `is_open` is asked about the target, without the writer
    ///   lock held.
    /// - Both names on the same inode (hard links, or the same entry): success, no change.
    /// - `flags.exchange` swaps the two entries (both must exist); both keep their cookies.
    /// - The moved inode's ctime and both parents' mtime and ctime become `now`; a directory
    ///   moving between parents moves one link from the old parent to the new.
    ///
    /// Errors: `NotFound` (source, a parent, or with `exchange` the target), `NotDir`
    /// (a parent, or directory over non-directory), `IsDir` (non-directory over directory),
    /// `NotEmpty` (target directory), `Exists` (`no_replace`), `InvalidArgument` (a directory
    /// into its own subtree, or both flags), `InvalidName`/`NameTooLong`.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        now: Timestamp,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<RenameOutcome> {
        validate_name(name)?;
        validate_name(new_name)?;
        if flags.no_replace && flags.exchange {
            return Err(IndexError::InvalidArgument("no_replace with exchange"));
        }
        let src = Side { dir: parent, name };
        let dst = Side {
            dir: new_parent,
            name: new_name,
        };
        loop {
            // As in `unlink`: ask `is_open` outside the lock, retry if the target changed.
            let expected = self.read_lock_dirent(new_parent, new_name)?;
            let open = expected.is_some_and(is_open);
            // Replacing nothing scans nothing: the queued changes ride on this transaction
            // (rsync's rename of each file it wrote). Replacing a file scans what it frees.
            let _w = if expected.is_none() {
                self.write_lock()
            } else {
                self.writer()?
            };
            let scan = self.scan_for_free(expected)?;
            let moved = std::cell::Cell::new(None);
            let done = self.transact(&scan, |tx| {
                tx.need_dir(parent)?;
                let Some(s) = tx.dirent(parent, name)? else {
                    return abort(IndexError::NotFound);
                };
                moved.set(Some(s.ino));
                tx.need_dir(new_parent)?;
                let d = tx.dirent(new_parent, new_name)?;
                if d.map(|e| e.ino) != expected {
                    return Ok(None);
                }
                rename_tx(tx, src, s, dst, d, flags, now, open).map(Some)
            })?;
            if let Some(outcome) = done {
                // The moved inode and a replaced one changed; the source name was freed (an
                // exchange frees none, but counting it costs at most a flush).
                let at = self.committed();
                for ino in [moved.get(), expected].into_iter().flatten() {
                    self.note_touched(ino, at);
                }
                self.note_freed(parent, name, at);
                return Ok(outcome);
            }
        }
    }
}

impl Index {
    /// [`Index::rename`], queued (see `index::overlay`) when all it does is move a new file
    /// whose creation is still queued to a free name: rsync writes each file under a
    /// temporary name and renames it when done. The queued creation takes the new name, and
    /// the times `rename` sets wait in the queue with it. Anything else (a target to replace,
    /// an exchange, a file already in the index, a full queue) runs [`Index::rename`].
    #[allow(clippy::too_many_arguments)]
    pub fn rename_queued(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
        now: Timestamp,
        is_open: &dyn Fn(Ino) -> bool,
    ) -> Result<RenameOutcome> {
        if !flags.exchange && validate_name(name).is_ok() && validate_name(new_name).is_ok() {
            let src = Side { dir: parent, name };
            let dst = Side {
                dir: new_parent,
                name: new_name,
            };
            let _w = self.write_lock();
            if self.queue_rename(src, dst, now)? {
                return Ok(RenameOutcome::default());
            }
        }
        self.rename(parent, name, new_parent, new_name, flags, now, is_open)
    }

    /// Queues the rename if [`Index::rename_queued`] may; the writer lock held. The target's
    /// name is free in the index and in the queue, and only a transaction frees a name (after
    /// applying the queue), so it was free all along: the creation may take it where it stands
    /// in the queue.
    fn queue_rename(&self, src: Side<'_>, dst: Side<'_>, now: Timestamp) -> Result<bool> {
        let Some(mut file) = self.overlay().lookup(src.dir, src.name) else {
            return Ok(false);
        };
        let Ok(mut to) = self.attr_nolock(dst.dir) else {
            return Ok(false);
        };
        if to.kind != FileKind::Dir
            || to.nlink == 0
            || self.dirent_nolock(dst.dir, dst.name)?.is_some()
        {
            return Ok(false);
        }
        let mut from = self.attr_nolock(src.dir)?;
        let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if deferred.len() + 3 > super::journal::DEFER_MAX
            || !deferred.move_create(file.ino, dst.dir, dst.name)
        {
            return Ok(false);
        }
        // What `rename_tx` sets: the file's ctime, both directories' mtime and ctime.
        deferred.push_touch(file.ino, None, now);
        deferred.push_touch(src.dir, Some(now), now);
        if dst.dir != src.dir {
            deferred.push_touch(dst.dir, Some(now), now);
        }
        let mut overlay = self.overlay();
        file.ctime = now;
        overlay.rename(src.dir, src.name, dst.dir, dst.name, file.clone());
        from.mtime = now;
        from.ctime = now;
        overlay.set(from);
        if dst.dir != src.dir {
            to.mtime = now;
            to.ctime = now;
            overlay.set(to);
        }
        drop(overlay);
        drop(deferred);
        self.note_moved(file.ino, dst.dir, dst.name);
        self.note_freed(src.dir, src.name, super::fresh::QUEUED);
        Ok(true)
    }
}

/// The body of the rename transaction, after both parents and the source were found.
#[allow(clippy::too_many_arguments)]
fn rename_tx(
    tx: &Tx<'_>,
    src: Side<'_>,
    s: DirentVal,
    dst: Side<'_>,
    d: Option<DirentVal>,
    flags: RenameFlags,
    now: Timestamp,
    target_open: bool,
) -> TxResult<RenameOutcome> {
    if flags.exchange {
        let Some(d) = d else {
            return abort(IndexError::NotFound);
        };
        if d.ino != s.ino {
            exchange_tx(tx, src, s, dst, d, now)?;
        }
        return Ok(RenameOutcome::default());
    }
    if let Some(d) = d {
        if flags.no_replace {
            return abort(IndexError::Exists);
        }
        if d.ino == s.ino {
            return Ok(RenameOutcome::default());
        }
    }
    let s_is_dir = s.kind == FileKind::Dir;
    if s_is_dir && src.dir != dst.dir {
        not_into_itself(tx, s.ino, dst.dir)?;
    }
    let mut replaced = None;
    if let Some(d) = d {
        let d_attr = tx.linked_inode(d.ino)?;
        match (s_is_dir, d_attr.kind == FileKind::Dir) {
            (true, false) => return abort(IndexError::NotDir),
            (false, true) => return abort(IndexError::IsDir),
            (true, true) if !tx.dir_is_empty(d.ino)? => return abort(IndexError::NotEmpty),
            _ => {}
        }
        tx.remove_dirent(dst.dir, dst.name, &d)?;
        let freed = if d_attr.kind == FileKind::Dir {
            // INV: as in rmdir — the replaced directory was empty and loses its only entry.
            tx.adjust_nlink(dst.dir, -1)?;
            tx.free_inode(&d_attr)?;
            true
        } else {
            tx.drop_link(d_attr, now, target_open)?
        };
        replaced = Some(Unlinked { ino: d.ino, freed });
    }
    tx.remove_dirent(src.dir, src.name, &s)?;
    tx.insert_dirent(dst.dir, dst.name, s.ino, s.kind)?;
    if s_is_dir && src.dir != dst.dir {
        // INV: a directory's link moves with it; `parents` follows.
        tx.adjust_nlink(src.dir, -1)?;
        tx.adjust_nlink(dst.dir, 1)?;
        tx.set_parent(s.ino, dst.dir)?;
    }
    tx.update_inode(s.ino, |a| {
        a.ctime = now;
        Ok(())
    })?;
    tx.touch_dir(src.dir, now)?;
    tx.touch_dir(dst.dir, now)?;
    Ok(RenameOutcome { replaced })
}

/// Swaps the entries `src -> s` and `dst -> d` (different inodes).
fn exchange_tx(
    tx: &Tx<'_>,
    src: Side<'_>,
    s: DirentVal,
    dst: Side<'_>,
    d: DirentVal,
    now: Timestamp,
) -> TxResult<()> {
    let moves_dirs = src.dir != dst.dir;
    if moves_dirs && s.kind == FileKind::Dir {
        not_into_itself(tx, s.ino, dst.dir)?;
    }
    if moves_dirs && d.kind == FileKind::Dir {
        not_into_itself(tx, d.ino, src.dir)?;
    }
    // INV: names (and so cookies) stay where they are; only what they point at swaps.
    let new_src = DirentVal {
        ino: d.ino,
        kind: d.kind,
        cookie: s.cookie,
    };
    let new_dst = DirentVal {
        ino: s.ino,
        kind: s.kind,
        cookie: d.cookie,
    };
    tx.put_dirent(src.dir, src.name, &new_src)?;
    tx.put_dirent(dst.dir, dst.name, &new_dst)?;
    if moves_dirs {
        for (entry, from, to) in [(s, src.dir, dst.dir), (d, dst.dir, src.dir)] {
            if entry.kind == FileKind::Dir {
                tx.adjust_nlink(from, -1)?;
                tx.adjust_nlink(to, 1)?;
                tx.set_parent(entry.ino, to)?;
            }
        }
    }
    for ino in [s.ino, d.ino] {
        tx.update_inode(ino, |a| {
            a.ctime = now;
            Ok(())
        })?;
    }
    tx.touch_dir(src.dir, now)?;
    tx.touch_dir(dst.dir, now)
}

/// Fails with `InvalidArgument` if `dir` is `target` or one of its ancestors, i.e. if moving
/// `dir` into `target` would cut it off from the root.
fn not_into_itself(tx: &Tx<'_>, dir: Ino, target: Ino) -> TxResult<()> {
    let mut cur = target;
    for _ in 0..MAX_DEPTH {
        if cur == dir {
            return abort(IndexError::InvalidArgument(
                "cannot move a directory into its own subtree",
            ));
        }
        if cur == ROOT_INO {
            return Ok(());
        }
        cur = tx.parent(cur)?;
    }
    abort(IndexError::Corrupt(format!(
        "cycle in the parents of {target}"
    )))
}
