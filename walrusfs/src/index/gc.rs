//! The garbage-collection queue: blobs no index record refers to any more, waiting for a
//! background worker to delete them from the network. Persistent and published, so neither a
//! restart nor a move to another machine loses one.
//!
//! Each entry carries the sequence number of the change that dropped the blob. A worker may
//! delete a blob only once that change is durable and published (see
//! [`Index::published_seq`]): otherwise a crash or a power cut could bring back an index that
//! still refers to it, or a reader of the published index could still be sent to it.

use netcore::codec::BlobId;

use super::error::Result;
use super::layout::{decode, encode, local_key, parse_blob_id, TreeId};
use super::scan::Scan;
use super::types::GcEntry;
use super::Index;

impl Index {
    /// Up to `limit` queued blobs with their entries, in blob id order, starting after
    /// `after` (a worker walks the whole queue in rounds instead of retrying its head).
    ///
    /// A blob is queued in the transaction that dropped its last reference, but a reader that
    /// looked up the chunk ref just before may still be fetching it: the worker should leave
    /// some grace time between seeing a blob here and deleting it.
    pub fn gc_pending(
        &self,
        after: Option<BlobId>,
        limit: usize,
    ) -> Result<Vec<(BlobId, GcEntry)>> {
        let _r = self.read_lock();
        let range = match after {
            Some(a) => self.trees.gc.range((
                std::ops::Bound::Excluded(a.0.to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.trees.gc.iter(),
        };
        range
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                Ok((parse_blob_id(&key)?, decode(&value, "GC entry")?))
            })
            .collect()
    }

    /// Removes `blob` from the queue (it was deleted from the network). Unknown ids are
    /// ignored.
    pub fn gc_done(&self, blob: &BlobId) -> Result<()> {
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            if tx.get(TreeId::Gc, &blob.0)?.is_some() {
                tx.del(TreeId::Gc, &blob.0)?;
            }
            Ok(())
        })
    }

    /// Records that `blob` is still to be deleted from the nodes `left` (others deleted it).
    pub fn gc_left(&self, blob: &BlobId, left: Vec<u16>) -> Result<()> {
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            if let Some(v) = tx.get(TreeId::Gc, &blob.0)? {
                let mut e: GcEntry = super::tx::ok(decode(&v, "GC entry"))?;
                e.left = Some(left.clone());
                tx.put(TreeId::Gc, &blob.0, super::tx::ok(encode(&e))?)?;
            }
            Ok(())
        })
    }

    /// Queues blobs that no index record refers to (e.g. a chunk upload overtaken by a newer
    /// write before it could be committed). A blob that is referenced is left alone.
    pub fn gc_enqueue(&self, blobs: &[BlobId]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            for blob in blobs {
                if tx.blob(blob)?.is_none() {
                    tx.gc_add(blob)?;
                }
            }
            Ok(())
        })
    }

    /// Number of queued blobs. O(n): for monitoring, not for hot paths.
    pub fn gc_len(&self) -> usize {
        let _r = self.read_lock();
        self.trees.gc.len()
    }

    /// Every change with a sequence number up to this one is published (0: nothing yet).
    pub fn published_seq(&self) -> Result<u64> {
        let _r = self.read_lock();
        match self.trees.local.get(local_key::PUBLISHED_SEQ)? {
            Some(v) => decode(&v, "published seq"),
            None => Ok(0),
        }
    }

    /// The sequence number of the last change made so far.
    pub fn current_seq(&self) -> Result<u64> {
        let _r = self.read_lock();
        Ok(self.trees.counters()?.seq)
    }

    /// Records, without publishing anything, that every change so far counts as published: for
    /// an index that is not part of an archive (tests of the filesystem core), where durable
    /// on local disk is all there is. Flushes first.
    pub fn mark_local_only_published(&self) -> Result<u64> {
        let seq = self.current_seq()?;
        self.flush()?;
        let _w = self.write_lock();
        let value = encode(&seq)?;
        self.transact(&Scan::default(), |tx| {
            tx.put_local(local_key::PUBLISHED_SEQ, value.as_slice())
        })?;
        Ok(seq)
    }

    /// Records that snapshot `snapshot` (its root version) refers to `blobs`.
    pub fn hold(&self, snapshot: u64, blobs: &[BlobId]) -> Result<()> {
        let _w = self.writer()?;
        let mut batch = sled::Batch::default();
        for blob in blobs {
            batch.insert(held_key(blob, snapshot).as_slice(), &[][..]);
        }
        self.trees.held.apply_batch(batch)?;
        self.note_commit();
        Ok(())
    }

    /// Forgets what snapshot `snapshot` refers to (it was deleted).
    pub fn release_hold(&self, snapshot: u64) -> Result<()> {
        let _w = self.writer()?;
        let mut batch = sled::Batch::default();
        for item in self.trees.held.iter().keys() {
            let key = item?;
            if held_snapshot(&key) == Some(snapshot) {
                batch.remove(key);
            }
        }
        self.trees.held.apply_batch(batch)?;
        self.note_commit();
        Ok(())
    }

    /// Whether a snapshot refers to `blob`.
    pub fn is_held(&self, blob: &BlobId) -> Result<bool> {
        let _r = self.read_lock();
        Ok(self.trees.held.scan_prefix(blob.0).next().is_some())
    }

    /// The snapshots (root versions) whose blobs are recorded.
    pub fn held_snapshots(&self) -> Result<std::collections::BTreeSet<u64>> {
        let _r = self.read_lock();
        let mut out = std::collections::BTreeSet::new();
        for item in self.trees.held.iter().keys() {
            if let Some(v) = held_snapshot(&item?) {
                out.insert(v);
            }
        }
        Ok(out)
    }
}

fn held_key(blob: &BlobId, snapshot: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&blob.0);
    k[32..].copy_from_slice(&snapshot.to_be_bytes());
    k
}

fn held_snapshot(key: &[u8]) -> Option<u64> {
    key.get(32..40)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}
