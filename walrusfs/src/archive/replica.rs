//! Read-only copies of the archive's index: a mount following the writer (each newly published
//! version applied within the follow interval), or a snapshot's fixed version.

use std::collections::BTreeSet;
use std::sync::Arc;

use netcore::identity::PublicKey;

use super::body::IndexChain;
use super::key::{ArchiveKey, IndexKey};
use super::restore::{fetch_record, Progress};
use super::{latest_root_for, ArchiveError, LocalState, Result, Role};
use crate::data::store::BlobStore;
use crate::index::{Index, IndexOptions, RecordEntry, TreeId};

/// What a follow step changed, for invalidating the kernel's caches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// The root version now applied.
    pub version: u64,
    /// Inodes whose attributes or data may have changed.
    pub inodes: BTreeSet<u64>,
    /// Directory entries that may have changed (parent, name).
    pub entries: BTreeSet<(u64, Vec<u8>)>,
    /// The whole index was replaced (a compaction): every cached inode may be stale.
    pub everything: bool,
}

impl Changed {
    fn note(&mut self, entries: &[RecordEntry]) {
        for e in entries {
            let ino = |k: &[u8]| {
                k.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            match e.tree {
                TreeId::Inodes | TreeId::Chunks | TreeId::Xattrs | TreeId::Symlinks => {
                    if let Some(i) = ino(&e.key) {
                        self.inodes.insert(i);
                    }
                }
                TreeId::Dirents => {
                    if let Some(parent) = ino(&e.key) {
                        self.entries.insert((parent, e.key[8..].to_vec()));
                        self.inodes.insert(parent);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A read-only copy of the published index, or of a snapshot's.
pub struct Replica<B: BlobStore> {
    store: Arc<B>,
    key: ArchiveKey,
    index_key: IndexKey,
    archive: PublicKey,
    index: Arc<Index>,
    /// The snapshot followed, if any (then nothing changes after open).
    snapshot: Option<String>,
    /// Whether a root read of fewer than `n - f` nodes (but `k` or more) will do when no more
    /// answer (see [`super::latest_root_for`]).
    degraded_ok: bool,
    /// Whether the last root read was of fewer than `n - f` nodes (said once per spell).
    degraded: std::sync::atomic::AtomicBool,
    state: tokio::sync::Mutex<LocalState>,
}

impl<B: BlobStore> Replica<B> {
    /// Opens the copy in `index_dir` of the archive's latest index (or of snapshot
    /// `snapshot`), fetching what it lacks. `options` own the root directory of an archive
    /// that has no index yet. With `degraded_ok`, when fewer than `n - f` nodes answer, the
    /// newest root of `k` or more will do (see [`super::latest_root_for`]), now and whenever
    /// it follows.
    pub async fn open(
        store: Arc<B>,
        key: ArchiveKey,
        index_dir: &std::path::Path,
        snapshot: Option<&str>,
        degraded_ok: bool,
        options: IndexOptions,
        progress: &dyn Progress,
    ) -> Result<Self> {
        let archive = key.archive_id();
        let index_key = key.index_key();
        let index = Arc::new(tokio::task::block_in_place(|| {
            Index::open_replica(index_dir)
        })?);
        let local = match LocalState::load(&index)? {
            Some(l) if l.archive != archive => {
                return Err(ArchiveError::WrongState {
                    state: index_dir.display().to_string(),
                    found: l.archive,
                    wanted: archive,
                })
            }
            Some(l) if l.role == Role::Writer && index.unpublished_changes() > 0 => {
                return Err(ArchiveError::Diverged {
                    state: index_dir
                        .parent()
                        .unwrap_or(index_dir)
                        .display()
                        .to_string(),
                })
            }
            Some(l) => l,
            None => LocalState::new(archive, Role::Replica),
        };
        let replica = Replica {
            store,
            key,
            index_key,
            archive,
            index,
            snapshot: snapshot.map(str::to_owned),
            degraded_ok,
            degraded: Default::default(),
            state: tokio::sync::Mutex::new(local),
        };
        replica.update(options, progress).await?;
        Ok(replica)
    }

    /// The index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The root version applied.
    pub async fn version(&self) -> u64 {
        self.state.lock().await.root_version
    }

    /// Applies the newest published version, if there is one this copy lacks. A snapshot
    /// copy never changes after open.
    pub async fn follow(&self, progress: &dyn Progress) -> Result<Option<Changed>> {
        if self.snapshot.is_some() {
            return Ok(None);
        }
        let options = IndexOptions {
            root_uid: 0,
            root_gid: 0,
            root_perm: 0o755,
            chunk_size: 1,
        };
        self.update(options, progress).await
    }

    async fn update(
        &self,
        options: IndexOptions,
        progress: &dyn Progress,
    ) -> Result<Option<Changed>> {
        let (latest, degraded) = latest_root_for(&*self.store, &self.key, self.degraded_ok).await?;
        let was = self
            .degraded
            .swap(degraded, std::sync::atomic::Ordering::Relaxed);
        match (&latest, degraded, was) {
            (Some((version, _)), true, false) => super::warn_degraded_root(*version),
            (Some((version, _)), false, true) => {
                tracing::info!(version, "a quorum of nodes answers again")
            }
            _ => {}
        }
        let Some((version, body)) = latest else {
            return Err(ArchiveError::NoArchive {
                archive: self.archive,
            });
        };
        let mut st = self.state.lock().await;
        if version <= st.root_version && self.index.is_initialized() {
            return Ok(None);
        }
        let (chain, role): (Option<IndexChain>, Role) = match &self.snapshot {
            Some(name) => {
                let s = body
                    .snapshot(name)
                    .ok_or_else(|| ArchiveError::NoSnapshot(name.clone()))?;
                (Some(s.index.clone()), Role::Snapshot(s.version))
            }
            None => (body.index.clone(), Role::Replica),
        };
        let mut changed = Changed {
            version,
            ..Default::default()
        };
        let same_role = st.role == role || (st.role == Role::Writer && role == Role::Replica);
        match (&chain, &st.chain) {
            (None, _) => {
                // An archive nobody has written yet: an empty root directory.
                tokio::task::block_in_place(|| {
                    if st.chain.is_some() {
                        self.index.reset()?;
                    }
                    self.index.initialize(IndexOptions {
                        chunk_size: body.chunk_size,
                        ..options
                    })
                })?;
            }
            (Some(new), Some(old)) if same_role && self.index.is_initialized() && new == old => {}
            (Some(new), Some(old))
                if same_role && self.index.is_initialized() && new.extends(old) =>
            {
                for record in &new.records[old.records.len()..] {
                    let entries = fetch_record(
                        &*self.store,
                        &self.index_key,
                        self.archive,
                        new.fs_id,
                        record,
                        progress,
                    )
                    .await?;
                    tokio::task::block_in_place(|| self.index.apply_entries(&entries, false))?;
                    changed.note(&entries);
                }
            }
            (Some(new), _) => {
                changed.everything = true;
                for record in &new.records {
                    let entries = fetch_record(
                        &*self.store,
                        &self.index_key,
                        self.archive,
                        new.fs_id,
                        record,
                        progress,
                    )
                    .await?;
                    tokio::task::block_in_place(|| {
                        self.index.apply_entries(&entries, record.full)
                    })?;
                    changed.note(&entries);
                }
                if self.index.filesystem_id() != new.fs_id {
                    return Err(ArchiveError::IndexRecord {
                        upto_seq: new.upto_seq(),
                        part: 0,
                        reason: "records of another filesystem".into(),
                    });
                }
            }
        }
        st.root_version = version;
        st.role = role;
        st.chain = chain.clone();
        // A replica publishes nothing: drop any change stamps (creating an empty root makes
        // some), so the state directory never looks like it holds unpublished changes.
        let seq = match &chain {
            Some(c) => c.upto_seq(),
            None => self.index.current_seq()?,
        };
        self.index
            .mark_published(seq.max(self.index.current_seq()?), &st.encode())?;
        Ok(Some(changed))
    }
}
