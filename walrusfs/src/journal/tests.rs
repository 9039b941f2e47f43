#![allow(clippy::unwrap_used)]

use super::*;
use crate::index::Timestamp;
use std::path::{Path, PathBuf};

fn header(ino: u64, chunk: u64) -> EntryHeader {
    EntryHeader {
        seq: 0,
        ino,
        chunk,
        version: 1,
        salt: [0; 16],
        stored_len: 0,
        size: 10,
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
    }
}

fn append(j: &Journal, bodies: &[&[u8]]) -> Vec<(u64, Loc)> {
    let items: Vec<Append<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Append {
            header: header(1, i as u64),
            attrs: None,
            body: b,
        })
        .collect();
    j.append(&items, Duration::ZERO, |a| a.to_vec()).unwrap()
}

#[test]
fn appended_records_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert!(records.is_empty());
    let a = append(&j, &[b"first", b"second"]);
    let b = append(&j, &[b"third"]);
    assert_eq!(a[0].0 + 1, a[1].0);
    assert_eq!(a[1].0 + 1, b[0].0);
    assert_eq!(j.read(&a[1].1).unwrap(), b"second");
    drop(j);
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.header.seq).collect();
    assert_eq!(seqs, vec![a[0].0, a[1].0, b[0].0]);
    assert_eq!(records[2].loc, b[0].1);
    assert_eq!(j.read(&records[0].loc).unwrap(), b"first");
    assert_eq!(
        j.next_seq(),
        b[0].0 + 1,
        "sequence numbers continue after reopen"
    );
    let c = append(&j, &[b"fourth"]);
    assert!(
        c[0].1.segment > a[0].1.segment,
        "a reopened journal appends to a new segment"
    );
}

#[test]
fn records_are_gathered_into_one_buffer_and_a_failed_read_leaves_it_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let a = append(&j, &[b"first", b"second", b"third"]);
    let mut blob = b"head:".to_vec();
    j.read_into(&a[2].1, &mut blob).unwrap();
    j.read_into(&a[0].1, &mut blob).unwrap();
    assert_eq!(blob, b"head:thirdfirst");
    // A range past the segment's end (a record cut off since): an I/O error, nothing added.
    let past = Loc {
        offset: a[2].1.offset + 1000,
        ..a[2].1
    };
    assert!(matches!(
        j.read_into(&past, &mut blob),
        Err(JournalError::Io { .. })
    ));
    // A segment that is not there.
    let gone = Loc {
        segment: a[0].1.segment + 100,
        ..a[0].1
    };
    assert!(matches!(
        j.read_into(&gone, &mut blob),
        Err(JournalError::Gone(_))
    ));
    assert_eq!(blob, b"head:thirdfirst");
}

#[test]
fn records_are_read_in_place_into_a_buffer_of_their_length_only() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let a = append(&j, &[b"first", b"second"]);
    // A reused buffer: what it held is overwritten, not appended to.
    let mut blob = *b"xxxxxxxxxxx";
    j.read_at(&a[1].1, &mut blob[..6]).unwrap();
    j.read_at(&a[0].1, &mut blob[6..]).unwrap();
    assert_eq!(&blob, b"secondfirst");
    // A buffer of another length than the record is refused, and left alone.
    for wrong in [4, 6] {
        let mut short = vec![7u8; wrong];
        assert!(matches!(
            j.read_at(&a[0].1, &mut short),
            Err(JournalError::Io { .. })
        ));
        assert!(short.iter().all(|b| *b == 7));
    }
    let gone = Loc {
        segment: a[0].1.segment + 100,
        ..a[0].1
    };
    assert!(matches!(
        j.read_at(&gone, &mut blob[6..]),
        Err(JournalError::Gone(_))
    ));
}

#[test]
fn a_torn_record_and_what_follows_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let a = append(&j, &[b"kept", b"torn by the crash"]);
    drop(j);
    let path = segment_path(dir.path(), a[0].1.segment);
    let len = std::fs::metadata(&path).unwrap().len();
    // Flip a byte of the second record's body: its checksum no longer matches.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"X", a[1].1.offset + 2).unwrap();
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(j.read(&records[0].loc).unwrap(), b"kept");
    assert!(
        std::fs::metadata(&path).unwrap().len() < len,
        "the torn tail was cut"
    );
    // A record cut short (the process died mid-write).
    drop(j);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(a[0].1.offset + 2).unwrap();
    let (_, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert!(records.is_empty());
}

#[test]
fn a_full_journal_makes_writers_wait_then_fail_and_reclaim_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 4096).unwrap();
    let body = vec![7u8; 3000];
    let first = append(&j, &[&body]);
    let started = Instant::now();
    let err = j
        .append(
            &[Append {
                header: header(1, 9),
                attrs: None,
                body: &body,
            }],
            Duration::from_millis(300),
            |_| (),
        )
        .unwrap_err();
    assert!(matches!(err, JournalError::Full { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Space freed while a writer waits lets it through.
    let j = Arc::new(j);
    let waiter = {
        let j = j.clone();
        let body = body.clone();
        std::thread::spawn(move || {
            j.append(
                &[Append {
                    header: header(1, 10),
                    attrs: None,
                    body: &body,
                }],
                Duration::from_secs(30),
                |a| a[0].0,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(j.reclaim(first[0].0 + 1).unwrap() > 0);
    let seq = waiter.join().unwrap().unwrap();
    assert!(seq > first[0].0);
    assert!(matches!(j.read(&first[0].1), Err(JournalError::Gone(_))));
}

#[test]
fn reclaim_keeps_segments_with_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let a = append(&j, &[b"a"]);
    // Force a second segment by reopening.
    drop(j);
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let b = append(&j, &[b"b"]);
    assert_ne!(a[0].1.segment, b[0].1.segment);
    assert!(
        j.reclaim(a[0].0).unwrap() == 0,
        "nothing below the oldest live record"
    );
    assert!(j.reclaim(b[0].0).unwrap() > 0, "the first segment is dead");
    assert_eq!(j.read(&b[0].1).unwrap(), b"b");
    assert!(j.read(&a[0].1).is_err());
    j.sync().unwrap();
}

/// The spare files in `dir`.
fn spares(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == SPARE_EXT))
        .collect()
}

#[test]
fn a_dead_segment_file_is_reused_and_its_old_records_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    // Two records of the same length: the first will be overwritten exactly, the second left
    // behind intact, with a valid checksum, after the new one.
    let old = append(&j, &[b"old record one", b"old record two"]);
    assert!(j.reclaim(old[1].0 + 1).unwrap() > 0);
    let kept = spares(dir.path());
    assert_eq!(kept.len(), 1, "the dead segment's file is kept to reuse");
    assert!(!segment_path(dir.path(), old[0].1.segment).exists());
    assert!(matches!(j.read(&old[0].1), Err(JournalError::Gone(_))));

    let new = append(&j, &[b"new record one"]);
    assert!(new[0].1.segment > old[0].1.segment);
    assert!(
        spares(dir.path()).is_empty(),
        "the spare became the new segment"
    );
    let path = segment_path(dir.path(), new[0].1.segment);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        old[1].1.offset + old[1].1.len as u64,
        "the new record was written over the old ones, in place"
    );
    assert_eq!(j.read(&new[0].1).unwrap(), b"new record one");
    drop(j);

    // A replay finds the new record and not the one left over from the file's earlier use.
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.header.seq).collect();
    assert_eq!(seqs, vec![new[0].0]);
    assert_eq!(j.read(&records[0].loc).unwrap(), b"new record one");
    assert!(j.next_seq() > new[0].0);
}

#[test]
fn a_reused_file_whose_new_header_a_crash_lost_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let old = append(&j, &[b"dead record"]);
    j.reclaim(old[0].0 + 1).unwrap();
    let spare = spares(dir.path()).pop().unwrap();
    let next = j.lock().next_segment;
    drop(j);
    // The crash came between the rename and the header: the file carries the old segment's
    // header and records under the new segment's name.
    std::fs::rename(&spare, segment_path(dir.path(), next)).unwrap();
    let (_, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert!(records.is_empty(), "{records:?}");
}

#[test]
fn a_segment_being_read_is_deleted_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
    let a = append(&j, &[b"being read"]);
    assert_eq!(j.read(&a[0].1).unwrap(), b"being read");
    // A reader holds the file (as one between taking it and reading from it would).
    let held = j.lock().readers.get(&a[0].1.segment).unwrap().clone();
    j.reclaim(a[0].0 + 1).unwrap();
    assert!(
        spares(dir.path()).is_empty(),
        "not kept: a reader has it open"
    );
    append(&j, &[b"next segment"]);
    let mut buf = vec![0u8; 10];
    held.read_exact_at(&mut buf, a[0].1.offset).unwrap();
    assert_eq!(buf, b"being read", "the reader still sees the old bytes");
}

#[test]
fn a_format_1_segment_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = header(4, 2);
    h.seq = 7;
    let mut bytes = b"WFSJRN01".to_vec();
    bytes.extend_from_slice(&5u64.to_le_bytes());
    let offset = (bytes.len() + record_prefix(&h, None, b"v1 body").len()) as u64;
    bytes.extend_from_slice(&record_prefix(&h, None, b"v1 body"));
    bytes.extend_from_slice(b"v1 body");
    std::fs::write(segment_path(dir.path(), 5), &bytes).unwrap();
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].header, h);
    assert_eq!(records[0].loc.offset, offset);
    assert_eq!(j.read(&records[0].loc).unwrap(), b"v1 body");
    assert_eq!(j.next_seq(), 8);
}

#[test]
fn at_most_two_spares_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for i in 0..4u8 {
        // Each reopen starts a new segment.
        let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
        last = append(&j, &[&[i; 100]])[0].0;
    }
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(records.len(), 4);
    j.reclaim(last + 1).unwrap();
    assert_eq!(spares(dir.path()).len(), MAX_SPARES);
    assert_eq!(j.bytes(), 0);
    drop(j);
    // Extra spares found at open (from an older limit, say) are deleted.
    std::fs::write(
        dir.path()
            .join(format!("{:016x}-{:016x}.{SPARE_EXT}", 999, 999)),
        b"x",
    )
    .unwrap();
    std::fs::write(dir.path().join(format!("unknown.{SPARE_EXT}")), b"x").unwrap();
    let (j, records) = Journal::open(dir.path(), 1 << 30).unwrap();
    assert!(records.is_empty());
    assert_eq!(spares(dir.path()).len(), MAX_SPARES);
    assert!(
        j.next_seq() > last,
        "an emptied journal still numbers above every record in its spares"
    );
    assert_eq!(append(&j, &[b"after"]).len(), 1);
}

/// Fuzz target (see `netcore::fuzzing`): a journal segment damaged on disk, reopened (as a
/// mount does after a crash) and every record it still offers read back.
#[cfg(feature = "faults")]
mod fuzz {
    use super::*;
    use netcore::fuzzing::{cases, mutate, Mutation};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases() / 5))]

        #[test]
        fn fuzz_journal_segments(ops in proptest::collection::vec(any::<Mutation>(), 1..6)) {
            let dir = tempfile::tempdir().unwrap();
            {
                let (j, _) = Journal::open(dir.path(), 1 << 30).unwrap();
                append(&j, &[b"first body", b"second"]);
                append(&j, &[&[7u8; 300]]);
                j.sync().unwrap();
            }
            let seg = std::fs::read_dir(dir.path()).unwrap().flatten()
                .map(|e| e.path()).find(|p| p.is_file()).unwrap();
            let good = std::fs::read(&seg).unwrap();
            std::fs::write(&seg, mutate(&good, &ops)).unwrap();
            if let Ok((j, records)) = Journal::open(dir.path(), 1 << 30) {
                prop_assert!(records.len() <= 3, "damage never adds records");
                for r in &records {
                    if let Ok(body) = j.read(&r.loc) {
                        prop_assert_eq!(body.len(), r.loc.len as usize);
                    }
                }
                // The journal still takes appends after the damage.
                append(&j, &[b"after"]);
            }
        }
    }
}
