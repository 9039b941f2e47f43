//! The index's side of the write-back journal: chunks pointed at journal records
//! (`jchunks`, with `jqueue` listing them in record order), committed as records are appended,
//! and repointed at blobs as the uploader stores them.

use netcore::codec::{BlobId, BlobMetadata};
use netcore::wire::StorageConfirmation;

use super::error::{IndexError, Result};
use super::layout::{decode, encode, local_key, pair_key, parse_pair_key};
use super::overlay::NewFile;
use super::scan::Scan;
use super::tx::{pair_index, Tx, TxResult};
use super::types::{ChunkRef, FileKind, Ino, JChunk, Timestamp};
use super::{Index, SetAttr};
use std::sync::atomic::Ordering;

/// One appended journal record to commit: chunk `chunk` of `ino` now holds record `jchunk`,
/// and the file's size and times are as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalCommit {
    /// The file.
    pub ino: Ino,
    /// The chunk index.
    pub chunk: u64,
    /// The record.
    pub jchunk: JChunk,
    /// The file's size when the record was made.
    pub size: u64,
    /// Its mtime then.
    pub mtime: Timestamp,
    /// Its ctime then.
    pub ctime: Timestamp,
    /// Mode, owner and atime changes made while the data was buffered, committed with it
    /// (the record carries them too, so a replay has them).
    pub set: Option<SetAttr>,
}

/// A journal record stored in a blob at `offset`, to repoint its chunk at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The file.
    pub ino: Ino,
    /// The chunk index.
    pub chunk: u64,
    /// The record's sequence number (the chunk is repointed only if it still holds it).
    pub seq: u64,
    /// Offset of the sealed chunk in the blob.
    pub offset: u64,
}

/// A chunk waiting in the journal, as the uploader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The file.
    pub ino: Ino,
    /// The chunk index.
    pub chunk: u64,
    /// The record.
    pub jchunk: JChunk,
}

/// An attribute change queued for the next index transaction (see [`Index::defer_attrs`],
/// and [`Index::setattr_queued`] for other inodes than files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrCommit {
    /// The file.
    pub ino: Ino,
    /// Mode, owner and atime changes.
    pub set: SetAttr,
    /// The file's mtime after the change.
    pub mtime: Timestamp,
    /// Its ctime after the change.
    pub ctime: Timestamp,
}

/// A change waiting for the next transaction.
#[derive(Debug, Clone)]
enum Queued {
    Journal(JournalCommit),
    Attrs(AttrCommit),
    /// A new file ([`Index::create_file`]).
    Create(Box<NewFile>),
    /// An inode's ctime, and with `mtime` its mtime, set by a queued rename
    /// ([`Index::rename_queued`]).
    Touch {
        ino: Ino,
        mtime: Option<Timestamp>,
        ctime: Timestamp,
    },
}

/// Changes queued for the next index transaction, in the order they were made: it applies
/// them first.
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    items: Vec<Queued>,
    /// The last journal record they cover (0: none).
    mark: u64,
    /// The ticket of the last one (see [`Index::applied_ticket`]).
    ticket: u64,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.mark == 0
    }

    /// How many changes are queued.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues a new file.
    pub(super) fn push_create(&mut self, file: NewFile) {
        self.items.push(Queued::Create(Box::new(file)));
    }

    /// Queues an attribute change.
    pub(super) fn push_attrs(&mut self, change: AttrCommit) {
        self.items.push(Queued::Attrs(change));
    }

    /// Queues setting `ino`'s ctime, and its mtime if given.
    pub(super) fn push_touch(&mut self, ino: Ino, mtime: Option<Timestamp>, ctime: Timestamp) {
        self.items.push(Queued::Touch { ino, mtime, ctime });
    }

    /// Makes the queued creation of `ino` that of `name` in `parent`; false if there is none.
    pub(super) fn move_create(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> bool {
        for q in &mut self.items {
            if let Queued::Create(f) = q {
                if f.attr.ino == ino {
                    f.parent = parent;
                    f.name = name.to_vec();
                    return true;
                }
            }
        }
        false
    }

    fn journal(&self) -> impl Iterator<Item = &JournalCommit> {
        self.items.iter().filter_map(|q| match q {
            Queued::Journal(c) => Some(c),
            _ => None,
        })
    }
}

/// Queued changes beyond which [`Index::defer_journal`], [`Index::defer_attrs`],
/// [`Index::create_file`] and [`Index::setattr_queued`] refuse more: the caller commits now.
/// The transaction that applies them holds the writer lock, and so stalls every lookup, for
/// about 25 us per queued new file (23 ms for 1,000, measured in the index's tests): a few
/// hundred keep that stall short and cost one transaction per hundred small files or more.
pub(super) const DEFER_MAX: usize = 256;

impl Index {
    /// Commits appended journal records, in one transaction (with any queued changes before
    /// them), and marks `mark` as the last record committed. A record for a file that no longer
    /// exists (or is not a regular file) is skipped: its data died with the file.
    pub fn commit_journal(&self, commits: &[JournalCommit], mark: u64) -> Result<()> {
        let _w = self.write_lock();
        let mut all = self.take_deferred();
        all.items
            .extend(commits.iter().copied().map(Queued::Journal));
        all.mark = all.mark.max(mark);
        self.commit_deferred_locked(all)
    }

    /// Queues appended journal records to be committed by the next index transaction (one
    /// that scans nothing applies them in its own transaction, any other before it scans), so
    /// a stream of small files costs one transaction per file, not two. Call it in record order
    /// (under the journal's order lock). Until then the index lacks them: the caller keeps
    /// serving the data and attributes from memory, and a killed mount replays them from the
    /// journal. Returns the change's ticket ([`Index::applied_ticket`]), or None (nothing
    /// queued) when enough are queued already: commit these now.
    pub fn defer_journal(&self, commits: &[JournalCommit], mark: u64) -> Option<u64> {
        self.queue(commits.iter().copied().map(Queued::Journal), mark)
    }

    /// Queues an attribute change (chmod, chown, utimes) of a file for the next index
    /// transaction, as [`Index::defer_journal`] does: rsync sets the times and mode of every file
    /// it wrote, after closing it. Nothing replays it: a killed mount may lose it, as it may lose
    /// any change made since the index last reached the kernel (the flusher commits the queue
    /// within its tick). Until then the caller serves the attributes from memory.
    pub fn defer_attrs(&self, change: AttrCommit) -> Option<u64> {
        self.queue(std::iter::once(Queued::Attrs(change)), 0)
    }

    fn queue(&self, items: impl Iterator<Item = Queued>, mark: u64) -> Option<u64> {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() >= DEFER_MAX {
            return None;
        }
        d.items.extend(items);
        d.mark = d.mark.max(mark);
        // Taken under the queue's lock: tickets follow the queue's order.
        let ticket = self.next_ticket.fetch_add(1, Ordering::AcqRel) + 1;
        d.ticket = ticket;
        Some(ticket)
    }

    /// Commits the queued changes now, in one transaction.
    pub fn commit_deferred(&self) -> Result<()> {
        if self.deferred_empty() {
            return Ok(());
        }
        let _w = self.write_lock();
        self.commit_deferred_locked(self.take_deferred())
    }

    /// Whether nothing is queued.
    pub fn deferred_empty(&self) -> bool {
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Every queued change whose ticket is at most this is in the index (not necessarily
    /// durable).
    pub fn applied_ticket(&self) -> u64 {
        self.applied_ticket.load(Ordering::Acquire)
    }

    /// The writer lock, with the queued changes applied first: a mutation that scans (or does
    /// not go through [`Index::transact`]) starts with it, so they land before its change and
    /// its scan sees them. One that scans nothing takes the plain lock: `transact` applies them
    /// in its own transaction.
    pub(crate) fn writer(&self) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
        let w = self.write_lock();
        if !self.deferred_empty() {
            self.commit_deferred_locked(self.take_deferred())?;
        }
        Ok(w)
    }

    /// [`Index::commit_deferred`] with the writer lock already held.
    pub(crate) fn commit_deferred_now(&self) -> Result<()> {
        self.commit_deferred_locked(self.take_deferred())
    }

    /// Takes the whole queue (with the writer lock held).
    pub(crate) fn take_deferred(&self) -> Deferred {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts changes taken by a transaction that failed back in front of the queue.
    pub(crate) fn restore_deferred(&self, taken: Deferred) {
        if taken.is_empty() {
            return;
        }
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        let later = std::mem::take(&mut d.items);
        d.items = taken.items;
        d.items.extend(later);
        d.mark = d.mark.max(taken.mark);
        d.ticket = d.ticket.max(taken.ticket);
    }

    /// Commits `d` (taken from the queue, with the writer lock held) in one transaction; on
    /// failure it goes back to the queue.
    fn commit_deferred_locked(&self, d: Deferred) -> Result<()> {
        if d.is_empty() {
            return Ok(());
        }
        let res = self
            .commits_scan(&d)
            .and_then(|scan| self.transact_raw(&scan, |tx| self.apply_deferred(tx, &d)));
        match res {
            Ok(()) => {
                self.note_applied(&d);
                Ok(())
            }
            Err(e) => {
                self.restore_deferred(d);
                Err(e)
            }
        }
    }

    /// Records that `d`, the whole queue, is applied (by the transaction [`Index::committed`]
    /// counts last): the overlay has nothing left to answer for. The caller holds the writer
    /// lock, under which alone the overlay changes, so nothing it holds came after `d`.
    pub(crate) fn note_applied(&self, d: &Deferred) {
        self.overlay().clear();
        self.fresh().applied(self.committed());
        self.applied_ticket.fetch_max(d.ticket, Ordering::AcqRel);
    }

    /// What applying `d` must have scanned (the chunks a size change may cut).
    pub(crate) fn commits_scan(&self, d: &Deferred) -> Result<Scan> {
        let cs = u64::from(self.chunk_size());
        let mut scan = Scan::default();
        let mut inos: Vec<Ino> = d.journal().map(|c| c.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        for ino in &inos {
            let smallest = d
                .journal()
                .filter(|c| c.ino == *ino)
                .map(|c| c.size)
                .min()
                .unwrap_or(0);
            scan.add_chunks_from(&self.trees, *ino, smallest.div_ceil(cs))?;
        }
        Ok(scan)
    }

    /// Applies `d` inside a transaction (its scan made by [`Index::commits_scan`]).
    pub(crate) fn apply_deferred(&self, tx: &Tx<'_>, d: &Deferred) -> TxResult<()> {
        let cs = u64::from(self.chunk_size());
        for q in &d.items {
            let ino = match q {
                Queued::Journal(c) => c.ino,
                Queued::Attrs(a) => a.ino,
                Queued::Touch { ino, .. } => *ino,
                Queued::Create(f) => {
                    self.apply_create(tx, f)?;
                    continue;
                }
            };
            let Some(mut attr) = tx.inode(ino)? else {
                continue;
            };
            match q {
                // A record's data is a file's: one gone since, or never a file, takes nothing.
                Queued::Journal(_) if attr.kind != FileKind::File => continue,
                Queued::Journal(c) => {
                    if c.size != attr.size {
                        self.resize(tx, &mut attr, c.size)?;
                    }
                    let start = c.chunk.saturating_mul(cs);
                    if start < c.size {
                        let mut j = c.jchunk;
                        // INV: a journal chunk, like a stored one, lies within the file's size.
                        j.len = j.len.min((c.size - start).min(cs) as u32);
                        tx.put_jchunk(c.ino, c.chunk, &j)?;
                    }
                    attr.mtime = c.mtime;
                    attr.ctime = c.ctime;
                    if let Some(set) = &c.set {
                        set.apply_mode_owner_atime(&mut attr);
                    }
                }
                Queued::Attrs(a) => {
                    a.set.apply_mode_owner_atime(&mut attr);
                    attr.mtime = a.mtime;
                    attr.ctime = a.ctime;
                }
                Queued::Touch { mtime, ctime, .. } => {
                    if let Some(mtime) = mtime {
                        attr.mtime = *mtime;
                    }
                    attr.ctime = *ctime;
                }
                Queued::Create(_) => unreachable!("applied above"),
            }
            tx.put_inode(&attr)?;
        }
        if d.mark == 0 {
            return Ok(());
        }
        let mark_bytes = super::tx::ok(encode(&d.mark))?;
        tx.put_local(local_key::JOURNAL_MARK, mark_bytes.as_slice())
    }

    /// Repoints chunks at `blob` (newly stored: registered here) where they still hold the
    /// journal records it stores, in one transaction; returns how many were repointed. A blob
    /// left with no ref (every record was overwritten or its file deleted meanwhile) is queued
    /// for GC.
    pub fn commit_upload(
        &self,
        blob: BlobId,
        metadata: &BlobMetadata,
        confirmations: &[StorageConfirmation],
        stored: &[Stored],
    ) -> Result<usize> {
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            tx.register_blob(&blob, metadata, confirmations)?;
            let mut done = 0;
            for s in stored {
                let Some(j) = tx.jchunk(s.ino, s.chunk)? else {
                    continue;
                };
                if j.seq != s.seq {
                    continue;
                }
                tx.del_jchunk(s.ino, s.chunk)?;
                let c = ChunkRef {
                    blob_id: blob,
                    offset: s.offset,
                    stored_len: j.stored_len,
                    len: j.len,
                    version: j.version,
                    salt: j.salt,
                };
                tx.put_chunk(s.ino, s.chunk, &c)?;
                done += 1;
            }
            tx.drop_unreferenced(&[blob])?;
            Ok(done)
        })
    }

    /// Up to `limit` chunks waiting in the journal, in record order, from record `from` on.
    pub fn journal_pending(&self, from: u64, limit: usize) -> Result<Vec<Pending>> {
        let _r = self.read_lock();
        let mut out = Vec::new();
        for item in self.trees.jqueue.range(from.to_be_bytes()..).take(limit) {
            let (_, key) = item?;
            let (ino, chunk) = parse_pair_key(&key)?;
            let Some(v) = self.trees.jchunks.get(&key)? else {
                return Err(IndexError::Corrupt(format!(
                    "journal queue names chunk {chunk} of {ino}, which has no journal record"
                )));
            };
            out.push(Pending {
                ino,
                chunk,
                jchunk: decode(&v, "journal chunk")?,
            });
        }
        Ok(out)
    }

    /// The oldest journal record a chunk points at, if any.
    pub fn oldest_journal_record(&self) -> Result<Option<u64>> {
        let _r = self.read_lock();
        match self.trees.jqueue.first()? {
            Some((k, _)) => Ok(Some(u64::from_be_bytes(k.as_ref().try_into().map_err(
                |_| IndexError::Corrupt("journal queue key of the wrong size".into()),
            )?))),
            None => Ok(None),
        }
    }

    /// Number of chunks waiting in the journal.
    pub fn journal_len(&self) -> usize {
        let _r = self.read_lock();
        self.trees.jqueue.len()
    }

    /// The last journal record whose index change was committed (0: none).
    pub fn journal_mark(&self) -> Result<u64> {
        let _r = self.read_lock();
        match self.trees.local.get(local_key::JOURNAL_MARK)? {
            Some(v) => decode(&v, "journal mark"),
            None => Ok(0),
        }
    }

    /// Journal chunk `index` of `ino`, if its latest content is in the journal.
    pub fn jchunk(&self, ino: Ino, index: u64) -> Result<Option<JChunk>> {
        let _r = self.read_lock();
        self.trees
            .jchunks
            .get(pair_key(ino, index))?
            .map(|v| decode(&v, "journal chunk"))
            .transpose()
    }

    /// The journal chunks of `ino` with index in `first..=last_inclusive`, in index order.
    pub fn jchunks_in(
        &self,
        ino: Ino,
        first: u64,
        last_inclusive: u64,
    ) -> Result<Vec<(u64, JChunk)>> {
        let _r = self.read_lock();
        if first > last_inclusive {
            return Ok(Vec::new());
        }
        self.trees
            .jchunks
            .range(pair_key(ino, first)..=pair_key(ino, last_inclusive))
            .map(|item| {
                let (key, value) = item?;
                Ok((pair_index(&key, ino)?, decode(&value, "journal chunk")?))
            })
            .collect()
    }
}

/// A chunk ref to move into a new blob: where it is now, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The file.
    pub ino: Ino,
    /// The chunk index.
    pub chunk: u64,
    /// The ref as it was read (the move happens only if it is still this).
    pub old: ChunkRef,
    /// Offset of the sealed chunk in the new blob.
    pub offset: u64,
}

impl Index {
    /// Packs worth compacting: blobs of at least `min_len` bytes whose live chunks cover less
    /// than `live_percent` percent of them (most of what they hold was overwritten or deleted).
    pub fn compaction_candidates(
        &self,
        min_len: u64,
        live_percent: u64,
        limit: usize,
    ) -> Result<Vec<(BlobId, crate::index::BlobInfo)>> {
        let _r = self.read_lock();
        let mut out = Vec::new();
        for item in self.trees.blobs.iter() {
            let (key, value) = item?;
            let info: crate::index::BlobInfo = decode(&value, "blob record")?;
            let len = info.metadata.blob_len;
            if len >= min_len && info.live_bytes * 100 < len * live_percent {
                out.push((super::layout::parse_blob_id(&key)?, info));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every chunk ref pointing into one of `blobs` (a scan of the whole chunk map).
    pub fn refs_into(
        &self,
        blobs: &std::collections::BTreeSet<BlobId>,
    ) -> Result<Vec<(Ino, u64, ChunkRef)>> {
        let _r = self.read_lock();
        let mut out = Vec::new();
        for item in self.trees.chunks.iter() {
            let (key, value) = item?;
            let c: ChunkRef = decode(&value, "chunk ref")?;
            if blobs.contains(&c.blob_id) {
                let (ino, chunk) = parse_pair_key(&key)?;
                out.push((ino, chunk, c));
            }
        }
        Ok(out)
    }

    /// Repoints the chunk refs of `moves` that are still as they were read at `new` (newly
    /// stored: registered here), in one transaction; returns how many moved. The blobs they
    /// leave lose those refs (and go to GC at zero); `new` goes to GC if nothing moved.
    pub fn commit_moves(
        &self,
        new: BlobId,
        metadata: &BlobMetadata,
        confirmations: &[StorageConfirmation],
        moves: &[Move],
    ) -> Result<usize> {
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            tx.register_blob(&new, metadata, confirmations)?;
            let mut moved = 0;
            for m in moves {
                let key = pair_key(m.ino, m.chunk);
                let Some(v) = tx.get(super::layout::TreeId::Chunks, &key)? else {
                    continue;
                };
                let current: ChunkRef = super::tx::ok(decode(&v, "chunk ref"))?;
                // The ref may have been shortened by a truncate meanwhile; it is still the
                // same sealed chunk if blob, offset, version and salt match.
                if current.blob_id != m.old.blob_id
                    || current.offset != m.old.offset
                    || current.version != m.old.version
                    || current.salt != m.old.salt
                {
                    continue;
                }
                let c = ChunkRef {
                    blob_id: new,
                    offset: m.offset,
                    ..current
                };
                tx.put_chunk(m.ino, m.chunk, &c)?;
                moved += 1;
            }
            tx.drop_unreferenced(&[new])?;
            Ok(moved)
        })
    }
}
