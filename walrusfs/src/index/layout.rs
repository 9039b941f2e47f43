//! The on-disk layout: tree names, key encodings and the small records stored as values.
//!
//! Everything here is part of the on-disk contract described in the module doc of
//! [`index`](super). Keys are big-endian so that a range scan visits them in numeric order;
//! values are postcard.

use netcore::codec::BlobId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::error::{IndexError, Result};
use super::types::{FileKind, Ino};

/// Version of the on-disk layout, stored in `meta`. Bump it on any change to a key or record.
///
/// History: 1, the first local index; 2, blobs with reference counts, compact chunk refs
/// (blob, offset, segmented sealing), GC entries stamped with a change sequence number, and the
/// change log and local records that publishing needs; 3, the `proofs` tree (storage
/// confirmations per blob). A format-2 index reads as format 3 with no proofs, and a writer
/// opening one marks it 3. 4, the meta record `segment_size` (chunks are sealed in segments of
/// that many bytes; new indexes: 4 KiB). An index without one (format 3 and earlier) has 64 KiB
/// segments, and keeps them when a writer marks it 4; an older release refuses a format-4
/// index instead of misreading its chunks.
pub(crate) const FORMAT_VERSION: u32 = 4;
/// Oldest format version still opened.
pub(crate) const MIN_FORMAT_VERSION: u32 = 2;

/// The trees of the index. The number is part of the published format (it names the tree in
/// change keys and published records); the name is sled's tree name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum TreeId {
    /// `ino -> InodeAttr`.
    Inodes = 0,
    /// `parent ++ name -> DirentVal`.
    Dirents = 1,
    /// `parent ++ cookie -> name`.
    Dircookies = 2,
    /// `dir ino -> parent ino`.
    Parents = 3,
    /// `ino -> target bytes`.
    Symlinks = 4,
    /// `ino ++ name -> value`.
    Xattrs = 5,
    /// `ino ++ chunk index -> ChunkRef`.
    Chunks = 6,
    /// `blob id -> BlobInfo`.
    Blobs = 7,
    /// `blob id -> GcEntry`.
    Gc = 8,
    /// `ino -> ()`.
    Orphans = 9,
    /// Named singletons, see [`meta_key`](super::meta_key).
    Meta = 10,
    /// Local only: `tree id ++ key -> be64 seq` of every published key changed since the last
    /// publish.
    Changes = 11,
    /// Local only: this machine's records about the archive, see [`local_key`](super::local_key).
    Local = 12,
    /// Local only: `blob id ++ be64 snapshot version -> ()` for every blob a snapshot refers
    /// to (derived from the snapshot's published index; garbage collection skips them).
    Held = 13,
    /// Local only: `ino ++ chunk index -> JChunk`, chunks whose latest content is a record in
    /// the write-back journal (it overrides `chunks` until the uploader stores it).
    JChunks = 14,
    /// Local only: `be64 journal seq -> ino ++ chunk index`, the `jchunks` in record order (the
    /// uploader's queue).
    JQueue = 15,
    /// `blob id -> Vec<StorageConfirmation>`: the signed confirmations the nodes gave when the
    /// blob was stored (evidence for audits), removed with the blob's `blobs` entry.
    Proofs = 16,
}

impl TreeId {
    /// Every tree, in number order (the index of each is its number).
    pub const ALL: [TreeId; 17] = [
        TreeId::Inodes,
        TreeId::Dirents,
        TreeId::Dircookies,
        TreeId::Parents,
        TreeId::Symlinks,
        TreeId::Xattrs,
        TreeId::Chunks,
        TreeId::Blobs,
        TreeId::Gc,
        TreeId::Orphans,
        TreeId::Meta,
        TreeId::Changes,
        TreeId::Local,
        TreeId::Held,
        TreeId::JChunks,
        TreeId::JQueue,
        TreeId::Proofs,
    ];

    /// sled's name of the tree.
    pub fn name(self) -> &'static str {
        match self {
            TreeId::Inodes => "inodes",
            TreeId::Dirents => "dirents",
            TreeId::Dircookies => "dircookies",
            TreeId::Parents => "parents",
            TreeId::Symlinks => "symlinks",
            TreeId::Xattrs => "xattrs",
            TreeId::Chunks => "chunks",
            TreeId::Blobs => "blobs",
            TreeId::Gc => "gc",
            TreeId::Orphans => "orphans",
            TreeId::Meta => "meta",
            TreeId::Changes => "changes",
            TreeId::Local => "local",
            TreeId::Held => "held",
            TreeId::JChunks => "jchunks",
            TreeId::JQueue => "jqueue",
            TreeId::Proofs => "proofs",
        }
    }

    /// Whether the tree is part of the archive (published, restored on other machines), as
    /// opposed to this machine's bookkeeping.
    pub fn published(self) -> bool {
        !matches!(
            self,
            TreeId::Changes | TreeId::Local | TreeId::Held | TreeId::JChunks | TreeId::JQueue
        )
    }

    /// The tree with number `n`.
    pub fn from_u8(n: u8) -> Option<TreeId> {
        TreeId::ALL.get(usize::from(n)).copied()
    }
}

/// Keys of the `meta` tree.
pub(crate) mod meta_key {
    /// `u32`: [`FORMAT_VERSION`](super::FORMAT_VERSION) the index was written with.
    pub const FORMAT: &[u8] = b"format_version";
    /// `[u8; 16]`: random filesystem id, created at first open.
    pub const FS_ID: &[u8] = b"fs_id";
    /// `u32`: chunk size in bytes, fixed at creation.
    pub const CHUNK_SIZE: &[u8] = b"chunk_size";
    /// `u32`: plaintext bytes per sealed segment of every chunk
    /// ([`Segments`](crate::data::crypto::Segments)), fixed at creation; absent in indexes
    /// created before format 4, whose chunks have 64 KiB segments.
    pub const SEGMENT_SIZE: &[u8] = b"segment_size";
    /// [`Counters`](super::Counters).
    pub const COUNTERS: &[u8] = b"counters";
}

/// Keys of the `local` tree: this machine's records, never published.
pub(crate) mod local_key {
    /// `u64`: every change with a sequence number up to this one is published.
    pub const PUBLISHED_SEQ: &[u8] = b"published_seq";
    /// Opaque bytes the archive layer keeps next to the index (its view of the root record),
    /// written in the same transaction as `published_seq`.
    pub const ARCHIVE_STATE: &[u8] = b"archive_state";
    /// `u64`: the journal record whose index change was committed last (records are committed
    /// in order; a replay applies the ones after it).
    pub const JOURNAL_MARK: &[u8] = b"journal_mark";
}

/// The first directory cookie handed out: 0, 1 and 2 are left to the FUSE layer (start of
/// listing, `.` and `..`).
pub(crate) const FIRST_COOKIE: u64 = 3;

/// Longest entry name, in bytes (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest symlink target, in bytes (Linux `PATH_MAX`).
pub const SYMLINK_MAX: usize = 4096;
/// Longest extended attribute name, in bytes (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value, in bytes (Linux `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 65536;

/// Value of a `dirents` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirentVal {
    /// Child inode.
    pub ino: Ino,
    /// Child kind (a copy of the inode's, so readdir needs no inode read).
    pub kind: FileKind,
    /// The entry's readdir cookie; `dircookies` holds the reverse mapping.
    pub cookie: u64,
}

/// Counters kept in `meta` and updated inside every transaction that changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// Sequence number of the last transaction that changed a published tree; each such
    /// transaction takes the next one, stamps its keys in `changes` and its GC entries with it.
    pub seq: u64,
    /// Next inode number to allocate (never reused).
    pub next_ino: Ino,
    /// Next directory cookie to hand out (global, never reused).
    pub next_cookie: u64,
    /// Number of inodes, orphans included.
    pub inodes: u64,
    /// Sum of the sizes of regular files, orphans included.
    pub bytes: u64,
}

/// Checks a directory entry name.
pub(crate) fn validate_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(IndexError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(IndexError::InvalidName);
    }
    Ok(())
}

/// Checks an extended attribute name.
pub(crate) fn validate_xattr_name(name: &[u8]) -> Result<()> {
    if name.len() > XATTR_NAME_MAX {
        return Err(IndexError::NameTooLong);
    }
    if name.is_empty() || name.contains(&0) {
        return Err(IndexError::InvalidName);
    }
    Ok(())
}

/// Key of a per-inode record (`inodes`, `parents`, `symlinks`, `orphans`).
pub(crate) fn ino_key(ino: Ino) -> [u8; 8] {
    ino.to_be_bytes()
}

/// Key `ino ++ name` (`dirents`, `xattrs`).
pub(crate) fn named_key(ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&ino.to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// Key `ino ++ n` (`dircookies`, `chunks`).
pub(crate) fn pair_key(ino: Ino, n: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&ino.to_be_bytes());
    key[8..].copy_from_slice(&n.to_be_bytes());
    key
}

/// Parses an 8-byte inode key.
pub(crate) fn parse_ino_key(key: &[u8]) -> Result<Ino> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| IndexError::Corrupt(format!("inode key of {} bytes", key.len())))?;
    Ok(Ino::from_be_bytes(bytes))
}

/// Splits a `ino ++ n` key.
pub(crate) fn parse_pair_key(key: &[u8]) -> Result<(Ino, u64)> {
    if key.len() != 16 {
        return Err(IndexError::Corrupt(format!(
            "pair key of {} bytes",
            key.len()
        )));
    }
    Ok((parse_ino_key(&key[..8])?, parse_ino_key(&key[8..])?))
}

/// Splits a `ino ++ name` key.
pub(crate) fn parse_named_key(key: &[u8]) -> Result<(Ino, &[u8])> {
    if key.len() < 8 {
        return Err(IndexError::Corrupt(format!(
            "named key of {} bytes",
            key.len()
        )));
    }
    Ok((parse_ino_key(&key[..8])?, &key[8..]))
}

/// Key of a `changes` entry: the tree's number, then the key.
pub(crate) fn change_key(tree: TreeId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tree as u8);
    k.extend_from_slice(key);
    k
}

/// Splits a `changes` key.
pub(crate) fn parse_change_key(key: &[u8]) -> Result<(TreeId, &[u8])> {
    let (&tree, rest) = key
        .split_first()
        .ok_or_else(|| IndexError::Corrupt("empty change key".into()))?;
    let tree = TreeId::from_u8(tree)
        .filter(|t| t.published())
        .ok_or_else(|| IndexError::Corrupt(format!("change key of unknown tree {tree}")))?;
    Ok((tree, rest))
}

/// Parses a `gc` or `blobs` key.
pub(crate) fn parse_blob_id(key: &[u8]) -> Result<BlobId> {
    let bytes: [u8; 32] = key
        .try_into()
        .map_err(|_| IndexError::Corrupt(format!("blob id key of {} bytes", key.len())))?;
    Ok(BlobId(bytes))
}

/// Serializes a record.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| IndexError::Corrupt(format!("encoding a record: {e}")))
}

/// Deserializes a record; `what` names it in the error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| IndexError::Corrupt(format!("decoding {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name(b"a").is_ok());
        assert!(validate_name(&[b'x'; NAME_MAX]).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(
                matches!(validate_name(bad), Err(IndexError::InvalidName)),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate_name(&[b'x'; NAME_MAX + 1]),
            Err(IndexError::NameTooLong)
        ));
    }

    #[test]
    fn keys_sort_numerically_and_round_trip() {
        assert!(pair_key(1, 255) < pair_key(1, 256));
        assert!(pair_key(1, u64::MAX) < pair_key(2, 0));
        assert!(named_key(1, b"zzz") < named_key(2, b""));
        assert_eq!(parse_pair_key(&pair_key(7, 9)).unwrap(), (7, 9));
        assert_eq!(
            parse_named_key(&named_key(7, b"n")).unwrap(),
            (7, &b"n"[..])
        );
        assert!(parse_ino_key(b"short").is_err());
    }
}
