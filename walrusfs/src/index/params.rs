//! Arguments and results of [`Index`](super::Index) operations.

use super::types::{FileKind, Ino, Timestamp};

/// How to open an index. The root fields apply only when the index is created; the chunk size
/// is fixed at creation and must match on every later open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// Owner of the root directory.
    pub root_uid: u32,
    /// Group of the root directory.
    pub root_gid: u32,
    /// Permission bits of the root directory (`& 0o7777`).
    pub root_perm: u16,
    /// Chunk size in bytes: chunk `i` of a file covers bytes `[i * chunk_size, (i+1) *
    /// chunk_size)`. Non-zero.
    pub chunk_size: u32,
}

/// A node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    /// What to create.
    pub kind: FileKind,
    /// Permission bits (`& 0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes; 0 otherwise).
    pub rdev: u32,
    /// Target, for (and only for) symlinks: non-empty, at most
    /// [`SYMLINK_MAX`](super::SYMLINK_MAX) bytes.
    pub symlink_target: Option<Vec<u8>>,
}

/// Attribute changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`& 0o7777`).
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (regular files only). A change also sets mtime to `now` unless `mtime` is
    /// given.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Timestamp>,
    /// New modification time.
    pub mtime: Option<Timestamp>,
    /// New status change time; defaults to `now` whenever anything changes.
    pub ctime: Option<Timestamp>,
}

impl SetAttr {
    /// Whether this change can wait for the commit of a file's buffered data: no size
    /// change (that cuts chunks now), and something to change.
    pub fn deferrable(&self) -> bool {
        self.size.is_none() && *self != SetAttr::default()
    }

    /// Applies the mode, owner and atime parts: all of a change but size, mtime and ctime
    /// (which a deferred change carries with the data).
    pub fn apply_mode_owner_atime(&self, attr: &mut super::types::InodeAttr) {
        if let Some(perm) = self.perm {
            attr.perm = perm & 0o7777;
        }
        if let Some(uid) = self.uid {
            attr.uid = uid;
        }
        if let Some(gid) = self.gid {
            attr.gid = gid;
        }
        if let Some(atime) = self.atime {
            attr.atime = atime;
        }
    }

    /// Merges `later` into this deferred change (later values win).
    pub fn merge(&mut self, later: &SetAttr) {
        self.perm = later.perm.or(self.perm);
        self.uid = later.uid.or(self.uid);
        self.gid = later.gid.or(self.gid);
        self.atime = later.atime.or(self.atime);
    }
}

/// Flags of [`Index::rename`](super::Index::rename) (`renameat2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `Exists` if the target exists (`RENAME_NOREPLACE`).
    pub no_replace: bool,
    /// Swap source and target, which must both exist (`RENAME_EXCHANGE`).
    pub exchange: bool,
}

/// Flags of [`Index::set_xattr`](super::Index::set_xattr) (`setxattr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XattrFlags {
    /// Fail with `XattrExists` if the attribute exists (`XATTR_CREATE`).
    pub create: bool,
    /// Fail with `NoData` if the attribute does not exist (`XATTR_REPLACE`).
    pub replace: bool,
}

/// What an unlink (or a replacing rename) did to the inode that lost a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unlinked {
    /// The inode that lost a link.
    pub ino: Ino,
    /// The inode was deleted (its blobs are queued for GC). `false`: it still has links, or
    /// it is open and became an orphan, freed by [`Index::release`](super::Index::release).
    pub freed: bool,
}

/// What a rename did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameOutcome {
    /// The inode the target name pointed to, if the rename replaced one.
    pub replaced: Option<Unlinked>,
}

/// Filesystem totals, for statfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Number of inodes (orphans included).
    pub inodes: u64,
    /// Sum of the sizes of regular files (orphans included).
    pub bytes: u64,
}
