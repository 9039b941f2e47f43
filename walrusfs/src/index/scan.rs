//! Scans made before a transaction, for the steps that must enumerate keys.
//!
//! sled transactions cannot scan, and a plain-tree read inside a transaction closure would
//! deadlock (sled holds its global transaction lock while the closure runs). So a mutation
//! that must enumerate keys — the chunks and xattrs of an inode it may free, the chunks beyond
//! a new size, whether a directory has entries — scans them while holding the index's writer
//! lock, before the transaction, into a [`Scan`] the transaction reads. No other writer can
//! change those keys in between, and a transaction uses a scan only for keys it has not
//! written itself.

use std::collections::HashMap;

use sled::IVec;

use super::error::{IndexError, Result};
use super::layout::{ino_key, pair_key};
use super::tx::{pair_index, Trees};
use super::types::Ino;
use super::Index;

/// Keys enumerated before a transaction.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Per inode: the first chunk index scanned, and the chunk indexes from there on.
    chunks: HashMap<Ino, (u64, Vec<u64>)>,
    /// The same for journal chunks (`jchunks`).
    jchunks: HashMap<Ino, (u64, Vec<u64>)>,
    /// Per inode: the full keys of its xattrs.
    xattrs: HashMap<Ino, Vec<IVec>>,
    /// Per directory: whether it has entries.
    has_entries: HashMap<Ino, bool>,
}

impl Scan {
    /// Whether nothing was scanned.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
            && self.jchunks.is_empty()
            && self.xattrs.is_empty()
            && self.has_entries.is_empty()
    }

    /// Scans everything needed to free `ino` (or, if a directory, to replace or remove it).
    pub fn for_free(trees: &Trees, ino: Ino) -> Result<Self> {
        let mut scan = Self::default();
        scan.add_chunks_from(trees, ino, 0)?;
        let xattrs = trees
            .xattrs
            .scan_prefix(ino_key(ino))
            .keys()
            .collect::<Result<Vec<_>, _>>()?;
        scan.xattrs.insert(ino, xattrs);
        let has_entries = trees
            .dirents
            .scan_prefix(ino_key(ino))
            .next()
            .transpose()?
            .is_some();
        scan.has_entries.insert(ino, has_entries);
        Ok(scan)
    }

    /// Scans the chunk indexes (stored and journal) of `ino` at or after `from`.
    pub fn add_chunks_from(&mut self, trees: &Trees, ino: Ino, from: u64) -> Result<()> {
        let scan = |tree: &sled::Tree| {
            tree.range(pair_key(ino, from)..=pair_key(ino, u64::MAX))
                .keys()
                .map(|key| pair_index(&key?, ino))
                .collect::<Result<Vec<_>>>()
        };
        let stored = scan(&trees.chunks)?;
        let journal = scan(&trees.jchunks)?;
        self.chunks.insert(ino, (from, stored));
        self.jchunks.insert(ino, (from, journal));
        Ok(())
    }

    /// The journal chunk indexes of `ino` at or after `from`.
    pub fn jchunks_from(&self, ino: Ino, from: u64) -> Result<impl Iterator<Item = u64> + '_> {
        match self.jchunks.get(&ino) {
            Some((scanned, indexes)) if *scanned <= from => {
                Ok(indexes.iter().copied().filter(move |&i| i >= from))
            }
            _ => Err(not_scanned(ino, "journal chunks")),
        }
    }

    /// The chunk indexes of `ino` at or after `from`.
    pub fn chunks_from(&self, ino: Ino, from: u64) -> Result<impl Iterator<Item = u64> + '_> {
        match self.chunks.get(&ino) {
            Some((scanned, indexes)) if *scanned <= from => {
                Ok(indexes.iter().copied().filter(move |&i| i >= from))
            }
            _ => Err(not_scanned(ino, "chunks")),
        }
    }

    /// The full keys of the xattrs of `ino`.
    pub fn xattr_keys(&self, ino: Ino) -> Result<&[IVec]> {
        self.xattrs
            .get(&ino)
            .map(Vec::as_slice)
            .ok_or_else(|| not_scanned(ino, "xattrs"))
    }

    /// Whether directory `dir` has entries.
    pub fn has_entries(&self, dir: Ino) -> Result<bool> {
        self.has_entries
            .get(&dir)
            .copied()
            .ok_or_else(|| not_scanned(dir, "entries"))
    }
}

impl Index {
    /// The inode entry `parent/name` points to, read under the read lock (used before taking
    /// the writer lock, to ask the caller's `is_open` without holding any lock).
    pub(crate) fn read_lock_dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<Ino>> {
        let _r = self.read_lock();
        self.dirent_nolock(parent, name)
    }

    /// [`Scan::for_free`] of `ino`, if any. Call with the writer lock held.
    pub(crate) fn scan_for_free(&self, ino: Option<Ino>) -> Result<Scan> {
        match ino {
            Some(ino) => Scan::for_free(&self.trees, ino),
            None => Ok(Scan::default()),
        }
    }

    /// The chunks of `ino` a cut to `size` would drop, if a size is given. Call with the
    /// writer lock held.
    pub(crate) fn scan_cut(&self, ino: Ino, size: Option<u64>) -> Result<Scan> {
        let mut scan = Scan::default();
        if let Some(size) = size {
            let first_gone = size.div_ceil(u64::from(self.chunk_size()));
            scan.add_chunks_from(&self.trees, ino, first_gone)?;
        }
        Ok(scan)
    }
}

/// A transaction needed keys nobody scanned: a bug in this module, reported rather than
/// risking a partial deletion.
fn not_scanned(ino: Ino, what: &str) -> IndexError {
    IndexError::Corrupt(format!(
        "internal: {what} of inode {ino} not scanned before the transaction"
    ))
}
