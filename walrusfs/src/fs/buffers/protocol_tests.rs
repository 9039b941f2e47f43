//! The write-back protocol under a concurrency checker ([`shuttle`]): writers, a spiller and a
//! reader share one file's [`FileBuffers`] the way the filesystem does: each transition under
//! the file's lock, a partial write's base fetched with the lock released
//! ([`write_locked`], the very function `Fs::write` calls), a spill journaling what `dirty`
//! returns and calling `journaled` under one hold of the lock (or, as a small file's close
//! does, `sealed` under a ticket, the buffers staying until the index applies their commit and
//! `release_applied` drops them). Shuttle runs thousands of
//! random interleavings (with a seed it prints on failure, to replay one).
//!
//! What must hold in every interleaving: no write is lost (each writer's bytes are in the
//! file's content at the end, whatever was journaled when), a reader never sees a chunk go
//! back to older content, and the dirty budget is exactly what the buffers left in memory are
//! charged. The last test takes the generation check out of the protocol and shows the
//! checker finds the write it loses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use shuttle::sync::{Arc, Mutex, MutexGuard};

use super::{write_locked, DirtyBudget, FileBuffers, Locked};
use crate::index::Timestamp;

const CS: u64 = 64;
/// Bytes each writer writes: writer `w` writes `[w + 1; SPAN]` at `w * SPAN` of each chunk.
const SPAN: usize = 8;
const WRITERS: usize = 3;
const CHUNKS: u64 = 2;
const ITERATIONS: usize = 2000;

impl Locked for MutexGuard<'_, FileBuffers> {
    fn buffers(&mut self) -> &mut FileBuffers {
        self
    }
}

/// One file: its buffers, and what its journal holds per chunk (what a base fetch reads).
struct File {
    buffers: Mutex<FileBuffers>,
    journal: Mutex<BTreeMap<u64, Vec<u8>>>,
    budget: DirtyBudget,
    /// The same charges and releases without the budget's floor at zero, so a release of
    /// more than was charged shows.
    ledger: AtomicI64,
    /// Tickets handed to spills whose index commit is queued (`Index::defer_journal`).
    tickets: AtomicU64,
}

impl File {
    fn new() -> Arc<File> {
        Arc::new(File {
            buffers: Mutex::new(FileBuffers::new(
                // The file already has both chunks, journaled: partial writes need bases. The
                // last is half full, so its buffer is shorter than the chunk it is charged.
                CHUNKS * CS - CS / 2,
                Timestamp::default(),
                Timestamp::default(),
            )),
            journal: Mutex::new(
                (0..CHUNKS)
                    .map(|c| {
                        let len = if c + 1 == CHUNKS { CS / 2 } else { CS };
                        (c, vec![0; len as usize])
                    })
                    .collect(),
            ),
            budget: DirtyBudget::new(1 << 20),
            ledger: AtomicI64::new(0),
            tickets: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FileBuffers> {
        self.buffers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk's content as a base fetch sees it (the journal; the lock is not held).
    fn fetch(&self, idx: u64) -> Result<Vec<u8>, ()> {
        let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        Ok(journal.get(&idx).cloned().unwrap_or_default())
    }

    /// A writer's partial write, as `Fs::write` makes it.
    fn write(&self, idx: u64, at: usize, src: &[u8], check_generation: bool) {
        let st = self.lock();
        let (st, wrote) = if check_generation {
            write_locked(
                st,
                || self.lock(),
                || self.fetch(idx),
                idx,
                at as u64,
                src,
                CS,
                Instant::now(),
            )
            .unwrap_or_else(|()| unreachable!())
        } else {
            unchecked_write(self, st, idx, at, src)
        };
        self.budget.charge(wrote.charged);
        self.ledger
            .fetch_add(wrote.charged as i64, Ordering::SeqCst);
        drop(st);
    }

    /// A spill, as `Fs::spill` makes it: what `dirty` returns goes to the journal and leaves
    /// memory, all under one hold of the file's lock.
    /// With `defer`, a small file's close: the buffers stay, sealed under a ticket, until the
    /// index applies it ([`File::apply`]).
    fn spill(&self, defer: bool) {
        let mut st = self.lock();
        let dirty = st.dirty(None);
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        for (idx, data) in &dirty {
            journal.insert(*idx, data.to_vec());
        }
        drop(journal);
        let done: Vec<u64> = dirty.iter().map(|(i, _)| *i).collect();
        let freed = if defer {
            let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
            st.sealed(&done, ticket)
        } else {
            st.journaled(&done)
        };
        self.release(freed);
    }

    fn release(&self, freed: u64) {
        self.budget.release(freed);
        self.ledger.fetch_sub(freed as i64, Ordering::SeqCst);
    }

    /// The index applies every queued commit so far; the file's lock then drops what waited
    /// for them (as `Fs::settle` does).
    fn apply(&self) {
        let applied = self.tickets.load(Ordering::SeqCst);
        let freed = self.lock().release_applied(applied);
        self.release(freed);
    }

    /// Chunk `idx` as a reader sees it: its buffer, else the journal (looked up in that order,
    /// as `Fs::read` does: a chunk only moves from buffer to journal).
    fn read(&self, idx: u64) -> Vec<u8> {
        let buffered = self.lock().range(idx, idx).pop().map(|(_, d)| d.to_vec());
        buffered.unwrap_or_else(|| self.fetch(idx).unwrap_or_default())
    }
}

/// The protocol without the generation check: a base fetched before a spill is used as is.
fn unchecked_write<'a>(
    file: &'a File,
    mut st: MutexGuard<'a, FileBuffers>,
    idx: u64,
    at: usize,
    src: &[u8],
) -> (MutexGuard<'a, FileBuffers>, super::Wrote) {
    let n = src.len() as u64;
    let mut base = Vec::new();
    if st.needs_base(idx, at as u64, n, CS) {
        drop(st);
        let fetched = file.fetch(idx).unwrap_or_default();
        st = file.lock();
        if st.needs_base(idx, at as u64, n, CS) {
            base = fetched;
        }
    }
    let wrote = st.write_chunk(idx, at, src, base, CS, Instant::now());
    (st, wrote)
}

/// Writers, a spiller (deferring its commits or not), the index applying deferred commits and
/// a reader race; every invariant is checked at the end of each run.
fn race(check_generation: bool, defer: bool) {
    let file = File::new();
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let file = file.clone();
        threads.push(shuttle::thread::spawn(move || {
            for idx in 0..CHUNKS {
                file.write(idx, w * SPAN, &[w as u8 + 1; SPAN], check_generation);
            }
        }));
    }
    {
        let file = file.clone();
        threads.push(shuttle::thread::spawn(move || {
            for _ in 0..3 {
                file.spill(defer);
                shuttle::thread::yield_now();
            }
        }));
    }
    if defer {
        let file = file.clone();
        threads.push(shuttle::thread::spawn(move || {
            for _ in 0..3 {
                file.apply();
                shuttle::thread::yield_now();
            }
        }));
    }
    let monotonic = Arc::new(AtomicBool::new(true));
    {
        let (file, monotonic) = (file.clone(), monotonic.clone());
        threads.push(shuttle::thread::spawn(move || {
            // A byte a writer has set never reads as unset again.
            let mut seen = vec![vec![0u8; CS as usize]; CHUNKS as usize];
            for _ in 0..4 {
                for idx in 0..CHUNKS {
                    let now = file.read(idx);
                    for (i, was) in seen[idx as usize].iter_mut().enumerate() {
                        let byte = now.get(i).copied().unwrap_or(0);
                        if *was != 0 && byte != *was {
                            monotonic.store(false, Ordering::SeqCst);
                        }
                        *was = byte;
                    }
                }
                shuttle::thread::yield_now();
            }
        }));
    }
    for t in threads {
        t.join().unwrap_or_else(|_| panic!("a thread panicked"));
    }
    for idx in 0..CHUNKS {
        let content = file.read(idx);
        for w in 0..WRITERS {
            let got = &content[w * SPAN..(w + 1) * SPAN];
            assert!(
                got.iter().all(|&b| b == w as u8 + 1),
                "writer {w}'s bytes in chunk {idx} were lost: {content:?}"
            );
        }
    }
    assert!(
        monotonic.load(Ordering::SeqCst),
        "a reader saw a chunk go back to older content"
    );
    let st = file.lock();
    assert_eq!(
        file.budget.used(),
        st.charged(),
        "the budget is what the buffers left are charged"
    );
    assert_eq!(
        file.ledger.load(Ordering::SeqCst),
        st.charged() as i64,
        "every release matches a charge"
    );
    let waiting: u64 = st
        .range(0, CHUNKS)
        .iter()
        .filter(|(idx, _)| !st.dirty(None).iter().any(|(d, _)| d == idx))
        .map(|(_, data)| data.len() as u64)
        .sum();
    let dirty = st.dirty(None).len() as u64;
    assert_eq!(
        st.charged(),
        dirty * CS + waiting,
        "dirty buffers are charged a chunk, those waiting for their commit their length"
    );
}

#[test]
fn no_write_is_lost_in_any_interleaving_of_writers_spills_and_reads() {
    shuttle::check_random(|| race(true, false), ITERATIONS);
}

#[test]
fn no_write_is_lost_when_spills_defer_their_commit() {
    shuttle::check_random(|| race(true, true), ITERATIONS);
}

#[test]
fn without_the_generation_check_the_checker_finds_a_lost_write() {
    let found = std::panic::catch_unwind(|| {
        shuttle::check_random(|| race(false, false), ITERATIONS);
    });
    assert!(
        found.is_err(),
        "{ITERATIONS} interleavings never lost a write without the check: the test cannot fail"
    );
}
