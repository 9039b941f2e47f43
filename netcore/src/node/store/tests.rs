//! Tests of the sliver store: durability, rejection of bad input, damage on disk, restarts.
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use super::*;
use crate::codec::{encode, EncodedBlob, EncodingParams};

/// A 7-of-3 encoded blob of `len` bytes whose content depends on `seed`.
fn blob(seed: u8, len: usize) -> EncodedBlob {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    encode(EncodingParams::new(7, 3).unwrap(), &data).unwrap()
}

fn put_all(store: &SliverStore, b: &EncodedBlob) {
    for (i, sliver) in b.slivers.iter().enumerate() {
        let outcome = store
            .put_sliver(&b.blob_id, &b.metadata, i as SliverIndex, sliver)
            .unwrap();
        assert_eq!(outcome, PutOutcome::Stored);
    }
}

/// Every file and directory under `dir`, recursively, relative to it.
fn entries_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out
}

fn blob_dir(root: &Path, id: &BlobId) -> PathBuf {
    let hex = id.to_string();
    root.join(BLOBS_DIR).join(&hex[..2]).join(hex)
}

fn sliver_bytes(b: &EncodedBlob) -> u64 {
    b.slivers.iter().map(|s| s.len() as u64).sum()
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SliverStore>();
}

#[test]
fn round_trip_metadata_and_slivers() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(1, 10_000);
    put_all(&store, &b);

    assert_eq!(store.get_metadata(&b.blob_id).unwrap(), b.metadata);
    for (i, sliver) in b.slivers.iter().enumerate() {
        assert_eq!(
            &store.get_sliver(&b.blob_id, i as SliverIndex).unwrap(),
            sliver
        );
    }
    let status = store.status(&b.blob_id).unwrap();
    assert!(status.has_metadata);
    assert_eq!(status.slivers, (0..7).collect::<Vec<SliverIndex>>());

    // The layout is an on-disk contract.
    let dir = blob_dir(root.path(), &b.blob_id);
    let bytes = fs::read(dir.join("metadata")).unwrap();
    assert_eq!(
        postcard::from_bytes::<BlobMetadata>(&bytes).unwrap(),
        b.metadata
    );
    assert_eq!(fs::read(dir.join("sliver-6")).unwrap(), b.slivers[6]);
}

#[test]
fn missing_blob_and_missing_sliver_are_not_found() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(2, 1000);
    assert!(matches!(
        store.get_metadata(&b.blob_id),
        Err(StoreError::NotFound { sliver: None, .. })
    ));
    assert!(matches!(
        store.get_sliver(&b.blob_id, 0),
        Err(StoreError::NotFound {
            sliver: Some(0),
            ..
        })
    ));
    assert_eq!(store.status(&b.blob_id).unwrap(), BlobStatus::default());

    store
        .put_sliver(&b.blob_id, &b.metadata, 2, &b.slivers[2])
        .unwrap();
    assert!(matches!(
        store.get_sliver(&b.blob_id, 3),
        Err(StoreError::NotFound {
            sliver: Some(3),
            ..
        })
    ));
    assert!(matches!(
        store.get_sliver(&b.blob_id, 100),
        Err(StoreError::NotFound {
            sliver: Some(100),
            ..
        })
    ));
    let status = store.status(&b.blob_id).unwrap();
    assert_eq!(
        status,
        BlobStatus {
            has_metadata: true,
            slivers: vec![2]
        }
    );
}

#[test]
fn put_is_idempotent_and_does_not_rewrite() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(3, 5000);
    put_all(&store, &b);
    let stats = store.stats();
    let path = blob_dir(root.path(), &b.blob_id).join("sliver-1");
    let inode = fs::metadata(&path).unwrap().ino();
    let meta_inode = fs::metadata(path.with_file_name("metadata")).unwrap().ino();

    for (i, sliver) in b.slivers.iter().enumerate() {
        let outcome = store
            .put_sliver(&b.blob_id, &b.metadata, i as SliverIndex, sliver)
            .unwrap();
        assert_eq!(outcome, PutOutcome::AlreadyStored);
    }
    // A rewrite would have renamed a new inode into place.
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode);
    assert_eq!(
        fs::metadata(path.with_file_name("metadata")).unwrap().ino(),
        meta_inode
    );
    assert_eq!(store.stats(), stats);
}

#[test]
fn bad_slivers_are_rejected_and_nothing_is_written() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(4, 3000);

    let mut flipped = b.slivers[0].clone();
    flipped[17] ^= 0x01;
    let short = &b.slivers[0][..b.slivers[0].len() - 2];
    let cases: [(SliverIndex, &[u8]); 4] = [
        (0, &flipped),
        (0, short),
        (7, &b.slivers[0]),
        (1, &b.slivers[0]), // a genuine sliver under the wrong index
    ];
    for (index, data) in cases {
        let err = store
            .put_sliver(&b.blob_id, &b.metadata, index, data)
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
    assert_eq!(entries_under(&root.path().join(BLOBS_DIR)), BTreeSet::new());
    assert_eq!(store.stats(), StoreStats::default());

    // Nor does a bad sliver add anything to a blob that is already stored.
    store
        .put_sliver(&b.blob_id, &b.metadata, 1, &b.slivers[1])
        .unwrap();
    let before = entries_under(root.path());
    let err = store
        .put_sliver(&b.blob_id, &b.metadata, 0, &flipped)
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Invalid(CodecError::SliverHashMismatch { index: 0 })
    ));
    assert_eq!(entries_under(root.path()), before);
    assert_eq!(store.status(&b.blob_id).unwrap().slivers, vec![1]);
}

#[test]
fn metadata_not_matching_the_id_is_rejected() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let a = blob(5, 3000);
    let b = blob(6, 3000);

    // b's (self-consistent) metadata and sliver offered under a's id.
    let err = store
        .put_sliver(&a.blob_id, &b.metadata, 0, &b.slivers[0])
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Invalid(CodecError::BlobIdMismatch { .. })
    ));
    // a's metadata, tampered, under a's id.
    let mut tampered = a.metadata.clone();
    tampered.blob_len -= 1;
    let err = store
        .put_sliver(&a.blob_id, &tampered, 0, &a.slivers[0])
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");

    assert_eq!(entries_under(&root.path().join(BLOBS_DIR)), BTreeSet::new());
    assert_eq!(store.stats(), StoreStats::default());
}

#[test]
fn truncated_sliver_is_corrupt_and_other_data_is_still_served() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let a = blob(7, 6000);
    let b = blob(8, 6000);
    put_all(&store, &a);
    put_all(&store, &b);

    let path = blob_dir(root.path(), &a.blob_id).join("sliver-0");
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(a.slivers[0].len() as u64 / 2).unwrap();
    drop(file);

    match store.get_sliver(&a.blob_id, 0) {
        Err(StoreError::Corrupt { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(store.get_sliver(&a.blob_id, 1).unwrap(), a.slivers[1]);
    assert_eq!(store.get_sliver(&b.blob_id, 0).unwrap(), b.slivers[0]);
    assert_eq!(
        store.status(&a.blob_id).unwrap().slivers,
        (1..7).collect::<Vec<SliverIndex>>()
    );

    // Putting the sliver again repairs it. Damage done behind the store's back skews the
    // running totals; the next open recounts them.
    let outcome = store
        .put_sliver(&a.blob_id, &a.metadata, 0, &a.slivers[0])
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    assert_eq!(store.get_sliver(&a.blob_id, 0).unwrap(), a.slivers[0]);
    drop(store);
    let store = SliverStore::open(root.path()).unwrap();
    assert_eq!(
        store.stats().sliver_bytes,
        sliver_bytes(&a) + sliver_bytes(&b)
    );
}

#[test]
fn same_length_damage_is_served_unhashed_but_repaired_by_a_put() {
    // Reads deliberately skip hashing (clients verify), so a same-length bit flip is
    // served; a put compares bytes and repairs it.
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(9, 4000);
    put_all(&store, &b);
    let path = blob_dir(root.path(), &b.blob_id).join("sliver-2");
    let mut damaged = b.slivers[2].clone();
    damaged[0] ^= 0xff;
    fs::write(&path, &damaged).unwrap();
    assert_eq!(store.get_sliver(&b.blob_id, 2).unwrap(), damaged);

    let outcome = store
        .put_sliver(&b.blob_id, &b.metadata, 2, &b.slivers[2])
        .unwrap();
    assert_eq!(outcome, PutOutcome::Stored);
    assert_eq!(store.get_sliver(&b.blob_id, 2).unwrap(), b.slivers[2]);
}

#[test]
fn damaged_metadata_is_corrupt_and_repaired_by_a_put() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let a = blob(10, 2000);
    let b = blob(11, 2000);
    put_all(&store, &a);
    let meta_path = blob_dir(root.path(), &a.blob_id).join("metadata");

    let garbage = vec![0xffu8; 40];
    let other = postcard::to_stdvec(&b.metadata).unwrap();
    let mut trailing = postcard::to_stdvec(&a.metadata).unwrap();
    trailing.push(0);
    let oversize = vec![0u8; MAX_METADATA_FILE_BYTES as usize + 1];
    for bytes in [garbage, other, trailing, oversize] {
        fs::write(&meta_path, &bytes).unwrap();
        match store.get_metadata(&a.blob_id) {
            Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, meta_path),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(
            store.get_sliver(&a.blob_id, 0),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(store.status(&a.blob_id).unwrap(), BlobStatus::default());
    }

    let outcome = store
        .put_sliver(&a.blob_id, &a.metadata, 0, &a.slivers[0])
        .unwrap();
    assert_eq!(outcome, PutOutcome::AlreadyStored);
    assert_eq!(store.get_metadata(&a.blob_id).unwrap(), a.metadata);
    assert_eq!(store.stats().blobs, 1);

    // A sliver whose metadata vanished is damage, not a miss.
    fs::remove_file(&meta_path).unwrap();
    assert!(matches!(
        store.get_sliver(&a.blob_id, 0),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn stats_follow_puts_and_deletes_and_survive_reopen() {
    let root = tempfile::tempdir().unwrap();
    let a = blob(12, 9000);
    let b = blob(13, 100);
    let c = blob(14, 70_000);
    let expected = {
        let store = SliverStore::open(root.path()).unwrap();
        assert_eq!(store.stats(), StoreStats::default());
        put_all(&store, &a);
        put_all(&store, &b);
        for i in 0..3 {
            store
                .put_sliver(&c.blob_id, &c.metadata, i, &c.slivers[usize::from(i)])
                .unwrap();
        }
        let c_bytes = 3 * c.slivers[0].len() as u64;
        assert_eq!(
            store.stats(),
            StoreStats {
                blobs: 3,
                sliver_bytes: sliver_bytes(&a) + sliver_bytes(&b) + c_bytes
            }
        );
        assert!(store.delete(&a.blob_id).unwrap());
        let expected = StoreStats {
            blobs: 2,
            sliver_bytes: sliver_bytes(&b) + c_bytes,
        };
        assert_eq!(store.stats(), expected);
        expected
    };

    let store = SliverStore::open(root.path()).unwrap();
    assert_eq!(store.stats(), expected);
    assert!(matches!(
        store.get_metadata(&a.blob_id),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.get_sliver(&b.blob_id, 4).unwrap(), b.slivers[4]);
    assert_eq!(store.status(&c.blob_id).unwrap().slivers, vec![0, 1, 2]);
}

#[test]
fn delete_removes_the_blob_and_reports_whether_it_existed() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let a = blob(15, 3000);
    let b = blob(16, 3000);
    assert!(!store.delete(&a.blob_id).unwrap());

    put_all(&store, &a);
    put_all(&store, &b);
    assert!(store.delete(&a.blob_id).unwrap());
    assert!(!store.delete(&a.blob_id).unwrap());
    assert!(!blob_dir(root.path(), &a.blob_id).exists());
    assert_eq!(entries_under(&root.path().join(TRASH_DIR)), BTreeSet::new());
    assert!(matches!(
        store.get_sliver(&a.blob_id, 0),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.status(&a.blob_id).unwrap(), BlobStatus::default());
    assert_eq!(store.get_sliver(&b.blob_id, 0).unwrap(), b.slivers[0]);

    // A deleted blob can be stored again.
    put_all(&store, &a);
    assert_eq!(store.get_sliver(&a.blob_id, 5).unwrap(), a.slivers[5]);
    assert_eq!(store.stats().blobs, 2);
}

#[test]
fn open_removes_crash_leftovers() {
    let root = tempfile::tempdir().unwrap();
    let a = blob(17, 3000);
    let b = blob(18, 3000);
    {
        let store = SliverStore::open(root.path()).unwrap();
        put_all(&store, &a);
    }
    // A write interrupted before its rename, a blob dir created just before a crash, and
    // a delete interrupted after its rename.
    let a_dir = blob_dir(root.path(), &a.blob_id);
    fs::write(a_dir.join(".tmp-sliver-3.123.0"), b"partial").unwrap();
    let b_dir = blob_dir(root.path(), &b.blob_id);
    fs::create_dir_all(&b_dir).unwrap();
    fs::write(b_dir.join(".tmp-metadata.123.1"), b"partial").unwrap();
    let trashed = root.path().join(TRASH_DIR).join("deadbeef.123.2");
    fs::create_dir(&trashed).unwrap();
    fs::write(trashed.join("sliver-0"), b"old").unwrap();

    let store = SliverStore::open(root.path()).unwrap();
    assert!(!a_dir.join(".tmp-sliver-3.123.0").exists());
    assert!(!b_dir.exists());
    assert_eq!(entries_under(&root.path().join(TRASH_DIR)), BTreeSet::new());
    assert_eq!(
        store.stats(),
        StoreStats {
            blobs: 1,
            sliver_bytes: sliver_bytes(&a)
        }
    );
    assert_eq!(store.get_sliver(&a.blob_id, 3).unwrap(), a.slivers[3]);
}

#[test]
fn concurrent_puts_of_one_blob_store_each_sliver_once() {
    const THREADS: usize = 8;
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(19, 50_000);
    let stored: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();

    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (store, b, stored) = (&store, &b, &stored);
            scope.spawn(move || {
                // Each thread starts at a different sliver, so both different slivers and
                // the same sliver are put concurrently.
                for j in 0..7 {
                    let i = (t + j) % 7;
                    let outcome = store
                        .put_sliver(&b.blob_id, &b.metadata, i as SliverIndex, &b.slivers[i])
                        .unwrap();
                    if outcome == PutOutcome::Stored {
                        stored[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });

    for (i, count) in stored.iter().enumerate() {
        assert_eq!(count.load(Ordering::Relaxed), 1, "sliver {i}");
        assert_eq!(
            store.get_sliver(&b.blob_id, i as SliverIndex).unwrap(),
            b.slivers[i]
        );
    }
    assert_eq!(
        store.stats(),
        StoreStats {
            blobs: 1,
            sliver_bytes: sliver_bytes(&b)
        }
    );
    let names: BTreeSet<String> = fs::read_dir(blob_dir(root.path(), &b.blob_id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: BTreeSet<String> = std::iter::once("metadata".to_owned())
        .chain((0..7).map(|i| format!("sliver-{i}")))
        .collect();
    assert_eq!(names, expected, "no temp files may be left behind");
}

#[test]
fn sliver_names_round_trip_and_reject_non_canonical_spellings() {
    for index in [0, 1, 9, 10, 1023, SliverIndex::MAX] {
        assert_eq!(parse_sliver_name(&sliver_name(index)), Some(index));
    }
    for name in [
        "sliver-",
        "sliver-007",
        "sliver-+1",
        "sliver-65536",
        "sliver-1x",
        "metadata",
    ] {
        assert_eq!(parse_sliver_name(name), None, "{name}");
    }
}

/// Startup must stay quick with a large store: the scan only lists and stats.
#[test]
#[ignore = "stress: creates 10k blob directories; run by name"]
fn open_scans_ten_thousand_blobs_quickly() {
    const BLOBS: u32 = 10_000;
    let root = tempfile::tempdir().unwrap();
    for i in 0..BLOBS {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        let dir = blob_dir(root.path(), &BlobId(id));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("metadata"), b"m").unwrap();
        fs::write(dir.join("sliver-0"), [0u8; 100]).unwrap();
    }
    let start = Instant::now();
    let store = SliverStore::open(root.path()).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(
        store.stats(),
        StoreStats {
            blobs: u64::from(BLOBS),
            sliver_bytes: 100 * u64::from(BLOBS)
        }
    );
    assert!(elapsed < Duration::from_secs(5), "open took {elapsed:?}");
    eprintln!("opened a store of {BLOBS} blobs in {elapsed:?}");
}

#[test]
fn scrub_quarantines_rotted_and_cut_slivers_and_status_then_lists_them_missing() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let b = blob(9, 100_000);
    put_all(&store, &b);
    let healthy = blob(10, 50_000);
    put_all(&store, &healthy);
    let dir = blob_dir(root.path(), &b.blob_id);
    // Sliver 2 rots (same length: only a hash finds it); sliver 5 is cut short.
    let mut rotted = fs::read(dir.join("sliver-2")).unwrap();
    rotted[17] ^= 0x40;
    fs::write(dir.join("sliver-2"), &rotted).unwrap();
    let cut = fs::read(dir.join("sliver-5")).unwrap();
    fs::write(dir.join("sliver-5"), &cut[..cut.len() / 2]).unwrap();
    let before = store.stats().sliver_bytes;

    let mut ids = store.blob_ids().unwrap();
    ids.sort();
    let mut want = vec![b.blob_id, healthy.blob_id];
    want.sort();
    assert_eq!(ids, want);

    let report = store.scrub_blob(&b.blob_id).unwrap();
    assert_eq!(report.quarantined, vec![2, 5]);
    assert_eq!(report.intact, 5);
    let clean = store.scrub_blob(&healthy.blob_id).unwrap();
    assert!(clean.quarantined.is_empty() && clean.intact == 7);
    // Not served, not listed; kept as evidence.
    assert!(matches!(
        store.get_sliver(&b.blob_id, 2),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.status(&b.blob_id).unwrap().slivers,
        vec![0, 1, 3, 4, 6]
    );
    assert_eq!(
        fs::read_dir(root.path().join(QUARANTINE_DIR))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        store.stats().sliver_bytes,
        before - rotted.len() as u64 - (cut.len() / 2) as u64
    );
    // A put (a repair) stores them again; the next scrub finds everything intact.
    put_all_again(&store, &b, &[2, 5]);
    let report = store.scrub_blob(&b.blob_id).unwrap();
    assert_eq!((report.intact, report.quarantined.len()), (7, 0));
    assert_eq!(store.get_sliver(&b.blob_id, 2).unwrap(), b.slivers[2]);
}

fn put_all_again(store: &SliverStore, b: &EncodedBlob, indices: &[SliverIndex]) {
    for &i in indices {
        store
            .put_sliver(&b.blob_id, &b.metadata, i, &b.slivers[usize::from(i)])
            .unwrap();
    }
}

#[test]
fn usage_is_charged_to_the_blobs_creator_and_recounted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = SliverStore::open(dir.path()).unwrap();
    let alice = PublicKey([1; 32]);
    let bob = PublicKey([2; 32]);
    let put = |store: &SliverStore, b: &EncodedBlob, i: SliverIndex, owner| {
        let r = store.put_batch(&[batch::PutItem {
            blob_id: b.blob_id,
            metadata: &b.metadata,
            index: i,
            data: &b.slivers[usize::from(i)],
            owner,
        }]);
        r.into_iter().next().unwrap().unwrap()
    };
    let a = blob(1, 30_000);
    let b = blob(2, 60_000);
    let len = |x: &EncodedBlob, i: usize| x.slivers[i].len() as u64;
    put(&store, &a, 0, Some(alice));
    // Bob adding a sliver to Alice's blob adds to Alice's usage, not his.
    put(&store, &a, 1, Some(bob));
    put(&store, &b, 0, Some(bob));
    // A store without an owner (and a repeat) charges no one more.
    put(&store, &b, 1, None);
    assert_eq!(put(&store, &b, 0, Some(bob)), PutOutcome::AlreadyStored);
    assert_eq!(store.usage(&alice), len(&a, 0) + len(&a, 1));
    assert_eq!(store.usage(&bob), len(&b, 0) + len(&b, 1));
    drop(store);

    // Reopened: the owner files give the same counts.
    let store = SliverStore::open(dir.path()).unwrap();
    assert_eq!(store.usage(&alice), len(&a, 0) + len(&a, 1));
    assert_eq!(store.usage(&bob), len(&b, 0) + len(&b, 1));
    // A deleted blob is no longer charged; nor is a sliver the scrubber took away.
    assert!(store.delete(&a.blob_id).unwrap());
    assert_eq!(store.usage(&alice), 0);
    let sliver = blob_dir(dir.path(), &b.blob_id).join(sliver_name(1));
    fs::write(&sliver, vec![0u8; len(&b, 1) as usize]).unwrap();
    let report = store.scrub_blob(&b.blob_id).unwrap();
    assert_eq!(report.quarantined, vec![1]);
    assert_eq!(store.usage(&bob), len(&b, 0));
}

#[test]
fn sliver_ranges_are_read_in_place_and_checked_like_slivers() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let a = blob(9, 3 * 100_000);
    put_all(&store, &a);
    let g = crate::codec::GRANULE;
    let sl = a.slivers[2].len() as u64;
    let (bytes, metadata) = store.get_sliver_range(&a.blob_id, 2, g, 3 * g).unwrap();
    assert_eq!(bytes, a.slivers[2][g as usize..3 * g as usize]);
    assert_eq!(metadata, a.metadata);
    let (tail, _) = store.get_sliver_range(&a.blob_id, 2, 6 * g, sl).unwrap();
    assert_eq!(tail, a.slivers[2][6 * g as usize..]);
    // Unaligned, empty and past-the-end ranges are refused; nothing is read.
    for (s, e) in [(1, g), (g, g), (0, sl + 2), (6 * g, sl - 2)] {
        assert!(
            matches!(
                store.get_sliver_range(&a.blob_id, 2, s, e),
                Err(StoreError::Invalid(_))
            ),
            "{s}..{e}"
        );
    }
    // Knowing the length (from an outboard), no metadata is read; a wrong length is damage.
    let known = store
        .read_sliver_range(&a.blob_id, 2, sl, g, 3 * g)
        .unwrap();
    assert_eq!(known, a.slivers[2][g as usize..3 * g as usize]);
    assert!(matches!(
        store.read_sliver_range(&a.blob_id, 2, sl + 2, 0, g),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.read_sliver_range(&BlobId([2; 32]), 2, sl, 0, g),
        Err(StoreError::NotFound { .. })
    ));
    // A cut sliver is corrupt for ranges too, even one it still holds.
    let path = blob_dir(root.path(), &a.blob_id).join("sliver-2");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(sl / 2)
        .unwrap();
    assert!(matches!(
        store.get_sliver_range(&a.blob_id, 2, 0, g),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.get_sliver_range(&BlobId([1; 32]), 2, 0, g),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn batched_puts_store_each_slivers_outboard_and_a_bad_one_is_told_apart() {
    let root = tempfile::tempdir().unwrap();
    let store = SliverStore::open(root.path()).unwrap();
    let a = blob(11, 3 * 100_000);
    let items: Vec<_> = (0..7u16)
        .map(|i| batch::PutItem {
            blob_id: a.blob_id,
            metadata: &a.metadata,
            index: i,
            data: &a.slivers[usize::from(i)],
            owner: None,
        })
        .collect();
    for r in store.put_batch(&items) {
        assert_eq!(r.unwrap(), PutOutcome::Stored);
    }
    let sl = a.slivers[0].len() as u64;
    for i in 0..7u16 {
        let o = store
            .get_outboard(&a.blob_id, i, sl)
            .expect("outboard stored");
        assert_eq!(o.root(), a.metadata.sliver_hashes[usize::from(i)]);
    }
    // Outboards are not slivers: status and the byte count ignore them.
    assert_eq!(
        store.status(&a.blob_id).unwrap().slivers,
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(store.stats().sliver_bytes, sliver_bytes(&a));
    // A damaged outboard parses but makes another root (the node rebuilds it from the sliver).
    let path = blob_dir(root.path(), &a.blob_id).join("outboard-3");
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let bad = store.get_outboard(&a.blob_id, 3, sl).unwrap();
    assert_ne!(bad.root(), a.metadata.sliver_hashes[3]);
    let rebuilt = crate::codec::Outboard::build(&store.get_sliver(&a.blob_id, 3).unwrap());
    assert!(store.put_outboard(&a.blob_id, 3, &rebuilt));
    assert_eq!(store.get_outboard(&a.blob_id, 3, sl).unwrap(), rebuilt);
    // A truncated one does not parse at all.
    fs::write(&path, &bytes[..100]).unwrap();
    assert!(store.get_outboard(&a.blob_id, 3, sl).is_none());
    // Deleting the blob takes its outboards along; a late rebuild does not bring it back.
    assert!(store.delete(&a.blob_id).unwrap());
    assert!(!store.put_outboard(&a.blob_id, 3, &rebuilt));
    assert!(!blob_dir(root.path(), &a.blob_id).exists());
    drop(store);
    let store = SliverStore::open(root.path()).unwrap();
    assert_eq!(store.stats().sliver_bytes, 0);
}
