//! The filesystem's view of the network: a [`BlobStore`] stores sealed chunks as blobs and
//! reads them back verified. [`NetworkStore`] is the real one over [`netcore::client`]; tests
//! of the filesystem core use [`MemoryStore`], which can be told to fail.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use netcore::client::{Client, ClientError};
use netcore::codec::{BlobId, BlobMetadata, EncodingParams};
use netcore::identity::PublicKey;
use netcore::root::{RootAnswers, RootRecord};

/// A blob as stored: its id and metadata (kept in the index to read it back).
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// The blob id.
    pub blob_id: BlobId,
    /// The blob's metadata.
    pub metadata: BlobMetadata,
    /// The nodes' signed confirmations that they store it (none from stores without nodes).
    pub confirmations: Vec<netcore::wire::StorageConfirmation>,
}

/// Why a blob operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// What went wrong.
    pub message: String,
    /// A put that failed may still have left slivers on some nodes: this blob should be
    /// deleted (queued for garbage collection) so they do not leak.
    pub partial_blob: Option<BlobId>,
    /// A root read to which too few nodes answered for what it needed.
    pub too_few_answered: bool,
}

impl StoreError {
    /// An error with no partial blob.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            partial_blob: None,
            too_few_answered: false,
        }
    }
}

impl From<ClientError> for StoreError {
    fn from(e: ClientError) -> Self {
        let partial_blob = match &e {
            ClientError::NotEnoughConfirmations { blob_id, .. } => Some(*blob_id),
            _ => None,
        };
        StoreError {
            message: e.to_string(),
            partial_blob,
            too_few_answered: matches!(e, ClientError::RootUnavailable { .. }),
        }
    }
}

/// Why a root record write failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RootWriteError {
    /// What went wrong.
    pub message: String,
    /// The highest version held by nodes that refused because they hold this version or a
    /// newer one: another writer got there first.
    pub stale: Option<u64>,
}

/// Where sealed chunks and archive roots go. Implementations verify what they return.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores a blob durably (for the network: `n - f` confirmations).
    fn put(&self, data: &[u8]) -> impl Future<Output = Result<StoredBlob, StoreError>> + Send {
        self.put_announced(data, |_| Ok(()))
    }
    /// [`BlobStore::put`], calling `announce` with the blob's id before any of it is stored
    /// anywhere; an error from `announce` stops the put.
    fn put_announced(
        &self,
        data: &[u8],
        announce: impl FnOnce(&BlobId) -> Result<(), String> + Send,
    ) -> impl Future<Output = Result<StoredBlob, StoreError>> + Send;
    /// Reads a blob back, verified against `metadata` and `blob_id`.
    fn get(
        &self,
        blob_id: BlobId,
        metadata: BlobMetadata,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Reads bytes `offset..offset + len` of a blob, verified against `metadata` and
    /// `blob_id` (without fetching the whole blob where the store can avoid it).
    fn get_range(
        &self,
        blob_id: BlobId,
        metadata: BlobMetadata,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Reads a blob back by id alone (the metadata comes from the nodes, checked against the id).
    fn get_by_id(
        &self,
        blob_id: BlobId,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Deletes a blob from the nodes `only` lists (every node if `None`); returns the nodes
    /// that could not be reached or refused (to ask again later).
    fn delete(
        &self,
        blob_id: BlobId,
        only: Option<Vec<u16>>,
    ) -> impl Future<Output = Vec<u16>> + Send;
    /// Reads an archive's root record from at least `n - f` nodes (only verified records are
    /// returned; see [`netcore::root`]).
    fn read_root(
        &self,
        archive: PublicKey,
    ) -> impl Future<Output = Result<RootAnswers, StoreError>> + Send;
    /// [`BlobStore::read_root`] content with `k` answers instead of `n - f` when more than `f`
    /// nodes are away, for a read-only reader; also says whether `n - f` answered. With fewer,
    /// the highest version among the answers may not be the latest (see
    /// `Client::get_root_from`). Stores without such a notion read as usual.
    fn read_root_degraded(
        &self,
        archive: PublicKey,
    ) -> impl Future<Output = Result<(RootAnswers, bool), StoreError>> + Send {
        async move { Ok((self.read_root(archive).await?, true)) }
    }
    /// Writes a root record; succeeds once `n - f` nodes stored it durably.
    fn write_root(
        &self,
        record: RootRecord,
    ) -> impl Future<Output = Result<(), RootWriteError>> + Send;
    /// Confirmations of nodes that stored their sliver after a put had its quorum and
    /// returned, since the last call (see `Client::take_late_confirmations`); none from a
    /// store without nodes.
    fn take_late_confirmations(&self) -> Vec<netcore::wire::StorageConfirmation> {
        Vec::new()
    }
}

/// The real store: the storage network.
pub struct NetworkStore {
    client: Client,
}

impl NetworkStore {
    /// Wraps a network client.
    pub fn new(client: Client) -> Self {
        NetworkStore { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl BlobStore for NetworkStore {
    fn take_late_confirmations(&self) -> Vec<netcore::wire::StorageConfirmation> {
        self.client.take_late_confirmations()
    }

    async fn put_announced(
        &self,
        data: &[u8],
        announce: impl FnOnce(&BlobId) -> Result<(), String> + Send,
    ) -> Result<StoredBlob, StoreError> {
        let out = self.client.put_announced(data, announce).await?;
        Ok(StoredBlob {
            blob_id: out.blob_id,
            metadata: out.metadata,
            confirmations: out.confirmations,
        })
    }

    async fn get(&self, blob_id: BlobId, metadata: BlobMetadata) -> Result<Vec<u8>, StoreError> {
        Ok(self.client.get_with_metadata(&blob_id, &metadata).await?)
    }

    async fn get_range(
        &self,
        blob_id: BlobId,
        metadata: BlobMetadata,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .client
            .get_range(&blob_id, &metadata, offset, len)
            .await?)
    }

    async fn get_by_id(&self, blob_id: BlobId) -> Result<Vec<u8>, StoreError> {
        Ok(self.client.get(&blob_id).await?)
    }

    async fn delete(&self, blob_id: BlobId, only: Option<Vec<u16>>) -> Vec<u16> {
        let results = self.client.delete_on(&blob_id, only.as_deref()).await;
        results
            .into_iter()
            .filter_map(|(node, r)| match r {
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!(blob = %blob_id, node, "delete failed: {e}");
                    Some(node)
                }
            })
            .collect()
    }

    async fn read_root(&self, archive: PublicKey) -> Result<RootAnswers, StoreError> {
        Ok(self.client.get_root(&archive).await?)
    }

    async fn read_root_degraded(
        &self,
        archive: PublicKey,
    ) -> Result<(RootAnswers, bool), StoreError> {
        let committee = self.client.committee();
        let answers = self
            .client
            .get_root_from(&archive, usize::from(committee.k))
            .await?;
        let quorum = answers.answered() >= usize::from(committee.write_quorum());
        Ok((answers, quorum))
    }

    async fn write_root(&self, record: RootRecord) -> Result<(), RootWriteError> {
        match self.client.put_root(&record).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let stale = match &e {
                    ClientError::RootNotStored { stale, .. } => stale.iter().map(|(_, v)| *v).max(),
                    _ => None,
                };
                Err(RootWriteError {
                    message: e.to_string(),
                    stale,
                })
            }
        }
    }
}

/// An in-memory store for unit tests of the filesystem core, with switchable failures.
#[derive(Default)]
pub struct MemoryStore {
    blobs: Mutex<HashMap<BlobId, Vec<u8>>>,
    /// When set, puts fail (like a network with fewer than `n - f` nodes up).
    pub fail_puts: AtomicBool,
    /// When set, puts store the blob but fail as a put confirmed by too few nodes does
    /// (naming the blob as partly stored).
    pub partial_puts: AtomicBool,
    /// When set, gets fail.
    pub fail_gets: AtomicBool,
    /// When set, range gets fail (whole gets still work).
    pub fail_ranges: AtomicBool,
    /// Whole gets asked for.
    pub gets: std::sync::atomic::AtomicU64,
    /// Milliseconds each whole get takes (0: none), so concurrent gets overlap.
    pub get_delay_ms: std::sync::atomic::AtomicU64,
    /// Whole gets in progress.
    pub gets_in_flight: std::sync::atomic::AtomicU64,
    /// The most whole gets there were in progress at once.
    pub max_gets_in_flight: std::sync::atomic::AtomicU64,
    /// Range gets served.
    pub range_gets: std::sync::atomic::AtomicU64,
    /// Bytes served by range gets.
    pub range_bytes: std::sync::atomic::AtomicU64,
    /// When set, deletes fail (the node cannot be reached).
    pub fail_deletes: AtomicBool,
    /// When set, root reads and writes fail (fewer than `n - f` nodes reachable).
    pub fail_roots: AtomicBool,
    /// Confirmations handed out by the next `take_late_confirmations` (tests play slower
    /// nodes with them).
    pub late: Mutex<Vec<netcore::wire::StorageConfirmation>>,
    /// The root records of [`MEMORY_ROOT_NODES`] simulated nodes, by archive.
    roots: Mutex<HashMap<PublicKey, Vec<Option<RootRecord>>>>,
}

/// Nodes [`MemoryStore`] simulates for root records (n = 4: f = 1, quorum 3).
pub const MEMORY_ROOT_NODES: usize = 4;
const MEMORY_ROOT_QUORUM: usize = 3;

impl MemoryStore {
    /// Number of blobs held.
    pub fn len(&self) -> usize {
        self.blobs.lock().map(|b| b.len()).unwrap_or(0)
    }

    /// Whether no blob is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs
            .lock()
            .map(|b| b.contains_key(id))
            .unwrap_or(false)
    }
}

impl BlobStore for MemoryStore {
    fn take_late_confirmations(&self) -> Vec<netcore::wire::StorageConfirmation> {
        self.late
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    async fn put_announced(
        &self,
        data: &[u8],
        announce: impl FnOnce(&BlobId) -> Result<(), String> + Send,
    ) -> Result<StoredBlob, StoreError> {
        let params = EncodingParams::new(4, 2).map_err(|e| StoreError::new(e.to_string()))?;
        let enc =
            netcore::codec::encode(params, data).map_err(|e| StoreError::new(e.to_string()))?;
        announce(&enc.blob_id).map_err(StoreError::new)?;
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected put failure"));
        }
        let mut blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        blobs.insert(enc.blob_id, data.to_vec());
        if self.partial_puts.load(Ordering::SeqCst) {
            return Err(StoreError {
                partial_blob: Some(enc.blob_id),
                ..StoreError::new("injected partial put")
            });
        }
        Ok(StoredBlob {
            blob_id: enc.blob_id,
            metadata: enc.metadata,
            confirmations: Vec::new(),
        })
    }

    async fn get(&self, blob_id: BlobId, _metadata: BlobMetadata) -> Result<Vec<u8>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let now = self.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_gets_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = self.get_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        self.gets_in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.fail_gets.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected get failure"));
        }
        let blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        blobs
            .get(&blob_id)
            .cloned()
            .ok_or_else(|| StoreError::new(format!("no blob {blob_id}")))
    }

    async fn get_range(
        &self,
        blob_id: BlobId,
        _metadata: BlobMetadata,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if self.fail_gets.load(Ordering::SeqCst) || self.fail_ranges.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected get failure"));
        }
        self.range_gets.fetch_add(1, Ordering::SeqCst);
        let blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        let blob = blobs
            .get(&blob_id)
            .ok_or_else(|| StoreError::new(format!("no blob {blob_id}")))?;
        let end = offset.saturating_add(len);
        let range = blob
            .get(offset as usize..end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| StoreError::new(format!("range {offset}..{end} past blob {blob_id}")))?;
        self.range_bytes.fetch_add(len, Ordering::SeqCst);
        Ok(range)
    }

    async fn get_by_id(&self, blob_id: BlobId) -> Result<Vec<u8>, StoreError> {
        if self.fail_gets.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected get failure"));
        }
        let blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        blobs
            .get(&blob_id)
            .cloned()
            .ok_or_else(|| StoreError::new(format!("no blob {blob_id}")))
    }

    async fn delete(&self, blob_id: BlobId, _only: Option<Vec<u16>>) -> Vec<u16> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return vec![0];
        }
        if let Ok(mut blobs) = self.blobs.lock() {
            blobs.remove(&blob_id);
        }
        Vec::new()
    }

    async fn read_root(&self, archive: PublicKey) -> Result<RootAnswers, StoreError> {
        if self.fail_roots.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected root read failure"));
        }
        let roots = self.roots.lock().map_err(|_| StoreError::new("poisoned"))?;
        let slots = roots.get(&archive).cloned().unwrap_or_default();
        // Like the network client: a record that does not verify is no answer at all.
        let answers = (0..MEMORY_ROOT_NODES)
            .filter_map(|i| match slots.get(i).cloned().flatten() {
                Some(r) if r.verify_for(&archive).is_err() => None,
                r => Some((i as u16, r)),
            })
            .collect();
        Ok(RootAnswers { answers })
    }

    async fn write_root(&self, record: RootRecord) -> Result<(), RootWriteError> {
        if self.fail_roots.load(Ordering::SeqCst) {
            return Err(RootWriteError {
                message: "injected root write failure".into(),
                stale: None,
            });
        }
        if let Err(e) = record.verify() {
            return Err(RootWriteError {
                message: e.to_string(),
                stale: None,
            });
        }
        let mut roots = self.roots.lock().map_err(|_| RootWriteError {
            message: "poisoned".into(),
            stale: None,
        })?;
        let slots = roots
            .entry(record.archive)
            .or_insert_with(|| vec![None; MEMORY_ROOT_NODES]);
        let mut stored = 0;
        let mut stale = None;
        for slot in slots.iter_mut() {
            let held = slot.as_ref().map(|r| r.version);
            if record.accepts(held) {
                *slot = Some(record.clone());
                stored += 1;
            } else {
                stale = stale.max(held);
            }
        }
        if stored >= MEMORY_ROOT_QUORUM {
            Ok(())
        } else {
            Err(RootWriteError {
                message: format!("root stored on {stored} nodes, {MEMORY_ROOT_QUORUM} needed"),
                stale,
            })
        }
    }
}

impl MemoryStore {
    /// Sets simulated node `node`'s root record of `archive` (tests of rollback and forgery).
    pub fn set_node_root(&self, archive: PublicKey, node: usize, record: Option<RootRecord>) {
        let mut roots = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        let slots = roots
            .entry(archive)
            .or_insert_with(|| vec![None; MEMORY_ROOT_NODES]);
        slots[node] = record;
    }

    /// Every blob id held.
    pub fn blob_ids(&self) -> Vec<BlobId> {
        self.blobs
            .lock()
            .map(|b| b.keys().copied().collect())
            .unwrap_or_default()
    }
}
