//! The archive's one writer: takes the lease, brings the local index in line with what is
//! published, publishes changes (and compacts them into full records), renews and releases the
//! lease, and makes and deletes snapshots.
//!
//! # The lease, as a compare-and-swap on the root record
//!
//! Taking it: read the latest root (version `v`); if another holder's lease is live, stop; write
//! `v + 1` naming this holder to every node (nodes refuse a version that is not newer than
//! theirs); then read the latest root back. Only if the write reached `n - f` nodes *and* the
//! latest root read back is this writer's does it hold the lease. Two writers racing for `v + 1`
//! cannot both reach `n - f` nodes (each node takes one of them), and if they tie on what they
//! read back, [`body::pick`] resolves the tie the same way for both (the lower holder id).
//! Every later root write (publishing, renewing) is again `version + 1`: a writer whose lease was
//! taken over finds nodes holding newer versions, and stops writing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netcore::codec::BlobId;
use netcore::identity::PublicKey;

use super::body::{self, IndexChain, Lease, RecordRef, RootBody, Snapshot};
use super::key::{ArchiveKey, IndexKey};
use super::records::{seal_parts, RecordId};
use super::restore::{apply_chain, fetch_record, Quiet};
use super::{
    host_name, latest_root, now_ms, relative, ArchiveError, LocalState, Result, Role,
    LEASE_DURATION,
};
use crate::data::store::BlobStore;
use crate::index::{Capture, Index, IndexOptions, TreeId};

/// Change records kept after a full record before the next publish compacts them into a new
/// full one: bounds what a restore fetches and what the root record lists.
const MAX_DELTAS: usize = 32;
/// Attempts at taking the lease when another writer races for the same version.
const LEASE_ATTEMPTS: u32 = 4;
/// Longest snapshot name, in bytes.
const SNAPSHOT_NAME_MAX: usize = 64;

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Claim a lease whose holder stopped without releasing it.
    pub take_over: bool,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            take_over: false,
            lease: LEASE_DURATION,
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Nothing to publish and the lease did not need renewing.
    Nothing,
    /// A new root version was written (`records`: index records stored with it).
    Version {
        /// The root version written.
        version: u64,
        /// Whether a full record was written (compaction).
        full: bool,
        /// Index entries published.
        entries: usize,
    },
}

struct State {
    /// The root version this writer last wrote (or, after a failed write, attempted).
    version: u64,
    /// The body it last wrote successfully.
    body: RootBody,
    local: LocalState,
}

/// The archive's writer. Cheap to share (`Arc`); publishes are serialized.
pub struct Writer<B: BlobStore> {
    store: Arc<B>,
    key: ArchiveKey,
    index_key: IndexKey,
    archive: PublicKey,
    index: Arc<Index>,
    cfg: WriterConfig,
    state: tokio::sync::Mutex<State>,
    /// Set once another writer took the lease over (or this one could not renew it in time).
    lost: AtomicBool,
}

impl<B: BlobStore> Writer<B> {
    /// Takes the archive's writer lease and opens (creating, restoring or catching up) the
    /// index in `index_dir`. `options` give the root directory's owner if the archive has no
    /// index yet.
    pub async fn open(
        store: Arc<B>,
        key: ArchiveKey,
        index_dir: &std::path::Path,
        options: IndexOptions,
        cfg: WriterConfig,
    ) -> Result<Self> {
        let archive = key.archive_id();
        let index_key = key.index_key();
        let index = Arc::new(tokio::task::block_in_place(|| {
            Index::open_replica(index_dir)
        })?);
        let mut local = match LocalState::load(&index)? {
            Some(l) if l.archive != archive => {
                return Err(ArchiveError::WrongState {
                    state: index_dir.display().to_string(),
                    found: l.archive,
                    wanted: archive,
                })
            }
            Some(l) => l,
            None => LocalState::new(archive, Role::Writer),
        };
        let (version, body) = acquire(&*store, &key, local.holder, &cfg).await?;
        let writer = Writer {
            store,
            key,
            index_key,
            archive,
            index,
            cfg,
            state: tokio::sync::Mutex::new(State {
                version,
                body: body.clone(),
                local: local.clone(),
            }),
            lost: AtomicBool::new(false),
        };
        let prepared = writer
            .prepare_index(&mut local, &body, options, index_dir)
            .await;
        if let Err(e) = prepared {
            // Do not leave the archive locked behind a mount that never started.
            if let Err(re) = writer.release_lease().await {
                tracing::warn!("releasing the lease after a failed open: {re}");
            }
            return Err(e);
        }
        local.role = Role::Writer;
        local.root_version = version;
        {
            let mut st = writer.state.lock().await;
            st.local = local.clone();
        }
        writer.save_local(&local)?;
        writer.reconcile_snapshots(&body).await?;
        writer.collect_pending(&body).await?;
        Ok(writer)
    }

    /// Brings the local index in line with the published one (see the module doc of
    /// [`super`]): keeps it, adopts this writer's own records, catches up, or restores.
    async fn prepare_index(
        &self,
        local: &mut LocalState,
        body: &RootBody,
        options: IndexOptions,
        index_dir: &std::path::Path,
    ) -> Result<()> {
        let index = &self.index;
        let mine = body.last_writer == Some(local.holder);
        let unpublished = index.is_initialized() && index.unpublished_changes() > 0;
        let usable = index.is_initialized() && !matches!(local.role, Role::Snapshot(_));
        let Some(chain) = &body.index else {
            // No index published yet: keep this state's own unpublished index, else start one.
            if !(usable && local.chain.is_none() && local.role == Role::Writer) {
                tokio::task::block_in_place(|| {
                    index.reset()?;
                    index.initialize(IndexOptions {
                        chunk_size: body.chunk_size,
                        ..options
                    })
                })?;
            }
            local.chain = None;
            return Ok(());
        };
        let same_fs = usable && index.filesystem_id() == chain.fs_id;
        match &local.chain {
            Some(ours) if same_fs && chain == ours => {}
            Some(ours) if same_fs && chain.extends(ours) && (mine || !unpublished) => {
                if mine {
                    // Our own records, written before a crash let us note it: already here.
                    index.mark_published(chain.upto_seq(), &local.encode())?;
                } else {
                    let from = ours.records.len();
                    apply_chain(
                        &*self.store,
                        &self.index_key,
                        self.archive,
                        chain,
                        from,
                        index,
                        &Quiet,
                    )
                    .await?;
                }
            }
            _ if same_fs && mine => {
                // Our own compaction, unrecorded: the local index holds all of it.
                index.mark_published(chain.upto_seq(), &local.encode())?;
            }
            _ if !unpublished => {
                apply_chain(
                    &*self.store,
                    &self.index_key,
                    self.archive,
                    chain,
                    0,
                    index,
                    &Quiet,
                )
                .await?;
            }
            _ => {
                return Err(ArchiveError::Diverged {
                    state: index_dir
                        .parent()
                        .unwrap_or(index_dir)
                        .display()
                        .to_string(),
                })
            }
        }
        local.chain = Some(chain.clone());
        Ok(())
    }

    /// Makes sure the blobs of every snapshot in `body` are recorded as held (fetching the
    /// snapshot's index if this machine has not seen it), and forgets deleted ones.
    async fn reconcile_snapshots(&self, body: &RootBody) -> Result<()> {
        let held = self.index.held_snapshots()?;
        for s in &body.snapshots {
            if held.contains(&s.version) {
                continue;
            }
            let mut blobs: Vec<BlobId> = s.index.blobs().collect();
            for record in &s.index.records {
                let entries = fetch_record(
                    &*self.store,
                    &self.index_key,
                    self.archive,
                    s.index.fs_id,
                    record,
                    &Quiet,
                )
                .await?;
                blobs.extend(blob_keys(&entries));
            }
            self.index.hold(s.version, &blobs)?;
            tracing::info!(snapshot = %s.name, blobs = blobs.len(), "recorded the blobs a snapshot holds");
        }
        for v in held {
            if !body.snapshots.iter().any(|s| s.version == v) {
                self.index.release_hold(v)?;
            }
        }
        Ok(())
    }

    /// Queues for GC the index record blobs a crash left unreferenced.
    async fn collect_pending(&self, body: &RootBody) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.local.pending_blobs.is_empty() {
            return Ok(());
        }
        let live = body.index_blobs();
        let garbage: Vec<BlobId> = st
            .local
            .pending_blobs
            .iter()
            .filter(|b| live.binary_search(b).is_err())
            .copied()
            .collect();
        self.index.gc_enqueue(&garbage)?;
        st.local.pending_blobs.clear();
        let local = st.local.clone();
        drop(st);
        self.save_local(&local)
    }

    fn save_local(&self, local: &LocalState) -> Result<()> {
        let seq = self.index.published_seq()?;
        self.index.set_archive_state(seq, &local.encode())?;
        Ok(())
    }

    /// The index this writer publishes.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Whether this writer lost the lease (the filesystem must refuse changes).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The root version last written.
    pub async fn version(&self) -> u64 {
        self.state.lock().await.version
    }

    /// Milliseconds left of the lease as last written (negative: expired), if one is held.
    pub async fn lease_left_ms(&self) -> Option<i64> {
        let st = self.state.lock().await;
        st.body.lease.as_ref().map(|l| l.expires_ms - now_ms())
    }

    /// Snapshots as of the last root written.
    pub async fn snapshots(&self) -> Vec<Snapshot> {
        self.state.lock().await.body.snapshots.clone()
    }

    /// Publishes what changed since the last publish (compacting when the chain is long), and
    /// renews the lease; with `force`, writes a new root version even if nothing changed.
    pub async fn publish(&self, force: bool) -> Result<Published> {
        let mut st = self.state.lock().await;
        self.publish_locked(&mut st, force, false, |_, _, _| Ok(()))
            .await
    }

    /// Publishes if something changed or the lease is due for renewal (a third of it left to
    /// run or less).
    pub async fn maintain(&self) -> Result<Published> {
        let mut st = self.state.lock().await;
        let expires = st.body.lease.as_ref().map_or(0, |l| l.expires_ms);
        let left = expires - now_ms();
        let lease_ms = self.cfg.lease.as_millis() as i64;
        if left <= 0 && !self.lost() {
            // Could not renew in time: another writer may have taken over meanwhile.
            tracing::error!("the writer lease expired before it could be renewed; refusing changes until it is taken again");
            self.lost.store(true, Ordering::SeqCst);
        }
        if self.lost() {
            drop(st);
            return self.retake().await.map(|_| Published::Nothing);
        }
        let due = left < 2 * lease_ms / 3;
        self.publish_locked(&mut st, due, false, |_, _, _| Ok(()))
            .await
    }

    /// After losing the lease by not renewing it in time: takes it again if nobody else did.
    async fn retake(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        let Some((version, body)) = latest_root(&*self.store, &self.key).await? else {
            return Err(ArchiveError::NoArchive {
                archive: self.archive,
            });
        };
        let ours = body
            .lease
            .as_ref()
            .is_some_and(|l| l.holder == st.local.holder);
        if !ours || body.index != st.body.index {
            return Err(ArchiveError::LeaseLost { version });
        }
        st.version = st.version.max(version);
        self.lost.store(false, Ordering::SeqCst);
        let renewed = self
            .publish_locked(&mut st, true, false, |_, _, _| Ok(()))
            .await;
        if renewed.is_err() {
            self.lost.store(true, Ordering::SeqCst);
        } else {
            tracing::info!("writer lease taken again");
        }
        renewed.map(|_| ())
    }

    /// The one path that writes the root: captures (all, with `full`) index changes, stores
    /// them as a record, applies `edit` to the new body, writes it as the next version.
    async fn publish_locked(
        &self,
        st: &mut State,
        force: bool,
        full: bool,
        edit: impl FnOnce(&mut RootBody, u64, &IndexChain) -> Result<()>,
    ) -> Result<Published> {
        if self.lost() {
            return Err(ArchiveError::LeaseLost {
                version: st.version,
            });
        }
        // INV: what a root names is durable locally first.
        tokio::task::block_in_place(|| self.index.flush())?;
        let chain = st.local.chain.clone();
        let full = full
            || match &chain {
                None => true,
                Some(c) => {
                    let deltas: u64 = c.records.iter().skip(1).map(|r| r.bytes).sum();
                    c.records.len() > MAX_DELTAS || deltas > c.records[0].bytes.max(1 << 20)
                }
            };
        let capture: Capture = tokio::task::block_in_place(|| {
            if full {
                self.index.capture_full()
            } else {
                self.index.capture_changes()
            }
        })?;
        if !full && !force && capture.entries.is_empty() {
            return Ok(Published::Nothing);
        }
        let fs_id = self.index.filesystem_id();
        let record = if full || !capture.entries.is_empty() {
            Some(self.store_record(st, &capture, full, fs_id).await?)
        } else {
            None
        };
        let new_chain = match (&record, chain.clone()) {
            (Some(r), Some(mut c)) if !r.full => {
                c.records.push(r.clone());
                c
            }
            (Some(r), _) => IndexChain {
                fs_id,
                records: vec![r.clone()],
            },
            (None, Some(c)) => c,
            (None, None) => {
                return Err(ArchiveError::Internal(
                    "nothing to publish and no index published".into(),
                ))
            }
        };
        let version = st.version + 1;
        let mut body = st.body.clone();
        body.index = Some(new_chain.clone());
        body.last_writer = Some(st.local.holder);
        body.lease = Some(self.lease(st.local.holder));
        edit(&mut body, version, &new_chain)?;
        let sealed = body::seal(&self.key, version, &body)?;
        crate::faults::crash_point("publish.parts_stored");
        match self.store.write_root(sealed).await {
            Ok(()) => crate::faults::crash_point("publish.root_written"),
            Err(e) => {
                // Some nodes may hold `version` now: the next attempt must go higher.
                st.version = version.max(e.stale.unwrap_or(0));
                if e.stale.is_some() {
                    if let Ok(Some((v, latest))) = latest_root(&*self.store, &self.key).await {
                        let ours = latest
                            .lease
                            .as_ref()
                            .is_some_and(|l| l.holder == st.local.holder);
                        if !ours {
                            self.lost.store(true, Ordering::SeqCst);
                            tracing::error!(version = v, "another writer took the lease over; the filesystem is read-only now");
                            return Err(ArchiveError::LeaseLost { version: v });
                        }
                        st.version = st.version.max(v);
                    }
                }
                return Err(ArchiveError::Network(format!(
                    "publishing root version {version}: {e}"
                )));
            }
        }
        // The root names the new chain on n - f nodes: the old chain's blobs (after a full
        // record) and the parts of earlier failed writes are garbage, unless a snapshot holds
        // them.
        let live = body.index_blobs();
        let mut garbage: Vec<BlobId> = std::mem::take(&mut st.local.pending_blobs);
        if let (true, Some(old)) = (record.as_ref().is_some_and(|r| r.full), &chain) {
            garbage.extend(old.blobs());
        }
        garbage.retain(|b| live.binary_search(b).is_err());
        st.version = version;
        st.body = body;
        st.local.root_version = version;
        st.local.chain = Some(new_chain);
        tokio::task::block_in_place(|| -> Result<()> {
            self.index
                .mark_published(capture.upto_seq, &st.local.encode())?;
            self.index.gc_enqueue(&garbage)?;
            Ok(())
        })?;
        tracing::debug!(version, full, entries = capture.entries.len(), "published");
        Ok(Published::Version {
            version,
            full: record.is_some_and(|r| r.full),
            entries: capture.entries.len(),
        })
    }

    /// Seals `capture` into parts and stores each; notes them as pending until a root names
    /// them.
    async fn store_record(
        &self,
        st: &mut State,
        capture: &Capture,
        full: bool,
        fs_id: [u8; 16],
    ) -> Result<RecordRef> {
        let id = RecordId {
            archive: self.archive,
            fs_id,
            upto_seq: capture.upto_seq,
            full,
        };
        let parts =
            tokio::task::block_in_place(|| seal_parts(&self.index_key, &id, &capture.entries));
        let mut ids = Vec::with_capacity(parts.len());
        let mut bytes = 0;
        for part in parts {
            bytes += part.len() as u64;
            let stored = self.store.put(&part).await.map_err(|e| {
                if let Some(b) = e.partial_blob {
                    st.local.pending_blobs.push(b);
                }
                ArchiveError::Network(format!("storing an index record: {e}"))
            })?;
            st.local.pending_blobs.push(stored.blob_id);
            ids.push(stored.blob_id);
        }
        // Remember the parts before a root names them: a crash now must not leak them.
        self.save_local(&st.local)?;
        Ok(RecordRef {
            parts: ids,
            upto_seq: capture.upto_seq,
            full,
            bytes,
        })
    }

    fn lease(&self, holder: [u8; 16]) -> Lease {
        Lease {
            holder,
            host: host_name(),
            pid: std::process::id(),
            expires_ms: now_ms() + self.cfg.lease.as_millis() as i64,
        }
    }

    /// Publishes everything, then releases the lease (unmount).
    pub async fn release(&self) -> Result<()> {
        self.publish(false).await?;
        self.release_lease().await
    }

    async fn release_lease(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        if self.lost() {
            return Ok(());
        }
        let version = st.version + 1;
        let mut body = st.body.clone();
        body.lease = None;
        let sealed = body::seal(&self.key, version, &body)?;
        let written = self.store.write_root(sealed).await;
        st.version = version;
        written.map_err(|e| ArchiveError::Network(format!("releasing the lease: {e}")))?;
        st.body = body;
        st.local.root_version = version;
        let local = st.local.clone();
        drop(st);
        self.save_local(&local)?;
        self.lost.store(true, Ordering::SeqCst);
        tracing::info!(version, "writer lease released");
        Ok(())
    }

    /// Makes a snapshot named `name` of everything written so far (publishing it first as one
    /// full record, which the snapshot keeps).
    pub async fn create_snapshot(&self, name: &str) -> Result<Snapshot> {
        check_snapshot_name(name)?;
        let mut st = self.state.lock().await;
        if st.body.snapshot(name).is_some() {
            return Err(ArchiveError::BadSnapshotName {
                name: name.into(),
                reason: "a snapshot of that name exists".into(),
            });
        }
        let name_owned = name.to_owned();
        let mut made = None;
        // The full record's capture names every data blob of this version.
        let published = self
            .publish_locked(&mut st, true, true, |body, version, chain| {
                let s = Snapshot {
                    name: name_owned,
                    created_secs: crate::index::Timestamp::now().secs,
                    version,
                    index: chain.clone(),
                };
                body.snapshots.push(s.clone());
                made = Some(s);
                Ok(())
            })
            .await?;
        let Some(snapshot) = made else {
            return Err(ArchiveError::Internal(format!(
                "snapshot not recorded ({published:?})"
            )));
        };
        // Held before the publish lock is released: no later change can be published, let
        // alone collected, before the snapshot's blobs are recorded.
        let mut blobs: Vec<BlobId> = snapshot.index.blobs().collect();
        let capture = tokio::task::block_in_place(|| self.index.capture_full())?;
        blobs.extend(blob_keys(&capture.entries));
        self.index.hold(snapshot.version, &blobs)?;
        drop(st);
        tracing::info!(name, version = snapshot.version, "snapshot created");
        Ok(snapshot)
    }

    /// Deletes snapshot `name`; what only it held becomes garbage.
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let Some(snapshot) = st.body.snapshot(name).cloned() else {
            return Err(ArchiveError::NoSnapshot(name.into()));
        };
        let name_owned = name.to_owned();
        self.publish_locked(&mut st, true, false, |body, _, _| {
            body.snapshots.retain(|s| s.name != name_owned);
            Ok(())
        })
        .await?;
        let live = st.body.index_blobs();
        let garbage: Vec<BlobId> = snapshot
            .index
            .blobs()
            .filter(|b| live.binary_search(b).is_err())
            .collect();
        self.index.release_hold(snapshot.version)?;
        self.index.gc_enqueue(&garbage)?;
        tracing::info!(name, "snapshot deleted");
        Ok(())
    }
}

/// The blob ids among `entries` of the `blobs` tree (the data blobs an index refers to).
fn blob_keys(entries: &[crate::index::RecordEntry]) -> Vec<BlobId> {
    entries
        .iter()
        .filter(|e| e.tree == TreeId::Blobs && e.value.is_some())
        .filter_map(|e| <[u8; 32]>::try_from(e.key.as_slice()).ok().map(BlobId))
        .collect()
}

/// Checks a snapshot name: printable, no slashes, not too long.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    let bad = |reason: &str| ArchiveError::BadSnapshotName {
        name: name.into(),
        reason: reason.into(),
    };
    if name.is_empty() || name.len() > SNAPSHOT_NAME_MAX {
        return Err(bad("must be 1 to 64 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(bad("must not contain '/' or control characters"));
    }
    Ok(())
}

/// Takes the lease for `holder` (see the module doc). Returns the version written and its
/// body.
async fn acquire<B: BlobStore>(
    store: &B,
    key: &ArchiveKey,
    holder: [u8; 16],
    cfg: &WriterConfig,
) -> Result<(u64, RootBody)> {
    let archive = key.archive_id();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some((version, mut body)) = latest_root(store, key).await? else {
            return Err(ArchiveError::NoArchive { archive });
        };
        if let Some(l) = &body.lease {
            let live = l.expires_ms > now_ms();
            if l.holder != holder && live {
                return Err(ArchiveError::LeaseHeld {
                    host: l.host.clone(),
                    pid: l.pid,
                    expires: relative(l.expires_ms),
                });
            }
            if l.holder != holder && !cfg.take_over {
                return Err(ArchiveError::LeaseExpired {
                    host: l.host.clone(),
                    pid: l.pid,
                    expired: relative(l.expires_ms),
                });
            }
        }
        body.lease = Some(Lease {
            holder,
            host: host_name(),
            pid: std::process::id(),
            expires_ms: now_ms() + cfg.lease.as_millis() as i64,
        });
        let mine = version + 1;
        let written = store.write_root(body::seal(key, mine, &body)?).await;
        // Read back: the write counts only if the latest root is ours.
        let back = latest_root(store, key).await?;
        let won = written.is_ok()
            && back.as_ref().is_some_and(|(v, b)| {
                *v == mine && b.lease.as_ref().is_some_and(|l| l.holder == holder)
            });
        if won {
            tracing::info!(version = mine, "writer lease taken");
            return Ok((mine, body));
        }
        if attempt >= LEASE_ATTEMPTS {
            return Err(match back.and_then(|(_, b)| b.lease) {
                Some(l) if l.holder != holder => ArchiveError::LeaseHeld {
                    host: l.host,
                    pid: l.pid,
                    expires: relative(l.expires_ms),
                },
                _ => ArchiveError::Network(match written {
                    Err(e) => format!("taking the writer lease: {e}"),
                    Ok(()) => "taking the writer lease: lost a race, retries exhausted".into(),
                }),
            });
        }
        // Lost a race, or the write fell short: back off a random while and look again.
        let wait = Duration::from_millis(50 + rand::random::<u64>() % 250);
        tokio::time::sleep(wait).await;
    }
}
