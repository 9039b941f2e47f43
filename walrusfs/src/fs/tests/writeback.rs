//! The write-back journal and packs: close returns before the network, a crash loses nothing
//! closed, small files share blobs, a full journal makes writers (and only writers) wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::journal::{Append, EntryHeader, Journal};

#[test]
fn close_returns_before_the_network_and_a_crash_loses_nothing_closed() {
    let s = setup();
    s.store.fail_puts.store(true, Ordering::SeqCst);
    let (ino, fh) = s.create("f");
    let data = pattern(3 * CHUNK as usize + 77, 3);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    assert_eq!(s.store.len(), 0, "nothing reached the network");
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(
        s.read_all(fh),
        data,
        "closed data read back from the journal after a crash"
    );
    assert_eq!(s.fs.getattr(ino).unwrap().size, data.len() as u64);
    // The network comes back: the journal drains into the store.
    s.store.fail_puts.store(false, Ordering::SeqCst);
    s.fs.sync_all().unwrap();
    assert!(!s.store.is_empty());
    assert_eq!(s.fs.journal_backlog().1, 0);
    s.fs.index().check().unwrap();
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
}

#[test]
fn records_appended_but_never_committed_are_replayed() {
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, b"committed").unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    let Setup { fs, store, dir, rt } = s;
    crash(fs);
    // A record whose append made it to the journal but whose index commit did not (the process
    // died between the two): the next open replays it.
    let key = DataKey::from_bytes([7; 32]);
    let place = crate::data::crypto::ChunkPlace {
        ino,
        index: 1,
        version: 1000,
        salt: [4; 16],
    };
    let plain = pattern(CHUNK as usize, 8);
    let sealed = key.seal(crate::data::crypto::Segments::DEFAULT, &place, &plain);
    {
        let (journal, _) = Journal::open(&dir.path().join("journal"), 1 << 30).unwrap();
        let header = EntryHeader {
            seq: 0,
            ino,
            chunk: 1,
            version: 1000,
            salt: [4; 16],
            stored_len: CHUNK,
            size: 2 * u64::from(CHUNK),
            mtime: crate::index::Timestamp::now(),
            ctime: crate::index::Timestamp::now(),
        };
        journal
            .append(
                &[Append {
                    header,
                    attrs: None,
                    body: &sealed,
                }],
                Duration::ZERO,
                |_| (),
            )
            .unwrap();
    }
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let s = Setup { fs, store, dir, rt };
    let fh = s.fs.open(ino, false).unwrap();
    let back = s.read_all(fh);
    assert_eq!(&back[..9], b"committed");
    assert_eq!(&back[CHUNK as usize..], &plain[..]);
    s.fs.index().check().unwrap();
}

#[test]
fn small_files_share_packs_and_pack_gc_keeps_the_live_ones() {
    let s = setup();
    let mut files = Vec::new();
    for i in 0..60 {
        let (ino, fh) = s.create(&format!("small{i}"));
        let data = pattern(3000 + i, i as u8);
        s.fs.write(fh, 0, &data).unwrap();
        s.fs.flush(fh).unwrap();
        s.fs.release(fh).unwrap();
        files.push((ino, data));
    }
    s.fs.sync_all().unwrap();
    assert!(
        s.store.len() <= 2,
        "60 small files in {} blobs",
        s.store.len()
    );
    let packs = s.store.len();
    // Delete most of them: the packs stay while one file still points into them.
    for i in 0..59 {
        s.fs.unlink(ROOT_INO, format!("small{i}").as_bytes())
            .unwrap();
    }
    s.fs.sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (ino, data) = &files[59];
    let fh = s.fs.open(*ino, false).unwrap();
    assert_eq!(&s.read_all(fh), data);
    s.fs.release(fh).unwrap();
    assert!(!s.store.is_empty() && s.store.len() <= packs);
    // The last one goes: every pack is collected.
    s.fs.unlink(ROOT_INO, b"small59").unwrap();
    s.fs.sync_all().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.store.is_empty() {
        assert!(Instant::now() < deadline, "packs never collected");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.fs.index().check().unwrap();
}

#[test]
fn a_full_journal_makes_writers_wait_while_metadata_answers_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    store.fail_puts.store(true, Ordering::SeqCst);
    let cfg = FsConfig {
        journal_bytes: 4 * u64::from(CHUNK),
        dirty_budget: 2 * u64::from(CHUNK),
        ..config()
    };
    let fs = open_fs(dir.path(), store.clone(), &rt, cfg);
    let a = fs
        .create_node(CTX, ROOT_INO, b"big", FileKind::File, 0o644, 0, None)
        .unwrap();
    let data = pattern(12 * CHUNK as usize, 2);
    let writer = {
        let fs = fs.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            let fh = fs.open(a.ino, true).unwrap();
            for (i, piece) in data.chunks(CHUNK as usize / 2).enumerate() {
                fs.write(fh, (i * piece.len()) as u64, piece).unwrap();
            }
            fs.flush(fh).unwrap();
            fs.release(fh).unwrap();
        })
    };
    // The writer fills the journal and waits; metadata operations do not.
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        !writer.is_finished(),
        "the writer should be waiting for journal room"
    );
    let t = Instant::now();
    fs.create_node(CTX, ROOT_INO, b"dir", FileKind::Dir, 0o755, 0, None)
        .unwrap();
    fs.getattr(a.ino).unwrap();
    assert_eq!(fs.readdir(ROOT_INO, 0, 100).unwrap().len(), 2);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "metadata waited {:?}",
        t.elapsed()
    );
    // The network comes back: the writer resumes and finishes; nothing is lost.
    store.fail_puts.store(false, Ordering::SeqCst);
    writer.join().unwrap();
    fs.sync_all().unwrap();
    let fh = fs.open(a.ino, false).unwrap();
    assert_eq!(fs.read(fh, 0, u32::MAX).unwrap(), data);
    fs.index().check().unwrap();
}

#[test]
fn a_writer_blocked_too_long_gets_eio_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    store.fail_puts.store(true, Ordering::SeqCst);
    let cfg = FsConfig {
        journal_bytes: 2 * u64::from(CHUNK),
        journal_wait: Duration::from_millis(500),
        ..config()
    };
    let fs = open_fs(dir.path(), store.clone(), &rt, cfg);
    let a = fs
        .create_node(CTX, ROOT_INO, b"f", FileKind::File, 0o644, 0, None)
        .unwrap();
    let fh = fs.open(a.ino, true).unwrap();
    let data = pattern(6 * CHUNK as usize, 6);
    let mut failed = None;
    for (i, piece) in data.chunks(CHUNK as usize).enumerate() {
        if let Err(e) = fs.write(fh, (i * piece.len()) as u64, piece) {
            failed = Some((i, e));
            break;
        }
    }
    let (at, err) = failed.expect("writes past a full journal fail after the wait");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // What was written before the failure is readable; the failed chunk stays buffered.
    let back = fs.read(fh, 0, u32::MAX).unwrap();
    assert_eq!(&back[..at * CHUNK as usize], &data[..at * CHUNK as usize]);
    store.fail_puts.store(false, Ordering::SeqCst);
    fs.fsync(a.ino).unwrap();
    let back = fs.read(fh, 0, u32::MAX).unwrap();
    assert_eq!(
        &back[..(at + 1) * CHUNK as usize],
        &data[..(at + 1) * CHUNK as usize]
    );
}

#[test]
fn sync_close_waits_for_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let cfg = FsConfig {
        sync_close: true,
        ..config()
    };
    let fs = open_fs(dir.path(), store.clone(), &rt, cfg);
    let a = fs
        .create_node(CTX, ROOT_INO, b"f", FileKind::File, 0o644, 0, None)
        .unwrap();
    let fh = fs.open(a.ino, true).unwrap();
    fs.write(fh, 0, b"stored at close").unwrap();
    fs.flush(fh).unwrap();
    assert_eq!(store.len(), 1, "close stored the data");
    assert_eq!(fs.journal_backlog().1, 0);
    store.fail_puts.store(true, Ordering::SeqCst);
    fs.write(fh, 0, b"not stored").unwrap();
    assert_eq!(
        fs.flush(fh).unwrap_err().errno(),
        libc::EIO,
        "close reports the failure"
    );
}

#[test]
fn concurrent_partial_writes_to_one_chunk_lose_nothing_while_it_is_journaled() {
    // Many threads write disjoint pieces of the same chunks in scrambled order while full
    // chunks and memory pressure journal them: a piece must never be overwritten by a stale
    // copy of the chunk fetched before another thread's journaling.
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let cfg = FsConfig {
        dirty_budget: u64::from(CHUNK),
        ..config()
    };
    let fs = open_fs(dir.path(), store, &rt, cfg);
    for round in 0..5u8 {
        let name = format!("race{round}");
        let a = fs
            .create_node(
                CTX,
                ROOT_INO,
                name.as_bytes(),
                FileKind::File,
                0o644,
                0,
                None,
            )
            .unwrap();
        let fh = fs.open(a.ino, true).unwrap();
        let len = 3 * CHUNK as usize;
        fs.setattr(
            a.ino,
            SetAttr {
                size: Some(len as u64),
                ..Default::default()
            },
        )
        .unwrap();
        let data = pattern(len, round);
        let piece = 4096;
        let mut order: Vec<usize> = (0..len / piece).collect();
        // A fixed scramble: reversed halves interleaved.
        order.sort_by_key(|i| (i % 7, usize::MAX - i));
        let chunks: Vec<Vec<usize>> = (0..4)
            .map(|t| order.iter().copied().skip(t).step_by(4).collect())
            .collect();
        std::thread::scope(|s| {
            for mine in &chunks {
                let fs = fs.clone();
                let data = &data;
                s.spawn(move || {
                    for &i in mine {
                        fs.write(fh, (i * piece) as u64, &data[i * piece..(i + 1) * piece])
                            .unwrap();
                    }
                });
            }
        });
        fs.flush(fh).unwrap();
        assert_eq!(fs.read(fh, 0, u32::MAX).unwrap(), data, "round {round}");
        fs.release(fh).unwrap();
    }
}

#[test]
fn mostly_dead_packs_are_compacted_under_concurrent_reads() {
    let s = setup();
    let mut files = Vec::new();
    for i in 0..80 {
        let (ino, fh) = s.create(&format!("p{i}"));
        let data = pattern(10_000 + i, i as u8);
        s.fs.write(fh, 0, &data).unwrap();
        s.fs.release(fh).unwrap();
        files.push((ino, data));
    }
    s.fs.sync_all().unwrap();
    let before: Vec<_> = s.store.blob_ids();
    // Delete 70 of 80: the packs are mostly dead.
    for i in 0..70 {
        s.fs.unlink(ROOT_INO, format!("p{i}").as_bytes()).unwrap();
    }
    s.fs.sync_all().unwrap();
    let survivors = &files[70..];
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Readers keep reading the survivors while their chunks move.
        for _ in 0..3 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    for (ino, data) in survivors {
                        let fh = s.fs.open(*ino, false).unwrap();
                        assert_eq!(&s.fs.read(fh, 0, u32::MAX).unwrap(), data);
                        s.fs.release(fh).unwrap();
                    }
                }
            });
        }
        let moved = s.rt.block_on(s.fs.compact_round()).unwrap();
        assert_eq!(moved, 10, "every live chunk moved to a new pack");
        stop.store(true, Ordering::Relaxed);
    });
    s.fs.index().check().unwrap();
    // The old packs lost their last refs: GC deletes them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while before.iter().any(|b| s.store.contains(b)) {
        assert!(Instant::now() < deadline, "old packs never collected");
        std::thread::sleep(Duration::from_millis(100));
    }
    for (ino, data) in survivors {
        let fh = s.fs.open(*ino, false).unwrap();
        assert_eq!(&s.read_all(fh), data);
    }
    assert_eq!(
        s.rt.block_on(s.fs.compact_round()).unwrap(),
        0,
        "nothing left to compact"
    );
}

#[test]
fn a_new_file_uses_the_versions_its_creation_reserved_and_never_reuses_them() {
    use crate::index::{CREATOR_VERSIONS, FIRST_VERSION};
    let s = setup();
    let (attr, fh) =
        s.fs.create_and_open(CTX, ROOT_INO, b"v", 0o644, true)
            .unwrap();
    let ino = attr.ino;
    let first = pattern(5000, 1);
    s.fs.write(fh, 0, &first).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.write(fh, 0, &pattern(5000, 2)).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    // Two closes, no version transaction: the counter is where the create left it.
    assert_eq!(
        s.fs.index().get_attr(ino).unwrap().next_version,
        FIRST_VERSION + CREATOR_VERSIONS
    );
    s.fs.sync_all().unwrap();
    let stored = s.fs.index().chunk(ino, 0).unwrap().unwrap();
    assert_eq!(
        stored.version,
        FIRST_VERSION + 1,
        "the second close's version"
    );
    // A crash loses the in-memory spare versions; later writes get fresh ones.
    let s = s.reopen();
    let fh = s.fs.open(ino, true).unwrap();
    let third = pattern(7000, 3);
    s.fs.write(fh, 0, &third).unwrap();
    s.fs.release(fh).unwrap();
    s.fs.sync_all().unwrap();
    let stored = s.fs.index().chunk(ino, 0).unwrap().unwrap();
    assert!(
        stored.version >= FIRST_VERSION + CREATOR_VERSIONS,
        "a version from the creator's range was handed out again: {}",
        stored.version
    );
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), third);
    s.fs.index().check().unwrap();
}

#[test]
fn a_blob_a_failed_upload_queued_for_gc_survives_when_a_retry_stores_it() {
    let s = setup();
    // The first upload reaches too few nodes: the blob is queued for deletion.
    s.store.partial_puts.store(true, Ordering::SeqCst);
    let (ino, fh) = s.create("f");
    let data = pattern(2 * CHUNK as usize + 10, 9);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    assert!(s.fs.sync_all().is_err());
    assert!(
        s.fs.gc_backlog() > 0,
        "the partial blob is queued for deletion"
    );
    // The retry stores the same records, so the same blob: it must leave the GC queue.
    s.store.partial_puts.store(false, Ordering::SeqCst);
    s.fs.sync_all().unwrap();
    let ids: Vec<_> =
        s.fs.index()
            .blobs()
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
    assert!(!ids.is_empty());
    s.fs.index().check().unwrap();
    // GC runs (no grace in these tests) and must not touch it.
    std::thread::sleep(Duration::from_millis(500));
    for id in &ids {
        assert!(s.store.contains(id), "GC deleted live blob {id}");
    }
    assert_eq!(s.fs.gc_backlog(), 0);
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
}

#[test]
fn attribute_changes_of_a_file_being_written_commit_with_its_data() {
    use crate::index::Timestamp;
    let s = setup();
    let (ino, fh) = s.create("f");
    let data = pattern(5000, 9);
    s.fs.write(fh, 0, &data).unwrap();
    let old = Timestamp {
        secs: 1_000_000,
        nanos: 5,
    };
    // What tar does before closing each file it extracts.
    let before = s.fs.index().committed();
    s.fs.setattr(
        ino,
        SetAttr {
            mtime: Some(old),
            ..SetAttr::default()
        },
    )
    .unwrap();
    s.fs.setattr(
        ino,
        SetAttr {
            uid: Some(1234),
            gid: Some(99),
            ..SetAttr::default()
        },
    )
    .unwrap();
    let a = s.fs.setattr(ino, chmod(0o600)).unwrap();
    assert_eq!(
        s.fs.index().committed(),
        before,
        "no index transaction while the data is buffered"
    );
    let want = |a: &crate::index::InodeAttr| (a.perm, a.uid, a.gid, a.mtime, a.size);
    let expected = (0o600, 1234, 99, old, data.len() as u64);
    assert_eq!(want(&a), expected, "setattr's reply");
    assert_eq!(want(&s.fs.getattr(ino).unwrap()), expected, "getattr");
    assert_eq!(
        s.fs.lookup(ROOT_INO, b"f").unwrap().perm,
        0o600,
        "lookup by name"
    );
    assert_ne!(s.fs.index().get_attr(ino).unwrap().perm, 0o600);
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    // The close journaled data and changes; their commit may wait for the next index
    // transaction (a small file's does), and replies show them meanwhile.
    assert_eq!(want(&s.fs.getattr(ino).unwrap()), expected, "after close");
    // Closed means safe from a crash: the records carry the changes, and the next mount
    // replays what the index lacks.
    let s = s.reopen();
    assert_eq!(
        want(&s.fs.index().get_attr(ino).unwrap()),
        expected,
        "after a crash"
    );
    assert_eq!(want(&s.fs.getattr(ino).unwrap()), expected, "after a crash");
    let fh = s.fs.open(ino, true).unwrap();
    assert_eq!(s.read_all(fh), data);

    // A change waiting for buffers a truncation then cuts away is committed all the same.
    s.fs.write(fh, 0, b"more").unwrap();
    s.fs.setattr(ino, chmod(0o640)).unwrap();
    s.fs.setattr(
        ino,
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(s.fs.getattr(ino).unwrap().perm, 0o640);
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    let a = s.fs.index().get_attr(ino).unwrap();
    assert_eq!((a.perm, a.size), (0o640, 0));
    s.fs.index().check().unwrap();
}

#[test]
fn small_files_whose_commit_waits_read_and_change_right() {
    let s = setup();
    let (ino, fh) = s.create("f");
    let data = pattern(3000, 4);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.setattr(ino, chmod(0o600)).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    // Whether or not the commit happened yet, everything reads as written.
    let a = s.fs.getattr(ino).unwrap();
    assert_eq!((a.size, a.perm), (3000, 0o600));
    let fh = s.fs.open(ino, true).unwrap();
    assert_eq!(s.read_all(fh), data);

    // A partial overwrite of a chunk whose commit may still wait: merged, not lost.
    s.fs.write(fh, 100, b"xyz").unwrap();
    let mut want = data.clone();
    want[100..103].copy_from_slice(b"xyz");
    assert_eq!(s.read_all(fh), want);
    s.fs.flush(fh).unwrap();
    assert_eq!(s.read_all(fh), want, "after the second close");
    s.fs.release(fh).unwrap();

    // Another file's create, then a truncation: applied in order, the truncation last.
    let (_, gh) = s.create("g");
    s.fs.release(gh).unwrap();
    assert_eq!(s.fs.index().get_attr(ino).unwrap().size, 3000);
    let cut = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(s.fs.setattr(ino, cut).unwrap().size, 10);
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), &want[..10]);
    s.fs.release(fh).unwrap();

    s.fs.sync_all().unwrap();
    assert_eq!(s.fs.dirty_bytes(), 0, "nothing is left charged in memory");
    let a = s.fs.index().get_attr(ino).unwrap();
    assert_eq!((a.size, a.perm), (10, 0o600));
    s.fs.index().check().unwrap();
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), &want[..10]);
}

#[test]
fn buffers_kept_for_queued_commits_go_with_the_next_transaction_and_stay_within_the_budget() {
    let budget = 8 * u64::from(CHUNK);
    let s = setup_with(FsConfig {
        dirty_budget: budget,
        ..config()
    });

    // A new file's creation is queued too, so the next create keeps f's buffers; the next
    // transaction (a mkdir here) applies the queued commit: the closed file's buffers go with
    // it, not at the flusher's next round.
    let (f, fh) = s.create("f");
    s.fs.write(fh, 0, &pattern(3000, 1)).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    let (_, gh) = s.create("g");
    assert_eq!(
        s.fs.dirty_bytes(),
        3000,
        "f's commit waits with g's creation"
    );
    s.fs.create_node(CTX, ROOT_INO, b"d", FileKind::Dir, 0o755, 0, None)
        .unwrap();
    assert_eq!(
        s.fs.dirty_bytes(),
        0,
        "f's buffers are released after the mkdir"
    );
    assert!(!s.fs.is_open(f), "f's record is dropped");
    s.fs.release(gh).unwrap();

    // Closes with no create between them (the files were created first): without a
    // transaction to apply the queue, memory pressure does. Each file is 1.5 chunks, under
    // the size whose commit is queued.
    let size = 3 * CHUNK as usize / 2;
    let files: Vec<(u64, u64)> = (0..24).map(|i| s.create(&format!("h{i}"))).collect();
    let (mut peak, mut pressed) = (0, 0);
    for (i, &(_, fh)) in files.iter().enumerate() {
        s.fs.write(fh, 0, &pattern(size, i as u8)).unwrap();
        let used = s.fs.dirty_bytes();
        peak = peak.max(used);
        s.fs.flush(fh).unwrap();
        if used > budget / 2 {
            // Past half the budget a close commits instead of queuing, applying the queue.
            assert!(s.fs.index().deferred_empty(), "close {i} queued its commit");
            pressed += 1;
        }
        s.fs.release(fh).unwrap();
        peak = peak.max(s.fs.dirty_bytes());
    }
    assert!(pressed > 0, "the test never reached memory pressure");
    assert!(peak <= budget, "peak dirty {peak} > budget {budget}");
    for (i, &(ino, _)) in files.iter().enumerate() {
        let fh = s.fs.open(ino, false).unwrap();
        assert_eq!(s.read_all(fh), pattern(size, i as u8), "file {i}");
        s.fs.release(fh).unwrap();
    }
    s.fs.sync_all().unwrap();
    assert_eq!(s.fs.dirty_bytes(), 0);
    s.fs.index().check().unwrap();
}

#[test]
fn records_written_after_the_journal_was_emptied_are_replayed() {
    // With every segment reclaimed the journal directory is empty. A restart must not number
    // new records from 1 again: the next replay would take them for committed ones (the
    // index's mark is past them) and lose what close returned for.
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, b"old").unwrap();
    s.fs.fsync(ino).unwrap();
    s.fs.release(fh).unwrap();
    s.fs.reclaim_journal().unwrap();
    assert_eq!(s.fs.inner.journal.bytes(), 0, "every segment reclaimed");
    let s = s.reopen();
    let fh = s.fs.open(ino, true).unwrap();
    s.fs.write(fh, 0, b"new").unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    // Killed before the close's queued commit was applied: the replay redoes it.
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), b"new");
}

#[test]
fn attribute_changes_without_buffered_data_ride_on_the_next_transaction() {
    use crate::index::Timestamp;
    let s = setup();
    let old = Timestamp {
        secs: 2_000_000,
        nanos: 7,
    };
    let perm_mtime = |a: &crate::index::InodeAttr| (a.perm, a.mtime);

    // rsync's order: the mode before writing, times and mode again after closing, a rename.
    let (ino, fh) = s.create(".f.tmp");
    let a = s.fs.setattr(ino, chmod(0o600)).unwrap();
    assert_eq!(a.perm, 0o600, "setattr's reply");
    assert_eq!(s.fs.getattr(ino).unwrap().perm, 0o600, "getattr");
    let data = pattern(700, 3);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    s.fs.setattr(
        ino,
        SetAttr {
            mtime: Some(old),
            atime: Some(old),
            ..SetAttr::default()
        },
    )
    .unwrap();
    s.fs.setattr(ino, chmod(0o640)).unwrap();
    // Closed, with nothing buffered: the replies come from what waits for the index.
    assert_eq!(perm_mtime(&s.fs.getattr(ino).unwrap()), (0o640, old));
    assert_eq!(
        perm_mtime(&s.fs.lookup(ROOT_INO, b".f.tmp").unwrap()),
        (0o640, old),
        "lookup by name"
    );
    s.fs.rename(ROOT_INO, b".f.tmp", ROOT_INO, b"f", false, false)
        .unwrap();
    // The rename applied them first: the index has them, in order.
    let a = s.fs.index().get_attr(ino).unwrap();
    assert_eq!((a.perm, a.mtime, a.atime, a.size), (0o640, old, old, 700));
    assert_eq!(
        perm_mtime(&s.fs.lookup(ROOT_INO, b"f").unwrap()),
        (0o640, old)
    );

    // A change after the queue was applied wins over what waited before.
    s.fs.setattr(ino, chmod(0o604)).unwrap();
    s.fs.create_node(CTX, ROOT_INO, b"d", FileKind::Dir, 0o755, 0, None)
        .unwrap();
    assert_eq!(s.fs.index().get_attr(ino).unwrap().perm, 0o604);
    assert_eq!(s.fs.getattr(ino).unwrap().perm, 0o604);

    s.fs.sync_all().unwrap();
    assert_eq!(s.fs.dirty_bytes(), 0);
    s.fs.index().check().unwrap();
    let s = s.reopen();
    let a = s.fs.getattr(ino).unwrap();
    assert_eq!((a.perm, a.mtime, a.size), (0o604, old, 700));
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
}

#[test]
fn a_file_closed_before_its_creation_reached_the_index_log_is_recreated_by_the_replay() {
    // A close of a file created moments ago does not wait for the index's log to reach the
    // kernel: its records carry the creation. Here the index loses everything after a mkdir
    // (as a kill before the log was handed over would), and the replay must bring the file
    // back, in that directory, with its mode, owner, data and size.
    let s = setup();
    let d =
        s.fs.create_node(CTX, ROOT_INO, b"d", FileKind::Dir, 0o755, 0, None)
            .unwrap();
    s.fs.index().flush().unwrap();
    let Setup { fs, store, dir, rt } = s;
    crash(fs);
    let index_dir = dir.path().join("index");
    let before = dir.path().join("index-before");
    copy_dir(&index_dir, &before);
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let ctx = RequestCtx {
        uid: 1000,
        gid: 100,
    };
    let (a, fh) = fs.create_and_open(ctx, d.ino, b"f", 0o640, true).unwrap();
    // Two full chunks (journaled as they fill, before the close) and a tail.
    let data = pattern(2 * CHUNK as usize + 999, 5);
    fs.write(fh, 0, &data).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    crash(fs);
    std::fs::remove_dir_all(&index_dir).unwrap();
    std::fs::rename(&before, &index_dir).unwrap();
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let s = Setup { fs, store, dir, rt };
    let back = s.fs.lookup(d.ino, b"f").unwrap();
    assert_eq!(
        back.ino, a.ino,
        "the file comes back as the inode its records name"
    );
    assert_eq!(back.size, data.len() as u64);
    assert_eq!((back.perm, back.uid, back.gid), (0o640, 1000, 100));
    let fh = s.fs.open(a.ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
    s.fs.release(fh).unwrap();
    s.fs.index().check().unwrap();
    // New inode numbers and chunk versions move past the recreated file's.
    let (next, _) = s.create("next");
    assert!(next > a.ino);
    let fh = s.fs.open(a.ino, true).unwrap();
    s.fs.write(fh, 0, b"rewritten").unwrap();
    s.fs.fsync(a.ino).unwrap();
    s.fs.release(fh).unwrap();
    let s = s.reopen();
    let fh = s.fs.open(a.ino, false).unwrap();
    let mut expect = data;
    expect[..9].copy_from_slice(b"rewritten");
    assert_eq!(s.read_all(fh), expect);
    s.fs.index().check().unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_journal_record_lost_with_its_segment_is_an_error_to_readers_and_writers_not_a_crash() {
    // The index points at a record whose segment file is gone (deleted by hand, a damaged
    // disk): reads and partial overwrites look the chunk up again a few times, then fail.
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, &pattern(5000, 4)).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    s.fs.index().commit_deferred().unwrap();
    s.fs.index().flush().unwrap();
    let Setup { fs, store, dir, rt } = s;
    crash(fs);
    for e in std::fs::read_dir(dir.path().join("journal")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let s = Setup { fs, store, dir, rt };
    let fh = s.fs.open(ino, true).unwrap();
    assert_eq!(s.fs.read(fh, 0, 100).unwrap_err().errno(), libc::EIO);
    assert_eq!(s.fs.write(fh, 10, b"patch").unwrap_err().errno(), libc::EIO);
}

#[test]
fn new_files_closed_while_their_creation_waits_in_the_queue_survive_a_crash_empty_or_not() {
    // No upload (which applies the queue first) before the crash.
    let s = setup_with(FsConfig {
        pack_delay: Duration::from_secs(3600),
        ..config()
    });
    // As FUSE creates: the new file's first versions come with its creation.
    let create = |name: &str| {
        let (a, fh) =
            s.fs.create_and_open(CTX, ROOT_INO, name.as_bytes(), 0o644, true)
                .unwrap();
        (a.ino, fh)
    };
    let before = s.fs.index().committed();
    let (empty, eh) = create("empty");
    s.fs.flush(eh).unwrap();
    s.fs.release(eh).unwrap();
    let (small, fh) = create("small");
    let data = pattern(100, 2);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    assert_eq!(
        s.fs.index().committed(),
        before,
        "their creations and commits wait in the queue"
    );
    // The crash drops the index without applying its queue (and without the flusher's
    // tick, which is 500 ms away): the journal's creation records bring both back.
    let s = s.reopen();
    let e = s.fs.lookup(ROOT_INO, b"empty").unwrap();
    assert_eq!((e.ino, e.size), (empty, 0));
    let f = s.fs.lookup(ROOT_INO, b"small").unwrap();
    assert_eq!((f.ino, f.size), (small, 100));
    let fh = s.fs.open(small, false).unwrap();
    assert_eq!(s.read_all(fh), data);
    s.fs.index().check().unwrap();
}

#[test]
fn a_new_file_renamed_after_its_close_survives_a_crash_before_the_queue_is_applied() {
    // rsync's order: write a temporary file, close it, rename it; then a kill before the
    // flusher's tick. The rename (queued with the creation) is lost with the queue, as an
    // unlogged rename transaction was before; the file comes back under the name its
    // close journaled, with every byte.
    let s = setup_with(FsConfig {
        pack_delay: Duration::from_secs(3600),
        ..config()
    });
    let (a, fh) =
        s.fs.create_and_open(CTX, ROOT_INO, b".f.tmp", 0o644, true)
            .unwrap();
    let data = pattern(500, 3);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    let before = s.fs.index().committed();
    s.fs.rename(ROOT_INO, b".f.tmp", ROOT_INO, b"f", false, false)
        .unwrap();
    assert_eq!(
        s.fs.index().committed(),
        before,
        "the rename waits in the queue"
    );
    assert_eq!(s.fs.lookup(ROOT_INO, b"f").unwrap().ino, a.ino);
    assert_eq!(s.fs.getattr(a.ino).unwrap().size, 500);
    let s = s.reopen();
    let back = s.fs.lookup(ROOT_INO, b".f.tmp").unwrap();
    assert_eq!((back.ino, back.size), (a.ino, 500));
    let fh = s.fs.open(a.ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
    s.fs.index().check().unwrap();
}

#[test]
fn a_journaled_chunk_is_read_by_the_segments_each_read_needs() {
    // A chunk whose latest content is in the journal (not yet stored) is read a few segments
    // at a time: with one of its segments damaged on disk, the reads that need that segment
    // fail (EIO) and the others do not, which they could not if every read opened the whole
    // chunk.
    let s = setup();
    s.store.fail_puts.store(true, Ordering::SeqCst);
    let (ino, fh) = s.create("f");
    let data = pattern(CHUNK as usize + 5000, 6);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.flush(fh).unwrap();
    s.fs.release(fh).unwrap();
    // Reopened, so the chunks come from the journal, not from the closed file's buffers.
    let s = s.reopen();
    let j =
        s.fs.index()
            .jchunk(ino, 0)
            .unwrap()
            .expect("chunk 0 is journaled");
    let seg = Segments::DEFAULT;
    assert!(
        CHUNK as usize >= 8 * seg.plain(),
        "the test needs segments to tell apart"
    );
    let prefix = format!("{:016x}.", j.segment);
    let path = std::fs::read_dir(s.dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .expect("the record's segment file");
    let at = j.offset + 3 * seg.sealed() as u64 + 10;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let fh = s.fs.open(ino, false).unwrap();
    let p = seg.plain() as u64;
    let read = |offset: u64, len: u32| s.fs.read(fh, offset, len);
    // Segments 0, 1, 4..: intact, read and right.
    assert_eq!(read(0, 2 * p as u32).unwrap(), &data[..2 * p as usize]);
    assert_eq!(
        read(4 * p + 7, 100).unwrap(),
        &data[4 * p as usize + 7..][..100]
    );
    // Segment 3, alone or as part of a longer read: refused, never wrong bytes.
    assert_eq!(read(3 * p + 1, 10).unwrap_err().errno(), libc::EIO);
    assert_eq!(read(2 * p, 3 * p as u32).unwrap_err().errno(), libc::EIO);
    // The short second chunk, up to and past the end of the file.
    let tail = CHUNK as u64 + 4000;
    assert_eq!(read(tail, 4096).unwrap(), &data[tail as usize..]);
    assert!(read(data.len() as u64 + 10, 100).unwrap().is_empty());
}

#[test]
fn small_files_read_back_fetch_their_pack_once_not_once_each() {
    // Small files written together share a pack. Read back in a fresh mount (caches cold),
    // the first costs a ranged read of its own bytes and brings the pack in behind it; the
    // others are cut from the pack, with nothing more fetched. (Each used to fetch the whole
    // pack: a tree of 4,000 small files read back at 8 ms a file.)
    let s = setup();
    let mut files = Vec::new();
    for i in 0..40 {
        let (ino, fh) = s.create(&format!("small{i}"));
        let data = pattern(3000 + 7 * i, i as u8);
        s.fs.write(fh, 0, &data).unwrap();
        s.fs.flush(fh).unwrap();
        s.fs.release(fh).unwrap();
        files.push((ino, data));
    }
    s.fs.sync_all().unwrap();
    assert_eq!(s.store.len(), 1, "40 small files in one pack");
    let s = s.reopen();
    let (gets, ranges) = (&s.store.gets, &s.store.range_gets);
    let (g0, r0) = (gets.load(Ordering::SeqCst), ranges.load(Ordering::SeqCst));
    let read = |(ino, data): &(u64, Vec<u8>)| {
        let fh = s.fs.open(*ino, false).unwrap();
        assert_eq!(&s.read_all(fh), data, "inode {ino}");
        s.fs.release(fh).unwrap();
    };
    read(&files[0]);
    assert_eq!(
        ranges.load(Ordering::SeqCst) - r0,
        1,
        "the first file: one range"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.fs.pack_cache_stats().bytes == 0 {
        assert!(Instant::now() < deadline, "the pack never came in");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        gets.load(Ordering::SeqCst) - g0,
        1,
        "the pack, fetched once"
    );
    for f in &files[1..] {
        read(f);
    }
    assert_eq!(
        gets.load(Ordering::SeqCst) - g0,
        1,
        "nothing more fetched whole"
    );
    assert_eq!(ranges.load(Ordering::SeqCst) - r0, 1, "nor by range");
    assert!(s.fs.pack_cache_stats().hits >= 39);
}
