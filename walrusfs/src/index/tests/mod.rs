//! Tests of the metadata index: shared helpers and open/persistence tests. Every test ends
//! with [`Index::check`], which verifies all invariants of the layout.

#![allow(clippy::unwrap_used)]

mod crash;
mod dir;
mod file;
mod fresh;
#[cfg(feature = "faults")]
mod fuzz;
mod model;
mod queued;
mod records;
mod rename;
mod xattr;

use std::sync::atomic::{AtomicU64, Ordering};

use netcore::codec::{BlobId, BlobMetadata, EncodingParams};
use tempfile::TempDir;

use super::*;

/// Chunk size of test indexes: small, so sizes and chunk indexes are easy to reason about.
pub(super) const CS: u32 = 1000;

/// Asserts that `$e` is `Err` matching `$p`.
macro_rules! assert_err {
    ($e:expr, $p:pat) => {
        match $e {
            Err($p) => {}
            other => panic!("expected Err({}), got {:?}", stringify!($p), other),
        }
    };
}
pub(super) use assert_err;

pub(super) fn opts() -> IndexOptions {
    IndexOptions {
        root_uid: 1000,
        root_gid: 100,
        root_perm: 0o755,
        chunk_size: CS,
    }
}

/// A fresh index in a temporary directory (keep the directory alive).
pub(super) fn open() -> (TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open(&dir.path().join("index"), opts()).unwrap();
    (dir, ix)
}

/// Reopens the index of `dir`.
pub(super) fn reopen(dir: &TempDir) -> Index {
    Index::open(&dir.path().join("index"), opts()).unwrap()
}

/// A timestamp `secs` seconds after the epoch.
pub(super) fn t(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

pub(super) fn node(kind: FileKind) -> NewNode {
    NewNode {
        kind,
        perm: 0o644,
        uid: 1,
        gid: 2,
        rdev: 0,
        symlink_target: None,
    }
}

pub(super) fn symlink(target: &[u8]) -> NewNode {
    NewNode {
        symlink_target: Some(target.to_vec()),
        ..node(FileKind::Symlink)
    }
}

pub(super) fn mkfile(ix: &Index, parent: Ino, name: &str) -> InodeAttr {
    ix.create(parent, name.as_bytes(), node(FileKind::File), t(10))
        .unwrap()
}

pub(super) fn mkdir(ix: &Index, parent: Ino, name: &str) -> InodeAttr {
    ix.create(parent, name.as_bytes(), node(FileKind::Dir), t(10))
        .unwrap()
}

pub(super) fn closed(_: Ino) -> bool {
    false
}

pub(super) fn open_file(_: Ino) -> bool {
    true
}

/// A fresh, unique blob id.
pub(super) fn blob() -> BlobId {
    metadata_of(fresh_metadata(16)).0
}

/// Metadata of a made-up blob of `blob_len` bytes, unique per call (its sliver hashes count up).
fn fresh_metadata(blob_len: u64) -> BlobMetadata {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    BlobMetadata {
        params: EncodingParams::new(7, 3).unwrap(),
        blob_len,
        sliver_hashes: vec![h; 7],
    }
}

/// Remembers a blob's metadata so [`CommitExt::commit`] can register it; returns its id.
fn metadata_of(m: BlobMetadata) -> (BlobId, BlobMetadata) {
    let id = m.blob_id();
    KNOWN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, m.clone());
    (id, m)
}

static KNOWN: std::sync::Mutex<std::collections::BTreeMap<BlobId, BlobMetadata>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A chunk ref to a fresh blob holding `len` bytes.
pub(super) fn chunk_ref(len: u32) -> ChunkRef {
    let (blob_id, _) = metadata_of(fresh_metadata(u64::from(len) + 16));
    ChunkRef {
        blob_id,
        offset: 0,
        stored_len: len,
        version: 1,
        salt: [9; 16],
        len,
    }
}

/// Commits with every blob the refs point into registered, as an upload would.
pub(super) trait CommitExt {
    /// [`Index::commit_chunks`], registering the refs' blobs.
    fn commit(
        &self,
        ino: Ino,
        updates: Vec<(u64, ChunkRef)>,
        size: u64,
        mtime: Timestamp,
        ctime: Timestamp,
    ) -> Result<InodeAttr>;
}

impl CommitExt for Index {
    fn commit(
        &self,
        ino: Ino,
        updates: Vec<(u64, ChunkRef)>,
        size: u64,
        mtime: Timestamp,
        ctime: Timestamp,
    ) -> Result<InodeAttr> {
        let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut blobs: Vec<(BlobId, BlobMetadata)> = Vec::new();
        for (_, c) in &updates {
            if !blobs.iter().any(|(b, _)| *b == c.blob_id) {
                let m = known
                    .get(&c.blob_id)
                    .cloned()
                    .expect("chunk ref made by chunk_ref");
                blobs.push((c.blob_id, m));
            }
        }
        self.commit_chunks(ino, &blobs, updates, size, mtime, ctime)
    }
}

/// Ids of the blobs queued for GC, in order.
pub(super) fn gc_ids(ix: &Index, limit: usize) -> Vec<BlobId> {
    ix.gc_pending(None, limit)
        .unwrap()
        .into_iter()
        .map(|(b, _)| b)
        .collect()
}

/// Whether `blob` is queued for GC.
pub(super) fn in_gc(ix: &Index, blob: &BlobId) -> bool {
    gc_ids(ix, usize::MAX).contains(blob)
}

/// All entries of `dir`, listed in pages of `page`.
pub(super) fn list(ix: &Index, dir: Ino, page: usize) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.cookie);
        let batch = ix.readdir(dir, after, page).unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// Sorted names of the entries of `dir`.
pub(super) fn names(ix: &Index, dir: Ino) -> Vec<String> {
    let mut v: Vec<String> = list(ix, dir, 7)
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn open_creates_root() {
    let (_dir, ix) = open();
    let root = ix.get_attr(ROOT_INO).unwrap();
    assert_eq!(root.kind, FileKind::Dir);
    assert_eq!(
        (root.nlink, root.perm, root.uid, root.gid),
        (2, 0o755, 1000, 100)
    );
    assert_eq!(ix.parent_of(ROOT_INO).unwrap(), ROOT_INO);
    assert_eq!(ix.chunk_size(), CS);
    assert_eq!(
        ix.stats().unwrap(),
        IndexStats {
            inodes: 1,
            bytes: 0
        }
    );
    assert!(ix.readdir(ROOT_INO, 0, 100).unwrap().is_empty());
    assert_ne!(ix.filesystem_id(), [0; 16]);
    assert_err!(ix.get_attr(2), IndexError::NotFound);
    ix.check().unwrap();
}

#[test]
fn reopen_persists_everything_and_never_reuses_inodes() {
    let (dir, ix) = open();
    let fs_id = ix.filesystem_id();
    let d = mkdir(&ix, ROOT_INO, "d");
    let f = mkfile(&ix, d.ino, "f");
    ix.create(ROOT_INO, b"s", symlink(b"d/f"), t(1)).unwrap();
    ix.set_xattr(f.ino, b"user.a", b"1", XattrFlags::default(), t(2))
        .unwrap();
    let c = chunk_ref(10);
    ix.commit(f.ino, vec![(0, c.clone())], 10, t(3), t(3))
        .unwrap();
    let gone = mkfile(&ix, ROOT_INO, "gone");
    ix.unlink(ROOT_INO, b"gone", t(4), &closed).unwrap();
    ix.flush().unwrap();
    drop(ix);

    let ix = reopen(&dir);
    assert_eq!(ix.filesystem_id(), fs_id);
    assert_eq!(ix.lookup(d.ino, b"f").unwrap().size, 10);
    assert_eq!(ix.chunk(f.ino, 0).unwrap(), Some(c));
    assert_eq!(ix.get_xattr(f.ino, b"user.a").unwrap(), b"1");
    let s = ix.lookup(ROOT_INO, b"s").unwrap();
    assert_eq!(ix.readlink(s.ino).unwrap(), b"d/f");
    assert_eq!(names(&ix, ROOT_INO), ["d", "s"]);
    let next = mkfile(&ix, ROOT_INO, "next");
    assert!(next.ino > gone.ino, "inode numbers are never reused");
    assert_eq!(
        ix.stats().unwrap(),
        IndexStats {
            inodes: 5,
            bytes: 10
        }
    );
    ix.check().unwrap();
}

/// An index another handle holds cannot be opened (sled's lock), after a short wait for a
/// handle being dropped; one reopened right after its handle was dropped opens.
#[test]
fn an_index_held_open_is_refused_and_one_just_closed_reopens() {
    let (dir, ix) = open();
    let path = dir.path().join("index");
    let start = std::time::Instant::now();
    let e = Index::open(&path, opts()).unwrap_err();
    assert!(e.to_string().contains("lock"), "{e}");
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    drop(ix);
    for _ in 0..5 {
        drop(reopen(&dir));
    }
}

#[test]
fn reopen_keeps_the_chunk_size_it_was_created_with() {
    let (dir, ix) = open();
    drop(ix);
    let path = dir.path().join("index");
    let other = IndexOptions {
        chunk_size: CS * 2,
        ..opts()
    };
    assert_eq!(Index::open(&path, other).unwrap().chunk_size(), CS);
    let zero = IndexOptions {
        chunk_size: 0,
        ..opts()
    };
    assert_err!(Index::open(&path, zero), IndexError::InvalidArgument(_));
    Index::open(&path, opts()).unwrap();
}

#[test]
fn bad_names_are_rejected_everywhere() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let long = vec![b'x'; NAME_MAX + 1];
    let max = vec![b'x'; NAME_MAX];
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
        assert_err!(
            ix.create(ROOT_INO, bad, node(FileKind::File), t(1)),
            IndexError::InvalidName
        );
        assert_err!(ix.lookup(ROOT_INO, bad), IndexError::InvalidName);
        assert_err!(ix.link(f.ino, ROOT_INO, bad, t(1)), IndexError::InvalidName);
        assert_err!(
            ix.unlink(ROOT_INO, bad, t(1), &closed),
            IndexError::InvalidName
        );
        assert_err!(ix.rmdir(ROOT_INO, bad, t(1)), IndexError::InvalidName);
        let flags = RenameFlags::default();
        assert_err!(
            ix.rename(ROOT_INO, b"f", ROOT_INO, bad, flags, t(1), &closed),
            IndexError::InvalidName
        );
    }
    assert_err!(
        ix.create(ROOT_INO, &long, node(FileKind::File), t(1)),
        IndexError::NameTooLong
    );
    assert_err!(ix.lookup(ROOT_INO, &long), IndexError::NameTooLong);
    ix.create(ROOT_INO, &max, node(FileKind::File), t(1))
        .unwrap();
    assert_eq!(ix.lookup(ROOT_INO, &max).unwrap().kind, FileKind::File);
    ix.check().unwrap();
}

#[test]
fn index_is_send_and_sync_and_concurrent_creates_are_consistent() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Index>();
    let (_dir, ix) = open();
    std::thread::scope(|s| {
        for th in 0..4 {
            let ix = &ix;
            s.spawn(move || {
                let d = ix
                    .create(
                        ROOT_INO,
                        format!("d{th}").as_bytes(),
                        node(FileKind::Dir),
                        t(1),
                    )
                    .unwrap();
                for i in 0..200 {
                    let name = format!("f{i}");
                    mkfile(ix, d.ino, &name);
                    mkfile(ix, ROOT_INO, &format!("{th}-{i}"));
                    if i % 3 == 0 {
                        ix.unlink(d.ino, name.as_bytes(), t(2), &closed).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(ix.get_attr(ROOT_INO).unwrap().nlink, 6);
    assert_eq!(list(&ix, ROOT_INO, 50).len(), 4 + 800);
    assert_eq!(ix.stats().unwrap().inodes, 1 + 4 + 800 + 4 * 133);
    ix.check().unwrap();
}

/// Transactions and flushes from several threads at once all finish, and what they committed
/// is there, exactly, after a reopen. sled writes its log on a pool of its own threads,
/// patched to wake one thread per write (`vendor/README.md`). A write queued with no thread
/// woken for it is not lost but waits for an idle thread's once-a-second look at the queue
/// (with the wake-up removed, this test took 19 s instead of 0.3 s); a flush that never
/// returned fails the deadline here instead of hanging the suite.
#[test]
fn concurrent_transactions_and_flushes_all_finish_and_survive_a_reopen() {
    let (dir, ix) = open();
    let ix = std::sync::Arc::new(ix);
    let (done, finished) = std::sync::mpsc::channel();
    let work = {
        let ix = ix.clone();
        std::thread::spawn(move || {
            std::thread::scope(|s| {
                for th in 0..4 {
                    let ix = &ix;
                    s.spawn(move || {
                        for i in 0..250 {
                            mkfile(ix, ROOT_INO, &format!("{th}-{i}"));
                            if i % 2 == 1 {
                                let earlier = format!("{th}-{}", i - 1);
                                ix.unlink(ROOT_INO, earlier.as_bytes(), t(2), &closed)
                                    .unwrap();
                            }
                            if i % 25 == 0 {
                                ix.flush().unwrap();
                            }
                        }
                    });
                }
            });
            ix.flush().unwrap();
            let _ = done.send(());
        })
    };
    finished
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("a transaction or a flush did not finish within 120 s");
    work.join().unwrap();
    drop(std::sync::Arc::into_inner(ix).unwrap());
    let ix = reopen(&dir);
    let names: std::collections::BTreeSet<Vec<u8>> = list(&ix, ROOT_INO, 100)
        .into_iter()
        .map(|e| e.name)
        .collect();
    let expected: std::collections::BTreeSet<Vec<u8>> = (0..4)
        .flat_map(|th| {
            (1..250)
                .step_by(2)
                .map(move |i| format!("{th}-{i}").into_bytes())
        })
        .collect();
    assert_eq!(names, expected);
    ix.check().unwrap();
}

#[test]
fn a_blobs_proofs_are_kept_with_it_published_and_dropped_with_it() {
    let (_dir, ix) = open();
    let (id, meta) = metadata_of(fresh_metadata(5000));
    let node = netcore::identity::Identity::generate().unwrap();
    let proofs = vec![netcore::wire::StorageConfirmation::sign(&node, id, 3)];
    ix.transact(&Scan::default(), |tx| tx.register_blob(&id, &meta, &proofs))
        .unwrap();
    assert_eq!(ix.proofs(&id).unwrap(), proofs);
    // Published like the blob's record: a change of the proofs tree is recorded.
    let changed: Vec<TreeId> = ix
        .trees
        .changes
        .iter()
        .map(|e| TreeId::from_u8(e.unwrap().0[0]).unwrap())
        .collect();
    assert!(changed.contains(&TreeId::Proofs), "{changed:?}");
    // The blob dropped (no refs), its proofs go with it.
    ix.transact(&Scan::default(), |tx| tx.drop_unreferenced(&[id]))
        .unwrap();
    assert!(ix.proofs(&id).unwrap().is_empty());
    assert!(ix.blob(&id).unwrap().is_none());
    ix.check().unwrap();
}

/// Confirmations that come in after a blob was registered join its proofs, once per sliver;
/// those of a blob the index does not record (dropped meanwhile) are not kept.
#[test]
fn late_confirmations_join_their_blobs_proofs_once() {
    let (_dir, ix) = open();
    let (id, meta) = metadata_of(fresh_metadata(5000));
    let (gone, _) = metadata_of(fresh_metadata(6000));
    let node = |_| netcore::identity::Identity::generate().unwrap();
    let nodes: Vec<_> = (0..3).map(node).collect();
    let sign = |i: u16| netcore::wire::StorageConfirmation::sign(&nodes[usize::from(i)], id, i);
    let quorum = vec![sign(0)];
    ix.transact(&Scan::default(), |tx| tx.register_blob(&id, &meta, &quorum))
        .unwrap();
    let late = vec![
        sign(1),
        sign(2),
        sign(0), // already kept
        netcore::wire::StorageConfirmation::sign(&nodes[1], gone, 1),
    ];
    assert_eq!(ix.add_confirmations(&late).unwrap(), 2);
    assert_eq!(ix.proofs(&id).unwrap(), vec![sign(0), sign(1), sign(2)]);
    assert!(ix.proofs(&gone).unwrap().is_empty());
    // Again: nothing new.
    assert_eq!(ix.add_confirmations(&late).unwrap(), 0);
    assert_eq!(ix.add_confirmations(&[]).unwrap(), 0);
    // Dropped with the blob, late ones included.
    ix.transact(&Scan::default(), |tx| tx.drop_unreferenced(&[id]))
        .unwrap();
    assert!(ix.proofs(&id).unwrap().is_empty());
    ix.check().unwrap();
}

/// Sets meta record `key` of `ix` to `value` and flushes.
fn put_meta(ix: &Index, key: &[u8], value: u32) {
    let value = layout::encode(&value).unwrap();
    ix.transact(&Scan::default(), |tx| {
        tx.put(TreeId::Meta, key, value.as_slice())
    })
    .unwrap();
    ix.flush().unwrap();
}

/// The format version `ix` records.
fn stored_format(ix: &Index) -> u32 {
    layout::decode(
        &ix.trees.meta.get(meta_key::FORMAT).unwrap().unwrap(),
        "format",
    )
    .unwrap()
}

#[test]
fn a_format_2_index_opens_and_is_marked_current() {
    let (dir, ix) = open();
    put_meta(&ix, meta_key::FORMAT, 2);
    drop(ix);
    let ix = reopen(&dir);
    assert_eq!(stored_format(&ix), FORMAT_VERSION);
    // One older than that is refused with the format named.
    put_meta(&ix, meta_key::FORMAT, 1);
    drop(ix);
    let e = Index::open(&dir.path().join("index"), opts()).unwrap_err();
    assert!(matches!(e, IndexError::Format { found: 1, .. }), "{e}");
}

#[test]
fn a_new_index_seals_in_4_kib_segments_and_one_from_before_keeps_64_kib() {
    let (dir, ix) = open();
    assert_eq!(ix.segments(), Segments::DEFAULT);
    assert!(ix.trees.meta.get(meta_key::SEGMENT_SIZE).unwrap().is_some());
    // Reopened: the same.
    drop(ix);
    let ix = reopen(&dir);
    assert_eq!(ix.segments(), Segments::DEFAULT);

    // An index made before segment sizes were recorded: its chunks have 64 KiB segments, and
    // opening it (which marks it format 4) must not give it the new size.
    ix.make_format_3();
    drop(ix);
    for _ in 0..2 {
        let ix = reopen(&dir);
        assert_eq!(ix.segments(), Segments::LEGACY);
        assert_eq!(stored_format(&ix), FORMAT_VERSION);
        assert!(ix.trees.meta.get(meta_key::SEGMENT_SIZE).unwrap().is_none());
        ix.check().unwrap();
    }

    // A segment size that is not one is damage, named as such.
    let ix = reopen(&dir);
    put_meta(&ix, meta_key::SEGMENT_SIZE, 3000);
    drop(ix);
    let e = Index::open(&dir.path().join("index"), opts()).unwrap_err();
    assert!(
        matches!(&e, IndexError::Corrupt(m) if m.contains("segment size 3000")),
        "{e}"
    );
}

#[test]
fn live_bytes_of_a_blob_count_each_chunk_in_the_index_segments() {
    const BIG: u32 = 1 << 20;
    for legacy in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let options = IndexOptions {
            chunk_size: BIG,
            ..opts()
        };
        let mut ix = Index::open(&dir.path().join("index"), options).unwrap();
        if legacy {
            ix.make_format_3();
            drop(ix);
            ix = Index::open(&dir.path().join("index"), options).unwrap();
        }
        let want = if legacy {
            Segments::LEGACY
        } else {
            Segments::DEFAULT
        };
        assert_eq!(ix.segments(), want);
        let f = mkfile(&ix, ROOT_INO, "f");
        let r = chunk_ref(BIG);
        let sealed = want.sealed_len(BIG as usize) as u64;
        ix.commit(f.ino, vec![(0, r.clone())], u64::from(BIG), t(1), t(1))
            .unwrap();
        assert_eq!(ix.blob(&r.blob_id).unwrap().unwrap().live_bytes, sealed);
        ix.check().unwrap();
        // Dropping the ref takes the same bytes off again (the blob goes with its last ref).
        let size = SetAttr {
            size: Some(0),
            ..Default::default()
        };
        ix.setattr(f.ino, size, t(2)).unwrap();
        assert!(ix.blob(&r.blob_id).unwrap().is_none());
        ix.check().unwrap();
    }
}
