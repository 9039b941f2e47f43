//! Tests for [`DiskCache`]: accounting, eviction, persistence, damage handling, locking.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::*;

fn key(n: u8) -> DiskKey {
    DiskKey::new([n; 32], u64::from(n))
}

/// File size of an entry holding `len` payload bytes.
fn entry(len: usize) -> u64 {
    (HEADER_LEN + len) as u64
}

/// Names in the directory, lock file excluded.
fn files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != LOCK_FILE)
        .collect()
}

/// Makes an entry's file look `secs` seconds old, standing in for real time passing.
fn age(cache: &DiskCache, key: &DiskKey, secs: u64) {
    let file = File::options()
        .write(true)
        .open(cache.entry_path(key))
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn stores_returns_and_removes_values() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    assert!(cache.insert(key(1), b"hello").unwrap());
    assert!(cache.insert(key(2), b"").unwrap(), "empty values are valid");
    assert_eq!(cache.get(&key(1)).unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(cache.get(&key(2)).unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(cache.get(&key(3)).unwrap(), None);
    assert_eq!(cache.bytes(), entry(5) + entry(0));
    assert_eq!(
        files(tmp.path()),
        BTreeSet::from([key(1).file_name(), key(2).file_name()])
    );
    assert!(cache.remove(&key(1)).unwrap());
    assert!(!cache.remove(&key(1)).unwrap());
    assert_eq!(cache.get(&key(1)).unwrap(), None);
    assert_eq!(files(tmp.path()), BTreeSet::from([key(2).file_name()]));
    assert_eq!(
        cache.stats(),
        CacheStats {
            hits: 2,
            misses: 2,
            inserts: 2,
            evictions: 0,
            bytes: entry(0),
            entries: 1,
        }
    );
}

#[test]
fn replacing_a_key_recharges_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    cache.insert(key(1), &[1; 1000]).unwrap();
    cache.insert(key(1), &[2; 10]).unwrap();
    assert_eq!(cache.bytes(), entry(10));
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(&key(1)).unwrap(), Some(vec![2; 10]));
    assert_eq!(files(tmp.path()).len(), 1);
}

#[test]
fn evicts_least_recently_used_and_deletes_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(tmp.path(), 3 * entry(100)).unwrap();
    for n in 1..=3 {
        cache.insert(key(n), &[n; 100]).unwrap();
    }
    assert!(cache.get(&key(1)).unwrap().is_some());
    cache.insert(key(4), &[4; 100]).unwrap();
    assert!(!cache.contains(&key(2)));
    assert!(!files(tmp.path()).contains(&key(2).file_name()));
    // One big value pushes out everything but the newest small one.
    cache.insert(key(5), &[5; 200]).unwrap();
    assert_eq!(files(tmp.path()).len(), 2);
    assert!(cache.contains(&key(4)) && cache.contains(&key(5)));
    assert_eq!(cache.stats().evictions, 3);
    assert!(cache.bytes() <= cache.capacity());
}

#[test]
fn oversize_values_are_refused_and_supersede_the_old_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(tmp.path(), entry(100)).unwrap();
    assert!(cache.insert(key(1), &[1; 100]).unwrap(), "exact fit");
    assert!(!cache.insert(key(1), &[1; 101]).unwrap());
    assert!(cache.is_empty());
    assert!(
        files(tmp.path()).is_empty(),
        "no temp file or stale entry left"
    );
    assert_eq!(cache.stats().inserts, 1);
}

#[test]
fn contents_and_recency_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
        for n in 1..=3 {
            cache.insert(key(n), &[n; 100]).unwrap();
        }
        age(&cache, &key(1), 30);
        age(&cache, &key(2), 20);
        age(&cache, &key(3), 10);
        // A hit refreshes the file's time: 1 becomes the most recent, 2 the least.
        assert!(cache.get(&key(1)).unwrap().is_some());
    }
    let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.bytes(), 3 * entry(100));
    assert_eq!(cache.get(&key(3)).unwrap(), Some(vec![3; 100]));
    drop(cache);

    // Recency is now 2 (oldest), 1, 3 (read last). Reopening smaller evicts in that order.
    let cache = DiskCache::open(tmp.path(), 2 * entry(100)).unwrap();
    assert_eq!(cache.stats().evictions, 1);
    assert!(!cache.contains(&key(2)));
    assert!(cache.contains(&key(1)) && cache.contains(&key(3)));
    assert_eq!(
        files(tmp.path()),
        BTreeSet::from([key(1).file_name(), key(3).file_name()])
    );
    drop(cache);

    let cache = DiskCache::open(tmp.path(), entry(100)).unwrap();
    assert_eq!(cache.len(), 1);
    assert!(cache.contains(&key(3)), "3 was the last one read");
}

#[test]
fn open_cleans_leftovers_and_ignores_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
        cache.insert(key(1), b"kept").unwrap();
    }
    fs::write(tmp.path().join(".tmp-999-0"), b"half a write").unwrap();
    fs::write(tmp.path().join(key(2).file_name()), b"short").unwrap();
    fs::write(tmp.path().join("notes.txt"), b"not ours").unwrap();
    fs::create_dir(tmp.path().join(key(3).file_name())).unwrap();
    let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.bytes(), entry(4));
    assert_eq!(
        files(tmp.path()),
        BTreeSet::from([
            key(1).file_name(),
            key(3).file_name(),
            "notes.txt".to_owned()
        ])
    );
}

#[test]
fn damaged_entries_are_misses_and_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 5] = [
        ("truncated", |p| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(entry(5_000))
                .unwrap();
        }),
        ("zero-filled tail, right length", |p| {
            let mut bytes = fs::read(p).unwrap();
            bytes[4096..].fill(0);
            fs::write(p, bytes).unwrap();
        }),
        ("extended", |p| {
            let mut bytes = fs::read(p).unwrap();
            bytes.push(0);
            fs::write(p, bytes).unwrap();
        }),
        ("bad magic", |p| {
            let mut bytes = fs::read(p).unwrap();
            bytes[0] ^= 1;
            fs::write(p, bytes).unwrap();
        }),
        ("deleted", |p| fs::remove_file(p).unwrap()),
    ];
    for (n, (what, damage)) in (1u8..).zip(damages) {
        cache.insert(key(n), &payload).unwrap();
        damage(&cache.entry_path(&key(n)));
        assert_eq!(cache.get(&key(n)).unwrap(), None, "{what}");
        assert!(!cache.contains(&key(n)), "{what}");
        assert!(!cache.entry_path(&key(n)).exists(), "{what}");
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.bytes, stats.entries),
        (0, 5, 0, 0)
    );
}

#[test]
fn damage_found_after_reopen_is_a_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let path = {
        let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
        cache.insert(key(1), &[7; 300]).unwrap();
        cache.entry_path(&key(1))
    };
    // A crash after rename but before writeback can leave a file of the right size full of
    // zeros; the length check alone would accept it.
    fs::write(&path, vec![0u8; 300 + HEADER_LEN]).unwrap();
    let cache = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(&key(1)).unwrap(), None);
    assert!(cache.is_empty() && !path.exists());
}

/// A cache whose caller authenticates values writes no checksum (format version 2): damage of
/// the same length reaches the caller, which removes the entry; everything the length and the
/// header show is still a miss. Entries of version 1 keep being checked in it, and a
/// checksummed cache refuses version 2 entries.
#[test]
fn an_unsummed_cache_leaves_same_length_damage_to_its_caller_and_reads_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    {
        let summed = DiskCache::open(tmp.path(), 1 << 20).unwrap();
        summed.insert(key(1), &payload).unwrap(); // version 1, checked
        summed.insert(key(2), &payload).unwrap(); // version 1, to be damaged
    }
    let cache = DiskCache::open_unsummed(tmp.path(), 1 << 20).unwrap();
    cache.insert(key(3), &payload).unwrap();
    let header = fs::read(cache.entry_path(&key(3))).unwrap();
    assert_eq!(&header[..8], b"WFSCACH2");
    assert_eq!(&header[16..24], &[0; 8], "no checksum");
    assert_eq!(cache.get(&key(3)).unwrap().as_deref(), Some(&payload[..]));
    assert_eq!(cache.get(&key(1)).unwrap().as_deref(), Some(&payload[..]));
    let zero_tail = |p: &Path| {
        let mut bytes = fs::read(p).unwrap();
        bytes[4096..].fill(0);
        fs::write(p, bytes).unwrap();
    };
    zero_tail(&cache.entry_path(&key(2)));
    assert_eq!(
        cache.get(&key(2)).unwrap(),
        None,
        "a version 1 entry is checked"
    );
    zero_tail(&cache.entry_path(&key(3)));
    let served = cache
        .get(&key(3))
        .unwrap()
        .expect("same length, no checksum: served");
    assert_ne!(served, payload);
    assert!(
        cache.remove(&key(3)).unwrap(),
        "the caller removes what fails its check"
    );
    File::options()
        .write(true)
        .open(cache.entry_path(&key(1)))
        .unwrap()
        .set_len(entry(5_000))
        .unwrap();
    assert_eq!(cache.get(&key(1)).unwrap(), None, "truncated");
    cache.insert(key(4), &payload).unwrap();
    drop(cache);
    let summed = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    assert_eq!(
        summed.get(&key(4)).unwrap(),
        None,
        "version 2 in a checksummed cache"
    );
    assert!(summed.is_empty());
}

/// Entries past `direct::DIRECT_MIN` are written around the page cache: they read back whole,
/// survive a reopen, and damage to them is still caught.
#[test]
fn large_entries_written_around_the_page_cache_read_back_and_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..crate::direct::DIRECT_MIN * 3 + 5)
        .map(|i| (i % 251) as u8)
        .collect();
    {
        let cache = DiskCache::open(tmp.path(), 64 << 20).unwrap();
        cache.insert(key(1), &big).unwrap();
        cache.insert(key(2), &big).unwrap();
        assert_eq!(cache.get(&key(1)).unwrap().as_deref(), Some(&big[..]));
        assert_eq!(
            fs::metadata(cache.entry_path(&key(1))).unwrap().len(),
            entry(big.len())
        );
    }
    let cache = DiskCache::open(tmp.path(), 64 << 20).unwrap();
    assert_eq!(cache.get(&key(2)).unwrap().as_deref(), Some(&big[..]));
    let path = cache.entry_path(&key(1));
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER_LEN + 100_000] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert_eq!(
        cache.get(&key(1)).unwrap(),
        None,
        "a flipped bit in a large entry"
    );
}

#[test]
fn a_directory_has_one_owner_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DiskCache::open(tmp.path(), 1 << 20).unwrap();
    let second = DiskCache::open(tmp.path(), 1 << 20);
    assert!(
        matches!(second, Err(DiskCacheError::Locked(_))),
        "{second:?}"
    );
    drop(first);
    DiskCache::open(tmp.path(), 1 << 20).unwrap();
}

#[test]
fn io_failures_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = DiskCache::open(&file, 1 << 20).unwrap_err();
    assert!(
        matches!(err, DiskCacheError::Io { op: "create", .. }),
        "{err}"
    );

    let dir = tmp.path().join("cache");
    let cache = DiskCache::open(&dir, 1 << 20).unwrap();
    cache.insert(key(1), b"old").unwrap();
    // Block the rename target with a non-empty directory: the new value cannot land, the old
    // index entry must survive, and no temp file may be left behind.
    fs::remove_file(cache.entry_path(&key(2))).ok();
    fs::create_dir(cache.entry_path(&key(2))).unwrap();
    fs::write(cache.entry_path(&key(2)).join("x"), b"").unwrap();
    let err = cache.insert(key(2), b"new").unwrap_err();
    assert!(
        matches!(err, DiskCacheError::Io { op: "rename", .. }),
        "{err}"
    );
    assert!(!cache.contains(&key(2)));
    assert_eq!(cache.bytes(), entry(3));
    assert!(!files(&dir).iter().any(|name| name.starts_with(TEMP_PREFIX)));
}

#[test]
fn concurrent_inserts_and_gets_stay_consistent() {
    const THREADS: u8 = 4;
    const OPS: u32 = 300;
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(DiskCache::open(tmp.path(), 20 * entry(512)).unwrap());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                for i in 0..OPS {
                    let n = ((i * 7 + u32::from(t) * 5) % 40) as u8;
                    if i % 2 == 0 {
                        cache
                            .insert(key(n), &vec![n; 256 + usize::from(n) * 6])
                            .unwrap();
                    } else if let Some(v) = cache.get(&key(n)).unwrap() {
                        assert_eq!(v, vec![n; 256 + usize::from(n) * 6]);
                    }
                    if i % 50 == 49 {
                        cache.remove(&key(n)).unwrap();
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("worker thread panicked");
    }
    let stats = cache.stats();
    assert_eq!(
        stats.hits + stats.misses,
        u64::from(THREADS) * u64::from(OPS / 2)
    );
    assert!(stats.bytes <= cache.capacity());
    // The index and the directory agree exactly.
    let indexed: BTreeSet<String> = (0..40u8)
        .filter(|&n| cache.contains(&key(n)))
        .map(|n| key(n).file_name())
        .collect();
    assert_eq!(files(tmp.path()), indexed);
    let on_disk: u64 = indexed
        .iter()
        .map(|name| fs::metadata(tmp.path().join(name)).unwrap().len())
        .sum();
    assert_eq!(on_disk, stats.bytes);
}

#[test]
fn an_entry_laid_out_by_its_caller_reads_back_and_a_wrong_header_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for summed in [false, true] {
        let dir = tmp.path().join(format!("summed-{summed}"));
        let cache = if summed {
            DiskCache::open(&dir, 64 << 20).unwrap()
        } else {
            DiskCache::open_unsummed(&dir, 64 << 20).unwrap()
        };
        let value: Vec<u8> = (0..crate::direct::DIRECT_MIN * 5 + 77)
            .map(|i| (i % 241) as u8)
            .collect();
        // Laid out at an address aligned for O_DIRECT, as the mount does (written straight
        // from it), and at one that is not (through the copy): the same entry either way.
        let mut store =
            vec![0u8; DiskCache::ENTRY_HEADER_LEN + value.len() + 2 * crate::direct::ALIGN];
        let aligned = store.as_ptr().align_offset(crate::direct::ALIGN);
        for (n, at) in [(1u8, aligned), (2, aligned + 1)] {
            let end = at + DiskCache::ENTRY_HEADER_LEN + value.len();
            store[at..at + DiskCache::ENTRY_HEADER_LEN]
                .copy_from_slice(&cache.entry_header(&value));
            store[at + DiskCache::ENTRY_HEADER_LEN..end].copy_from_slice(&value);
            assert!(cache.insert_entry(key(n), &store[at..end]).is_ok());
            assert_eq!(
                cache.get(&key(n)).unwrap().as_deref(),
                Some(&value[..]),
                "summed {summed}, entry {n}"
            );
            assert_eq!(
                fs::metadata(cache.entry_path(&key(n))).unwrap().len(),
                entry(value.len())
            );
        }
        // A header for other bytes (here: one byte short) is refused, and nothing is written.
        let mut wrong = cache.entry_header(&value[1..]).to_vec();
        wrong.extend_from_slice(&value);
        assert!(matches!(
            cache.insert_entry(key(3), &wrong),
            Err(DiskCacheError::BadEntry)
        ));
        assert!(matches!(
            cache.insert_entry(key(3), &wrong[..3]),
            Err(DiskCacheError::BadEntry)
        ));
        assert_eq!(cache.get(&key(3)).unwrap(), None);
        assert!(!cache.entry_path(&key(3)).exists());
    }
}
