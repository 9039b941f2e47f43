//! Filesystem errors and their one mapping to errno.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::index::IndexError;

/// Errors remembered for `walrusfs status`.
const RECENT_ERRORS: usize = 20;

/// The latest errors this process met that a user should hear of (failed uploads, I/O errors
/// returned to applications), newest last, with when (seconds since the epoch).
static RECENT: Mutex<VecDeque<(u64, String)>> = Mutex::new(VecDeque::new());

/// Remembers an error for [`recent_errors`].
pub fn note_error(message: String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut r = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() == RECENT_ERRORS {
        r.pop_front();
    }
    r.push_back((now, message));
}

/// The errors [`note_error`] remembered, oldest first.
pub fn recent_errors() -> Vec<(u64, String)> {
    RECENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// Errors of filesystem operations.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A metadata index error (not found, exists, not empty, ...).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The storage network could not store or return data.
    #[error("storage network: {0}")]
    Network(String),
    /// Stored data failed authentication after it was fetched and verified: the master key is
    /// wrong or the index points at the wrong blob.
    #[error("chunk failed authentication: {0}")]
    Integrity(String),
    /// The chunk a read looked up moved to another blob before it was fetched (compaction,
    /// or a newer version stored): the blob's record is gone. Readers look again.
    #[error("chunk moved while being read: {0}")]
    Moved(String),
    /// The mount is read-only.
    #[error("read-only filesystem")]
    ReadOnly,
    /// A file handle the filesystem did not hand out.
    #[error("bad file handle")]
    BadHandle,
    /// An offset or size beyond what the filesystem supports.
    #[error("file too large")]
    TooLarge,
    /// An argument the operation does not accept.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// An operation this filesystem does not implement.
    #[error("operation not supported")]
    Unsupported,
    /// An earlier write of this file could not be stored; reported once, on the next flush or
    /// fsync, while the data stays buffered for another attempt.
    #[error("earlier write could not be stored: {0}")]
    WriteBack(String),
    /// The write-back journal failed or stayed full.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The operation would have to wait for journal room, and was asked not to (the FUSE
    /// adapter then runs it on a thread that may wait). Nothing was changed.
    #[error("operation would wait for the network")]
    WouldBlock,
}

impl FsError {
    /// The errno reported to the kernel. Every variant is decided here and only here.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Index(e) => match e {
                IndexError::NotFound => libc::ENOENT,
                IndexError::Exists => libc::EEXIST,
                IndexError::NotDir => libc::ENOTDIR,
                IndexError::IsDir => libc::EISDIR,
                IndexError::NotEmpty => libc::ENOTEMPTY,
                IndexError::NameTooLong => libc::ENAMETOOLONG,
                IndexError::InvalidName => libc::EINVAL,
                IndexError::InvalidArgument(_) => libc::EINVAL,
                IndexError::NotPermitted => libc::EPERM,
                IndexError::NoData => libc::ENODATA,
                IndexError::XattrExists => libc::EEXIST,
                IndexError::Corrupt(_) => libc::EIO,
                IndexError::Format { .. } => libc::EIO,
                // The state directory's disk is full or over quota: say so.
                IndexError::Db(sled::Error::Io(io)) => disk_full(io).unwrap_or(libc::EIO),
                IndexError::Db(_) => libc::EIO,
            },
            FsError::Network(_) => libc::EIO,
            FsError::Integrity(_) => libc::EIO,
            FsError::Moved(_) => libc::EIO,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::TooLarge => libc::EFBIG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Unsupported => libc::EOPNOTSUPP,
            // Never reaches the kernel: the adapter retries where waiting is allowed.
            FsError::WouldBlock => libc::EAGAIN,
            FsError::WriteBack(_) => libc::EIO,
            FsError::Journal(e) => match e {
                // The state directory's disk is full or over quota: say so, it is the user's
                // to fix (the data stays in memory meanwhile).
                crate::journal::JournalError::Io { source, .. } => {
                    disk_full(source).unwrap_or(libc::EIO)
                }
                crate::journal::JournalError::Full { .. } => libc::EIO,
                crate::journal::JournalError::Gone(_) => libc::EIO,
            },
        }
    }
}

/// ENOSPC or EDQUOT when `e` is one (the user's to fix, so reported as such, not as EIO).
fn disk_full(e: &std::io::Error) -> Option<i32> {
    match e.raw_os_error() {
        Some(code @ (libc::ENOSPC | libc::EDQUOT)) => Some(code),
        _ => None,
    }
}

/// Result of filesystem operations.
pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_state_disk_is_reported_as_enospc_from_the_index_and_the_journal() {
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            FsError::Index(IndexError::Db(sled::Error::Io(full()))).errno(),
            libc::ENOSPC
        );
        let quota = std::io::Error::from_raw_os_error(libc::EDQUOT);
        assert_eq!(
            FsError::Index(IndexError::Db(sled::Error::Io(quota))).errno(),
            libc::EDQUOT
        );
        let journal = crate::journal::JournalError::Io {
            path: "j".into(),
            source: full(),
        };
        assert_eq!(FsError::Journal(journal).errno(), libc::ENOSPC);
        let other = std::io::Error::from_raw_os_error(libc::EBADMSG);
        assert_eq!(
            FsError::Index(IndexError::Db(sled::Error::Io(other))).errno(),
            libc::EIO
        );
    }
}
