//! Per-inode operations: setattr and truncation, the chunk map, versions, orphans, GC.

use super::*;

#[test]
fn setattr_changes_fields_and_ctime() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let unchanged = ix.setattr(f.ino, SetAttr::default(), t(50)).unwrap();
    assert_eq!(unchanged, f, "an empty change changes nothing");
    let a = ix
        .setattr(
            f.ino,
            SetAttr {
                perm: Some(0o170_600),
                uid: Some(7),
                gid: Some(8),
                atime: Some(t(1)),
                mtime: Some(t(2)),
                ..SetAttr::default()
            },
            t(50),
        )
        .unwrap();
    assert_eq!((a.perm, a.uid, a.gid), (0o600, 7, 8));
    assert_eq!((a.atime, a.mtime, a.ctime), (t(1), t(2), t(50)));
    let a = ix
        .setattr(
            f.ino,
            SetAttr {
                ctime: Some(t(3)),
                ..SetAttr::default()
            },
            t(60),
        )
        .unwrap();
    assert_eq!(a.ctime, t(3));
    assert_eq!(ix.get_attr(f.ino).unwrap(), a);
    let size = SetAttr {
        size: Some(1),
        ..SetAttr::default()
    };
    let d = mkdir(&ix, ROOT_INO, "d");
    let s = ix.create(ROOT_INO, b"s", symlink(b"x"), t(1)).unwrap();
    assert_err!(ix.setattr(d.ino, size, t(1)), IndexError::IsDir);
    assert_err!(
        ix.setattr(s.ino, size, t(1)),
        IndexError::InvalidArgument(_)
    );
    assert_err!(ix.setattr(999, size, t(1)), IndexError::NotFound);
    ix.check().unwrap();
}

#[test]
fn truncate_down_frees_chunks_and_shortens_the_last() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let refs: Vec<ChunkRef> = [CS, CS, CS, 300].into_iter().map(chunk_ref).collect();
    let updates = refs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    ix.commit(f.ino, updates, 3300, t(2), t(2)).unwrap();
    assert_eq!(ix.stats().unwrap().bytes, 3300);

    // Cut inside chunk 1: chunks 2 and 3 go, chunk 1 keeps 500 bytes.
    let size = |n| SetAttr {
        size: Some(n),
        ..SetAttr::default()
    };
    let a = ix.setattr(f.ino, size(1500), t(5)).unwrap();
    assert_eq!((a.size, a.mtime, a.ctime), (1500, t(5), t(5)));
    let left = ix.chunks_in(f.ino, 0, u64::MAX).unwrap();
    assert_eq!(
        left.iter().map(|(i, c)| (*i, c.len)).collect::<Vec<_>>(),
        [(0, CS), (1, 500)]
    );
    assert_eq!(left[1].1.blob_id, refs[1].blob_id, "no rewrite, same blob");
    assert!(in_gc(&ix, &refs[2].blob_id) && in_gc(&ix, &refs[3].blob_id));
    assert!(!in_gc(&ix, &refs[0].blob_id) && !in_gc(&ix, &refs[1].blob_id));
    assert_eq!(ix.stats().unwrap().bytes, 1500);
    ix.check().unwrap();

    // Growing only sets the size; the shortened chunk keeps reading zeros past its len.
    let a = ix.setattr(f.ino, size(10_000), t(6)).unwrap();
    assert_eq!(a.size, 10_000);
    assert_eq!(ix.chunk(f.ino, 1).unwrap().unwrap().len, 500);
    assert_eq!(ix.gc_len(), 2);
    assert_eq!(ix.stats().unwrap().bytes, 10_000);

    // Exactly on a chunk boundary: chunk 1 goes entirely.
    ix.setattr(f.ino, size(1000), t(7)).unwrap();
    assert_eq!(ix.chunks_in(f.ino, 0, 10).unwrap().len(), 1);
    assert!(in_gc(&ix, &refs[1].blob_id));
    // Same size: mtime untouched.
    let a = ix.setattr(f.ino, size(1000), t(8)).unwrap();
    assert_eq!((a.mtime, a.ctime), (t(7), t(8)));
    ix.setattr(f.ino, size(0), t(9)).unwrap();
    assert!(ix.chunks_in(f.ino, 0, u64::MAX).unwrap().is_empty());
    assert_eq!(ix.gc_len(), 4);
    assert_eq!(ix.stats().unwrap().bytes, 0);
    ix.check().unwrap();
}

#[test]
fn commit_chunks_replaces_refs_and_queues_old_blobs() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let (c0, c1) = (chunk_ref(CS), chunk_ref(200));
    let a = ix
        .commit(
            f.ino,
            vec![(0, c0.clone()), (1, c1.clone())],
            1200,
            t(3),
            t(4),
        )
        .unwrap();
    assert_eq!((a.size, a.mtime, a.ctime), (1200, t(3), t(4)));
    assert_eq!(ix.get_attr(f.ino).unwrap(), a);
    assert_eq!(ix.chunk(f.ino, 1).unwrap(), Some(c1.clone()));
    assert_eq!(ix.chunk(f.ino, 2).unwrap(), None);
    assert_eq!(ix.chunks_in(f.ino, 1, 1).unwrap(), [(1, c1.clone())]);
    assert!(ix.chunks_in(f.ino, 2, 1).unwrap().is_empty());
    assert_eq!(ix.gc_len(), 0);

    let c1b = chunk_ref(700);
    ix.commit(f.ino, vec![(1, c1b.clone())], 1700, t(5), t(5))
        .unwrap();
    assert!(in_gc(&ix, &c1.blob_id));
    assert_eq!(ix.chunk(f.ino, 1).unwrap(), Some(c1b.clone()));
    // Re-committing the same blob does not queue it.
    ix.commit(f.ino, vec![(1, c1b.clone())], 1700, t(5), t(5))
        .unwrap();
    assert!(!in_gc(&ix, &c1b.blob_id));
    assert_eq!(ix.stats().unwrap().bytes, 1700);
    ix.check().unwrap();
}

#[test]
fn commit_chunks_beyond_the_size_go_to_gc() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let refs: Vec<ChunkRef> = [CS, CS, 999].into_iter().map(chunk_ref).collect();
    let updates = refs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    // A truncate to 1200 raced the upload of a 2999-byte file.
    let a = ix.commit(f.ino, updates, 1200, t(2), t(2)).unwrap();
    assert_eq!(a.size, 1200);
    let left = ix.chunks_in(f.ino, 0, u64::MAX).unwrap();
    assert_eq!(
        left.iter().map(|(i, c)| (*i, c.len)).collect::<Vec<_>>(),
        [(0, CS), (1, 200)]
    );
    assert!(in_gc(&ix, &refs[2].blob_id));
    // A commit that shrinks the file cuts the stored map too.
    let c0 = chunk_ref(100);
    ix.commit(f.ino, vec![(0, c0.clone())], 100, t(3), t(3))
        .unwrap();
    assert_eq!(ix.chunks_in(f.ino, 0, u64::MAX).unwrap(), [(0, c0)]);
    assert!(in_gc(&ix, &refs[0].blob_id) && in_gc(&ix, &refs[1].blob_id));
    // A ref longer than the chunk size is refused, its blob queued.
    let too_long = chunk_ref(CS + 1);
    assert_err!(
        ix.commit(f.ino, vec![(0, too_long.clone())], 100, t(4), t(4)),
        IndexError::InvalidArgument(_)
    );
    assert!(in_gc(&ix, &too_long.blob_id));
    assert_eq!(
        ix.get_attr(f.ino).unwrap().mtime,
        t(3),
        "a refused commit changes nothing"
    );
    // An index whose start overflows u64 is beyond any size.
    let far = chunk_ref(1);
    ix.commit(f.ino, vec![(u64::MAX, far.clone())], 100, t(5), t(5))
        .unwrap();
    assert!(in_gc(&ix, &far.blob_id));
    ix.check().unwrap();
}

#[test]
fn commit_chunks_on_a_deleted_inode_sends_the_new_blobs_to_gc() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    ix.unlink(ROOT_INO, b"f", t(2), &closed).unwrap();
    let (c0, c1) = (chunk_ref(CS), chunk_ref(5));
    assert_err!(
        ix.commit(
            f.ino,
            vec![(0, c0.clone()), (1, c1.clone())],
            1005,
            t(3),
            t(3)
        ),
        IndexError::NotFound
    );
    assert!(in_gc(&ix, &c0.blob_id) && in_gc(&ix, &c1.blob_id));
    assert!(ix.chunks_in(f.ino, 0, u64::MAX).unwrap().is_empty());
    let d = mkdir(&ix, ROOT_INO, "d");
    let c = chunk_ref(5);
    assert_err!(
        ix.commit(d.ino, vec![(0, c.clone())], 5, t(3), t(3)),
        IndexError::InvalidArgument(_)
    );
    assert!(in_gc(&ix, &c.blob_id));
    ix.check().unwrap();
}

#[test]
fn reserve_versions_never_repeats_even_across_reopen() {
    let (dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let first = ix.reserve_versions(f.ino, 3).unwrap();
    assert_eq!(first, f.next_version);
    assert_eq!(ix.reserve_versions(f.ino, 1).unwrap(), first + 3);
    assert_eq!(ix.reserve_versions(f.ino, 0).unwrap(), first + 4);
    assert_eq!(ix.get_attr(f.ino).unwrap().next_version, first + 4);
    ix.flush().unwrap();
    drop(ix);
    let ix = reopen(&dir);
    assert_eq!(ix.reserve_versions(f.ino, 10).unwrap(), first + 4);
    assert_err!(
        ix.reserve_versions(f.ino, u64::MAX),
        IndexError::InvalidArgument(_)
    );
    assert_err!(ix.reserve_versions(999, 1), IndexError::NotFound);
    ix.check().unwrap();
}

#[test]
fn unlink_of_an_open_file_orphans_it_until_release() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let g = mkfile(&ix, ROOT_INO, "g");
    let c = chunk_ref(10);
    ix.commit(f.ino, vec![(0, c.clone())], 10, t(2), t(2))
        .unwrap();
    let u = ix.unlink(ROOT_INO, b"f", t(3), &open_file).unwrap();
    assert_eq!(
        u,
        Unlinked {
            ino: f.ino,
            freed: false
        }
    );
    assert_err!(ix.lookup(ROOT_INO, b"f"), IndexError::NotFound);
    let a = ix.get_attr(f.ino).unwrap();
    assert_eq!((a.nlink, a.ctime), (0, t(3)));
    assert!(ix.is_orphan(f.ino).unwrap());
    assert!(!ix.is_orphan(g.ino).unwrap());
    // The open file keeps working: it can still be written and its attributes changed.
    let c1 = chunk_ref(5);
    ix.commit(f.ino, vec![(1, c1.clone())], 1005, t(4), t(4))
        .unwrap();
    ix.set_xattr(f.ino, b"user.k", b"v", XattrFlags::default(), t(4))
        .unwrap();
    assert_eq!(
        ix.stats().unwrap(),
        IndexStats {
            inodes: 3,
            bytes: 1005
        }
    );
    assert_eq!(ix.gc_len(), 0);
    ix.check().unwrap();

    assert!(
        !ix.release(g.ino).unwrap(),
        "not an orphan: release is a no-op"
    );
    assert!(ix.release(f.ino).unwrap());
    assert!(!ix.release(f.ino).unwrap(), "already freed");
    assert_err!(ix.get_attr(f.ino), IndexError::NotFound);
    assert!(in_gc(&ix, &c.blob_id) && in_gc(&ix, &c1.blob_id));
    assert_eq!(
        ix.stats().unwrap(),
        IndexStats {
            inodes: 2,
            bytes: 0
        }
    );
    ix.check().unwrap();
}

#[test]
fn purge_orphans_after_a_crash() {
    let (dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let c = chunk_ref(10);
    ix.commit(f.ino, vec![(0, c.clone())], 10, t(2), t(2))
        .unwrap();
    ix.unlink(ROOT_INO, b"f", t(3), &open_file).unwrap();
    mkfile(&ix, ROOT_INO, "kept");
    ix.flush().unwrap();
    // The mount dies without releasing the file.
    drop(ix);

    let ix = reopen(&dir);
    assert!(ix.is_orphan(f.ino).unwrap());
    ix.check().unwrap();
    assert_eq!(ix.purge_orphans().unwrap(), 1);
    assert_err!(ix.get_attr(f.ino), IndexError::NotFound);
    assert!(in_gc(&ix, &c.blob_id));
    assert_eq!(ix.purge_orphans().unwrap(), 0);
    assert_eq!(names(&ix, ROOT_INO), ["kept"]);
    ix.check().unwrap();
}

#[test]
fn gc_queue_is_persistent_and_drains() {
    let (dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let refs: Vec<ChunkRef> = (0..5).map(|_| chunk_ref(CS)).collect();
    let updates = refs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| (i as u64, c))
        .collect();
    ix.commit(f.ino, updates, 5 * u64::from(CS), t(1), t(1))
        .unwrap();
    ix.unlink(ROOT_INO, b"f", t(2), &closed).unwrap();
    assert_eq!(ix.gc_len(), 5);
    assert_eq!(gc_ids(&ix, 2).len(), 2);
    ix.flush().unwrap();
    drop(ix);

    let ix = reopen(&dir);
    let mut pending = gc_ids(&ix, 100);
    pending.sort();
    let mut expected: Vec<_> = refs.iter().map(|c| c.blob_id).collect();
    expected.sort();
    assert_eq!(pending, expected);
    for id in &pending[..3] {
        ix.gc_done(id).unwrap();
    }
    ix.gc_done(&blob()).unwrap();
    assert_eq!(ix.gc_len(), 2);
    assert_eq!(gc_ids(&ix, 100), pending[3..]);
    ix.check().unwrap();
}

/// A journal commit of `len` bytes at chunk 0 of `ino`, as record `seq`.
fn jcommit(ino: Ino, seq: u64, len: u32, set: Option<SetAttr>) -> JournalCommit {
    JournalCommit {
        ino,
        chunk: 0,
        jchunk: JChunk {
            seq,
            segment: 1,
            offset: 16,
            sealed_len: len + 16,
            stored_len: len,
            len,
            version: 1,
            salt: [seq as u8; 16],
        },
        size: u64::from(len),
        mtime: t(20),
        ctime: t(20),
        set,
    }
}

#[test]
fn deferred_journal_commits_ride_on_the_next_create() {
    let (dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let before = ix.committed();
    let chmod = SetAttr {
        perm: Some(0o600),
        ..SetAttr::default()
    };
    let ticket = ix
        .defer_journal(&[jcommit(f.ino, 1, 300, Some(chmod))], 1)
        .unwrap();
    assert_eq!(ix.committed(), before, "deferring is no transaction");
    assert_eq!(ix.get_attr(f.ino).unwrap().size, 0, "not applied yet");
    assert!(ix.applied_ticket() < ticket);

    // The next create applies it in its own transaction.
    let g = mkfile(&ix, ROOT_INO, "g");
    assert_eq!(ix.committed(), before + 1, "one transaction for both");
    let a = ix.get_attr(f.ino).unwrap();
    assert_eq!((a.size, a.perm, a.mtime), (300, 0o600, t(20)));
    assert_eq!(ix.jchunk(f.ino, 0).unwrap().map(|j| j.seq), Some(1));
    assert!(ix.applied_ticket() >= ticket);
    assert_eq!(ix.journal_mark().unwrap(), 1);

    // An attribute change alone rides the same way, after what was queued before it, and
    // leaves the journal mark alone.
    assert!(ix
        .defer_journal(&[jcommit(f.ino, 2, 400, None)], 2)
        .is_some());
    let chmod = AttrCommit {
        ino: f.ino,
        set: SetAttr {
            perm: Some(0o640),
            ..SetAttr::default()
        },
        mtime: t(25),
        ctime: t(26),
    };
    let ticket = ix.defer_attrs(chmod).unwrap();
    let _ = mkfile(&ix, ROOT_INO, "g2");
    assert!(ix.applied_ticket() >= ticket);
    let a = ix.get_attr(f.ino).unwrap();
    assert_eq!(
        (a.size, a.perm, a.mtime, a.ctime),
        (400, 0o640, t(25), t(26))
    );
    assert!(ix
        .defer_attrs(AttrCommit {
            ino: g.ino,
            ..chmod
        })
        .is_some());
    ix.commit_deferred().unwrap();
    assert_eq!(ix.get_attr(g.ino).unwrap().perm, 0o640);
    assert_eq!(ix.journal_mark().unwrap(), 2);

    // A create that fails takes them down with it: they are committed on their own.
    assert!(ix
        .defer_journal(&[jcommit(g.ino, 3, 500, None)], 3)
        .is_some());
    assert_err!(
        ix.create(ROOT_INO, b"f", node(FileKind::File), t(30)),
        IndexError::Exists
    );
    assert_eq!(ix.get_attr(g.ino).unwrap().size, 500);
    assert_eq!(ix.journal_mark().unwrap(), 3);

    // Any other mutation applies them before its own change (and before scanning): an unlink
    // of the file frees the journal chunk the deferred commit adds, leaving nothing behind.
    let h = mkfile(&ix, ROOT_INO, "h");
    assert!(ix
        .defer_journal(&[jcommit(h.ino, 4, 700, None)], 4)
        .is_some());
    let closed = |_| false;
    ix.unlink(ROOT_INO, b"h", t(40), &closed).unwrap();
    assert_eq!(ix.jchunk(h.ino, 0).unwrap(), None);
    assert_eq!(ix.journal_len(), 2, "f's and g's records, not h's");
    assert_eq!(ix.journal_mark().unwrap(), 4);
    ix.check().unwrap();

    // The last close of a file that still has a name leaves the queue alone (nothing queued
    // changes nlink); that of an orphan applies it before scanning what to free.
    let e = mkfile(&ix, ROOT_INO, "e");
    let open = |_| true;
    ix.unlink(ROOT_INO, b"e", t(42), &open).unwrap();
    assert!(ix
        .defer_journal(&[jcommit(e.ino, 5, 100, None)], 5)
        .is_some());
    let before = ix.committed();
    assert!(!ix.release(f.ino).unwrap());
    assert!(
        !ix.deferred_empty(),
        "releasing a named file applied the queue"
    );
    assert_eq!(ix.committed(), before, "and made a transaction");
    assert!(ix.release(e.ino).unwrap(), "the orphan is freed");
    assert!(ix.deferred_empty());
    assert_eq!(ix.jchunk(e.ino, 0).unwrap(), None);
    assert_eq!(
        ix.journal_len(),
        2,
        "the orphan's queued record is freed with it"
    );
    ix.check().unwrap();

    // A truncation after a deferred commit is not undone by it.
    assert!(ix
        .defer_journal(&[jcommit(f.ino, 6, 900, None)], 6)
        .is_some());
    let cut = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(ix.setattr(f.ino, cut, t(50)).unwrap().size, 10);
    ix.commit_deferred().unwrap();
    assert_eq!(ix.get_attr(f.ino).unwrap().size, 10);

    // Deferred commits are part of a flush: durable with it.
    assert!(ix
        .defer_journal(&[jcommit(g.ino, 7, 800, None)], 7)
        .is_some());
    ix.flush().unwrap();
    drop(ix);
    let ix = reopen(&dir);
    assert_eq!(ix.get_attr(g.ino).unwrap().size, 800);
    assert_eq!(ix.journal_mark().unwrap(), 7);
    ix.check().unwrap();
}
