//! The filesystem's view of the network: a [`BlobStore`] stores sealed chunks as blobs and
//! reads them back verified. [`NetworkStore`] is the real one over [`netcore::client`]; tests
//! of the filesystem core use [`MemoryStore`], which can be told to fail.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use netcore::client::{Client, ClientError};
use netcore::codec::{BlobId, BlobMetadata, EncodingParams};

/// A blob as stored: its id and metadata (kept in the index to read it back).
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// The blob id.
    pub blob_id: BlobId,
    /// The blob's metadata.
    pub metadata: BlobMetadata,
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
}

impl StoreError {
    /// An error with no partial blob.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            partial_blob: None,
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
        }
    }
}

/// Where sealed chunks go. Implementations verify what they return.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores a blob durably (for the network: `n - f` confirmations).
    fn put(&self, data: Vec<u8>) -> impl Future<Output = Result<StoredBlob, StoreError>> + Send;
    /// Reads a blob back, verified against `metadata` and `blob_id`.
    fn get(
        &self,
        blob_id: BlobId,
        metadata: BlobMetadata,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
    /// Deletes a blob; `Ok(true)` when every node has acknowledged, `Ok(false)` when some
    /// could not be reached (try again later).
    fn delete(&self, blob_id: BlobId) -> impl Future<Output = Result<bool, StoreError>> + Send;
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
    async fn put(&self, data: Vec<u8>) -> Result<StoredBlob, StoreError> {
        let out = self.client.put(&data).await?;
        Ok(StoredBlob {
            blob_id: out.blob_id,
            metadata: out.metadata,
        })
    }

    async fn get(&self, blob_id: BlobId, metadata: BlobMetadata) -> Result<Vec<u8>, StoreError> {
        Ok(self.client.get_with_metadata(&blob_id, &metadata).await?)
    }

    async fn delete(&self, blob_id: BlobId) -> Result<bool, StoreError> {
        let results = self.client.delete(&blob_id).await;
        Ok(results.iter().all(|(_, r)| r.is_ok()))
    }
}

/// An in-memory store for unit tests of the filesystem core, with switchable failures.
#[derive(Default)]
pub struct MemoryStore {
    blobs: Mutex<HashMap<BlobId, Vec<u8>>>,
    /// When set, puts fail (like a network with fewer than `n - f` nodes up).
    pub fail_puts: AtomicBool,
    /// When set, gets fail.
    pub fail_gets: AtomicBool,
}

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
    async fn put(&self, data: Vec<u8>) -> Result<StoredBlob, StoreError> {
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected put failure"));
        }
        let params = EncodingParams::new(4, 2).map_err(|e| StoreError::new(e.to_string()))?;
        let enc =
            netcore::codec::encode(params, &data).map_err(|e| StoreError::new(e.to_string()))?;
        let mut blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        blobs.insert(enc.blob_id, data);
        Ok(StoredBlob {
            blob_id: enc.blob_id,
            metadata: enc.metadata,
        })
    }

    async fn get(&self, blob_id: BlobId, _metadata: BlobMetadata) -> Result<Vec<u8>, StoreError> {
        if self.fail_gets.load(Ordering::SeqCst) {
            return Err(StoreError::new("injected get failure"));
        }
        let blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        blobs
            .get(&blob_id)
            .cloned()
            .ok_or_else(|| StoreError::new(format!("no blob {blob_id}")))
    }

    async fn delete(&self, blob_id: BlobId) -> Result<bool, StoreError> {
        let mut blobs = self.blobs.lock().map_err(|_| StoreError::new("poisoned"))?;
        blobs.remove(&blob_id);
        Ok(true)
    }
}
