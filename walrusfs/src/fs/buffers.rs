//! Dirty chunk buffers: what writes changed in a file that no journal record holds yet, and the
//! memory they take.
//!
//! [`FileBuffers`] is plain data with plain methods (no locks, no I/O, no runtime): the caller
//! holds the file's lock around each transition, fetches a chunk's old content when a partial
//! write needs it, and seals and journals what [`FileBuffers::dirty`] returns before calling
//! [`FileBuffers::journaled`]. That keeps every rule about a file's write-back state in one
//! place, testable alone. [`write_locked`] is the one way a writer changes buffers (including
//! the base fetch with the lock released); `protocol_tests` runs it with spills and reads under
//! the `shuttle` concurrency checker.
//!
//! Accounting: each buffer is charged at its capacity against the mount-wide
//! [`DirtyBudget`]; a buffer is released exactly when it leaves the map (journaled, truncated
//! away, or the file is forgotten).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::index::{SetAttr, Timestamp};

/// A chunk buffer written past this many bytes gets room for the whole chunk at once.
const FULL_RESERVE_FROM: usize = 512 << 10;

/// Memory held in dirty buffers across the mount.
#[derive(Debug)]
pub(crate) struct DirtyBudget {
    used: AtomicU64,
    limit: u64,
}

impl DirtyBudget {
    pub(crate) fn new(limit: u64) -> Self {
        DirtyBudget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether more than `limit * num / den` is held.
    pub(crate) fn above(&self, num: u64, den: u64) -> bool {
        self.used() > self.limit / den.max(1) * num
    }

    pub(crate) fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn release(&self, bytes: u64) {
        // Never below zero, even if a caller releases twice (it would be a bug, not a crash).
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// One dirty chunk.
#[derive(Debug, Clone)]
pub(crate) struct Buf {
    /// The chunk's valid bytes (bytes beyond read as zeros). Shared with readers; a writer
    /// copies on write.
    pub(crate) data: Arc<Vec<u8>>,
    /// When it first became dirty.
    pub(crate) since: Instant,
    /// Bytes charged to the budget.
    charged: u64,
    /// Sealed into a journal record whose index commit is queued under this ticket (see
    /// `Index::applied_ticket`): kept (charged at its length) until the index has it, so reads
    /// and partial writes still find it here.
    sealed: Option<u64>,
    /// Ranges of `data` zero-filled because a write began past its end, and not written
    /// since (at most [`MAX_GAPS`]). While there are any, the chunk is not taken for filled:
    /// writes that arrive out of order (a header written last, writers working on a file's
    /// parts at once) would otherwise have it journaled with zeros where data is still
    /// coming, and the write that brings that data would fetch the record back and open it
    /// to write into it.
    gaps: Vec<(usize, usize)>,
}

/// Gaps a buffer keeps track of; past this many (a writer scattering tiny writes over a
/// hole), it forgets them and is judged by its length alone.
const MAX_GAPS: usize = 64;

/// Removes `from..to` from `gaps`.
fn cover(gaps: &mut Vec<(usize, usize)>, from: usize, to: usize) {
    if gaps.iter().all(|&(a, b)| b <= from || a >= to) {
        return;
    }
    let mut left = Vec::with_capacity(gaps.len() + 1);
    for &(a, b) in gaps.iter() {
        if b <= from || a >= to {
            left.push((a, b));
            continue;
        }
        if a < from {
            left.push((a, from));
        }
        if b > to {
            left.push((to, b));
        }
    }
    *gaps = left;
}

/// What a write did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Wrote {
    /// Bytes newly charged to the budget.
    pub(crate) charged: u64,
    /// Chunks the write filled completely (a sequential writer moving on): journal them now.
    pub(crate) full: Vec<u64>,
}

/// A held lock on a file's write-back state: the file's mutex guard (in the model-checked
/// tests, a guard of the checker's mutex).
pub(crate) trait Locked {
    /// The state the lock guards.
    fn buffers(&mut self) -> &mut FileBuffers;
}

/// Writes `src` at `in_chunk` of chunk `idx` of the file locked by `st`: the one way a writer
/// changes a file's buffers. A partial write of a chunk without a buffer needs the chunk's
/// current content first; `fetch` gets it with the lock released (it may come from the
/// network) and `lock` takes the lock again. Content fetched while another thread journaled
/// this file's buffers may predate what they held, so it is fetched again then. Returns the
/// lock, held again, and what the write did.
#[allow(clippy::too_many_arguments)] // one write's place, its bytes and the two callbacks
pub(crate) fn write_locked<G: Locked, E>(
    mut st: G,
    lock: impl Fn() -> G,
    mut fetch: impl FnMut() -> Result<Vec<u8>, E>,
    idx: u64,
    in_chunk: u64,
    src: &[u8],
    cs: u64,
    now: Instant,
) -> Result<(G, Wrote), E> {
    let n = src.len() as u64;
    let mut base = Vec::new();
    while st.buffers().needs_base(idx, in_chunk, n, cs) {
        let generation = st.buffers().spill_generation();
        drop(st);
        let fetched = fetch()?;
        st = lock();
        // INV: a base fetched while a concurrent writer journaled this file's buffers may
        // predate their data: fetch it again rather than write over it.
        if st.buffers().spill_generation() == generation {
            if st.buffers().needs_base(idx, in_chunk, n, cs) {
                base = fetched;
            }
            break;
        }
    }
    let wrote = st
        .buffers()
        .write_chunk(idx, in_chunk as usize, src, base, cs, now);
    Ok((st, wrote))
}

/// A file's write-back state: dirty buffers and attributes not yet committed.
#[derive(Debug)]
pub(crate) struct FileBuffers {
    /// The file's size, including what buffers add.
    pub(crate) size: u64,
    pub(crate) mtime: Timestamp,
    pub(crate) ctime: Timestamp,
    /// Size or times changed and not yet committed to the index.
    pub(crate) attr_dirty: bool,
    /// Mode, owner and atime changes made while data was buffered, to commit with it (their
    /// mtime and ctime are in `mtime` and `ctime`).
    pub(crate) set: Option<SetAttr>,
    /// `set` went into a change queued for the index under this ticket (with a journal record,
    /// or alone): it is dropped once the index has it (attribute replies merge it until then).
    set_sealed: Option<u64>,
    bufs: BTreeMap<u64, Buf>,
    /// Bumped whenever buffers leave for the journal: content fetched for a partial write
    /// while the lock was released is stale if this moved meanwhile.
    spills: u64,
    /// Chunk versions reserved when this process created the file, not yet used (see
    /// `index::CREATOR_VERSIONS`); empty for files it did not create.
    spare_versions: std::ops::Range<u64>,
}

impl FileBuffers {
    /// Clean state of a file with these committed attributes.
    pub(crate) fn new(size: u64, mtime: Timestamp, ctime: Timestamp) -> Self {
        FileBuffers {
            size,
            mtime,
            ctime,
            attr_dirty: false,
            set: None,
            set_sealed: None,
            bufs: BTreeMap::new(),
            spills: 0,
            spare_versions: 0..0,
        }
    }

    /// Gives this file the versions its creation reserved (call once, right after creating).
    pub(crate) fn created_with_versions(&mut self, versions: std::ops::Range<u64>) {
        self.spare_versions = versions;
    }

    /// Takes `count` consecutive reserved versions, if that many are left; returns the first.
    pub(crate) fn take_versions(&mut self, count: u64) -> Option<u64> {
        let first = self.spare_versions.start;
        let end = first.checked_add(count)?;
        if end > self.spare_versions.end {
            return None;
        }
        self.spare_versions.start = end;
        Some(first)
    }

    /// Changes each time buffers leave for the journal (see the field).
    pub(crate) fn spill_generation(&self) -> u64 {
        self.spills
    }

    /// Whether anything is not yet journaled or committed.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.bufs.is_empty() || self.attr_dirty || self.set_sealed.is_some()
    }

    /// Whether chunk `idx` has a buffer.
    pub(crate) fn has(&self, idx: u64) -> bool {
        self.bufs.contains_key(&idx)
    }

    /// The buffers of chunks `first..=last` (snapshots for a reader).
    pub(crate) fn range(&self, first: u64, last: u64) -> Vec<(u64, Arc<Vec<u8>>)> {
        self.bufs
            .range(first..=last)
            .map(|(i, b)| (*i, b.data.clone()))
            .collect()
    }

    /// Bytes of chunk `idx` a partial write at `in_chunk..in_chunk + n` must keep from the
    /// chunk's current content: false if the write covers all of it that exists.
    pub(crate) fn needs_base(&self, idx: u64, in_chunk: u64, n: u64, cs: u64) -> bool {
        if self.has(idx) {
            return false;
        }
        let chunk_start = idx * cs;
        !(chunk_start >= self.size || n == cs || (in_chunk == 0 && chunk_start + n >= self.size))
    }

    /// Writes `src` at `in_chunk` of chunk `idx`, whose current content is `base` if the chunk
    /// has no buffer yet (see [`FileBuffers::needs_base`]; empty otherwise).
    pub(crate) fn write_chunk(
        &mut self,
        idx: u64,
        in_chunk: usize,
        src: &[u8],
        base: Vec<u8>,
        cs: u64,
        now: Instant,
    ) -> Wrote {
        let mut out = Wrote::default();
        let buf = self.bufs.entry(idx).or_insert_with(|| {
            // Charged at a full chunk whatever its length, so the accounting cannot drift as
            // the buffer grows.
            out.charged = cs;
            Buf {
                data: Arc::new(base),
                since: now,
                charged: cs,
                sealed: None,
                gaps: Vec::new(),
            }
        });
        if buf.sealed.take().is_some() {
            // Written again before its record's commit: dirty once more, charged in full.
            out.charged = cs - buf.charged;
            buf.charged = cs;
            buf.since = now;
        }
        let gaps = &mut buf.gaps;
        let bytes = Arc::make_mut(&mut buf.data);
        let end = in_chunk + src.len();
        let was_filled = bytes.len() as u64 == cs && gaps.is_empty();
        if end > bytes.capacity() && end >= FULL_RESERVE_FROM.min(cs as usize) {
            // A chunk written this far will most likely be written to its end (a sequential
            // writer): room for all of it at once, instead of doubling, which copied 3 MiB of
            // each 4 MiB chunk (1.5% of the mount's CPU while writing). Small files stay small.
            bytes.reserve_exact((cs as usize).max(end) - bytes.len());
        }
        if bytes.len() < in_chunk {
            // A hole before the write reads as zeros, unless a write fills it.
            if gaps.len() < MAX_GAPS {
                gaps.push((bytes.len(), in_chunk));
            } else {
                gaps.clear();
            }
            bytes.resize(in_chunk, 0);
        }
        // Over what is there, then appended: the appended part is not zeroed first.
        let overlap = bytes.len().min(end) - in_chunk;
        bytes[in_chunk..in_chunk + overlap].copy_from_slice(&src[..overlap]);
        bytes.extend_from_slice(&src[overlap..]);
        cover(gaps, in_chunk, end);
        // Filled by this write: a sequential writer reaching the chunk's end, or the last
        // gap of out-of-order writes closed.
        let filled = bytes.len() as u64 == cs && gaps.is_empty();
        if filled && (end == cs as usize || !was_filled) {
            out.full.push(idx);
        }
        let end = idx * cs + (in_chunk + src.len()) as u64;
        self.size = self.size.max(end);
        self.attr_dirty = true;
        out
    }

    /// Sets mtime and ctime after a write.
    pub(crate) fn touch(&mut self, now: Timestamp) {
        self.mtime = now;
        self.ctime = now;
        self.attr_dirty = true;
    }

    /// Takes attribute changes (no size: see [`SetAttr::deferrable`]) made at `now`, to commit
    /// with the buffered data.
    pub(crate) fn defer(&mut self, changes: &SetAttr, now: Timestamp) {
        self.set.get_or_insert_with(SetAttr::default).merge(changes);
        self.set_sealed = None;
        if let Some(mtime) = changes.mtime {
            self.mtime = mtime;
        }
        self.ctime = changes.ctime.unwrap_or(now);
        self.attr_dirty = true;
    }

    /// Whether any buffer waits to be journaled.
    pub(crate) fn has_dirty(&self) -> bool {
        self.bufs.values().any(|b| b.sealed.is_none())
    }

    /// The dirty buffers to journal: all of them, or those of `only`.
    pub(crate) fn dirty(&self, only: Option<&[u64]>) -> Vec<(u64, Arc<Vec<u8>>)> {
        self.bufs
            .iter()
            .filter(|(_, b)| b.sealed.is_none())
            .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
            .map(|(i, b)| (*i, b.data.clone()))
            .collect()
    }

    /// Buffers dirty since before `cutoff`.
    pub(crate) fn older_than(&self, cutoff: Instant) -> Vec<u64> {
        self.bufs
            .iter()
            .filter(|(_, b)| b.sealed.is_none() && b.since < cutoff)
            .map(|(i, _)| *i)
            .collect()
    }

    /// The buffers `journaled` are in the journal now, with the attributes as of then: they
    /// leave memory. Returns the bytes to release from the budget.
    pub(crate) fn journaled(&mut self, journaled: &[u64]) -> u64 {
        self.spills += 1;
        let mut freed = 0;
        for idx in journaled {
            if let Some(b) = self.bufs.remove(idx) {
                freed += b.charged;
            }
        }
        self.attrs_went_with_data();
        freed
    }

    /// The buffers `sealed` are in journal records whose index commit is queued under
    /// `ticket`, with the attributes as of then (and `set`, if any): they stay, charged at
    /// their length only, until [`FileBuffers::release_applied`] sees the index has them.
    /// Returns the bytes to release from the budget.
    pub(crate) fn sealed(&mut self, sealed: &[u64], ticket: u64) -> u64 {
        self.spills += 1;
        let mut freed = 0;
        for idx in sealed {
            if let Some(b) = self.bufs.get_mut(idx) {
                let len = (b.data.len() as u64).min(b.charged);
                freed += b.charged - len;
                b.charged = len;
                b.sealed = Some(ticket);
            }
        }
        if self.set.is_some() {
            self.set_sealed = Some(ticket);
        }
        self.attrs_went_with_data();
        freed
    }

    /// Takes attribute changes made at `now` that were queued for the index under `ticket`
    /// (nothing buffered to carry them): replies merge them until the index has them.
    pub(crate) fn queued_attrs(&mut self, changes: &SetAttr, now: Timestamp, ticket: u64) {
        self.defer(changes, now);
        self.set_sealed = Some(ticket);
        self.attrs_went_with_data();
    }

    /// Drops what waited for queued changes up to ticket `applied` to be in the index (they
    /// are). Returns the bytes to release from the budget.
    pub(crate) fn release_applied(&mut self, applied: u64) -> u64 {
        let mut freed = 0;
        self.bufs.retain(|_, b| {
            let done = b.sealed.is_some_and(|s| s <= applied);
            if done {
                freed += b.charged;
            }
            !done
        });
        if self.set_sealed.is_some_and(|s| s <= applied) {
            self.set = None;
            self.set_sealed = None;
        }
        freed
    }

    /// Bytes the buffers are charged (what the budget must hold for them).
    #[cfg(test)]
    pub(crate) fn charged(&self) -> u64 {
        self.bufs.values().map(|b| b.charged).sum()
    }

    /// Whether anything waits for a deferred index commit.
    pub(crate) fn awaits_commit(&self) -> bool {
        self.set_sealed.is_some() || self.bufs.values().any(|b| b.sealed.is_some())
    }

    /// The attributes were committed without data (a flush with nothing to journal).
    pub(crate) fn attrs_committed(&mut self) {
        self.attrs_went_with_data();
    }

    /// Size and times went to the journal (or the index) with the last of the dirty data: with
    /// no buffer left to journal, nothing of them is pending any more.
    fn attrs_went_with_data(&mut self) {
        if !self.has_dirty() {
            self.attr_dirty = false;
        }
    }

    /// Cuts buffers to `size` (the index is cut by the caller in the same operation). Returns
    /// the bytes to release.
    pub(crate) fn truncate(&mut self, size: u64, cs: u64, now: Timestamp) -> u64 {
        let beyond = self.bufs.split_off(&size.div_ceil(cs));
        let freed: u64 = beyond.values().map(|b| b.charged).sum();
        if !size.is_multiple_of(cs) {
            if let Some(buf) = self.bufs.get_mut(&(size / cs)) {
                let keep = (size % cs) as usize;
                if buf.data.len() > keep {
                    Arc::make_mut(&mut buf.data).truncate(keep);
                    buf.gaps.retain_mut(|g| {
                        g.1 = g.1.min(keep);
                        g.0 < g.1
                    });
                }
            }
        }
        self.size = size;
        self.mtime = now;
        self.ctime = now;
        freed
    }
}

#[cfg(test)]
mod protocol_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 100;

    fn fresh() -> FileBuffers {
        FileBuffers::new(0, Timestamp::default(), Timestamp::default())
    }

    #[test]
    fn sequential_writes_fill_chunks_and_say_so() {
        let mut f = fresh();
        let now = Instant::now();
        let w = f.write_chunk(0, 0, &[1; 60], Vec::new(), CS, now);
        assert_eq!(w.charged, CS);
        assert!(w.full.is_empty());
        let w = f.write_chunk(0, 60, &[2; 40], Vec::new(), CS, now);
        assert_eq!(
            w,
            Wrote {
                charged: 0,
                full: vec![0]
            }
        );
        assert_eq!(f.size, 100);
        assert!(f.is_dirty());
        let dirty = f.dirty(None);
        assert_eq!(dirty.len(), 1);
        assert_eq!(&dirty[0].1[..60], &[1; 60]);
        assert_eq!(f.journaled(&[0]), CS);
        assert!(!f.is_dirty(), "journaled with the attributes");
    }

    #[test]
    fn writes_out_of_order_fill_a_chunk_only_once_every_gap_is_written() {
        // The end before the middle, as a writer filling in a header or a table last does.
        let mut f = fresh();
        let now = Instant::now();
        for (at, len) in [(0, 25), (75, 25), (50, 10)] {
            let w = f.write_chunk(0, at, &vec![at as u8; len], Vec::new(), CS, now);
            assert!(w.full.is_empty(), "taken for filled after {at}+{len}");
        }
        // Into the middle of the remaining gap 25..50 (60..75 too), then the rest.
        let w = f.write_chunk(0, 30, &[9; 10], Vec::new(), CS, now);
        assert!(w.full.is_empty());
        let w = f.write_chunk(0, 60, &[6; 15], Vec::new(), CS, now);
        assert!(w.full.is_empty());
        let w = f.write_chunk(0, 25, &[2; 5], Vec::new(), CS, now);
        assert!(w.full.is_empty());
        let w = f.write_chunk(0, 40, &[4; 10], Vec::new(), CS, now);
        assert_eq!(w.full, vec![0], "the last gap closed");
        let data = &f.dirty(None)[0].1;
        assert_eq!(data.len(), 100);
        assert!(data[..25].iter().all(|&b| b == 0) && data[75..].iter().all(|&b| b == 75));
        assert!(data[25..30].iter().all(|&b| b == 2) && data[30..40].iter().all(|&b| b == 9));
        // A truncation cuts the gaps with the data: extending again, the gap is past the cut.
        let mut f = fresh();
        f.write_chunk(0, 80, &[1; 20], Vec::new(), CS, now);
        f.truncate(50, CS, Timestamp::default());
        let w = f.write_chunk(0, 50, &[3; 50], Vec::new(), CS, now);
        assert!(w.full.is_empty(), "0..50 was never written");
        let w = f.write_chunk(0, 0, &[5; 50], Vec::new(), CS, now);
        assert_eq!(w.full, vec![0]);
    }

    #[test]
    fn partial_writes_need_the_old_content_only_when_it_exists() {
        let mut f = FileBuffers::new(250, Timestamp::default(), Timestamp::default());
        assert!(f.needs_base(1, 10, 20, CS), "middle of an existing chunk");
        assert!(!f.needs_base(1, 0, CS, CS), "the whole chunk");
        assert!(!f.needs_base(3, 0, 10, CS), "beyond the end");
        assert!(
            !f.needs_base(2, 0, 60, CS),
            "from the chunk start past the end of the file"
        );
        assert!(
            f.needs_base(2, 10, 10, CS),
            "inside the last, partial chunk"
        );
        f.write_chunk(1, 10, &[9; 5], vec![7; 100], CS, Instant::now());
        assert!(
            !f.needs_base(1, 50, 5, CS),
            "a buffered chunk has its content"
        );
        let d = f.dirty(None);
        assert_eq!(&d[0].1[8..16], &[7, 7, 9, 9, 9, 9, 9, 7]);
    }

    #[test]
    fn truncate_drops_and_cuts_buffers_and_releases_exactly_what_was_charged() {
        let mut f = fresh();
        let now = Instant::now();
        let mut charged = 0;
        for idx in 0..3 {
            charged += f
                .write_chunk(idx, 0, &[1; 100], Vec::new(), CS, now)
                .charged;
        }
        assert_eq!(charged, 3 * CS);
        let freed = f.truncate(150, CS, Timestamp::default());
        assert_eq!(freed, CS, "chunk 2 dropped");
        assert_eq!(f.size, 150);
        let d = f.dirty(None);
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].1.len(), 50, "chunk 1 cut");
        assert_eq!(f.truncate(0, CS, Timestamp::default()), 2 * CS);
        assert_eq!(
            f.truncate(0, CS, Timestamp::default()),
            0,
            "nothing is released twice"
        );
    }

    #[test]
    fn only_selected_or_old_buffers_are_taken() {
        let mut f = fresh();
        let t0 = Instant::now();
        f.write_chunk(0, 0, &[1], Vec::new(), CS, t0);
        let t1 = t0 + std::time::Duration::from_secs(5);
        f.write_chunk(5, 0, &[1], Vec::new(), CS, t1);
        assert_eq!(
            f.older_than(t0 + std::time::Duration::from_secs(1)),
            vec![0]
        );
        assert_eq!(f.dirty(Some(&[5])).len(), 1);
        assert_eq!(f.journaled(&[0]), CS);
        assert!(f.is_dirty(), "chunk 5 is still dirty");
    }

    #[test]
    fn the_budget_never_goes_negative() {
        let b = DirtyBudget::new(1000);
        b.charge(600);
        assert!(b.above(1, 2));
        b.release(700);
        assert_eq!(b.used(), 0);
    }
}
