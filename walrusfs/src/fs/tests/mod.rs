//! Tests of the filesystem core against an in-memory blob store (no FUSE, no network): the
//! real index, real encryption, real buffering, with failures injected by the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{Fs, FsConfig, FsError, FsParts, ReadData, RequestCtx};
use crate::data::crypto::{DataKey, Segments};
use crate::data::store::MemoryStore;
use crate::index::{FileKind, Index, IndexOptions, SetAttr, ROOT_INO};

mod content;
mod writeback;

pub(super) const CHUNK: u32 = 64 * 1024;
pub(super) const CTX: RequestCtx = RequestCtx { uid: 0, gid: 0 };

pub(super) struct Setup {
    pub(super) fs: Fs<MemoryStore>,
    pub(super) store: Arc<MemoryStore>,
    pub(super) dir: tempfile::TempDir,
    pub(super) rt: tokio::runtime::Runtime,
}

pub(super) fn config() -> FsConfig {
    FsConfig {
        gc_grace: Duration::ZERO,
        writeback_delay: Duration::from_secs(3600),
        ..FsConfig::default()
    }
}

pub(super) fn setup() -> Setup {
    setup_with(config())
}

/// [`setup`] with configuration `cfg` (a reopen uses the default one again).
pub(super) fn setup_with(cfg: FsConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let fs = open_fs(dir.path(), store.clone(), &rt, cfg);
    Setup { fs, store, dir, rt }
}

/// The runtime the tests' filesystems run on: two workers, as a mount has.
pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub(super) fn open_fs(
    dir: &std::path::Path,
    store: Arc<MemoryStore>,
    rt: &tokio::runtime::Runtime,
    cfg: FsConfig,
) -> Fs<MemoryStore> {
    open_fs_with(dir, store, rt, cfg, None)
}

pub(super) fn open_fs_with(
    dir: &std::path::Path,
    store: Arc<MemoryStore>,
    rt: &tokio::runtime::Runtime,
    cfg: FsConfig,
    disk_cache: Option<cache::DiskCache>,
) -> Fs<MemoryStore> {
    open_fs_chunked(dir, store, rt, cfg, disk_cache, CHUNK)
}

pub(super) fn open_fs_chunked(
    dir: &std::path::Path,
    store: Arc<MemoryStore>,
    rt: &tokio::runtime::Runtime,
    cfg: FsConfig,
    disk_cache: Option<cache::DiskCache>,
    chunk_size: u32,
) -> Fs<MemoryStore> {
    let opts = IndexOptions {
        chunk_size,
        ..index_options()
    };
    // A crashed filesystem's last detached tasks (a readahead, a queued log flush) may still
    // hold its index for a moment: wait for them to let go of its lock.
    let mut tries = 0;
    let index = loop {
        match Index::open(&dir.join("index"), opts) {
            Ok(index) => break std::sync::Arc::new(index),
            Err(e) if tries < 500 && e.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open the index: {e}"),
        }
    };
    Fs::start(
        FsParts {
            index,
            store,
            key: DataKey::from_bytes([7; 32]),
            rt: rt.handle().clone(),
            cfg,
            disk_cache,
        },
        &dir.join("journal"),
    )
    .unwrap()
}

fn index_options() -> IndexOptions {
    IndexOptions {
        root_uid: 0,
        root_gid: 0,
        root_perm: 0o755,
        chunk_size: CHUNK,
    }
}

/// Drops a filesystem as a crash would: nothing more is stored or committed (its background
/// tasks are stopped first, so the index can be opened again).
pub(super) fn crash(fs: Fs<MemoryStore>) {
    fs.stop_background();
    drop(fs);
}

/// Creates `name` in the root of `fs` with `data`, fsyncs it and drops `fs` as a crash
/// would; returns the file's inode number.
fn store_file(fs: Fs<MemoryStore>, name: &[u8], data: &[u8]) -> u64 {
    let ino = write_fsynced(&fs, name, data);
    crash(fs);
    ino
}

/// Creates `name` in the root of `fs` with `data` and fsyncs it; returns its inode number.
fn write_fsynced(fs: &Fs<MemoryStore>, name: &[u8], data: &[u8]) -> u64 {
    let a = fs
        .create_node(CTX, ROOT_INO, name, FileKind::File, 0o644, 0, None)
        .unwrap();
    let fh = fs.open(a.ino, true).unwrap();
    fs.write(fh, 0, data).unwrap();
    fs.fsync(a.ino).unwrap();
    fs.release(fh).unwrap();
    a.ino
}

/// A chmod to `perm`.
pub(super) fn chmod(perm: u16) -> SetAttr {
    SetAttr {
        perm: Some(perm),
        ..SetAttr::default()
    }
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl Setup {
    pub(super) fn create(&self, name: &str) -> (u64, u64) {
        let a = self
            .fs
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
        (a.ino, self.fs.open(a.ino, true).unwrap())
    }

    pub(super) fn read_all(&self, fh: u64) -> Vec<u8> {
        self.fs.read(fh, 0, u32::MAX).unwrap().into()
    }

    /// Drops this filesystem (as a crash would: no shutdown) and opens the same index again.
    pub(super) fn reopen(self) -> Setup {
        let Setup { fs, store, dir, rt } = self;
        crash(fs);
        let fs = open_fs(dir.path(), store.clone(), &rt, config());
        Setup { fs, store, dir, rt }
    }
}

#[test]
fn writes_across_chunks_read_back_before_and_after_fsync() {
    let s = setup();
    let (ino, fh) = s.create("f");
    let data = pattern(5 * CHUNK as usize + 123, 1);
    // Odd-sized writes, not aligned to chunks.
    for (i, piece) in data.chunks(10_007).enumerate() {
        s.fs.write(fh, (i * 10_007) as u64, piece).unwrap();
    }
    assert_eq!(s.read_all(fh), data, "read from buffers");
    s.fs.fsync(ino).unwrap();
    assert_eq!(s.fs.dirty_bytes(), 0, "fsync leaves nothing buffered");
    assert_eq!(s.read_all(fh), data, "read from cache/store");
    assert_eq!(s.fs.getattr(ino).unwrap().size, data.len() as u64);
    s.fs.release(fh).unwrap();
    // A fresh process (cold cache) reads the same bytes from the store.
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
    // Small chunks (64 KiB here) share packs.
    assert!(!s.store.is_empty());
    // Nodes only hold ciphertext: no stored blob contains a plaintext run.
    let needle = &data[1000..1032];
    for id in s.store.blob_ids() {
        let blob =
            s.rt.block_on(crate::data::store::BlobStore::get_by_id(&*s.store, id))
                .unwrap();
        assert!(
            !blob.windows(needle.len()).any(|w| w == needle),
            "plaintext in blob {id}"
        );
    }
}

#[test]
fn partial_overwrite_patches_the_chunk() {
    let s = setup();
    let (ino, fh) = s.create("f");
    let mut data = pattern(3 * CHUNK as usize, 2);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.fsync(ino).unwrap();
    let patch = vec![0xAB; 5000];
    let at = CHUNK as usize + 100;
    s.fs.write(fh, at as u64, &patch).unwrap();
    data[at..at + patch.len()].copy_from_slice(&patch);
    assert_eq!(s.read_all(fh), data);
    s.fs.fsync(ino).unwrap();
    s.fs.release(fh).unwrap();
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
}

#[test]
fn holes_and_truncation_read_as_zeros() {
    let s = setup();
    let (ino, fh) = s.create("sparse");
    let far = 10 * u64::from(CHUNK) + 7;
    s.fs.write(fh, far, b"end").unwrap();
    let all = s.read_all(fh);
    assert_eq!(all.len() as u64, far + 3);
    assert!(all[..far as usize].iter().all(|&b| b == 0));
    assert_eq!(&all[far as usize..], b"end");
    s.fs.fsync(ino).unwrap();

    // Truncate into the middle of a stored chunk, then extend: the cut bytes must not return.
    let (ino2, fh2) = s.create("t");
    let data = pattern(2 * CHUNK as usize, 3);
    s.fs.write(fh2, 0, &data).unwrap();
    s.fs.fsync(ino2).unwrap();
    let cut = u64::from(CHUNK) + 10;
    s.fs.setattr(
        ino2,
        SetAttr {
            size: Some(cut),
            ..Default::default()
        },
    )
    .unwrap();
    s.fs.setattr(
        ino2,
        SetAttr {
            size: Some(3 * u64::from(CHUNK)),
            ..Default::default()
        },
    )
    .unwrap();
    let back = s.read_all(fh2);
    assert_eq!(&back[..cut as usize], &data[..cut as usize]);
    assert!(
        back[cut as usize..].iter().all(|&b| b == 0),
        "truncated bytes reappeared"
    );
    // Same with the data still buffered (never stored).
    let (_, fh3) = s.create("u");
    s.fs.write(fh3, 0, &data).unwrap();
    let ino3 = s.fs.lookup(ROOT_INO, b"u").unwrap().ino;
    s.fs.setattr(
        ino3,
        SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    s.fs.setattr(
        ino3,
        SetAttr {
            size: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();
    let back = s.read_all(fh3);
    assert_eq!(&back[..100], &data[..100]);
    assert!(back[100..].iter().all(|&b| b == 0));
}

/// Growing an open file (`fallocate`, `ftruncate` up) is a write of nothing at the new size:
/// committed with the data written after it, or at close with none, and kept when a chmod
/// comes in between (the chmod waits for it rather than going to the index's queue alone,
/// which would have let the new size be taken for committed and lost).
#[test]
fn growing_an_open_file_is_committed_with_its_data_or_at_close() {
    let s = setup();
    let grow = |ino, size| {
        s.fs.setattr(
            ino,
            SetAttr {
                size: Some(size),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let cs = u64::from(CHUNK);
    // Grown, a chmod, then written: size, mode and data all arrive.
    let (a, fha) = s.create("a");
    assert_eq!(grow(a, 3 * cs + 5).size, 3 * cs + 5);
    s.fs.setattr(a, chmod(0o600)).unwrap();
    assert_eq!(s.fs.getattr(a).unwrap().size, 3 * cs + 5);
    s.fs.write(fha, 0, b"0123456789").unwrap();
    s.fs.flush(fha).unwrap();
    s.fs.release(fha).unwrap();
    // Grown and a chmod, never written: committed at close.
    let (b, fhb) = s.create("b");
    grow(b, 100);
    s.fs.setattr(b, chmod(0o640)).unwrap();
    s.fs.flush(fhb).unwrap();
    s.fs.release(fhb).unwrap();
    // Grown past data written before: the data stays, the rest reads as zeros.
    let (c, fhc) = s.create("c");
    s.fs.write(fhc, 0, b"abc").unwrap();
    grow(c, cs + 1);
    s.fs.flush(fhc).unwrap();
    s.fs.release(fhc).unwrap();
    for (ino, size, perm) in [(a, 3 * cs + 5, 0o600), (b, 100, 0o640), (c, cs + 1, 0o644)] {
        let attr = s.fs.getattr(ino).unwrap();
        assert_eq!((attr.size, attr.perm), (size, perm), "inode {ino}");
    }
    s.fs.sync_all().unwrap();
    let s = s.reopen();
    let check = |name: &str, head: &[u8], size: u64, perm: u16| {
        let attr = s.fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
        assert_eq!((attr.size, attr.perm), (size, perm), "{name}");
        let fh = s.fs.open(attr.ino, false).unwrap();
        let all = s.read_all(fh);
        assert_eq!(all.len() as u64, size, "{name}");
        assert_eq!(&all[..head.len()], head, "{name}");
        assert!(all[head.len()..].iter().all(|&x| x == 0), "{name}");
        s.fs.release(fh).unwrap();
    };
    check("a", b"0123456789", 3 * cs + 5, 0o600);
    check("b", b"", 100, 0o640);
    check("c", b"abc", cs + 1, 0o644);
}

#[test]
fn failed_store_makes_fsync_fail_and_keeps_the_data() {
    let s = setup();
    let (ino, fh) = s.create("f");
    let data = pattern(CHUNK as usize + 500, 4);
    s.store.fail_puts.store(true, Ordering::SeqCst);
    s.fs.write(fh, 0, &data).unwrap();
    let err = s.fs.fsync(ino).unwrap_err();
    assert!(matches!(err, FsError::Network(_)), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        s.read_all(fh),
        data,
        "data stays readable after a failed fsync"
    );
    assert!(s.fs.journal_backlog().1 > 0, "kept in the journal");
    // The network comes back: the next fsync stores it.
    s.store.fail_puts.store(false, Ordering::SeqCst);
    s.fs.fsync(ino).unwrap();
    assert_eq!(s.fs.dirty_bytes(), 0);
    assert_eq!(s.fs.journal_backlog().1, 0);
    s.fs.release(fh).unwrap();
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    assert_eq!(s.read_all(fh), data);
}

#[test]
fn unfsynced_data_may_be_lost_in_a_crash_but_fsynced_data_is_not() {
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, b"durable").unwrap();
    s.fs.fsync(ino).unwrap();
    s.fs.write(fh, 7, b" and more").unwrap();
    let s = s.reopen();
    let fh = s.fs.open(ino, false).unwrap();
    let back = s.read_all(fh);
    assert!(back.starts_with(b"durable"), "{back:?}");
}

#[test]
fn unlinked_open_file_stays_readable_until_released_then_is_collected() {
    let s = setup();
    let (ino, fh) = s.create("f");
    let data = pattern(2 * CHUNK as usize, 5);
    s.fs.write(fh, 0, &data).unwrap();
    s.fs.fsync(ino).unwrap();
    let stored = s.store.len();
    assert!(stored >= 1);
    s.fs.unlink(ROOT_INO, b"f").unwrap();
    assert!(matches!(
        s.fs.lookup(ROOT_INO, b"f"),
        Err(FsError::Index(_))
    ));
    assert_eq!(
        s.read_all(fh),
        data,
        "still readable through the open handle"
    );
    s.fs.release(fh).unwrap();
    // The garbage collector deletes its blobs from the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !s.store.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "blobs of a deleted file were never collected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn overwritten_chunks_are_garbage_collected() {
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, &pattern(CHUNK as usize, 6)).unwrap();
    s.fs.fsync(ino).unwrap();
    for round in 0..5u8 {
        s.fs.write(fh, 0, &pattern(CHUNK as usize, round)).unwrap();
        s.fs.fsync(ino).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.store.len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} blobs remain",
            s.store.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.read_all(fh), pattern(CHUNK as usize, 4));
}

/// Reads that seek fetch only the segments they need, as ranges of the blob; reads that go on
/// from the one before fetch whole chunks; a failed range read falls back to the whole chunk.
/// In a new index (4 KiB segments) and in one from before segment sizes (64 KiB).
#[test]
fn seeking_reads_fetch_ranges_and_sequential_reads_whole_chunks() {
    for legacy in [false, true] {
        seeking_reads_in(legacy);
    }
}

fn seeking_reads_in(legacy: bool) {
    const BIG: u32 = 1 << 20; // 256 segments a chunk (16 of 64 KiB)
    let Setup { fs, dir, rt, .. } = setup();
    crash(fs);
    let dir = tempfile::tempdir_in(dir.path()).unwrap(); // an index made with BIG chunks
    let options = IndexOptions {
        chunk_size: BIG,
        ..index_options()
    };
    let segments = if legacy {
        let index = Index::open(&dir.path().join("index"), options).unwrap();
        index.make_format_3();
        Segments::LEGACY
    } else {
        Segments::DEFAULT
    };
    let store = Arc::new(MemoryStore::default());
    let open =
        |store: Arc<MemoryStore>| open_fs_chunked(dir.path(), store, &rt, config(), None, BIG);
    let data = pattern(5 * BIG as usize / 2, 9);
    let ino = store_file(open(store.clone()), b"big", &data);

    let fs = open(store.clone());
    let fh = fs.open(ino, false).unwrap();
    let ranges = || store.range_gets.load(Ordering::SeqCst);
    let check = |offset: usize, len: usize| {
        let got = fs.read(fh, offset as u64, len as u32).unwrap();
        assert!(got == data[offset..offset + len], "{offset}+{len}");
    };
    // A seek into the middle of chunk 1: one range, the one segment holding it.
    check(1_300_000 - 1_300_000 % 4096, 4096);
    assert_eq!(ranges(), 1);
    assert_eq!(
        store.range_bytes.load(Ordering::SeqCst),
        segments.sealed() as u64,
        "legacy {legacy}"
    );
    // Across a segment boundary, and across a chunk boundary (a range of each chunk).
    check(BIG as usize + 2 * 65_536 - 100, 300);
    assert_eq!(ranges(), 2);
    check(2 * BIG as usize - 100, 300);
    assert_eq!(ranges(), 4);
    // Into the short last chunk, to the end of the file.
    check(data.len() - 5000, 5000);
    assert_eq!(ranges(), 5);
    // Going on from there: sequential, whole chunks.
    check(0, 4096);
    check(4096, 100_000);
    assert_eq!(ranges(), 5, "sequential reads fetch whole chunks");
    // A read needing more than half a chunk's segments takes the whole chunk.
    check(BIG as usize + 10, 600_000);
    assert_eq!(ranges(), 5);
    // Past the end of the file, nothing; a failed range read falls back to the whole chunk.
    assert!(fs.read(fh, data.len() as u64 + 10, 100).unwrap().is_empty());
    store.fail_ranges.store(true, Ordering::SeqCst);
    check(2 * BIG as usize + 70_000, 1000);
    assert_eq!(ranges(), 5);
    // Written, and read back whole and in ranges, in the index's segments.
    assert_eq!(fs.inner.index.segments(), segments);
    fs.inner.index.check().unwrap();
    crash(fs);
}

#[test]
fn reads_and_writes_that_need_the_network_are_handed_back_by_the_nowait_calls() {
    let Setup { fs, store, rt, dir } = setup();
    let data = pattern(2 * CHUNK as usize + 500, 3);
    let ino = store_file(fs, b"f", &data);
    // No readahead: what is cached is what this test read.
    let cfg = FsConfig {
        readahead_chunks: 0,
        ..config()
    };
    let fs = open_fs(dir.path(), store.clone(), &rt, cfg);
    let fh = fs.open(ino, true).unwrap();
    let gets = || store.gets.load(Ordering::SeqCst) + store.range_gets.load(Ordering::SeqCst);

    // Cold: only on the network. Nothing is fetched, and the read is not noted (the retry
    // off FUSE's thread is the same read, still sequential: it fetches the whole chunk).
    assert!(matches!(
        fs.read_nowait(fh, 0, 4096),
        Err(FsError::WouldBlock)
    ));
    assert_eq!(gets(), 0);
    assert_eq!(fs.read(fh, 0, 4096).unwrap(), data[..4096]);
    assert_eq!(
        store.range_gets.load(Ordering::SeqCst),
        0,
        "read as sequential"
    );
    // Now in the memory cache: served at once.
    assert_eq!(fs.read_nowait(fh, 4096, 4096).unwrap(), data[4096..8192]);

    // A partial overwrite of a stored chunk that is not cached needs its content first.
    let second = u64::from(CHUNK) + 10;
    assert!(matches!(
        fs.write_nowait(fh, second, b"abc"),
        Err(FsError::WouldBlock)
    ));
    // Reading the whole chunk caches it (a few bytes of it would be fetched as a range).
    assert_eq!(
        fs.read(fh, u64::from(CHUNK), CHUNK).unwrap(),
        data[CHUNK as usize..][..CHUNK as usize],
        "nothing written"
    );
    // ... but not once it is cached, nor a whole chunk, nor a chunk with a buffer.
    assert_eq!(fs.write_nowait(fh, second, b"abc").unwrap(), 3);
    assert_eq!(
        fs.write_nowait(fh, 0, &pattern(CHUNK as usize, 7)).unwrap(),
        CHUNK as usize
    );
    assert_eq!(fs.write_nowait(fh, 5, b"xy").unwrap(), 2);
    // Past the end of the file, the last chunk's content is needed too (it is on the network).
    assert!(matches!(
        fs.write_nowait(fh, data.len() as u64 + 1, b"z"),
        Err(FsError::WouldBlock)
    ));
    let mut want = data.clone();
    want[..CHUNK as usize].copy_from_slice(&pattern(CHUNK as usize, 7));
    want[5..7].copy_from_slice(b"xy");
    want[second as usize..][..3].copy_from_slice(b"abc");
    let got = fs.read(fh, 0, u32::MAX).unwrap();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "{} bytes read, {} expected, first difference at {first_diff:?}",
        got.len(),
        want.len()
    );
    fs.release(fh).unwrap();
    crash(fs);
}

#[test]
fn parallel_cold_readers_fetch_a_bounded_number_of_chunks_at_once() {
    let Setup { fs, store, rt, dir } = setup();
    let slots = super::read::fetch_slots();
    let readers = 3 * slots;
    let a = fs
        .create_node(CTX, ROOT_INO, b"f", FileKind::File, 0o644, 0, None)
        .unwrap();
    let fh = fs.open(a.ino, true).unwrap();
    let data = pattern(readers * CHUNK as usize, 5);
    fs.write(fh, 0, &data).unwrap();
    fs.fsync(a.ino).unwrap();
    fs.release(fh).unwrap();
    crash(fs);
    let cfg = FsConfig {
        readahead_chunks: 0,
        ..config()
    };
    let fs = open_fs(dir.path(), store.clone(), &rt, cfg);
    store.get_delay_ms.store(50, Ordering::SeqCst);
    // One reader per chunk, all at once, each reading its whole chunk (a chunk here is one
    // sealed segment, so even a read that seeks fetches it whole).
    std::thread::scope(|scope| {
        for i in 0..readers {
            let (fs, data) = (&fs, &data);
            scope.spawn(move || {
                let fh = fs.open(a.ino, false).unwrap();
                let at = i * CHUNK as usize;
                let got = fs.read(fh, at as u64, CHUNK).unwrap();
                assert!(got == data[at..at + CHUNK as usize], "chunk {i}");
                fs.release(fh).unwrap();
            });
        }
    });
    let most = store.max_gets_in_flight.load(Ordering::SeqCst);
    assert!(
        (2..=slots as u64).contains(&most),
        "{most} whole gets at once"
    );
    crash(fs);
}

#[test]
fn read_errors_surface_as_eio() {
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, b"data").unwrap();
    s.fs.fsync(ino).unwrap();
    s.fs.release(fh).unwrap();
    let s = s.reopen();
    s.store.fail_gets.store(true, Ordering::SeqCst);
    let fh = s.fs.open(ino, false).unwrap();
    let err = s.fs.read(fh, 0, 100).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
}

#[test]
fn wrong_master_key_is_an_integrity_error_not_garbage() {
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, b"secret").unwrap();
    s.fs.fsync(ino).unwrap();
    s.fs.release(fh).unwrap();
    let Setup { fs, store, dir, rt } = s;
    crash(fs);
    let opts = index_options();
    let index = std::sync::Arc::new(Index::open(&dir.path().join("index"), opts).unwrap());
    let fs = Fs::start(
        FsParts {
            index,
            store,
            key: DataKey::from_bytes([8; 32]),
            rt: rt.handle().clone(),
            cfg: config(),
            disk_cache: None,
        },
        &dir.path().join("journal"),
    )
    .unwrap();
    let fh = fs.open(ino, false).unwrap();
    let err = fs.read(fh, 0, 100).unwrap_err();
    assert!(matches!(err, FsError::Integrity(_)), "{err}");
}

#[test]
fn read_only_refuses_changes() {
    let s = setup();
    let (ino, fh) = s.create("f");
    s.fs.write(fh, 0, b"x").unwrap();
    s.fs.fsync(ino).unwrap();
    s.fs.release(fh).unwrap();
    let Setup { fs, store, dir, rt } = s;
    crash(fs);
    let cfg = FsConfig {
        read_only: true,
        ..config()
    };
    let fs = open_fs(dir.path(), store, &rt, cfg);
    assert_eq!(fs.open(ino, true).unwrap_err().errno(), libc::EROFS);
    let fh = fs.open(ino, false).unwrap();
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"x");
    assert_eq!(fs.unlink(ROOT_INO, b"f").unwrap_err().errno(), libc::EROFS);
    assert_eq!(
        fs.create_node(CTX, ROOT_INO, b"g", FileKind::File, 0o644, 0, None)
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
}

#[test]
fn setgid_directories_pass_their_group_on() {
    let s = setup();
    let ctx = RequestCtx {
        uid: 1000,
        gid: 1000,
    };
    let d =
        s.fs.create_node(CTX, ROOT_INO, b"d", FileKind::Dir, 0o2775, 0, None)
            .unwrap();
    s.fs.setattr(
        d.ino,
        SetAttr {
            gid: Some(50),
            ..Default::default()
        },
    )
    .unwrap();
    let f =
        s.fs.create_node(ctx, d.ino, b"f", FileKind::File, 0o644, 0, None)
            .unwrap();
    assert_eq!(f.gid, 50);
    let sub =
        s.fs.create_node(ctx, d.ino, b"sub", FileKind::Dir, 0o755, 0, None)
            .unwrap();
    assert_eq!(sub.gid, 50);
    assert_ne!(sub.perm & 0o2000, 0, "subdirectory inherits setgid");
    let plain =
        s.fs.create_node(ctx, ROOT_INO, b"p", FileKind::File, 0o644, 0, None)
            .unwrap();
    assert_eq!(plain.gid, 1000);
}

#[test]
fn concurrent_writers_to_different_files() {
    let s = Arc::new(setup());
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let (ino, fh) = s.create(&format!("f{t}"));
                let data = pattern(3 * CHUNK as usize + t as usize, t);
                for piece in 0..data.len().div_ceil(4096) {
                    let at = piece * 4096;
                    let end = (at + 4096).min(data.len());
                    s.fs.write(fh, at as u64, &data[at..end]).unwrap();
                }
                s.fs.fsync(ino).unwrap();
                assert_eq!(s.read_all(fh), data);
                s.fs.release(fh).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn dirty_memory_is_bounded_for_a_big_sequential_write() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let budget = 4 * u64::from(CHUNK);
    let cfg = FsConfig {
        dirty_budget: budget,
        ..config()
    };
    let fs = open_fs(dir.path(), store, &rt, cfg);
    let a = fs
        .create_node(CTX, ROOT_INO, b"big", FileKind::File, 0o644, 0, None)
        .unwrap();
    let fh = fs.open(a.ino, true).unwrap();
    let piece = pattern(32 * 1024, 9);
    let mut peak = 0;
    for i in 0..(64 * u64::from(CHUNK) / piece.len() as u64) {
        fs.write(fh, i * piece.len() as u64, &piece).unwrap();
        peak = peak.max(fs.dirty_bytes());
    }
    fs.fsync(a.ino).unwrap();
    // One chunk may be in flight beyond the budget per writer.
    assert!(
        peak <= budget + 2 * u64::from(CHUNK),
        "peak dirty {peak} > budget {budget}"
    );
}

/// A filesystem over `store` with an on-disk chunk cache in `dir/cache`, as the mount opens it
/// (no checksum of its own: the AEAD authenticates what it returns).
fn open_with_disk_cache(
    dir: &std::path::Path,
    store: &Arc<MemoryStore>,
    rt: &tokio::runtime::Runtime,
) -> Fs<MemoryStore> {
    open_with_disk_cache_of(dir, store, rt, 64 << 20)
}

/// [`open_with_disk_cache`] with a cache of `capacity` bytes.
fn open_with_disk_cache_of(
    dir: &std::path::Path,
    store: &Arc<MemoryStore>,
    rt: &tokio::runtime::Runtime,
    capacity: u64,
) -> Fs<MemoryStore> {
    let disk = cache::DiskCache::open_unsummed(dir.join("cache"), capacity).unwrap();
    open_fs_with(dir, store.clone(), rt, config(), Some(disk))
}

/// Reads all of `ino` (which must hold `data`) in `fs`, waits until the chunks fetched are in
/// the disk cache (filled off the reader's path), and crashes `fs`. Returns the cache's stats.
fn read_to_fill_the_disk_cache(fs: Fs<MemoryStore>, ino: u64, data: &[u8]) -> cache::CacheStats {
    let fh = fs.open(ino, false).unwrap();
    assert_eq!(fs.read(fh, 0, u32::MAX).unwrap(), data);
    fs.settle_cache_writes(Duration::from_secs(10));
    let stats = fs.disk_cache_stats().unwrap();
    fs.release(fh).unwrap();
    crash(fs);
    stats
}

/// Reads all of `ino` with every get from the network failing: it must come from the cache.
fn read_with_the_network_failing(fs: &Fs<MemoryStore>, store: &MemoryStore, ino: u64, data: &[u8]) {
    store.fail_gets.store(true, Ordering::SeqCst);
    let fh = fs.open(ino, false).unwrap();
    assert_eq!(fs.read(fh, 0, u32::MAX).unwrap(), data);
}

#[test]
fn disk_cache_serves_sealed_chunks_when_the_network_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let data = pattern(2 * CHUNK as usize, 1);
    // Written without a disk cache (which a write would fill): the first cold read fills it
    // from the store.
    let ino = store_file(
        open_fs(dir.path(), store.clone(), &rt, config()),
        b"f",
        &data,
    );
    let disk =
        read_to_fill_the_disk_cache(open_with_disk_cache(dir.path(), &store, &rt), ino, &data);
    assert!(disk.inserts >= 2, "{disk:?}");
    // With the network failing, a fresh process still reads from the disk cache.
    let fs = open_with_disk_cache(dir.path(), &store, &rt);
    read_with_the_network_failing(&fs, &store, ino, &data);
    assert!(fs.disk_cache_stats().unwrap().hits >= 2);
}

/// A slower node's confirmation joins its blob's proofs; one that comes in before the blob's
/// record (the upload's commit follows its put) waits for it, a few ticks at most.
#[test]
fn late_confirmations_wait_for_their_blobs_record_a_while() {
    let Setup { fs, store, rt, dir } = setup();
    store_file(fs, b"f", &pattern(5000, 8));
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let (stored, _) = fs.index().blobs().unwrap().into_iter().next().unwrap();
    let meta = |blob_len, seed| netcore::codec::BlobMetadata {
        params: netcore::codec::EncodingParams::new(7, 3).unwrap(),
        blob_len,
        sliver_hashes: vec![[seed; 32]; 7],
    };
    let later_meta = meta(7000, 1);
    let later = later_meta.blob_id();
    let node = netcore::identity::Identity::generate().unwrap();
    let sign = |blob, i| netcore::wire::StorageConfirmation::sign(&node, blob, i);
    store
        .late
        .lock()
        .unwrap()
        .extend([sign(stored, 5), sign(later, 6)]);
    fs.keep_late_confirmations();
    assert_eq!(fs.index().proofs(&stored).unwrap(), vec![sign(stored, 5)]);
    assert_eq!(fs.inner.late_waiting.lock().unwrap().len(), 1);
    // The other blob's record arrives (as an upload's commit would bring it): the waiting
    // confirmation joins it at the next call.
    fs.index()
        .transact(&crate::index::Scan::default(), |tx| {
            tx.register_blob(&later, &later_meta, &[])
        })
        .unwrap();
    fs.keep_late_confirmations();
    assert_eq!(fs.index().proofs(&later).unwrap(), vec![sign(later, 6)]);
    assert!(fs.inner.late_waiting.lock().unwrap().is_empty());
    // One whose blob never gets a record is let go after `LATE_WAIT_TICKS` calls.
    let never = meta(9000, 2).blob_id();
    store.late.lock().unwrap().push(sign(never, 1));
    for _ in 0..=super::background::LATE_WAIT_TICKS {
        fs.keep_late_confirmations();
    }
    assert!(fs.inner.late_waiting.lock().unwrap().is_empty());
    crash(fs);
}

/// A read within one chunk answers with the cached chunk's bytes, not a copy; one across
/// chunks, or over a hole, with bytes assembled for it. Both right.
#[test]
fn a_read_within_a_chunk_is_borrowed_and_one_across_chunks_assembled() {
    let Setup { fs, store, rt, dir } = setup();
    let data = pattern(2 * CHUNK as usize + 100, 4);
    let ino = store_file(fs, b"f", &data);
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let fh = fs.open(ino, false).unwrap();
    let within = fs.read(fh, 10, 4000).unwrap();
    assert!(within == data[10..4010]);
    assert!(matches!(within, ReadData::Shared { .. }), "{within:?}");
    let across = CHUNK as usize - 50;
    let both = fs.read(fh, across as u64, 100).unwrap();
    assert!(both == data[across..across + 100]);
    assert!(matches!(both, ReadData::Owned(_)), "{both:?}");
    // Past the end: only what there is.
    let tail = fs.read(fh, data.len() as u64 - 30, 4096).unwrap();
    assert!(tail == data[data.len() - 30..]);
    fs.release(fh).unwrap();
}

/// A sequential read through a file larger than the on-disk cache does not fill it (the
/// stream would evict its own start, and all else, before reading any of it again); a read
/// after a seek still does, and a file the cache can hold is kept (the tests above).
#[test]
fn a_stream_through_a_file_larger_than_the_disk_cache_leaves_the_cache_alone() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let open = || open_with_disk_cache_of(dir.path(), &store, &rt, 3 * u64::from(CHUNK));
    let data = pattern(4 * CHUNK as usize, 9);
    // Written without a disk cache (which a write would fill).
    let ino = store_file(
        open_fs(dir.path(), store.clone(), &rt, config()),
        b"f",
        &data,
    );

    let fs = open();
    let fh = fs.open(ino, false).unwrap();
    let step = CHUNK as usize / 2;
    for at in (0..data.len()).step_by(step) {
        let got = fs.read(fh, at as u64, step as u32).unwrap();
        assert!(got == data[at..at + step], "at {at}");
    }
    fs.settle_cache_writes(Duration::from_secs(10));
    let stats = fs.disk_cache_stats().unwrap();
    assert_eq!(stats.inserts, 0, "{stats:?}");
    fs.release(fh).unwrap();
    crash(fs);

    // The first read of a handle at a seek: a whole chunk, fetched whole, and kept.
    let fs = open();
    let fh = fs.open(ino, false).unwrap();
    let at = 2 * CHUNK as usize;
    let got = fs.read(fh, at as u64, CHUNK).unwrap();
    assert!(got == data[at..at + CHUNK as usize]);
    fs.settle_cache_writes(Duration::from_secs(10));
    let stats = fs.disk_cache_stats().unwrap();
    assert!(stats.inserts >= 1, "{stats:?}");
    fs.release(fh).unwrap();
}

#[test]
fn chunks_just_written_are_read_back_from_the_disk_cache_not_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    // Two full chunks, and a tail too small for an entry of its own.
    let whole = 2 * CHUNK as usize;
    let data = pattern(whole + 1000, 9);
    let fs = open_with_disk_cache(dir.path(), &store, &rt);
    let ino = write_fsynced(&fs, b"f", &data);
    fs.settle_cache_writes(Duration::from_secs(10));
    let stats = fs.disk_cache_stats().unwrap();
    assert_eq!(stats.inserts, 2, "{stats:?}");
    crash(fs);
    // A fresh process, its memory caches empty: the full chunks come from the disk, not
    // the network, which fails every get.
    let fs = open_with_disk_cache(dir.path(), &store, &rt);
    store.fail_gets.store(true, Ordering::SeqCst);
    let fh = fs.open(ino, false).unwrap();
    assert!(fs.read(fh, 0, whole as u32).unwrap() == data[..whole]);
    assert!(fs.disk_cache_stats().unwrap().hits >= 2);
    // The tail was not kept: it needs the network.
    assert!(fs.read(fh, whole as u64, 1000).is_err());
    store.fail_gets.store(false, Ordering::SeqCst);
    assert!(fs.read(fh, whole as u64, 1000).unwrap() == data[whole..]);
}

#[test]
fn a_file_written_larger_than_the_disk_cache_is_not_kept_in_it() {
    // As with reads (above): a file the cache cannot hold would only push out everything
    // else in it.
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let fs = open_with_disk_cache_of(dir.path(), &store, &rt, 3 * u64::from(CHUNK));
    write_fsynced(&fs, b"big", &pattern(4 * CHUNK as usize, 4));
    // A file the cache can hold, written next to it, is kept.
    write_fsynced(&fs, b"small", &pattern(CHUNK as usize, 5));
    fs.settle_cache_writes(Duration::from_secs(10));
    let stats = fs.disk_cache_stats().unwrap();
    assert_eq!(stats.inserts, 1, "{stats:?}");
}

/// The mount's disk cache keeps no checksum (the AEAD authenticates every chunk read from
/// it): an entry damaged on disk at the same length is caught by the AEAD, removed, and the
/// chunk fetched from the network again.
#[test]
fn a_damaged_disk_cache_entry_fails_authentication_and_is_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let store = Arc::new(MemoryStore::default());
    let data = pattern(2 * CHUNK as usize, 5);
    let ino = store_file(
        open_fs(dir.path(), store.clone(), &rt, config()),
        b"f",
        &data,
    );
    read_to_fill_the_disk_cache(open_with_disk_cache(dir.path(), &store, &rt), ino, &data);
    // Flip one byte in the middle of every entry's payload: same length, no checksum to see it.
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "LOCK") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged >= 2, "{damaged} cache entries");
    let gets = store.gets.load(Ordering::SeqCst);
    read_to_fill_the_disk_cache(open_with_disk_cache(dir.path(), &store, &rt), ino, &data);
    // Fetched again: here (64 KiB chunks) both share a pack, which comes in once, and the
    // second chunk is cut from it.
    assert!(
        store.gets.load(Ordering::SeqCst) > gets,
        "the damaged chunks were not fetched again"
    );
    // Cached again, intact: served with the network failing.
    let fs = open_with_disk_cache(dir.path(), &store, &rt);
    read_with_the_network_failing(&fs, &store, ino, &data);
}

#[test]
fn a_read_sees_stored_chunks_beside_a_rewritten_journaled_one() {
    // A chunk rewritten after it was journaled is in a buffer and in the journal at once; a
    // read over it and a stored chunk must still find the stored one (it once read as zeros:
    // two buffers and one journal record looked like all three chunks found).
    let Setup { fs, store, rt, dir } = setup();
    let data = pattern(2 * CHUNK as usize + 500, 3);
    let ino = store_file(fs, b"f", &data);
    let fs = open_fs(dir.path(), store.clone(), &rt, config());
    let fh = fs.open(ino, true).unwrap();
    let mut want = data.clone();
    // A full chunk is journaled at once; the partial write after it buffers it again.
    want[..CHUNK as usize].copy_from_slice(&pattern(CHUNK as usize, 7));
    fs.write(fh, 0, &want[..CHUNK as usize]).unwrap();
    want[5..7].copy_from_slice(b"xy");
    fs.write(fh, 5, b"xy").unwrap();
    let second = CHUNK as usize + 10;
    want[second..second + 3].copy_from_slice(b"abc");
    fs.write(fh, second as u64, b"abc").unwrap();
    let got = fs.read(fh, 0, u32::MAX).unwrap();
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(got == want, "first difference at {first_diff:?}");
    fs.fsync(ino).unwrap();
    assert!(fs.read(fh, 0, u32::MAX).unwrap() == want, "after fsync");
    fs.release(fh).unwrap();
    crash(fs);
}
