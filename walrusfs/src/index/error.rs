//! The error type of the metadata index. The filesystem core maps it to an errno in one place.

/// What went wrong in an index operation.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The inode, directory entry or parent does not exist (or is an unlinked orphan) (ENOENT).
    #[error("no such file or directory")]
    NotFound,
    /// The target name already exists (EEXIST).
    #[error("file exists")]
    Exists,
    /// A directory was needed and the inode is something else (ENOTDIR).
    #[error("not a directory")]
    NotDir,
    /// The operation does not apply to a directory (EISDIR), e.g. unlink of a directory.
    #[error("is a directory")]
    IsDir,
    /// The directory still has entries (ENOTEMPTY).
    #[error("directory not empty")]
    NotEmpty,
    /// A name is longer than [`NAME_MAX`](super::NAME_MAX) bytes, a symlink target longer
    /// than [`SYMLINK_MAX`](super::SYMLINK_MAX) (ENAMETOOLONG).
    #[error("name too long")]
    NameTooLong,
    /// A name is empty, contains `/` or NUL, or is `.` or `..`; or an empty xattr name
    /// (EINVAL).
    #[error("invalid name")]
    InvalidName,
    /// The arguments make no sense together (EINVAL), e.g. renaming a directory into its own
    /// subtree, or a size change on a symlink.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The operation is not allowed on this inode (EPERM), e.g. a hard link to a directory.
    #[error("operation not permitted")]
    NotPermitted,
    /// The extended attribute does not exist (ENODATA).
    #[error("no such extended attribute")]
    NoData,
    /// The extended attribute exists and the caller asked to create it (EEXIST).
    #[error("extended attribute exists")]
    XattrExists,
    /// The stored data breaks an invariant of the index (EIO). Never caused by caller input.
    #[error("index corrupt: {0}")]
    Corrupt(String),
    /// The index on disk was written in another format version (EIO). An index of format 1
    /// (before archives) is not converted: its data lives under a per-machine key.
    #[error("index format {found}, this build reads format {supported}")]
    Format {
        /// The format found.
        found: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// The database failed (EIO).
    #[error("index database: {0}")]
    Db(#[from] sled::Error),
}

/// Result of an index operation.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;
