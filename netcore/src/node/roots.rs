//! The node's durable store of archive root records: one small file per archive, replaced only
//! by a strictly newer version that verifies.
//!
//! # On-disk layout (a contract; pinned by a test)
//!
//! ```text
//! <dir>/<archive key, 64 lowercase hex>   postcard StoredRoot { format: u16 = 1, record }
//! <dir>/.tmp-*                            a write in progress; removed by `open`
//! ```
//!
//! A write goes to a temp file, is fsynced, renamed over the old file, and the directory is
//! fsynced before the node acknowledges, so an acknowledged version survives a crash or power
//! loss and a crash never leaves a partial file under the final name. A damaged file (it does
//! not decode or its record does not verify) is reported, never served, and replaced by the
//! next valid record written.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::root::{RootError, RootRecord, MAX_ROOT_BODY};

/// Format of a stored root file; bump on any change to [`StoredRoot`].
pub const ROOT_FILE_FORMAT: u16 = 1;
/// Prefix of temp files.
const TMP_PREFIX: &str = ".tmp-";
/// Largest root file read: a record's body is capped, signature and key are fixed size; larger
/// files are damage and are not read into memory.
const MAX_ROOT_FILE: u64 = MAX_ROOT_BODY as u64 + 1024;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// What is stored in a root file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredRoot {
    format: u16,
    record: RootRecord,
}

/// Errors of the root store.
#[derive(Debug, thiserror::Error)]
pub enum RootStoreError {
    /// The offered record does not verify; nothing was written.
    #[error("rejected root record: {0}")]
    Invalid(#[from] RootError),
    /// The node already holds version `held`, not older than the offered one.
    #[error("holds version {held}")]
    Stale {
        /// The version held.
        held: u64,
    },
    /// A stored root file is damaged; it is not served.
    #[error("damaged root file {}: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file system operation failed.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The root records a node holds, one file per archive under one directory.
#[derive(Debug)]
pub struct RootStore {
    dir: PathBuf,
    /// Serializes compare-and-write of records (root writes are rare and tiny).
    write: Mutex<()>,
}

impl RootStore {
    /// Opens (creating if needed) the store in `dir`, removing temp files left by a crash.
    pub fn open(dir: &Path) -> Result<Self, RootStoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
            }
        }
        fsync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        Ok(RootStore {
            dir: dir.to_owned(),
            write: Mutex::new(()),
        })
    }

    /// Number of archives with a root file.
    pub fn len(&self) -> usize {
        fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with(TMP_PREFIX))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Whether no archive has a root file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record held for `archive`, if any. A damaged file is an error (never served).
    pub fn get(&self, archive: &PublicKey) -> Result<Option<RootRecord>, RootStoreError> {
        let path = self.path(archive);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_ROOT_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        let corrupt = |reason: String| RootStoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        if bytes.len() as u64 > MAX_ROOT_FILE {
            return Err(corrupt("file too large".into()));
        }
        let stored: StoredRoot =
            postcard::from_bytes(&bytes).map_err(|e| corrupt(format!("undecodable: {e}")))?;
        if stored.format != ROOT_FILE_FORMAT {
            return Err(corrupt(format!("unknown format {}", stored.format)));
        }
        stored
            .record
            .verify_for(archive)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(stored.record))
    }

    /// Stores `record` if it verifies and is newer than the one held (a damaged stored file
    /// counts as none). Returns only once the record is durable.
    pub fn put(&self, record: &RootRecord) -> Result<(), RootStoreError> {
        // INV (DESIGN 5): verified before anything touches the disk.
        record.verify()?;
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let held = match self.get(&record.archive) {
            Ok(r) => r.map(|r| r.version),
            Err(RootStoreError::Corrupt { path, reason }) => {
                tracing::warn!(path = %path.display(), "replacing damaged root file: {reason}");
                None
            }
            Err(e) => return Err(e),
        };
        // INV: a node's version of an archive only grows (no rollback through this node).
        if !record.accepts(held) {
            return Err(RootStoreError::Stale {
                held: held.unwrap_or(0),
            });
        }
        let bytes = postcard::to_stdvec(&StoredRoot {
            format: ROOT_FILE_FORMAT,
            record: record.clone(),
        })
        .map_err(|e| RootStoreError::Corrupt {
            path: self.dir.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        let path = self.path(&record.archive);
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        fsync_dir(&self.dir)
    }

    fn path(&self, archive: &PublicKey) -> PathBuf {
        self.dir.join(archive.to_string())
    }
}

fn fsync_dir(dir: &Path) -> Result<(), RootStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootStoreError + '_ {
    move |source| RootStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::root::ArchiveSigner;

    #[test]
    fn stores_newer_versions_only_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = RootStore::open(dir.path()).unwrap();
        let s = ArchiveSigner::from_seed(&[1; 32]);
        let a = s.public_key();
        assert_eq!(store.get(&a).unwrap(), None);
        let v2 = RootRecord::sign(&s, 2, b"two".to_vec()).unwrap();
        store.put(&v2).unwrap();
        assert_eq!(store.get(&a).unwrap(), Some(v2.clone()));
        let v1 = RootRecord::sign(&s, 1, b"one".to_vec()).unwrap();
        assert!(matches!(
            store.put(&v1),
            Err(RootStoreError::Stale { held: 2 })
        ));
        let other_v2 = RootRecord::sign(&s, 2, b"other".to_vec()).unwrap();
        assert!(matches!(
            store.put(&other_v2),
            Err(RootStoreError::Stale { held: 2 })
        ));
        let v3 = RootRecord::sign(&s, 3, b"three".to_vec()).unwrap();
        store.put(&v3).unwrap();
        drop(store);
        let store = RootStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&a).unwrap(), Some(v3));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn forged_records_are_rejected_and_damaged_files_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = RootStore::open(dir.path()).unwrap();
        let s = ArchiveSigner::from_seed(&[1; 32]);
        let mut forged = RootRecord::sign(&ArchiveSigner::from_seed(&[2; 32]), 9, vec![]).unwrap();
        forged.archive = s.public_key();
        assert!(matches!(
            store.put(&forged),
            Err(RootStoreError::Invalid(RootError::BadSignature))
        ));
        assert_eq!(store.len(), 0, "a rejected record writes nothing");

        let v1 = RootRecord::sign(&s, 1, b"x".to_vec()).unwrap();
        store.put(&v1).unwrap();
        let path = dir.path().join(s.public_key().to_string());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            store.get(&s.public_key()),
            Err(RootStoreError::Corrupt { .. })
        ));
        // The next valid record replaces the damaged file.
        let v1b = RootRecord::sign(&s, 1, b"y".to_vec()).unwrap();
        store.put(&v1b).unwrap();
        assert_eq!(store.get(&s.public_key()).unwrap(), Some(v1b));
    }

    /// The stored file format is a contract: this fixed record must encode to fixed bytes.
    #[test]
    fn root_file_format_is_pinned() {
        let record = RootRecord {
            archive: PublicKey([1; 32]),
            version: 300,
            body: vec![0xaa, 0xbb],
            signature: vec![0xcc; 3],
        };
        let bytes = postcard::to_stdvec(&StoredRoot {
            format: ROOT_FILE_FORMAT,
            record,
        })
        .unwrap();
        let mut expected = vec![1u8]; // format 1
        expected.extend_from_slice(&[1; 32]); // archive
        expected.extend_from_slice(&[0xac, 0x02]); // version 300, varint
        expected.extend_from_slice(&[2, 0xaa, 0xbb]); // body
        expected.extend_from_slice(&[3, 0xcc, 0xcc, 0xcc]); // signature
        assert_eq!(bytes, expected);
    }
}
