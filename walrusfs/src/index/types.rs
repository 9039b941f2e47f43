//! Records stored in the metadata index. Serialized with postcard; the layout of every tree is
//! described in the module doc of `index`. These types are an on-disk contract: change them
//! only with a format version bump.

use netcore::codec::{BlobId, BlobMetadata};
use serde::{Deserialize, Serialize};

/// Inode number. 1 is the root directory; numbers are never reused.
pub type Ino = u64;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: Ino = 1;

/// What kind of object an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Unix socket.
    Socket,
}

/// A timestamp: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from(std::time::SystemTime::now())
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timestamp> for std::time::SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(t.secs.unsigned_abs())
                + std::time::Duration::from_nanos(u64::from(t.nanos))
        }
    }
}

/// An inode's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeAttr {
    /// The inode number.
    pub ino: Ino,
    /// Object kind.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard link count (directories: 2 + number of subdirectories).
    pub nlink: u32,
    /// Size in bytes (symlinks: target length; directories: 0).
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data modification.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Next chunk version to hand out for this file; every sealed chunk gets a fresh one.
    pub next_version: u64,
}

/// Where one chunk of a file lives: a byte range of a blob holding the chunk sealed (see
/// [`crate::data::crypto`]), and what is needed to open it. A blob may hold one chunk or many
/// (a pack of small files); [`BlobInfo`] counts the refs into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The blob holding the sealed chunk.
    pub blob_id: BlobId,
    /// Offset of the sealed chunk in the blob.
    pub offset: u64,
    /// Plaintext bytes that were sealed; the sealed chunk is
    /// [`Segments::sealed_len`](crate::data::crypto::Segments::sealed_len)`(stored_len)` bytes
    /// long, in the index's segments.
    pub stored_len: u32,
    /// Plaintext bytes of the chunk that are valid, at most `stored_len`. Bytes of the chunk
    /// beyond this (up to the chunk size) read as zeros; truncation shortens it without
    /// rewriting the blob.
    pub len: u32,
    /// Version the chunk was sealed under (bound into the AEAD associated data).
    pub version: u64,
    /// Random salt the chunk's key was derived with.
    pub salt: [u8; 16],
}

impl ChunkRef {
    /// Sealed bytes this ref occupies in its blob, sealed in `segments` (the index's).
    pub fn sealed_len(&self, segments: crate::data::crypto::Segments) -> u64 {
        segments.sealed_len(self.stored_len as usize) as u64
    }

    /// Where the chunk was sealed: chunk `index` of inode `ino`, with this ref's version and
    /// salt (what opens it).
    pub fn place(&self, ino: u64, index: u64) -> crate::data::crypto::ChunkPlace {
        crate::data::crypto::ChunkPlace {
            ino,
            index,
            version: self.version,
            salt: self.salt,
        }
    }
}

/// A blob that chunk refs point into: its metadata (to read it without asking a node for it,
/// checked against the id) and how many refs point into it. A blob whose count drops to zero
/// leaves this tree and is queued for garbage collection in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// The blob's metadata.
    pub metadata: BlobMetadata,
    /// Chunk refs pointing into the blob.
    pub refs: u64,
    /// Sealed bytes those refs cover (for compacting packs whose live bytes run low).
    pub live_bytes: u64,
}

/// A chunk whose latest content is a record in the write-back journal, not yet stored on the
/// network. It overrides the chunk's entry in `chunks` (which keeps the last stored content
/// until the upload is committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JChunk {
    /// The journal record's sequence number.
    pub seq: u64,
    /// The journal segment holding it.
    pub segment: u64,
    /// Offset of the sealed chunk in the segment.
    pub offset: u64,
    /// Length of the sealed chunk.
    pub sealed_len: u32,
    /// Plaintext bytes sealed.
    pub stored_len: u32,
    /// Valid plaintext bytes (`<= stored_len`; truncation shortens it).
    pub len: u32,
    /// Version the chunk was sealed under.
    pub version: u64,
    /// Salt the chunk's key was derived with.
    pub salt: [u8; 16],
}

impl JChunk {
    /// Where the chunk was sealed: chunk `index` of inode `ino`, with this record's version
    /// and salt (what opens it).
    pub fn place(&self, ino: u64, index: u64) -> crate::data::crypto::ChunkPlace {
        crate::data::crypto::ChunkPlace {
            ino,
            index,
            version: self.version,
            salt: self.salt,
        }
    }
}

/// A blob waiting to be deleted from the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcEntry {
    /// Sequence number of the change that dropped the blob's last reference. The blob may be
    /// deleted only once that change is durable and published (and no snapshot holds it).
    pub dropped_seq: u64,
    /// Nodes still to delete it from, once deleting has started (`None`: not asked yet). A
    /// node that cannot be reached is asked again on a later round; the others are not.
    pub left: Option<Vec<u16>>,
}

/// A directory entry as returned by readdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Entry name (no `/`, not `.` or `..`).
    pub name: Vec<u8>,
    /// Child inode.
    pub ino: Ino,
    /// Child kind.
    pub kind: FileKind,
    /// Cookie to resume listing after this entry.
    pub cookie: u64,
}
