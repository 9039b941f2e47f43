//! The storage node's durable sliver store: the slivers (and blob metadata) a node holds, kept on
//! local disk so that a sliver whose put was acknowledged survives a crash or power loss.
//!
//! # On-disk layout (a contract: a node restarted by a newer version must still read it)
//!
//! ```text
//! <root>/blobs/<aa>/<id>/metadata      BlobMetadata, postcard-encoded
//! <root>/blobs/<aa>/<id>/owner         the 32-byte key of the client whose store created the
//!                                      blob here: its slivers count against that client's
//!                                      quota (absent for blobs stored before quotas existed,
//!                                      and for stores without an owner: counted for no one)
//! <root>/blobs/<aa>/<id>/sliver-<i>    raw bytes of sliver <i> (decimal index, no leading zeros)
//! <root>/blobs/<aa>/<id>/outboard-<i>  the chaining value of each 16 KiB granule of sliver <i>
//!                                      (`codec::Outboard`), to prove ranges of it; derived data,
//!                                      checked against the sliver hash before use and rebuilt
//!                                      from the sliver when missing or wrong
//! <root>/blobs/<aa>/<id>/.tmp-*        a write in progress; removed by `open`
//! <root>/trash/<id>.<pid>.<seq>        a blob being deleted; removed by `open`
//! <root>/quarantine/<id>.sliver-<i>.<seq>  a sliver the scrubber found damaged (kept as
//!                                      evidence; never served; the operator removes it)
//! ```
//!
//! `<id>` is the blob id as 64 lowercase hex digits and `<aa>` its first two, which spreads the
//! blobs over 256 directories so none grows huge.
//!
//! # Durability
//!
//! Every file is written to a temp file in its final directory, fsynced, renamed into place, and
//! the directory is fsynced (slivers of 64 KiB and more are written around the page cache,
//! see [`cache::direct`]: the node rarely reads a sliver back soon, and the copy into fresh
//! cache pages was its largest cost); a newly created directory is made durable in its parent
//! before anything is written in it. A put returns only after all of that, so an acknowledged sliver
//! survives a crash, and a crash at any point leaves either the whole old file, the whole new file
//! or no file under the final name (never a partial one). A blob's metadata is durable before
//! any of its slivers, so a stored sliver can always be length-checked. A delete renames the
//! whole blob directory into `trash/` in one step, so readers see all of a blob or none of it.
//!
//! # Verification
//!
//! Writes are verified in full before touching the disk (metadata against the blob id, sliver
//! against the metadata's length and hash): bad input writes nothing (DESIGN invariant 5).
//! Reads only check lengths; see [`SliverStore::get_sliver`] for why they do not hash. The
//! node's scrubber reads every sliver in the background and hashes it
//! ([`SliverStore::scrub_blob`]): a damaged one is moved to `quarantine/`, so the node stops
//! serving it and reports it missing, and a repair stores it again.
//!
//! # Concurrency
//!
//! All methods take `&self`. Mutations of one blob (put, delete) are serialized by a lock chosen
//! by the blob id's first byte, which is also the blob's prefix directory, so concurrent puts of
//! one blob, or of blobs sharing a prefix directory, never race on creating a directory or
//! counting a file twice. The hashing of a put runs before the lock is taken. Reads take no
//! lock: renames are atomic. One process owns a root at a time (the node owns its `--dir`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::codec::{BlobId, BlobMetadata, CodecError, SliverIndex, MAX_NODES};
use crate::identity::PublicKey;

/// Directory under the root holding one directory per blob.
const BLOBS_DIR: &str = "blobs";
/// Directory under the root where deleted blobs wait to be removed.
const TRASH_DIR: &str = "trash";
/// Directory of slivers the scrubber found damaged.
const QUARANTINE_DIR: &str = "quarantine";
/// Name of a blob's metadata file inside its directory.
const METADATA_FILE: &str = "metadata";
/// Name of a blob's owner file inside its directory.
const OWNER_FILE: &str = "owner";
/// Prefix of a sliver file's name; the decimal sliver index follows.
const SLIVER_PREFIX: &str = "sliver-";
/// Prefix of temp files; anything with it is an unfinished write and is removed at open.
const TMP_PREFIX: &str = ".tmp-";
/// Largest metadata file we read: valid postcard metadata is 32 bytes per sliver hash (at most
/// `MAX_NODES` of them) plus a few varints (under 32 bytes), so anything bigger is damage and is
/// not read into memory.
const MAX_METADATA_FILE_BYTES: u64 = 32 * MAX_NODES as u64 + 64;
/// Number of blob mutation locks: one per value of the blob id's first byte, i.e. one per
/// prefix directory (see the module doc).
const LOCK_STRIPES: usize = 256;

/// Makes temp and trash names unique within the process (the pid makes them unique across
/// restarts, so a name never collides with a leftover that `open` has not removed yet).
static UNIQUE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Errors of the sliver store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob, or the requested sliver of it, is not stored here.
    #[error("blob {blob_id}{} not stored here", fmt_sliver(.sliver))]
    NotFound {
        /// The blob asked for.
        blob_id: BlobId,
        /// The sliver asked for, if a sliver (rather than the metadata) was missing.
        sliver: Option<SliverIndex>,
    },
    /// The caller's metadata or sliver failed verification (wrong id, index, length or hash).
    /// Nothing was written.
    #[error("rejected invalid input: {0}")]
    Invalid(#[source] CodecError),
    /// A stored file is damaged (truncated, undecodable, or not matching its blob id). It is
    /// never served; putting the same data again repairs it.
    #[error("corrupt store file {}: {reason}", .path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn fmt_sliver(sliver: &Option<SliverIndex>) -> String {
    sliver.map(|i| format!(" sliver {i}")).unwrap_or_default()
}

/// What [`SliverStore::put_sliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The sliver was written (new, or replacing a damaged copy) and is durable.
    Stored,
    /// An identical copy was already stored; nothing was rewritten.
    AlreadyStored,
}

/// What the store can serve for one blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStatus {
    /// Whether intact metadata (decodable, matching the blob id) is stored.
    pub has_metadata: bool,
    /// Indexes of the slivers stored with the right length, ascending. Always empty when
    /// `has_metadata` is false, since a sliver cannot be served without its metadata.
    pub slivers: Vec<SliverIndex>,
}

/// Totals over the whole store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Blobs with a metadata file.
    pub blobs: u64,
    /// Bytes in sliver files (metadata not included), damaged ones included until repaired.
    /// A running total of what this store wrote and deleted, so a file damaged behind its back
    /// (e.g. truncated) skews it until the next [`SliverStore::open`] recounts.
    pub sliver_bytes: u64,
}

/// The durable store of slivers and blob metadata under one root directory (see the module
/// doc for the layout). `Send + Sync`: share it behind an `Arc` and call it from blocking
/// threads (it does synchronous file I/O and fsyncs).
#[derive(Debug)]
pub struct SliverStore {
    /// `<root>/blobs`.
    blobs: PathBuf,
    /// `<root>/trash`.
    trash: PathBuf,
    /// `<root>/quarantine`.
    quarantine: PathBuf,
    /// Blob mutation locks, indexed by the blob id's first byte.
    locks: Box<[Mutex<()>]>,
    /// Running totals, kept in step with every put and delete.
    stats: Mutex<StoreStats>,
    /// Sliver bytes per owner (see the `owner` file in the layout), kept the same way.
    usage: Mutex<std::collections::HashMap<PublicKey, u64>>,
    /// Large new files go around the page cache (see [`cache::direct`]).
    direct: cache::direct::DirectWrites,
}

impl SliverStore {
    /// Opens (creating if needed) the store under `root`: removes temp files and trash left by a
    /// crash, and scans the blobs to compute [`StoreStats`]. The scan lists directories and
    /// stats files but reads no data, so it stays quick with tens of thousands of blobs.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let blobs = root.join(BLOBS_DIR);
        let trash = root.join(TRASH_DIR);
        let quarantine = root.join(QUARANTINE_DIR);
        for dir in [&blobs, &trash, &quarantine] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        // INV: the top-level directories are durable before any blob is written below them.
        fsync_dir(root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }

        empty_trash(&trash)?;
        let (stats, usage) = scan_blobs(&blobs)?;
        debug!(root = %root.display(), blobs = stats.blobs, sliver_bytes = stats.sliver_bytes, "sliver store opened");
        Ok(Self {
            blobs,
            trash,
            quarantine,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            stats: Mutex::new(stats),
            usage: Mutex::new(usage),
            direct: cache::direct::DirectWrites::new(true),
        })
    }

    /// Stores sliver `index` of blob `blob_id`, and the blob's metadata if not stored yet.
    ///
    /// Rejects with [`StoreError::Invalid`], writing nothing, metadata that does not match
    /// `blob_id` and a sliver that does not match the metadata (index, length, hash). Returns
    /// only once the sliver and metadata are durable. Idempotent: an identical stored copy
    /// gives [`PutOutcome::AlreadyStored`]; a damaged one (different length or bytes) is
    /// replaced.
    pub fn put_sliver(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
        index: SliverIndex,
        data: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        // INV (DESIGN 5): everything is verified before the disk is touched, so a rejected put
        // writes nothing. Hashing happens here, outside the blob lock.
        metadata.check_id(blob_id).map_err(StoreError::Invalid)?;
        metadata
            .check_sliver(index, data)
            .map_err(StoreError::Invalid)?;
        let encoded_metadata = postcard::to_stdvec(metadata).map_err(|e| {
            StoreError::Invalid(CodecError::MalformedMetadata(format!(
                "cannot be encoded: {e}"
            )))
        })?;

        let _guard = self.lock(blob_id);
        let (prefix_dir, dir) = self.blob_paths(blob_id);
        create_dir_durably(&self.blobs, &prefix_dir)?;
        create_dir_durably(&prefix_dir, &dir)?;

        // Both files are written, fsynced and renamed, then made durable by one fsync of the
        // directory (one fewer fsync than storing them one by one: this is on every write's
        // critical path). A crash can at worst keep a sliver whose metadata rename was lost;
        // such a sliver is never served or counted as stored (reads need the metadata), and
        // the confirmation was not sent, so the client never relied on it.
        let sliver_file = sliver_name(index);
        let [meta_outcome, sliver_outcome] = store_files(
            &self.direct,
            &dir,
            [(METADATA_FILE, &encoded_metadata[..]), (&sliver_file, data)],
        )?;
        if let FileOutcome::Created = meta_outcome {
            self.update_stats(|s| s.blobs += 1);
        }
        let outcome = match sliver_outcome {
            FileOutcome::Unchanged => PutOutcome::AlreadyStored,
            FileOutcome::Created => {
                self.update_stats(|s| s.sliver_bytes += data.len() as u64);
                PutOutcome::Stored
            }
            FileOutcome::Replaced { old_len } => {
                self.update_stats(|s| {
                    s.sliver_bytes = s.sliver_bytes.saturating_sub(old_len) + data.len() as u64;
                });
                PutOutcome::Stored
            }
        };
        debug!(%blob_id, index, ?outcome, "put sliver");
        Ok(outcome)
    }

    /// The stored metadata of `blob_id`, checked against the id: a file that does not decode or
    /// does not match is [`StoreError::Corrupt`].
    pub fn get_metadata(&self, blob_id: &BlobId) -> Result<BlobMetadata, StoreError> {
        let path = self.blob_paths(blob_id).1.join(METADATA_FILE);
        let Some(file) = open_if_exists(&path)? else {
            return Err(StoreError::NotFound {
                blob_id: *blob_id,
                sliver: None,
            });
        };
        let len = file.metadata().map_err(io_error(&path))?.len();
        if len > MAX_METADATA_FILE_BYTES {
            return Err(corrupt(
                &path,
                format!("{len} bytes, too large for metadata"),
            ));
        }
        let mut bytes = Vec::new();
        read_to_len(file, &path, len, &mut bytes)?;
        let (metadata, rest) = postcard::take_from_bytes::<BlobMetadata>(&bytes)
            .map_err(|e| corrupt(&path, format!("does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(corrupt(
                &path,
                format!("{} trailing bytes after metadata", rest.len()),
            ));
        }
        metadata
            .check_id(blob_id)
            .map_err(|e| corrupt(&path, format!("does not match its blob id: {e}")))?;
        Ok(metadata)
    }

    /// The bytes of sliver `index` of `blob_id`. A file whose length is not the metadata's
    /// sliver length (e.g. truncated by a disk problem) is [`StoreError::Corrupt`] and never
    /// served.
    ///
    /// The bytes are deliberately not hashed here: every client verifies each sliver against
    /// the commitments it derives from the blob id (DESIGN invariant 2) and discards bad ones,
    /// so hashing on the node too would double the CPU cost of a read for no added safety.
    /// Length is checked because it is free and catches the common damage, truncation.
    pub fn get_sliver(&self, blob_id: &BlobId, index: SliverIndex) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        self.get_sliver_into(blob_id, index, &mut buf)?;
        Ok(buf)
    }

    /// [`SliverStore::get_sliver`] into `buf` (emptied first; a reused buffer's pages are
    /// neither zeroed nor faulted in again).
    pub fn get_sliver_into(
        &self,
        blob_id: &BlobId,
        index: SliverIndex,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let (file, path, len, _) = self.open_sliver(blob_id, index)?;
        read_to_len(file, &path, len, buf)
    }

    /// Bytes `start..end` of sliver `index` of `blob_id` (checked like
    /// [`SliverStore::get_sliver`]; not hashed either), and the blob's metadata. A range past
    /// the sliver's end is [`StoreError::Invalid`].
    pub fn get_sliver_range(
        &self,
        blob_id: &BlobId,
        index: SliverIndex,
        start: u64,
        end: u64,
    ) -> Result<(Vec<u8>, BlobMetadata), StoreError> {
        let (file, path, len, metadata) = self.open_sliver(blob_id, index)?;
        Ok((read_range(&file, &path, len, start, end)?, metadata))
    }

    /// Bytes `start..end` of sliver `index` of `blob_id`, whose length the caller knows from
    /// verified metadata (e.g. through the sliver's outboard): no metadata is read. A sliver
    /// file of another length is [`StoreError::Corrupt`].
    pub fn read_sliver_range(
        &self,
        blob_id: &BlobId,
        index: SliverIndex,
        sliver_len: u64,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_paths(blob_id).1.join(sliver_name(index));
        let Some(file) = open_if_exists(&path)? else {
            return Err(StoreError::NotFound {
                blob_id: *blob_id,
                sliver: Some(index),
            });
        };
        let len = file.metadata().map_err(io_error(&path))?.len();
        if len != sliver_len {
            return Err(corrupt(
                &path,
                format!("{len} bytes, metadata says slivers have {sliver_len}"),
            ));
        }
        read_range(&file, &path, len, start, end)
    }

    /// The outboard stored beside sliver `index` of `blob_id` (unchecked: compare its root
    /// with the committed sliver hash), if there is one that parses.
    pub fn get_outboard(
        &self,
        blob_id: &BlobId,
        index: SliverIndex,
        sliver_len: u64,
    ) -> Option<crate::codec::Outboard> {
        let path = self.blob_paths(blob_id).1.join(outboard_name(index));
        let bytes = fs::read(path).ok()?;
        crate::codec::Outboard::from_bytes(sliver_len, &bytes)
    }

    /// Stores the outboard of sliver `index` of `blob_id` (rebuilt from the sliver). Best
    /// effort and not synced: it is derived data, checked whenever it is read.
    pub fn put_outboard(
        &self,
        blob_id: &BlobId,
        index: SliverIndex,
        outboard: &crate::codec::Outboard,
    ) -> bool {
        let bytes = outboard.to_bytes();
        if bytes.is_empty() {
            return true;
        }
        let (_, dir) = self.blob_paths(blob_id);
        let _guard = self.lock(blob_id);
        if !dir.is_dir() {
            return false; // deleted meanwhile: do not bring the directory back
        }
        let tmp = dir.join(format!(
            "{TMP_PREFIX}outboard.{}.{}",
            std::process::id(),
            UNIQUE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::write(&tmp, &bytes).is_ok()
            && fs::rename(&tmp, dir.join(outboard_name(index))).is_ok();
        if !written {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Opens sliver `index` of `blob_id` once its metadata is known good and its length is
    /// the metadata's sliver length: the file, its path, its length and the metadata.
    fn open_sliver(
        &self,
        blob_id: &BlobId,
        index: SliverIndex,
    ) -> Result<(File, PathBuf, u64, BlobMetadata), StoreError> {
        let (_, dir) = self.blob_paths(blob_id);
        let path = dir.join(sliver_name(index));
        let metadata = match self.get_metadata(blob_id) {
            Ok(metadata) => metadata,
            Err(StoreError::NotFound { .. }) => {
                // Metadata is made durable before any sliver, so a sliver without it is damage.
                let exists = path.try_exists().map_err(io_error(&path))?;
                return Err(if exists {
                    corrupt(&path, "sliver stored without its blob's metadata")
                } else {
                    StoreError::NotFound {
                        blob_id: *blob_id,
                        sliver: Some(index),
                    }
                });
            }
            Err(e) => return Err(e),
        };
        let expected = metadata
            .sliver_len()
            .map_err(|e| corrupt(&dir.join(METADATA_FILE), e.to_string()))?;

        let Some(file) = open_if_exists(&path)? else {
            return Err(StoreError::NotFound {
                blob_id: *blob_id,
                sliver: Some(index),
            });
        };
        let len = file.metadata().map_err(io_error(&path))?.len();
        if len != expected as u64 {
            return Err(corrupt(
                &path,
                format!("{len} bytes, metadata says slivers have {expected}"),
            ));
        }
        Ok((file, path, len, metadata))
    }

    /// What this store can serve for `blob_id`: whether intact metadata is stored, and which
    /// slivers have the right length. A blob not stored at all gives an empty status, not an
    /// error. Damaged files are left out (and logged), so a client re-puts them.
    pub fn status(&self, blob_id: &BlobId) -> Result<BlobStatus, StoreError> {
        let metadata = match self.get_metadata(blob_id) {
            Ok(metadata) => metadata,
            Err(StoreError::NotFound { .. }) => return Ok(BlobStatus::default()),
            Err(StoreError::Corrupt { path, reason }) => {
                warn!(%blob_id, path = %path.display(), %reason, "corrupt metadata in status");
                return Ok(BlobStatus::default());
            }
            Err(e) => return Err(e),
        };
        let (_, dir) = self.blob_paths(blob_id);
        // Valid metadata bounds the sliver length, so this cannot fail; treat failure as damage.
        let expected = metadata
            .sliver_len()
            .map_err(|e| corrupt(&dir.join(METADATA_FILE), e.to_string()))?
            as u64;
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Deleted since we read the metadata.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BlobStatus::default()),
            Err(e) => return Err(io_error(&dir)(e)),
        };
        let mut slivers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(&dir))?;
            let Some(index) = entry.file_name().to_str().and_then(parse_sliver_name) else {
                continue;
            };
            if index >= metadata.params.n {
                continue;
            }
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&entry.path())(e)),
            };
            if len == expected {
                slivers.push(index);
            } else {
                warn!(%blob_id, index, len, expected, "damaged sliver left out of status");
            }
        }
        slivers.sort_unstable();
        Ok(BlobStatus {
            has_metadata: true,
            slivers,
        })
    }

    /// Removes `blob_id` (metadata and all slivers); returns whether it was stored. Readers see
    /// the whole blob or none of it: its directory is renamed into the trash in one step, made
    /// durable, then removed.
    pub fn delete(&self, blob_id: &BlobId) -> Result<bool, StoreError> {
        let guard = self.lock(blob_id);
        let (prefix_dir, dir) = self.blob_paths(blob_id);
        let Some(scan) = scan_blob_dir(&dir, false)? else {
            return Ok(false);
        };
        let owner = read_owner(&dir);
        let trash_path = self.trash.join(format!(
            "{blob_id}.{}.{}",
            std::process::id(),
            UNIQUE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(&dir, &trash_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error(&dir)(e)),
        }
        self.update_stats(|s| {
            s.blobs = s.blobs.saturating_sub(u64::from(scan.has_metadata));
            s.sliver_bytes = s.sliver_bytes.saturating_sub(scan.sliver_bytes);
        });
        self.charge(owner, scan.sliver_bytes, 0);
        // INV: the blob's removal from `blobs/` is durable before we report it deleted, so it
        // cannot reappear after a crash; the trash entry is then just garbage.
        fsync_dir(&prefix_dir)?;
        fsync_dir(&self.trash)?;
        drop(guard);

        if let Err(e) = fs::remove_dir_all(&trash_path) {
            warn!(path = %trash_path.display(), error = %e, "cannot empty trash now; will retry at next open");
        }
        debug!(%blob_id, "deleted blob");
        Ok(true)
    }

    /// Every blob with a directory in the store, in no particular order (for the scrubber:
    /// blobs stored or deleted while it runs may be missed or listed).
    pub fn blob_ids(&self) -> Result<Vec<BlobId>, StoreError> {
        let mut ids = Vec::new();
        for prefix in fs::read_dir(&self.blobs).map_err(io_error(&self.blobs))? {
            let prefix = prefix.map_err(io_error(&self.blobs))?.path();
            let Ok(entries) = fs::read_dir(&prefix) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// Reads and hashes every sliver stored of `blob_id` against its metadata. A sliver that
    /// fails is moved to `quarantine/` (not served again, and `status` no longer lists it, so
    /// a client or `walrusfs repair` stores it again). Damaged metadata is left for a put to
    /// replace (puts bring their own verified metadata) and reported.
    pub fn scrub_blob(&self, blob_id: &BlobId) -> Result<ScrubReport, StoreError> {
        let mut report = ScrubReport::default();
        let metadata = match self.get_metadata(blob_id) {
            Ok(m) => m,
            // Deleted since listed, or metadata not written yet (a put in progress).
            Err(StoreError::NotFound { .. }) => return Ok(report),
            Err(StoreError::Corrupt { path, reason }) => {
                warn!(%blob_id, path = %path.display(), %reason, "scrub: damaged metadata");
                report.bad_metadata = true;
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        let (_, dir) = self.blob_paths(blob_id);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(report);
        };
        let mut indices: Vec<SliverIndex> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(parse_sliver_name))
            .collect();
        indices.sort_unstable();
        for index in indices {
            let path = dir.join(sliver_name(index));
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path)(e)),
            };
            report.bytes += data.len() as u64;
            let Err(why) = metadata.check_sliver(index, &data) else {
                report.intact += 1;
                continue;
            };
            // The put lock: a concurrent put of this sliver replaces the file whole; moving
            // aside a fresh good copy must not happen.
            let guard = self.lock(blob_id);
            let still_bad =
                fs::read(&path).is_ok_and(|d| metadata.check_sliver(index, &d).is_err());
            if still_bad {
                let aside = self.quarantine.join(format!(
                    "{blob_id}.{}.{}",
                    sliver_name(index),
                    UNIQUE_SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                fs::rename(&path, &aside).map_err(io_error(&path))?;
                fsync_dir(&dir)?;
                self.update_stats(|s| {
                    s.sliver_bytes = s.sliver_bytes.saturating_sub(data.len() as u64)
                });
                self.charge(read_owner(&dir), data.len() as u64, 0);
                warn!(%blob_id, index, reason = %why, aside = %aside.display(), "scrub: damaged sliver quarantined");
                report.quarantined.push(index);
            }
            drop(guard);
        }
        Ok(report)
    }

    /// Current totals over the store.
    pub fn stats(&self) -> StoreStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sliver bytes stored for blobs `owner` created here.
    pub fn usage(&self, owner: &PublicKey) -> u64 {
        self.usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner)
            .copied()
            .unwrap_or(0)
    }

    /// Moves `owner`'s usage from `old` bytes to `new` (nothing without an owner).
    fn charge(&self, owner: Option<PublicKey>, old: u64, new: u64) {
        let Some(owner) = owner else { return };
        let mut usage = self.usage.lock().unwrap_or_else(PoisonError::into_inner);
        let used = usage.entry(owner).or_insert(0);
        *used = used.saturating_sub(old) + new;
        if *used == 0 {
            usage.remove(&owner);
        }
    }

    /// The mutation lock of `blob_id`'s stripe.
    fn lock(&self, blob_id: &BlobId) -> MutexGuard<'_, ()> {
        // The lock guards no data, only the on-disk state, which every operation leaves
        // consistent (atomic renames), so a panic while holding it poisons nothing.
        self.locks[usize::from(blob_id.0[0]) % self.locks.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn update_stats(&self, f: impl FnOnce(&mut StoreStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// `(blobs/<aa>, blobs/<aa>/<id>)` for `blob_id`.
    fn blob_paths(&self, blob_id: &BlobId) -> (PathBuf, PathBuf) {
        let hex = blob_id.to_string();
        let prefix_dir = self.blobs.join(&hex[..2]);
        let dir = prefix_dir.join(hex);
        (prefix_dir, dir)
    }
}

/// What [`SliverStore::scrub_blob`] found in one blob.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// Slivers that verified.
    pub intact: u64,
    /// Slivers that did not, now in `quarantine/`.
    pub quarantined: Vec<SliverIndex>,
    /// The metadata file is damaged (its slivers were not checked).
    pub bad_metadata: bool,
    /// Sliver bytes read.
    pub bytes: u64,
}

/// What [`store_files`] did to one file.
#[derive(Clone, Copy)]
enum FileOutcome {
    /// An identical file was already in place.
    Unchanged,
    /// There was no file under that name.
    Created,
    /// A different file (damaged) was replaced.
    Replaced {
        /// Its length.
        old_len: u64,
    },
}

/// Makes `dir/name` hold exactly `data`, durably, unless it already does.
fn store_files<const N: usize>(
    direct: &cache::direct::DirectWrites,
    dir: &Path,
    files: [(&str, &[u8]); N],
) -> Result<[FileOutcome; N], StoreError> {
    let mut outcomes = [FileOutcome::Unchanged; N];
    let mut to_write = Vec::with_capacity(N);
    for (i, (name, data)) in files.iter().enumerate() {
        outcomes[i] = file_outcome(&dir.join(name), data)?;
        if !matches!(outcomes[i], FileOutcome::Unchanged) {
            to_write.push((*name, *data));
        }
    }
    write_atomically(direct, dir, &to_write)?;
    Ok(outcomes)
}

/// What storing `data` at `path` would do.
fn file_outcome(path: &Path, data: &[u8]) -> Result<FileOutcome, StoreError> {
    Ok(match open_if_exists(path)? {
        None => FileOutcome::Created,
        Some(file) => {
            let old_len = file.metadata().map_err(io_error(path))?.len();
            // Comparing bytes (not just lengths) costs a read only on the rare retried put, and
            // heals a same-length bit flip that reads, which only check length, cannot see.
            let mut old = Vec::new();
            if old_len == data.len() as u64
                && read_to_len(file, path, old_len, &mut old).is_ok()
                && old == data
            {
                return Ok(FileOutcome::Unchanged);
            }
            warn!(path = %path.display(), old_len, new_len = data.len(), "replacing damaged file");
            FileOutcome::Replaced { old_len }
        }
    })
}

/// Writes each `dir/name` through a temp file, so that at every instant a name holds either
/// its old content or all of its new data, and returns once the new contents are durable.
fn write_atomically(
    direct: &cache::direct::DirectWrites,
    dir: &Path,
    files: &[(&str, &[u8])],
) -> Result<(), StoreError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut temps = Vec::with_capacity(files.len());
    let result = (|| {
        for (name, data) in files {
            let tmp_path = dir.join(format!(
                "{TMP_PREFIX}{name}.{}.{}",
                std::process::id(),
                UNIQUE_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            temps.push(tmp_path.clone());
            let file = direct
                .write_new(&tmp_path, &[data])
                .map_err(io_error(&tmp_path))?;
            // INV: the bytes are on disk before the final name points at them; otherwise a
            // crash after the rename could leave a correctly named file with missing content.
            file.sync_all().map_err(io_error(&tmp_path))?;
        }
        for ((name, _), tmp_path) in files.iter().zip(&temps) {
            let final_path = dir.join(name);
            fs::rename(tmp_path, &final_path).map_err(io_error(&final_path))?;
        }
        // INV: the renames are durable before the caller reports success.
        fsync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: `open` removes any temp file left behind.
        for tmp in &temps {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// Creates `dir` (a child of `parent`) if missing, and makes its entry durable in `parent`.
fn create_dir_durably(parent: &Path, dir: &Path) -> Result<(), StoreError> {
    match fs::create_dir(dir) {
        Ok(()) => {
            // INV: a new directory's entry is durable before any file in it is reported
            // durable; the fsync of the file and of `dir` alone do not cover it.
            if let Err(e) = fsync_dir(parent) {
                // Remove the not-yet-durable directory so the next put creates and syncs it
                // again instead of finding it and skipping the fsync.
                let _ = fs::remove_dir(dir);
                return Err(e);
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(dir)(e)),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Opens `path` for reading; `None` if it does not exist.
fn open_if_exists(path: &Path) -> Result<Option<File>, StoreError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Bytes `start..end` of `file`, `len` bytes long, once the range is checked.
fn read_range(
    file: &File,
    path: &Path,
    len: u64,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, StoreError> {
    crate::codec::check_range(len, start, end).map_err(StoreError::Invalid)?;
    let mut buf = vec![0u8; (end - start) as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, start).map_err(io_error(path))?;
    Ok(buf)
}

/// Reads all of `file`, which its metadata said is `len` bytes long; a different length (the
/// file changed under us) is [`StoreError::Corrupt`].
fn read_to_len(file: File, path: &Path, len: u64, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    let capacity = usize::try_from(len).map_err(|_| corrupt(path, format!("{len} bytes")))?;
    buf.clear();
    buf.reserve_exact(capacity);
    // Reading one byte past `len` detects a file that grew, without reading it all.
    file.take(len.saturating_add(1))
        .read_to_end(buf)
        .map_err(io_error(path))?;
    if buf.len() as u64 != len {
        return Err(corrupt(
            path,
            format!("changed while read: {} bytes, expected {len}", buf.len()),
        ));
    }
    Ok(())
}

/// Removes every entry of the trash directory (blobs whose delete was interrupted).
fn empty_trash(trash: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(trash).map_err(io_error(trash))? {
        let entry = entry.map_err(io_error(trash))?;
        let path = entry.path();
        let is_dir = entry.file_type().map_err(io_error(&path))?.is_dir();
        let removed = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_error(&path))?;
        debug!(path = %path.display(), "removed leftover trash");
    }
    Ok(())
}

/// Walks `blobs/`, cleaning crash leftovers, and totals what is stored.
fn scan_blobs(blobs: &Path) -> Result<(StoreStats, Usage), StoreError> {
    let mut stats = StoreStats::default();
    let mut usage = Usage::new();
    for prefix_entry in fs::read_dir(blobs).map_err(io_error(blobs))? {
        let prefix_dir = prefix_entry.map_err(io_error(blobs))?.path();
        let prefix = prefix_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if !(prefix.len() == 2 && is_lower_hex(prefix) && prefix_dir.is_dir()) {
            warn!(path = %prefix_dir.display(), "ignoring unexpected entry in the store");
            continue;
        }
        for blob_entry in fs::read_dir(&prefix_dir).map_err(io_error(&prefix_dir))? {
            let dir = blob_entry.map_err(io_error(&prefix_dir))?.path();
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.len() == 64 && is_lower_hex(name) && name.starts_with(prefix)) {
                warn!(path = %dir.display(), "ignoring unexpected entry in the store");
                continue;
            }
            let Some(scan) = scan_blob_dir(&dir, true)? else {
                continue;
            };
            if scan.is_empty {
                // Created just before a crash, before its metadata was written.
                fs::remove_dir(&dir).map_err(io_error(&dir))?;
                continue;
            }
            stats.blobs += u64::from(scan.has_metadata);
            stats.sliver_bytes += scan.sliver_bytes;
            if let Some(owner) = read_owner(&dir) {
                *usage.entry(owner).or_insert(0) += scan.sliver_bytes;
            }
        }
    }
    Ok((stats, usage))
}

/// Sliver bytes per owner.
type Usage = std::collections::HashMap<PublicKey, u64>;

/// The owner recorded in blob directory `dir`, if any (a damaged file counts as none).
pub(super) fn read_owner(dir: &Path) -> Option<PublicKey> {
    let bytes = fs::read(dir.join(OWNER_FILE)).ok()?;
    Some(PublicKey(bytes.try_into().ok()?))
}

/// What one blob directory holds.
struct BlobDirScan {
    has_metadata: bool,
    /// Total length of the sliver files.
    sliver_bytes: u64,
    /// No entries left (after temp-file removal, if asked).
    is_empty: bool,
}

/// Lists blob directory `dir` (`None` if missing), removing temp files if `remove_tmp`.
fn scan_blob_dir(dir: &Path, remove_tmp: bool) -> Result<Option<BlobDirScan>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(dir)(e)),
    };
    let mut scan = BlobDirScan {
        has_metadata: false,
        sliver_bytes: 0,
        is_empty: true,
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        if remove_tmp && name.starts_with(TMP_PREFIX) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
            debug!(path = %path.display(), "removed leftover temp file");
            continue;
        }
        scan.is_empty = false;
        if name == METADATA_FILE {
            scan.has_metadata = true;
        } else if parse_sliver_name(name).is_some() {
            scan.sliver_bytes += entry.metadata().map_err(io_error(&entry.path()))?.len();
        }
    }
    Ok(Some(scan))
}

fn sliver_name(index: SliverIndex) -> String {
    format!("{SLIVER_PREFIX}{index}")
}

fn outboard_name(index: SliverIndex) -> String {
    format!("outboard-{index}")
}

/// The index in a sliver file name; `None` for any other name, including non-canonical
/// spellings such as `sliver-007` that [`sliver_name`] never produces.
fn parse_sliver_name(name: &str) -> Option<SliverIndex> {
    let digits = name.strip_prefix(SLIVER_PREFIX)?;
    let index: SliverIndex = digits.parse().ok()?;
    (digits == index.to_string()).then_some(index)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

mod batch;
pub use batch::PutItem;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests unwrap freely: a panic is a failure with a backtrace.
mod tests;
