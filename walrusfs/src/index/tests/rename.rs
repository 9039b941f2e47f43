//! The rename matrix: plain, replacing, no_replace, exchange, across directories, into a
//! subtree, same inode.

use super::*;

const PLAIN: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: false,
};
const NO_REPLACE: RenameFlags = RenameFlags {
    no_replace: true,
    exchange: false,
};
const EXCHANGE: RenameFlags = RenameFlags {
    no_replace: false,
    exchange: true,
};

fn mv(ix: &Index, p: Ino, n: &str, np: Ino, nn: &str, flags: RenameFlags) -> Result<RenameOutcome> {
    ix.rename(p, n.as_bytes(), np, nn.as_bytes(), flags, t(100), &closed)
}

#[test]
fn rename_within_a_directory() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "a");
    let out = mv(&ix, ROOT_INO, "a", ROOT_INO, "b", PLAIN).unwrap();
    assert_eq!(out.replaced, None);
    assert_err!(ix.lookup(ROOT_INO, b"a"), IndexError::NotFound);
    let b = ix.lookup(ROOT_INO, b"b").unwrap();
    assert_eq!(
        (b.ino, b.nlink, b.ctime, b.mtime),
        (f.ino, 1, t(100), t(10))
    );
    let root = ix.get_attr(ROOT_INO).unwrap();
    assert_eq!((root.mtime, root.ctime, root.nlink), (t(100), t(100), 2));
    assert_eq!(names(&ix, ROOT_INO), ["b"]);
    ix.check().unwrap();
}

#[test]
fn rename_directory_across_parents_moves_its_link() {
    let (_dir, ix) = open();
    let a = mkdir(&ix, ROOT_INO, "a");
    let b = mkdir(&ix, ROOT_INO, "b");
    let c = mkdir(&ix, a.ino, "c");
    mkfile(&ix, c.ino, "inside");
    mv(&ix, a.ino, "c", b.ino, "c2", PLAIN).unwrap();
    assert_eq!(ix.get_attr(a.ino).unwrap().nlink, 2);
    assert_eq!(ix.get_attr(b.ino).unwrap().nlink, 3);
    assert_eq!(ix.parent_of(c.ino).unwrap(), b.ino);
    assert_eq!(ix.lookup(b.ino, b"c2").unwrap().ino, c.ino);
    assert_eq!(names(&ix, c.ino), ["inside"]);
    for d in [a.ino, b.ino] {
        let attr = ix.get_attr(d).unwrap();
        assert_eq!((attr.mtime, attr.ctime), (t(100), t(100)));
    }
    // A file across parents leaves the directory link counts alone.
    mkfile(&ix, a.ino, "f");
    mv(&ix, a.ino, "f", b.ino, "f", PLAIN).unwrap();
    assert_eq!(ix.get_attr(a.ino).unwrap().nlink, 2);
    assert_eq!(ix.get_attr(b.ino).unwrap().nlink, 3);
    ix.check().unwrap();
}

#[test]
fn rename_replaces_a_file_and_frees_it() {
    let (_dir, ix) = open();
    let a = mkfile(&ix, ROOT_INO, "a");
    let b = mkfile(&ix, ROOT_INO, "b");
    let c = chunk_ref(10);
    ix.commit(b.ino, vec![(0, c.clone())], 10, t(1), t(1))
        .unwrap();
    let out = mv(&ix, ROOT_INO, "a", ROOT_INO, "b", PLAIN).unwrap();
    assert_eq!(
        out.replaced,
        Some(Unlinked {
            ino: b.ino,
            freed: true
        })
    );
    assert_eq!(ix.lookup(ROOT_INO, b"b").unwrap().ino, a.ino);
    assert_err!(ix.get_attr(b.ino), IndexError::NotFound);
    assert!(in_gc(&ix, &c.blob_id));
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
fn rename_over_an_open_file_orphans_it() {
    let (_dir, ix) = open();
    mkfile(&ix, ROOT_INO, "a");
    let b = mkfile(&ix, ROOT_INO, "b");
    let c = chunk_ref(10);
    ix.commit(b.ino, vec![(0, c.clone())], 10, t(1), t(1))
        .unwrap();
    let is_open = |ino: Ino| ino == b.ino;
    let out = ix
        .rename(ROOT_INO, b"a", ROOT_INO, b"b", PLAIN, t(2), &is_open)
        .unwrap();
    assert_eq!(
        out.replaced,
        Some(Unlinked {
            ino: b.ino,
            freed: false
        })
    );
    assert_eq!(ix.get_attr(b.ino).unwrap().nlink, 0);
    assert!(ix.is_orphan(b.ino).unwrap());
    assert_eq!(ix.chunk(b.ino, 0).unwrap(), Some(c.clone()));
    assert!(!in_gc(&ix, &c.blob_id));
    ix.check().unwrap();
    assert!(ix.release(b.ino).unwrap());
    assert!(in_gc(&ix, &c.blob_id));
    ix.check().unwrap();
}

#[test]
fn rename_over_a_hard_link_of_another_file_keeps_it() {
    let (_dir, ix) = open();
    mkfile(&ix, ROOT_INO, "a");
    let b = mkfile(&ix, ROOT_INO, "b");
    ix.link(b.ino, ROOT_INO, b"b2", t(1)).unwrap();
    let out = mv(&ix, ROOT_INO, "a", ROOT_INO, "b", PLAIN).unwrap();
    assert_eq!(
        out.replaced,
        Some(Unlinked {
            ino: b.ino,
            freed: false
        })
    );
    let attr = ix.get_attr(b.ino).unwrap();
    assert_eq!((attr.nlink, attr.ctime), (1, t(100)));
    ix.check().unwrap();
}

#[test]
fn rename_directory_over_directory() {
    let (_dir, ix) = open();
    let a = mkdir(&ix, ROOT_INO, "a");
    let p = mkdir(&ix, ROOT_INO, "p");
    let empty = mkdir(&ix, p.ino, "empty");
    let full = mkdir(&ix, p.ino, "full");
    mkfile(&ix, full.ino, "x");
    assert_err!(
        mv(&ix, ROOT_INO, "a", p.ino, "full", PLAIN),
        IndexError::NotEmpty
    );
    let out = mv(&ix, ROOT_INO, "a", p.ino, "empty", PLAIN).unwrap();
    assert_eq!(
        out.replaced,
        Some(Unlinked {
            ino: empty.ino,
            freed: true
        })
    );
    assert_err!(ix.get_attr(empty.ino), IndexError::NotFound);
    assert_eq!(ix.lookup(p.ino, b"empty").unwrap().ino, a.ino);
    assert_eq!(ix.get_attr(ROOT_INO).unwrap().nlink, 3, "root lost a");
    assert_eq!(
        ix.get_attr(p.ino).unwrap().nlink,
        4,
        "p: lost empty, gained a"
    );
    assert_eq!(ix.parent_of(a.ino).unwrap(), p.ino);
    ix.check().unwrap();
}

#[test]
fn rename_kind_mismatches() {
    let (_dir, ix) = open();
    mkfile(&ix, ROOT_INO, "f");
    mkdir(&ix, ROOT_INO, "d");
    assert_err!(
        mv(&ix, ROOT_INO, "f", ROOT_INO, "d", PLAIN),
        IndexError::IsDir
    );
    assert_err!(
        mv(&ix, ROOT_INO, "d", ROOT_INO, "f", PLAIN),
        IndexError::NotDir
    );
    assert_err!(
        mv(&ix, ROOT_INO, "nope", ROOT_INO, "x", PLAIN),
        IndexError::NotFound
    );
    let f = ix.lookup(ROOT_INO, b"f").unwrap();
    assert_err!(
        mv(&ix, f.ino, "x", ROOT_INO, "y", PLAIN),
        IndexError::NotDir
    );
    assert_err!(
        mv(&ix, ROOT_INO, "f", f.ino, "y", PLAIN),
        IndexError::NotDir
    );
    assert_err!(
        mv(&ix, ROOT_INO, "f", 999, "y", PLAIN),
        IndexError::NotFound
    );
    assert_err!(
        mv(
            &ix,
            ROOT_INO,
            "f",
            ROOT_INO,
            "y",
            RenameFlags {
                no_replace: true,
                exchange: true
            }
        ),
        IndexError::InvalidArgument(_)
    );
    assert_eq!(names(&ix, ROOT_INO), ["d", "f"]);
    ix.check().unwrap();
}

#[test]
fn rename_no_replace() {
    let (_dir, ix) = open();
    mkfile(&ix, ROOT_INO, "a");
    mkfile(&ix, ROOT_INO, "b");
    assert_err!(
        mv(&ix, ROOT_INO, "a", ROOT_INO, "b", NO_REPLACE),
        IndexError::Exists
    );
    assert_err!(
        mv(&ix, ROOT_INO, "a", ROOT_INO, "a", NO_REPLACE),
        IndexError::Exists
    );
    mv(&ix, ROOT_INO, "a", ROOT_INO, "c", NO_REPLACE).unwrap();
    assert_eq!(names(&ix, ROOT_INO), ["b", "c"]);
    ix.check().unwrap();
}

#[test]
fn rename_exchange() {
    let (_dir, ix) = open();
    let a = mkdir(&ix, ROOT_INO, "a");
    let b = mkdir(&ix, ROOT_INO, "b");
    let d = mkdir(&ix, a.ino, "d");
    let f = mkfile(&ix, b.ino, "f");
    let before = ix.readdir(a.ino, 0, 10).unwrap();
    // Swap a directory in `a` with a file in `b`.
    let out = mv(&ix, a.ino, "d", b.ino, "f", EXCHANGE).unwrap();
    assert_eq!(out.replaced, None);
    assert_eq!(ix.lookup(a.ino, b"d").unwrap().ino, f.ino);
    assert_eq!(ix.lookup(b.ino, b"f").unwrap().ino, d.ino);
    assert_eq!(ix.get_attr(a.ino).unwrap().nlink, 2);
    assert_eq!(ix.get_attr(b.ino).unwrap().nlink, 3);
    assert_eq!(ix.parent_of(d.ino).unwrap(), b.ino);
    assert_eq!(ix.get_attr(f.ino).unwrap().ctime, t(100));
    assert_eq!(ix.get_attr(d.ino).unwrap().ctime, t(100));
    let after = ix.readdir(a.ino, 0, 10).unwrap();
    assert_eq!(after[0].cookie, before[0].cookie, "exchange keeps cookies");
    assert_eq!(after[0].kind, FileKind::File);
    // Two files in one directory.
    mkfile(&ix, ROOT_INO, "x");
    mkfile(&ix, ROOT_INO, "y");
    let (x, y) = (
        ix.lookup(ROOT_INO, b"x").unwrap(),
        ix.lookup(ROOT_INO, b"y").unwrap(),
    );
    mv(&ix, ROOT_INO, "x", ROOT_INO, "y", EXCHANGE).unwrap();
    assert_eq!(ix.lookup(ROOT_INO, b"x").unwrap().ino, y.ino);
    assert_eq!(ix.lookup(ROOT_INO, b"y").unwrap().ino, x.ino);
    assert_err!(
        mv(&ix, ROOT_INO, "x", ROOT_INO, "nope", EXCHANGE),
        IndexError::NotFound
    );
    assert_err!(
        mv(&ix, ROOT_INO, "nope", ROOT_INO, "x", EXCHANGE),
        IndexError::NotFound
    );
    ix.check().unwrap();
}

#[test]
fn rename_into_own_subtree_is_refused() {
    let (_dir, ix) = open();
    let a = mkdir(&ix, ROOT_INO, "a");
    let b = mkdir(&ix, a.ino, "b");
    let c = mkdir(&ix, b.ino, "c");
    mkfile(&ix, ROOT_INO, "f");
    for target in [a.ino, b.ino, c.ino] {
        assert_err!(
            mv(&ix, ROOT_INO, "a", target, "x", PLAIN),
            IndexError::InvalidArgument(_)
        );
    }
    assert_err!(
        mv(&ix, a.ino, "b", c.ino, "x", PLAIN),
        IndexError::InvalidArgument(_)
    );
    // Exchange either way round.
    assert_err!(
        mv(&ix, ROOT_INO, "a", b.ino, "c", EXCHANGE),
        IndexError::InvalidArgument(_)
    );
    assert_err!(
        mv(&ix, b.ino, "c", ROOT_INO, "a", EXCHANGE),
        IndexError::InvalidArgument(_)
    );
    // Over an ancestor: the ancestor is not empty.
    assert_err!(
        mv(&ix, b.ino, "c", ROOT_INO, "a", PLAIN),
        IndexError::NotEmpty
    );
    // Moving up is fine; so is a file into a subtree.
    mv(&ix, b.ino, "c", ROOT_INO, "c", PLAIN).unwrap();
    mv(&ix, ROOT_INO, "f", b.ino, "f", PLAIN).unwrap();
    assert_eq!(names(&ix, ROOT_INO), ["a", "c"]);
    ix.check().unwrap();
}

#[test]
fn rename_onto_the_same_inode_is_a_no_op() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "a");
    ix.link(f.ino, ROOT_INO, b"b", t(1)).unwrap();
    let d = mkdir(&ix, ROOT_INO, "d");
    for flags in [PLAIN, EXCHANGE] {
        assert_eq!(
            mv(&ix, ROOT_INO, "a", ROOT_INO, "b", flags)
                .unwrap()
                .replaced,
            None
        );
        assert_eq!(
            mv(&ix, ROOT_INO, "d", ROOT_INO, "d", flags)
                .unwrap()
                .replaced,
            None
        );
    }
    assert_eq!(names(&ix, ROOT_INO), ["a", "b", "d"]);
    let attr = ix.get_attr(f.ino).unwrap();
    assert_eq!((attr.nlink, attr.ctime), (2, t(1)), "nothing changed");
    assert_eq!(ix.get_attr(d.ino).unwrap().ctime, t(10));
    ix.check().unwrap();
}
