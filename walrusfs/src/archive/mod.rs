//! The archive: what makes the network the home of a filesystem rather than a place its chunks
//! happen to be.
//!
//! - [`key`]: the archive key (one secret; data, index and signing keys derive from it) and the
//!   passphrase-sealed key file;
//! - [`body`]: the root record's sealed body: the published index, the writer's lease, snapshots;
//! - [`records`]: the published index records, sealed into blobs;
//! - [`restore`]: fetching records and building a local index from them;
//! - [`writer`]: the one writer: lease, publishing, compaction, snapshots, release;
//! - [`replica`]: read-only mounts following the writer, and snapshot mounts.
//!
//! The local state directory is a cache of what is published: its index carries, in its local
//! tree, the root version and index chain it last published or applied ([`LocalState`]), so a
//! mount knows whether its index is the archive's current one, behind it, or ahead of it (changes
//! this machine made and has not published yet).
//!
//! # Invariants
//!
//! - INV: a writer changes the archive only while it holds the lease; every root write names
//!   it and is refused by nodes that hold a newer version, so a writer that lost the lease finds
//!   out at its next write and stops (the filesystem turns read-only).
//! - INV: index record blobs are stored before a root record names them; a root record is
//!   written only after the index state it publishes is durable locally.
//! - INV (DESIGN 7): the published index holds every file's metadata and chunk refs, so the
//!   key, its passphrase and the committee recover everything that was published.

pub mod body;
pub mod key;
pub mod records;
pub mod replica;
pub mod restore;
pub mod writer;

use netcore::codec::BlobId;
use netcore::identity::PublicKey;
use serde::{Deserialize, Serialize};

use body::{IndexChain, RootBody};
use key::ArchiveKey;

/// Format of [`LocalState`]; bump on any change.
pub const LOCAL_STATE_FORMAT: u16 = 1;

/// How long a writer's lease lasts without renewal. A crashed writer blocks others this long
/// (then `--take-over`); the writer renews at a third of it, so a few failed renewals in a row
/// are survived.
pub const LEASE_DURATION: std::time::Duration = std::time::Duration::from_secs(60);

/// Errors of archive operations. Each says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// No node holds a root record for this archive.
    #[error("no archive {archive} on this network: create one with `walrusfs init`, or check the key and the committee file")]
    NoArchive {
        /// The archive looked for.
        archive: PublicKey,
    },
    /// The archive already exists (init).
    #[error("archive {archive} already exists on this network (version {version})")]
    Exists {
        /// The archive.
        archive: PublicKey,
        /// Its root version.
        version: u64,
    },
    /// Another writer holds the lease.
    #[error("archive is being written by {host} (pid {pid}); its lease expires {expires}. Mount with --read-only, or wait until it unmounts")]
    LeaseHeld {
        /// The holder's host.
        host: String,
        /// The holder's pid.
        pid: u32,
        /// When the lease expires, as text.
        expires: String,
    },
    /// The previous writer stopped without releasing its lease.
    #[error("archive was being written by {host} (pid {pid}), which stopped without unmounting (its lease expired {expired}). If that machine is gone, mount with --take-over: changes it never published are lost")]
    LeaseExpired {
        /// The holder's host.
        host: String,
        /// The holder's pid.
        pid: u32,
        /// When the lease expired, as text.
        expired: String,
    },
    /// This writer lost the lease to another one.
    #[error("this mount lost the archive's writer lease (root version {version} was written by another writer); the filesystem is read-only now")]
    LeaseLost {
        /// The root version found.
        version: u64,
    },
    /// The state directory's index has changes that were never published, and the archive
    /// moved on without them.
    #[error("the state directory {state} holds changes that were never published, and the archive has since been written by another machine. Move the state directory away to mount the archive as it is now (the unpublished changes stay in the moved directory)")]
    Diverged {
        /// The state directory.
        state: String,
    },
    /// The state directory belongs to another archive.
    #[error(
        "the state directory {state} belongs to archive {found}, not {wanted}; use another --state"
    )]
    WrongState {
        /// The state directory.
        state: String,
        /// Its archive.
        found: PublicKey,
        /// The key's archive.
        wanted: PublicKey,
    },
    /// A snapshot name is unknown.
    #[error("no snapshot named {0:?} (see `walrusfs snapshot list`)")]
    NoSnapshot(String),
    /// A snapshot name is taken or invalid.
    #[error("snapshot name {name:?}: {reason}")]
    BadSnapshotName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The root body would not fit in a root record.
    #[error("root record too large ({reason}); delete some snapshots")]
    RootTooLarge {
        /// Details.
        reason: String,
    },
    /// A verified root record's body cannot be read with this key.
    #[error("root record version {version} cannot be read: {reason}")]
    RootUnreadable {
        /// Its version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// A published index record is damaged or does not belong here.
    #[error("published index record (seq {upto_seq}, part {part}) is unusable: {reason}")]
    IndexRecord {
        /// The record's sequence number.
        upto_seq: u64,
        /// The part.
        part: u32,
        /// Why.
        reason: String,
    },
    /// The network could not do what was asked.
    #[error("storage network: {0}")]
    Network(String),
    /// Too few nodes answered a root read for it to know the archive's latest version.
    #[error("storage network: {0}")]
    TooFewAnswered(String),
    /// The local index failed.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    /// Local file I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of archive operations.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// What the local index is to the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The writer's index: may hold changes not yet published.
    Writer,
    /// A copy of the published index, following it.
    Replica,
    /// A copy of a snapshot's index (its root version).
    Snapshot(u64),
}

/// This machine's view of the archive, kept in the local index next to what it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// [`LOCAL_STATE_FORMAT`].
    pub format: u16,
    /// The archive.
    pub archive: PublicKey,
    /// This state directory's lease holder id.
    pub holder: [u8; 16],
    /// What the index is.
    pub role: Role,
    /// The root version last written or applied.
    pub root_version: u64,
    /// The published index the local index includes (it may be ahead, for a writer).
    pub chain: Option<IndexChain>,
    /// Index record blobs stored but not yet named by a root record that reached its quorum:
    /// garbage once a later root write succeeds.
    pub pending_blobs: Vec<BlobId>,
}

impl LocalState {
    /// A fresh state for `archive`.
    pub fn new(archive: PublicKey, role: Role) -> Self {
        LocalState {
            format: LOCAL_STATE_FORMAT,
            archive,
            holder: rand::random(),
            role,
            root_version: 0,
            chain: None,
            pending_blobs: Vec::new(),
        }
    }

    /// Reads the state kept in `index`, if any.
    pub fn load(index: &crate::index::Index) -> Result<Option<Self>> {
        let Some(bytes) = index.archive_state()? else {
            return Ok(None);
        };
        let state: LocalState = postcard::from_bytes(&bytes).map_err(|e| {
            ArchiveError::Index(crate::index::IndexError::Corrupt(format!(
                "local archive state: {e}"
            )))
        })?;
        if state.format != LOCAL_STATE_FORMAT {
            return Err(ArchiveError::Index(crate::index::IndexError::Corrupt(
                format!("local archive state format {}", state.format),
            )));
        }
        Ok(Some(state))
    }

    /// Encodes the state.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data always encodes.
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// The latest root of `key`'s archive: its version and body, or `None` if no node holds one.
pub async fn latest_root<B: crate::data::store::BlobStore>(
    store: &B,
    key: &ArchiveKey,
) -> Result<Option<(u64, RootBody)>> {
    let answers = store
        .read_root(key.archive_id())
        .await
        .map_err(root_read_error)?;
    pick_latest(&answers, key)
}

/// [`latest_root`], or for a reader that only reads (`degraded_ok`) while more than `f` nodes
/// are away, the highest version among the answers of `k` nodes or more; the flag says which
/// (`true`: fewer than `n - f` answered, so the nodes that are away may hold a newer one, and
/// the caller should say so). Data is readable from any `k` nodes, so an archive stays
/// readable (though perhaps not at its latest version) while more than `f` are away. Nodes
/// that are gone cost no connect timeout here (see `Client::get_root_from`).
pub async fn latest_root_for<B: crate::data::store::BlobStore>(
    store: &B,
    key: &ArchiveKey,
    degraded_ok: bool,
) -> Result<(Option<(u64, RootBody)>, bool)> {
    if !degraded_ok {
        return Ok((latest_root(store, key).await?, false));
    }
    let (answers, quorum) = store
        .read_root_degraded(key.archive_id())
        .await
        .map_err(root_read_error)?;
    Ok((pick_latest(&answers, key)?, !quorum))
}

/// A failed root read as an archive error: [`ArchiveError::TooFewAnswered`] when that is why.
fn root_read_error(e: crate::data::store::StoreError) -> ArchiveError {
    if e.too_few_answered {
        ArchiveError::TooFewAnswered(e.message)
    } else {
        ArchiveError::Network(e.message)
    }
}

/// Says that version `version` was read from fewer than `n - f` nodes (see
/// [`latest_root_for`]).
pub fn warn_degraded_root(version: u64) {
    tracing::warn!(
        version,
        "too few nodes answer for a quorum; reading version {version}, the newest that the \
         nodes that answer hold: a newer one may be on the nodes that are away"
    );
}

fn pick_latest(
    answers: &netcore::root::RootAnswers,
    key: &ArchiveKey,
) -> Result<Option<(u64, RootBody)>> {
    let latest = answers.latest();
    if latest.is_empty() {
        return Ok(None);
    }
    match body::pick(&key.index_key(), &latest) {
        Some((record, body)) => Ok(Some((record.version, body))),
        None => Err(ArchiveError::RootUnreadable {
            version: answers.latest_version().unwrap_or(0),
            reason: "no copy of the latest version opens under this key".into(),
        }),
    }
}

/// Creates an archive: writes its first root record (no index yet; the first writer makes one).
pub async fn init<B: crate::data::store::BlobStore>(
    store: &B,
    key: &ArchiveKey,
    chunk_size: u32,
) -> Result<()> {
    if let Some((version, _)) = latest_root(store, key).await? {
        return Err(ArchiveError::Exists {
            archive: key.archive_id(),
            version,
        });
    }
    let record = body::seal(key, 1, &RootBody::new(chunk_size))?;
    store
        .write_root(record)
        .await
        .map_err(|e| ArchiveError::Network(e.to_string()))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let t = crate::index::Timestamp::now();
    t.secs * 1000 + i64::from(t.nanos / 1_000_000)
}

/// A time in milliseconds since the epoch as text relative to now ("in 42 s", "3 min ago").
pub(crate) fn relative(ms: i64) -> String {
    let d = ms - now_ms();
    let (n, unit) = {
        let a = d.unsigned_abs() / 1000;
        if a < 120 {
            (a, "s")
        } else if a < 7200 {
            (a / 60, "min")
        } else {
            (a / 3600, "h")
        }
    };
    if d >= 0 {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    }
}

/// This machine's host name (for lease messages).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::store::StoreError;
    use netcore::client::{ClientError, Failures};

    #[test]
    fn a_root_read_short_of_answers_is_told_apart_from_other_network_errors() {
        let short = ClientError::RootUnavailable {
            answered: 4,
            needed: 5,
            failures: Failures(Vec::new()),
        };
        let e = root_read_error(StoreError::from(short));
        assert!(matches!(&e, ArchiveError::TooFewAnswered(_)), "{e:?}");
        assert!(
            e.to_string().contains("only 4 nodes answered, 5 needed"),
            "{e}"
        );
        let other = root_read_error(StoreError::new("connection reset"));
        assert!(matches!(&other, ArchiveError::Network(_)), "{other:?}");
    }
}
