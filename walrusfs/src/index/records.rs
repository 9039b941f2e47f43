//! The index as published records: capturing what changed (or everything) as key/value
//! entries, and applying such entries to another index. The archive layer seals the entries
//! into blobs and names them in the root record; this module knows nothing of that.
//!
//! Every transaction stamps the published keys it changes in the local `changes` tree with its
//! sequence number (see `tx`). [`Index::capture_changes`] reads those keys' current values
//! (or their absence) under the read lock, so a capture is one consistent state: the state
//! after the transaction numbered [`Capture::upto_seq`]. Applying a full capture and then the
//! captures of changes made after it, in order, to an empty index yields that state, because
//! each entry carries the key's final value at its capture, not an operation.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::error::{IndexError, Result};
use super::layout::{change_key, encode, local_key, parse_change_key, TreeId};
use super::scan::Scan;
use super::Index;

/// Change stamps [`Index::mark_published`] drops per transaction.
pub(super) const MARK_BATCH: usize = 512;

/// One key of a published tree: its value at the capture, or `None` if it was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    /// The tree.
    pub tree: TreeId,
    /// The key.
    pub key: Vec<u8>,
    /// The value, or `None`: the key does not exist.
    pub value: Option<Vec<u8>>,
}

/// A consistent set of entries: the state of the captured keys after change `upto_seq`.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// The sequence number the entries are current at.
    pub upto_seq: u64,
    /// The entries, by tree and key.
    pub entries: Vec<RecordEntry>,
}

impl Index {
    /// The published keys changed since the last [`Index::mark_published`], with their current
    /// values. Empty entries (with `upto_seq` the current sequence number) if nothing changed.
    pub fn capture_changes(&self) -> Result<Capture> {
        let _r = self.read_lock();
        let upto_seq = self.trees.counters()?.seq;
        let mut entries = Vec::new();
        for item in self.trees.changes.iter().keys() {
            let key = item?;
            let (tree, k) = parse_change_key(&key)?;
            let value = self.trees.tree(tree).get(k)?.map(|v| v.to_vec());
            entries.push(RecordEntry {
                tree,
                key: k.to_vec(),
                value,
            });
        }
        Ok(Capture { upto_seq, entries })
    }

    /// Every key of every published tree.
    pub fn capture_full(&self) -> Result<Capture> {
        let _r = self.read_lock();
        let upto_seq = self.trees.counters()?.seq;
        let mut entries = Vec::new();
        for tree in TreeId::ALL.into_iter().filter(|t| t.published()) {
            for item in self.trees.tree(tree).iter() {
                let (k, v) = item?;
                entries.push(RecordEntry {
                    tree,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
            }
        }
        Ok(Capture { upto_seq, entries })
    }

    /// Number of published keys changed since the last [`Index::mark_published`].
    pub fn unpublished_changes(&self) -> usize {
        let _r = self.read_lock();
        self.trees.changes.len()
    }

    /// Records that everything up to change `upto_seq` is published, together with the
    /// archive layer's `archive_state` (its view of the root record): drops the change stamps
    /// up to `upto_seq` (later changes of the same keys keep theirs), then saves the state.
    ///
    /// The stamps go [`MARK_BATCH`] at a time, each batch in a transaction of its own that
    /// checks them again: every transaction holds the writer lock, which every lookup and
    /// create waits for, and one transaction dropping all of them held it for a quarter of
    /// an `rsync -a` once a few thousand files had changed. A crash part-way leaves some
    /// stamps of published changes and the old state; the next mount finds its own record in
    /// the published chain and marks it again (`archive::writer`), as after a crash before
    /// this call.
    pub fn mark_published(&self, upto_seq: u64, archive_state: &[u8]) -> Result<()> {
        let mut after: Option<sled::IVec> = None;
        loop {
            // Scanned under the read lock (see `scan`); the transaction reads each again.
            let (batch, last) = {
                let _r = self.read_lock();
                let iter = match &after {
                    None => self.trees.changes.iter(),
                    Some(k) => self
                        .trees
                        .changes
                        .range((Bound::Excluded(k.clone()), Bound::Unbounded)),
                };
                let mut batch = Vec::new();
                let mut last = None;
                for item in iter {
                    let (key, stamp) = item?;
                    if stamp_seq(&stamp)? <= upto_seq {
                        batch.push(key.clone());
                    }
                    last = Some(key);
                    if batch.len() >= MARK_BATCH {
                        break;
                    }
                }
                (batch, last)
            };
            let full = batch.len() >= MARK_BATCH;
            if !batch.is_empty() {
                let _w = self.write_lock();
                self.transact(&Scan::default(), |tx| {
                    for key in &batch {
                        let Some(stamp) = tx.get(TreeId::Changes, key)? else {
                            continue;
                        };
                        // Changed again since the scan: the newer stamp stays.
                        if super::tx::ok(stamp_seq(&stamp))? <= upto_seq {
                            tx.del(TreeId::Changes, key)?;
                        }
                    }
                    Ok(())
                })?;
            }
            match last {
                Some(key) if full => after = Some(key),
                _ => break,
            }
        }
        let seq = encode(&upto_seq)?;
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            tx.put_local(local_key::PUBLISHED_SEQ, seq.as_slice())?;
            tx.put_local(local_key::ARCHIVE_STATE, archive_state)
        })
    }

    /// The archive layer's state saved by the last [`Index::mark_published`] (or
    /// [`Index::set_archive_state`]).
    pub fn archive_state(&self) -> Result<Option<Vec<u8>>> {
        let _r = self.read_lock();
        Ok(self
            .trees
            .local
            .get(local_key::ARCHIVE_STATE)?
            .map(|v| v.to_vec()))
    }

    /// Saves the archive layer's state and the published sequence number without touching the
    /// change stamps (after applying published records to a replica).
    pub fn set_archive_state(&self, published_seq: u64, archive_state: &[u8]) -> Result<()> {
        let _w = self.writer()?;
        let seq = encode(&published_seq)?;
        self.transact(&Scan::default(), |tx| {
            tx.put_local(local_key::PUBLISHED_SEQ, seq.as_slice())?;
            tx.put_local(local_key::ARCHIVE_STATE, archive_state)
        })
    }

    /// Applies published entries, in order, to this index (a replica following a writer, or an
    /// index being restored): with `replace`, every published tree is emptied first (a full
    /// record). Holds the writer lock throughout, so readers see the state before or after.
    /// Not one transaction (records can be large): a crash part-way leaves a mix, which
    /// applying the same entries again repairs, because entries are final values. Records no
    /// change stamps: these changes are already published. Flushes before returning.
    pub fn apply_entries(&self, entries: &[RecordEntry], replace: bool) -> Result<()> {
        // INV (DESIGN 5): a malformed record changes nothing.
        if let Some(e) = entries.iter().find(|e| !e.tree.published()) {
            return Err(IndexError::Corrupt(format!(
                "published record touches local tree {}",
                e.tree.name()
            )));
        }
        let _w = self.writer()?;
        if replace {
            for tree in TreeId::ALL.into_iter().filter(|t| t.published()) {
                self.trees.tree(tree).clear()?;
            }
        }
        let mut batches: Vec<sled::Batch> =
            TreeId::ALL.iter().map(|_| Default::default()).collect();
        for e in entries {
            let batch = &mut batches[e.tree as usize];
            match &e.value {
                Some(v) => batch.insert(e.key.as_slice(), v.as_slice()),
                None => batch.remove(e.key.as_slice()),
            }
        }
        for (tree, batch) in TreeId::ALL.into_iter().zip(batches) {
            self.trees.tree(tree).apply_batch(batch)?;
        }
        self.note_commit();
        drop(_w);
        self.load_meta()?;
        self.flush()
    }

    /// The change stamp of `key` in `tree`, if it changed since the last publish (tests).
    pub fn change_stamp(&self, tree: TreeId, key: &[u8]) -> Result<Option<u64>> {
        let _r = self.read_lock();
        self.trees
            .changes
            .get(change_key(tree, key))?
            .map(|v| stamp_seq(&v))
            .transpose()
    }

    /// Number of change stamps newer than `seq` (tests).
    pub fn changes_after(&self, seq: u64) -> Result<usize> {
        let _r = self.read_lock();
        let mut n = 0;
        for item in self.trees.changes.iter() {
            let (_, stamp) = item?;
            if stamp_seq(&stamp)? > seq {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn stamp_seq(stamp: &[u8]) -> Result<u64> {
    stamp
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| IndexError::Corrupt("change stamp of the wrong size".into()))
}
