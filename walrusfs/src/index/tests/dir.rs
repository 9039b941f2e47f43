//! Directory operations: create, lookup, link, unlink, rmdir, readdir.

use std::collections::{BTreeSet, HashSet};

use super::*;

#[test]
fn create_every_kind() {
    let (_dir, ix) = open();
    let kinds = [
        FileKind::File,
        FileKind::Dir,
        FileKind::Fifo,
        FileKind::CharDevice,
        FileKind::BlockDevice,
        FileKind::Socket,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let n = NewNode {
            rdev: 0x0801,
            perm: 0o104_644,
            ..node(kind)
        };
        let a = ix
            .create(ROOT_INO, format!("n{i}").as_bytes(), n, t(5))
            .unwrap();
        assert_eq!(a.kind, kind);
        assert_eq!(a.perm, 0o4644, "perm is masked to 0o7777");
        assert_eq!((a.uid, a.gid, a.rdev, a.size), (1, 2, 0x0801, 0));
        assert_eq!(
            (a.atime, a.mtime, a.ctime, a.crtime),
            (t(5), t(5), t(5), t(5))
        );
        assert_eq!(a.nlink, if kind == FileKind::Dir { 2 } else { 1 });
        assert_eq!(ix.lookup(ROOT_INO, format!("n{i}").as_bytes()).unwrap(), a);
        assert_eq!(ix.get_attr(a.ino).unwrap(), a);
    }
    let s = ix.create(ROOT_INO, b"s", symlink(b"../x"), t(5)).unwrap();
    assert_eq!((s.kind, s.size), (FileKind::Symlink, 4));
    assert_eq!(ix.readlink(s.ino).unwrap(), b"../x");
    let f = ix.lookup(ROOT_INO, b"n0").unwrap();
    assert_err!(ix.readlink(f.ino), IndexError::InvalidArgument(_));
    assert_err!(ix.readlink(999), IndexError::NotFound);
    assert_eq!(ix.stats().unwrap().inodes, 8);
    ix.check().unwrap();
}

#[test]
fn create_rejects_bad_symlinks() {
    let (_dir, ix) = open();
    let no_target = node(FileKind::Symlink);
    assert_err!(
        ix.create(ROOT_INO, b"a", no_target, t(1)),
        IndexError::InvalidArgument(_)
    );
    assert_err!(
        ix.create(ROOT_INO, b"a", symlink(b""), t(1)),
        IndexError::InvalidArgument(_)
    );
    let long = vec![b'x'; SYMLINK_MAX + 1];
    assert_err!(
        ix.create(ROOT_INO, b"a", symlink(&long), t(1)),
        IndexError::NameTooLong
    );
    let file_with_target = NewNode {
        kind: FileKind::File,
        ..symlink(b"x")
    };
    assert_err!(
        ix.create(ROOT_INO, b"a", file_with_target, t(1)),
        IndexError::InvalidArgument(_)
    );
    ix.create(ROOT_INO, b"a", symlink(&long[..SYMLINK_MAX]), t(1))
        .unwrap();
    ix.check().unwrap();
}

#[test]
fn create_errors() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let d = mkdir(&ix, ROOT_INO, "d");
    assert_err!(
        ix.create(ROOT_INO, b"f", node(FileKind::Dir), t(1)),
        IndexError::Exists
    );
    assert_err!(
        ix.create(ROOT_INO, b"d", node(FileKind::File), t(1)),
        IndexError::Exists
    );
    assert_err!(
        ix.create(f.ino, b"x", node(FileKind::File), t(1)),
        IndexError::NotDir
    );
    assert_err!(
        ix.create(12345, b"x", node(FileKind::File), t(1)),
        IndexError::NotFound
    );
    ix.rmdir(ROOT_INO, b"d", t(1)).unwrap();
    assert_err!(
        ix.create(d.ino, b"x", node(FileKind::File), t(1)),
        IndexError::NotFound
    );
    assert_eq!(ix.stats().unwrap().inodes, 2);
    ix.check().unwrap();
}

#[test]
fn create_and_remove_touch_the_parent() {
    let (_dir, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    ix.create(d.ino, b"f", node(FileKind::File), t(20)).unwrap();
    let a = ix.get_attr(d.ino).unwrap();
    assert_eq!((a.mtime, a.ctime, a.atime), (t(20), t(20), t(10)));
    ix.unlink(d.ino, b"f", t(30), &closed).unwrap();
    let a = ix.get_attr(d.ino).unwrap();
    assert_eq!((a.mtime, a.ctime), (t(30), t(30)));
    ix.rmdir(ROOT_INO, b"d", t(40)).unwrap();
    let root = ix.get_attr(ROOT_INO).unwrap();
    assert_eq!((root.mtime, root.ctime), (t(40), t(40)));
}

#[test]
fn lookup_errors() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    assert_err!(ix.lookup(ROOT_INO, b"nope"), IndexError::NotFound);
    assert_err!(ix.lookup(f.ino, b"x"), IndexError::NotDir);
    assert_err!(ix.lookup(4242, b"x"), IndexError::NotFound);
    assert_err!(ix.parent_of(f.ino), IndexError::NotDir);
    assert_err!(ix.parent_of(4242), IndexError::NotFound);
}

#[test]
fn directory_nlink_accounting() {
    let (_dir, ix) = open();
    let a = mkdir(&ix, ROOT_INO, "a");
    let b = mkdir(&ix, a.ino, "b");
    mkdir(&ix, a.ino, "c");
    mkfile(&ix, a.ino, "f");
    assert_eq!(ix.get_attr(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(
        ix.get_attr(a.ino).unwrap().nlink,
        4,
        "2 + two subdirs; files don't count"
    );
    assert_eq!(ix.get_attr(b.ino).unwrap().nlink, 2);
    assert_eq!(ix.parent_of(b.ino).unwrap(), a.ino);
    ix.rmdir(a.ino, b"b", t(2)).unwrap();
    assert_eq!(ix.get_attr(a.ino).unwrap().nlink, 3);
    assert_err!(ix.get_attr(b.ino), IndexError::NotFound);
    assert_err!(ix.parent_of(b.ino), IndexError::NotFound);
    ix.check().unwrap();
}

#[test]
fn hard_links() {
    let (_dir, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    let f = mkfile(&ix, ROOT_INO, "f");
    let l = ix.link(f.ino, d.ino, b"l", t(50)).unwrap();
    assert_eq!((l.ino, l.nlink, l.ctime), (f.ino, 2, t(50)));
    assert_eq!(ix.lookup(d.ino, b"l").unwrap().ino, f.ino);
    assert_eq!(ix.get_attr(d.ino).unwrap().mtime, t(50));
    assert_eq!(
        ix.get_attr(d.ino).unwrap().nlink,
        2,
        "file links don't change dir nlink"
    );
    assert_err!(
        ix.link(d.ino, ROOT_INO, b"dl", t(1)),
        IndexError::NotPermitted
    );
    assert_err!(ix.link(f.ino, d.ino, b"l", t(1)), IndexError::Exists);
    assert_err!(ix.link(f.ino, f.ino, b"x", t(1)), IndexError::NotDir);
    assert_err!(ix.link(777, d.ino, b"x", t(1)), IndexError::NotFound);
    assert_err!(ix.link(f.ino, 777, b"x", t(1)), IndexError::NotFound);
    ix.check().unwrap();

    let u = ix.unlink(ROOT_INO, b"f", t(60), &closed).unwrap();
    assert_eq!(
        u,
        Unlinked {
            ino: f.ino,
            freed: false
        }
    );
    let a = ix.get_attr(f.ino).unwrap();
    assert_eq!((a.nlink, a.ctime), (1, t(60)));
    let u = ix.unlink(d.ino, b"l", t(70), &closed).unwrap();
    assert_eq!(
        u,
        Unlinked {
            ino: f.ino,
            freed: true
        }
    );
    assert_err!(ix.get_attr(f.ino), IndexError::NotFound);
    ix.check().unwrap();
}

#[test]
fn link_to_an_orphan_is_refused() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    ix.unlink(ROOT_INO, b"f", t(1), &open_file).unwrap();
    assert_err!(
        ix.link(f.ino, ROOT_INO, b"again", t(2)),
        IndexError::NotFound
    );
    ix.check().unwrap();
}

#[test]
fn unlink_and_rmdir_errors() {
    let (_dir, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    let f = mkfile(&ix, d.ino, "f");
    assert_err!(ix.unlink(ROOT_INO, b"d", t(1), &closed), IndexError::IsDir);
    assert_err!(
        ix.unlink(ROOT_INO, b"nope", t(1), &closed),
        IndexError::NotFound
    );
    assert_err!(ix.unlink(f.ino, b"x", t(1), &closed), IndexError::NotDir);
    assert_err!(ix.unlink(999, b"x", t(1), &closed), IndexError::NotFound);
    assert_err!(ix.rmdir(d.ino, b"f", t(1)), IndexError::NotDir);
    assert_err!(ix.rmdir(ROOT_INO, b"d", t(1)), IndexError::NotEmpty);
    assert_err!(ix.rmdir(ROOT_INO, b"nope", t(1)), IndexError::NotFound);
    assert_err!(ix.rmdir(f.ino, b"x", t(1)), IndexError::NotDir);
    ix.unlink(d.ino, b"f", t(1), &closed).unwrap();
    assert_eq!(ix.rmdir(ROOT_INO, b"d", t(1)).unwrap(), d.ino);
    assert_eq!(ix.get_attr(ROOT_INO).unwrap().nlink, 2);
    assert_eq!(ix.stats().unwrap().inodes, 1);
    ix.check().unwrap();
}

/// Removing a regular file stamps for publishing what it removed (its inode, its entry), not
/// the symlink target and orphan mark it never had.
#[test]
fn removing_a_file_stamps_only_the_keys_it_removed() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    ix.unlink(ROOT_INO, b"f", t(2), &closed).unwrap();
    let stamped: Vec<(TreeId, Vec<u8>)> = ix
        .trees
        .changes
        .iter()
        .map(|e| {
            let key = e.unwrap().0;
            (TreeId::from_u8(key[0]).unwrap(), key[1..].to_vec())
        })
        .collect();
    let of = |id: TreeId| stamped.iter().filter(move |(t, _)| *t == id).count();
    assert_eq!(of(TreeId::Symlinks), 0, "{stamped:?}");
    assert_eq!(of(TreeId::Orphans), 0, "{stamped:?}");
    assert!(stamped.contains(&(TreeId::Inodes, ino_key(f.ino).to_vec())));
    assert!(ix.get_attr(f.ino).is_err());
    ix.check().unwrap();
}

#[test]
fn unlink_frees_chunks_xattrs_and_symlink() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    let (c0, c1) = (chunk_ref(CS), chunk_ref(500));
    ix.commit(
        f.ino,
        vec![(0, c0.clone()), (1, c1.clone())],
        1500,
        t(2),
        t(2),
    )
    .unwrap();
    ix.set_xattr(f.ino, b"user.x", b"v", XattrFlags::default(), t(2))
        .unwrap();
    let s = ix.create(ROOT_INO, b"s", symlink(b"f"), t(1)).unwrap();
    ix.set_xattr(s.ino, b"user.y", b"v", XattrFlags::default(), t(2))
        .unwrap();
    assert_eq!(
        ix.stats().unwrap(),
        IndexStats {
            inodes: 3,
            bytes: 1500
        }
    );

    let u = ix.unlink(ROOT_INO, b"f", t(3), &closed).unwrap();
    assert_eq!(
        u,
        Unlinked {
            ino: f.ino,
            freed: true
        }
    );
    assert!(ix.chunks_in(f.ino, 0, u64::MAX).unwrap().is_empty());
    assert!(in_gc(&ix, &c0.blob_id) && in_gc(&ix, &c1.blob_id));
    assert_eq!(ix.gc_len(), 2);
    assert_err!(ix.list_xattrs(f.ino), IndexError::NotFound);
    ix.unlink(ROOT_INO, b"s", t(3), &closed).unwrap();
    assert_err!(ix.readlink(s.ino), IndexError::NotFound);
    assert_eq!(
        ix.stats().unwrap(),
        IndexStats {
            inodes: 1,
            bytes: 0
        }
    );
    let report = ix.check().unwrap();
    assert_eq!((report.inodes, report.chunks, report.gc), (1, 0, 2));
}

#[test]
fn readdir_orders_by_cookie_and_pages() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "zz");
    mkdir(&ix, ROOT_INO, "aa");
    mkfile(&ix, ROOT_INO, "mm");
    let all = ix.readdir(ROOT_INO, 0, 100).unwrap();
    let got: Vec<_> = all.iter().map(|e| (e.name.as_slice(), e.kind)).collect();
    assert_eq!(
        got,
        [
            (&b"zz"[..], FileKind::File),
            (b"aa", FileKind::Dir),
            (b"mm", FileKind::File)
        ]
    );
    assert!(all[0].cookie >= 3, "cookies 0..=2 belong to the FUSE layer");
    assert!(all.windows(2).all(|w| w[0].cookie < w[1].cookie));
    assert_eq!(all[0].ino, f.ino);
    let page = ix.readdir(ROOT_INO, all[0].cookie, 1).unwrap();
    assert_eq!(page, all[1..2]);
    assert!(ix.readdir(ROOT_INO, all[2].cookie, 10).unwrap().is_empty());
    assert!(ix.readdir(ROOT_INO, u64::MAX, 10).unwrap().is_empty());
    assert!(ix.readdir(ROOT_INO, 0, 0).unwrap().is_empty());
    assert_eq!(ix.readdir(ROOT_INO, 2, 10).unwrap(), all);
    assert_err!(ix.readdir(f.ino, 0, 10), IndexError::NotDir);
    assert_err!(ix.readdir(999, 0, 10), IndexError::NotFound);
}

/// Pages through 10,000 entries while creating and deleting others between pages: every entry
/// present throughout is listed exactly once, and nothing is listed twice.
#[test]
fn readdir_pagination_under_churn() {
    // Churn between the first pages only, so the listing ends.
    const CHURN_PAGES: u64 = 90;
    let (_dir, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    for i in 0..10_000 {
        mkfile(&ix, d.ino, &format!("e{i}"));
    }
    let mut deleted = HashSet::new();
    let mut seen = Vec::new();
    let mut after = 0;
    let mut page_no = 0u64;
    loop {
        let page = ix.readdir(d.ino, after, 97).unwrap();
        let Some(last) = page.last() else { break };
        after = last.cookie;
        seen.extend(
            page.iter()
                .map(|e| String::from_utf8(e.name.clone()).unwrap()),
        );
        page_no += 1;
        if page_no > CHURN_PAGES {
            continue;
        }
        // Churn: delete two entries (one likely already listed, one likely not yet), add two.
        for victim in [page_no * 53 % 10_000, (page_no * 7919 + 5_000) % 10_000] {
            let name = format!("e{victim}");
            if deleted.insert(name.clone()) {
                ix.unlink(d.ino, name.as_bytes(), t(2), &closed).unwrap();
            }
        }
        mkfile(&ix, d.ino, &format!("new{page_no}a"));
        mkfile(&ix, d.ino, &format!("new{page_no}b"));
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was listed twice");
    for i in 0..10_000 {
        let name = format!("e{i}");
        if !deleted.contains(&name) {
            assert!(unique.contains(&name), "{name} was skipped");
        }
    }
    // Entries created during the listing come after every cookie listed so far: all are seen.
    assert!((1..=CHURN_PAGES).all(|p| unique.contains(&format!("new{p}a"))));
    assert!(!deleted.is_empty());
    ix.check().unwrap();
}

/// Creates 100,000 entries in one directory and lists them; prints the times.
/// Run with `cargo test -p walrusfs --release index::tests::dir::bench_100k -- --ignored
/// --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_100k_entries() {
    let (_dir, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    let n = 100_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        ix.create(
            d.ino,
            format!("file-{i:06}").as_bytes(),
            node(FileKind::File),
            t(1),
        )
        .unwrap();
    }
    let created = start.elapsed();
    let start = std::time::Instant::now();
    let listed = list(&ix, d.ino, 1000);
    let list_time = start.elapsed();
    let start = std::time::Instant::now();
    for i in (0..n).step_by(10) {
        ix.lookup(d.ino, format!("file-{i:06}").as_bytes()).unwrap();
    }
    let lookups = start.elapsed();
    assert_eq!(listed.len(), n);
    println!(
        "create {n}: {created:?} ({:.0}/s); list: {list_time:?} ({:.0}/s); {} lookups: {lookups:?}",
        n as f64 / created.as_secs_f64(),
        n as f64 / list_time.as_secs_f64(),
        n / 10,
    );
}
