//! Namespace and attribute operations. They touch only the local index (and open-file
//! records), never the network, so `ls`, `stat`, `mkdir` and `rename` stay fast whatever the
//! network is doing.

use super::{Fs, FsError, FsResult};
use crate::data::store::BlobStore;
use crate::index::types::{DirEntry, FileKind, Ino, InodeAttr, Timestamp};
use crate::index::{NewNode, RenameFlags, SetAttr, XattrFlags};

/// Attributes as the filesystem reports them (the index's, with an open file's pending size
/// and times applied).
pub type Attr = InodeAttr;

/// Who is asking: the caller's credentials from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx {
    /// Caller's effective uid.
    pub uid: u32,
    /// Caller's effective gid.
    pub gid: u32,
}

/// Filesystem totals for statfs.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    /// Bytes in regular files.
    pub used_bytes: u64,
    /// Inodes in use.
    pub inodes: u64,
    /// Bytes written and still in memory.
    pub dirty_bytes: u64,
    /// Bytes waiting to be stored on the network (memory and journal).
    pub pending_bytes: u64,
    /// File bytes the network can still take (see [`Fs::set_network_free`]), if known.
    pub network_free: Option<u64>,
}

/// `S_ISGID`: new entries of a setgid directory take its group; subdirectories inherit it.
const SETGID: u16 = 0o2000;
/// `S_ISUID`.
const SETUID: u16 = 0o4000;
/// `S_IXGRP`: a setgid file without it is not a setgid executable, and keeps the bit.
const GROUP_EXEC: u16 = 0o010;
/// The xattr holding a file's capabilities; a write removes it, as it removes setuid.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// The setuid and setgid bits of `perm` that a write or truncation by a caller without
/// `CAP_FSETID` clears (Linux's `setattr_should_drop_suidgid`).
fn suidgid_to_drop(perm: u16) -> u16 {
    let sgid = if perm & GROUP_EXEC != 0 { SETGID } else { 0 };
    perm & (SETUID | sgid)
}

impl<B: BlobStore> Fs<B> {
    /// Attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let attr = self.inner.index.get_attr(ino)?;
        Ok(self.with_pending(attr))
    }

    /// Applies an open file's not-yet-committed size and times.
    fn with_pending(&self, mut attr: Attr) -> Attr {
        if attr.kind == FileKind::File {
            if let Some(f) = self.existing_file(attr.ino) {
                let mut st = f.lock();
                self.settle(&mut st);
                // With nothing pending the index is the truth (a follower's index changes
                // under open files).
                if !super::files::OpenFile::has_unstored(&st) {
                    return attr;
                }
                attr.size = st.buf.size;
                if let Some(set) = &st.buf.set {
                    // Explicitly set attributes waiting for the data's commit: the buffered
                    // values are the file's (an mtime may have been set back).
                    set.apply_mode_owner_atime(&mut attr);
                    attr.mtime = st.buf.mtime;
                    attr.ctime = st.buf.ctime;
                } else {
                    attr.mtime = attr.mtime.max(st.buf.mtime);
                    attr.ctime = attr.ctime.max(st.buf.ctime);
                }
            }
        }
        attr
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        let attr = self.inner.index.lookup(parent, name)?;
        Ok(self.with_pending(attr))
    }

    /// Creates a file, directory, symlink, fifo, socket or device node.
    #[allow(clippy::too_many_arguments)] // mirrors mknod/mkdir/symlink: each argument is one of theirs
    pub fn create_node(
        &self,
        ctx: RequestCtx,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        symlink_target: Option<Vec<u8>>,
    ) -> FsResult<Attr> {
        self.inner.check_writable()?;
        let dir = self.inner.index.get_attr(parent)?;
        let mut perm = perm & 0o7777;
        let gid = if dir.perm & SETGID != 0 {
            if kind == FileKind::Dir {
                perm |= SETGID;
            }
            dir.gid
        } else {
            ctx.gid
        };
        let node = NewNode {
            kind,
            perm,
            uid: ctx.uid,
            gid,
            rdev,
            symlink_target,
        };
        // A plain file's creation waits in the index's queue for the next transaction
        // (`index::overlay`); anything else is a transaction of its own.
        let created = self
            .inner
            .index
            .create_file(parent, name, node, Timestamp::now());
        // A create that ran a transaction applied the index's queue (even when it failed):
        // the buffers of the files whose commits were in it can go now.
        self.settle_applied();
        Ok(created?)
    }

    /// Adds hard link `new_parent/new_name` to `ino`.
    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> FsResult<Attr> {
        self.inner.check_writable()?;
        let attr = self
            .inner
            .index
            .link(ino, new_parent, new_name, Timestamp::now())?;
        Ok(self.with_pending(attr))
    }

    /// Removes a non-directory entry. An inode losing its last link while open stays readable
    /// through its handles and is freed at the last close.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.inner.check_writable()?;
        let open = |ino| self.is_open(ino);
        let out = self
            .inner
            .index
            .unlink(parent, name, Timestamp::now(), &open)?;
        if out.freed {
            self.inner.gc_wake.notify_one();
        }
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.inner.check_writable()?;
        self.inner.index.rmdir(parent, name, Timestamp::now())?;
        Ok(())
    }

    /// Renames (or with `exchange`, swaps) an entry, atomically replacing an existing target
    /// unless `no_replace`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        no_replace: bool,
        exchange: bool,
    ) -> FsResult<()> {
        self.inner.check_writable()?;
        let open = |ino| self.is_open(ino);
        let flags = RenameFlags {
            no_replace,
            exchange,
        };
        // Moving a new file whose creation still waits in the index's queue waits there too
        // (`index::overlay`); anything else is a transaction.
        let out = self.inner.index.rename_queued(
            parent,
            name,
            new_parent,
            new_name,
            flags,
            Timestamp::now(),
            &open,
        )?;
        if out.replaced.is_some_and(|u| u.freed) {
            self.inner.gc_wake.notify_one();
        }
        Ok(())
    }

    /// Changes attributes. A size change applies to the open file's buffers as well as the
    /// index, in that order, so no buffered byte beyond the new size survives.
    pub fn setattr(&self, ino: Ino, changes: SetAttr) -> FsResult<Attr> {
        self.inner.check_writable()?;
        if let Some(size) = changes.size {
            let attr = self.inner.index.get_attr(ino)?;
            match attr.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(crate::index::IndexError::IsDir.into()),
                _ => return Err(FsError::Invalid("truncate of a special file")),
            }
            if size > (1 << 50) {
                return Err(FsError::TooLarge);
            }
            if let Some(file) = self.existing_file(ino) {
                let mut st = file.lock();
                self.settle(&mut st);
                let current = if super::files::OpenFile::has_unstored(&st) {
                    st.buf.size
                } else {
                    attr.size
                };
                let only_size = SetAttr {
                    size: None,
                    ..changes
                } == SetAttr::default();
                if only_size && size >= current {
                    // Growing an open file cuts nothing: it is a write of nothing at `size`,
                    // committed with the file's data or at its close like a write's size, not
                    // a transaction of its own (restic's restore `fallocate`s every file it
                    // creates before writing it; a transaction each took its creation out of
                    // the index's queue).
                    st.buf.size = size;
                    st.buf.touch(Timestamp::now());
                    drop(st);
                    return Ok(self.with_pending(attr));
                }
                drop(st);
                // Uploads in flight for chunks beyond the new size are dropped at commit.
                self.truncate_buffers(&file, size);
                let mut st = file.lock();
                let attr = self.inner.index.setattr(ino, changes, Timestamp::now())?;
                st.buf.mtime = attr.mtime;
                st.buf.ctime = attr.ctime;
                st.buf.size = attr.size;
                drop(st);
                self.inner.gc_wake.notify_one();
                return Ok(self.with_pending(attr));
            }
            let attr = self.inner.index.setattr(ino, changes, Timestamp::now())?;
            self.inner.gc_wake.notify_one();
            return Ok(attr);
        }
        if let Some(file) = self.existing_file(ino) {
            let mut st = file.lock();
            self.settle(&mut st);
            let now = Timestamp::now();
            let deferred = changes.deferrable()
                && if st.buf.has_dirty() || st.buf.attr_dirty {
                    // Data is buffered, or a size or times not yet committed (a grown file):
                    // the change waits to be committed with them, in the same transaction (tar
                    // sets times, owner and mode of every file it writes, before closing it:
                    // one index transaction at close instead of four). Queued alone, it would
                    // carry no size, and the pending one would be taken for committed.
                    st.buf.defer(&changes, now);
                    true
                } else {
                    // Nothing buffered (rsync sets times and mode after closing the file, and
                    // the mode before writing it): the change rides on the next transaction.
                    let mut set = st.buf.set.unwrap_or_default();
                    set.merge(&changes);
                    let queued = crate::index::AttrCommit {
                        ino,
                        set,
                        mtime: changes.mtime.unwrap_or(st.buf.mtime),
                        ctime: changes.ctime.unwrap_or(now),
                    };
                    let ticket = self.inner.index.defer_attrs(queued);
                    if let Some(ticket) = ticket {
                        st.buf.queued_attrs(&changes, now, ticket);
                    }
                    ticket.is_some()
                };
            if deferred {
                // Until the index has it, attribute replies merge it (`with_pending`).
                drop(st);
                let attr = self.inner.index.get_attr(ino)?;
                return Ok(self.with_pending(attr));
            }
            // Explicit times set now win over those of earlier writes still buffered: the
            // buffers carry the new times into the journal when they go.
            let attr = self.inner.index.setattr(ino, changes, Timestamp::now())?;
            st.buf.mtime = attr.mtime;
            st.buf.ctime = attr.ctime;
            drop(st);
            return Ok(self.with_pending(attr));
        }
        // A directory's (or a closed file's) change: one of a directory, symlink or special
        // file waits in the index's queue for the next transaction (`index::overlay`).
        Ok(self
            .inner
            .index
            .setattr_queued(ino, changes, Timestamp::now())?)
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        Ok(self.inner.index.readlink(ino)?)
    }

    /// Up to `limit` entries of directory `dir` after `cookie`.
    pub fn readdir(&self, dir: Ino, cookie: u64, limit: usize) -> FsResult<Vec<DirEntry>> {
        Ok(self.inner.index.readdir(dir, cookie, limit)?)
    }

    /// The parent of directory `dir` (the root is its own parent).
    pub fn parent_of(&self, dir: Ino) -> FsResult<Ino> {
        Ok(self.inner.index.parent_of(dir)?)
    }

    /// An extended attribute's value.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        Ok(self.inner.index.get_xattr(ino, name)?)
    }

    /// Sets an extended attribute.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> FsResult<()> {
        self.inner.check_writable()?;
        let flags = XattrFlags { create, replace };
        Ok(self
            .inner
            .index
            .set_xattr(ino, name, value, flags, Timestamp::now())?)
    }

    /// Names of `ino`'s extended attributes.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        Ok(self.inner.index.list_xattrs(ino)?)
    }

    /// Removes an extended attribute.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.inner.check_writable()?;
        Ok(self.inner.index.remove_xattr(ino, name, Timestamp::now())?)
    }

    /// What a write does to a regular file's privileges before its data goes in, as Linux
    /// does it (`file_remove_privs`): its capabilities xattr goes, and, with `suidgid` (the
    /// writer lacks `CAP_FSETID`), its setuid bit and its setgid bit if group-executable. The
    /// FUSE layer asks the kernel to leave this to the filesystem (`FUSE_HANDLE_KILLPRIV_V2`),
    /// which spares every write a round trip asking for `security.capability`. Costs one or
    /// two index reads when there is nothing to drop. A file gone meanwhile is left to the
    /// write to report.
    pub fn drop_privileges_for_write(&self, ino: Ino, suidgid: bool) -> FsResult<()> {
        use crate::index::IndexError::NotFound;
        if suidgid {
            let attr = match self.getattr(ino) {
                Ok(a) => a,
                Err(FsError::Index(NotFound)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let drop = suidgid_to_drop(attr.perm);
            if attr.kind == FileKind::File && drop != 0 {
                self.setattr(
                    ino,
                    SetAttr {
                        perm: Some(attr.perm & !drop),
                        ..SetAttr::default()
                    },
                )?;
            }
        }
        self.drop_capabilities(ino)
    }

    /// Removes `ino`'s capabilities xattr if it has one (a write or a chown drops it).
    pub fn drop_capabilities(&self, ino: Ino) -> FsResult<()> {
        use crate::index::IndexError::{NoData, NotFound};
        match self.inner.index.get_xattr(ino, CAPABILITY_XATTR) {
            Ok(_) => match self.removexattr(ino, CAPABILITY_XATTR) {
                Ok(()) | Err(FsError::Index(NoData | NotFound)) => Ok(()),
                Err(e) => Err(e),
            },
            Err(NoData | NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The mode a chown (a new owner or group) leaves `ino` with, or None if it keeps its
    /// mode: anything but a directory loses setuid, and setgid if group-executable, whoever
    /// makes the change (Linux's `chown_common`). Under `FUSE_HANDLE_KILLPRIV_V2` the kernel
    /// leaves this to the filesystem (`FATTR_KILL_SUIDGID`, which fuser does not pass).
    pub fn perm_after_chown(&self, ino: Ino) -> FsResult<Option<u16>> {
        let attr = self.getattr(ino)?;
        let drop = suidgid_to_drop(attr.perm);
        Ok((attr.kind != FileKind::Dir && drop != 0).then_some(attr.perm & !drop))
    }

    /// The mode a truncation of `ino` by a caller without `CAP_FSETID` leaves (setuid, and
    /// setgid if group-executable, dropped), or None if it keeps its mode: as for a write (see
    /// [`Fs::drop_privileges_for_write`]), the kernel leaves this to the filesystem.
    pub fn perm_after_truncation(&self, ino: Ino) -> FsResult<Option<u16>> {
        let perm = self.getattr(ino)?.perm;
        let drop = suidgid_to_drop(perm);
        Ok((drop != 0).then_some(perm & !drop))
    }

    /// Totals for statfs.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let s = self.inner.index.stats()?;
        Ok(StatFs {
            used_bytes: s.bytes,
            inodes: s.inodes,
            dirty_bytes: self.dirty_bytes(),
            pending_bytes: self.dirty_bytes() + self.inner.journal.bytes(),
            network_free: self.network_free(),
        })
    }
}
