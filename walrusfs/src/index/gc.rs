//! The garbage-collection queue: blobs no index record refers to any more, waiting for a
//! background worker to delete them from the network. Persistent, so a restart loses none.

use netcore::codec::BlobId;

use super::error::Result;
use super::layout::parse_blob_id;
use super::Index;

impl Index {
    /// Up to `limit` queued blobs, in blob id order.
    ///
    /// A blob is queued in the transaction that dropped its last reference, but a reader that
    /// looked up the chunk ref just before may still be fetching it: the worker should leave
    /// some grace time between seeing a blob here and deleting it.
    pub fn gc_pending(&self, limit: usize) -> Result<Vec<BlobId>> {
        let _r = self.read_lock();
        self.trees
            .gc
            .iter()
            .keys()
            .take(limit)
            .map(|key| parse_blob_id(&key?))
            .collect()
    }

    /// Removes `blob` from the queue (it was deleted from the network). Unknown ids are
    /// ignored.
    pub fn gc_done(&self, blob: &BlobId) -> Result<()> {
        // Single-key changes are atomic on their own, but must not run alongside a
        // transaction touching the same tree (see `read_lock`).
        let _w = self.write_lock();
        self.trees.gc.remove(blob.0)?;
        Ok(())
    }

    /// Queues blobs that no index record refers to (e.g. a chunk upload overtaken by a newer
    /// write before it could be committed).
    pub fn gc_enqueue(&self, blobs: &[BlobId]) -> Result<()> {
        let _w = self.write_lock();
        for blob in blobs {
            self.trees.gc.insert(blob.0, &[])?;
        }
        Ok(())
    }

    /// Number of queued blobs. O(n): for monitoring, not for hot paths.
    pub fn gc_len(&self) -> usize {
        let _r = self.read_lock();
        self.trees.gc.len()
    }
}
