//! What a close may leave unlogged: the creation guard, and recreating a file from its
//! journal creation record.

use super::*;
use crate::journal::Creation;

fn creation(parent: Ino, name: &str) -> Creation {
    Creation {
        parent,
        name: name.as_bytes().to_vec(),
        perm: 0o640,
        uid: 7,
        gid: 8,
        time: t(50),
    }
}

#[test]
fn a_fresh_file_needs_only_its_parents_mkdir_and_its_names_removal_logged() {
    let (_d, ix) = open();
    ix.flush_log().unwrap();
    let f = mkfile(&ix, ROOT_INO, "f");
    let c = ix.fresh_creation(f.ino).expect("an unlogged creation");
    assert_eq!(
        (c.parent, c.name.as_slice(), c.perm),
        (ROOT_INO, &b"f"[..], 0o644)
    );
    assert_eq!((c.uid, c.gid, c.time), (1, 2, t(10)));
    assert_eq!(
        ix.creation_guard(f.ino),
        0,
        "its creation record needs nothing else"
    );

    // In a directory made moments ago: the mkdir must reach the kernel first.
    let d = mkdir(&ix, ROOT_INO, "d");
    let mkdir_tx = ix.committed();
    let g = mkfile(&ix, d.ino, "g");
    assert_eq!(ix.creation_guard(g.ino), mkdir_tx);

    // Under a name an unlogged unlink freed: the unlink must, or a replay finds it taken.
    mkfile(&ix, ROOT_INO, "x");
    ix.unlink(ROOT_INO, b"x", t(11), &closed).unwrap();
    let unlink_tx = ix.committed();
    let x = mkfile(&ix, ROOT_INO, "x");
    assert_eq!(ix.creation_guard(x.ino), unlink_tx);
    // Likewise a name a rename freed.
    mkfile(&ix, ROOT_INO, "y");
    ix.rename(
        ROOT_INO,
        b"y",
        ROOT_INO,
        b"z",
        RenameFlags::default(),
        t(12),
        &closed,
    )
    .unwrap();
    let rename_tx = ix.committed();
    let y = mkfile(&ix, ROOT_INO, "y");
    assert_eq!(ix.creation_guard(y.ino), rename_tx);

    // Any change no record carries (here a truncation): the creation record is not enough,
    // that change (and so the creation) must be logged.
    ix.setattr(
        f.ino,
        SetAttr {
            size: Some(0),
            ..SetAttr::default()
        },
        t(13),
    )
    .unwrap();
    let setattr_tx = ix.committed();
    assert_eq!(ix.fresh_creation(f.ino), None, "changed since its creation");
    assert_eq!(ix.creation_guard(f.ino), setattr_tx);
    ix.set_xattr(g.ino, b"user.a", b"1", XattrFlags::default(), t(14))
        .unwrap();
    assert_eq!(ix.fresh_creation(g.ino), None);
    assert_eq!(ix.creation_guard(g.ino), ix.committed());
    ix.link(x.ino, ROOT_INO, b"x2", t(15)).unwrap();
    assert_eq!(ix.creation_guard(x.ino), ix.committed());

    // Once the log is in the kernel, nothing is pending.
    ix.flush_log().unwrap();
    for ino in [f.ino, g.ino, x.ino, y.ino] {
        assert_eq!(ix.fresh_creation(ino), None);
        assert_eq!(ix.creation_guard(ino), 0);
    }
    ix.check().unwrap();
}

#[test]
fn a_lost_creation_is_redone_where_it_was_made_or_found_elsewhere() {
    let (dir, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    let before = ix.trees.counters().unwrap().next_ino;
    // As the replay sees it: inode `before` is gone with the transaction that made it.
    let ino = before + 5;
    let made = ix.recreate_file(ino, &creation(d.ino, "f"), 200).unwrap();
    assert_eq!(made, Some((d.ino, b"f".to_vec())));
    let a = ix.lookup(d.ino, b"f").unwrap();
    assert_eq!(a.ino, ino);
    assert_eq!(
        (a.kind, a.perm, a.uid, a.gid, a.nlink, a.size),
        (FileKind::File, 0o640, 7, 8, 1, 0)
    );
    assert_eq!((a.crtime, a.mtime), (t(50), t(50)));
    assert_eq!(
        a.next_version, 200,
        "versions the lost creator used are skipped"
    );
    assert!(
        ix.trees.counters().unwrap().next_ino > ino,
        "the inode counter moves past it"
    );
    assert_eq!(mkfile(&ix, ROOT_INO, "next").ino, ino + 1);
    // Twice is once.
    assert_eq!(
        ix.recreate_file(ino, &creation(d.ino, "f"), 0).unwrap(),
        None
    );

    // The name taken: it gets another one.
    let taken = ix
        .recreate_file(ino + 10, &creation(d.ino, "f"), 0)
        .unwrap();
    let renamed = format!("f.recovered-{}", ino + 10).into_bytes();
    assert_eq!(taken, Some((d.ino, renamed.clone())));
    assert_eq!(ix.lookup(d.ino, &renamed).unwrap().ino, ino + 10);
    // The directory gone: the root.
    let gone = ix
        .recreate_file(ino + 11, &creation(ino + 999, "orphaned"), 0)
        .unwrap();
    assert_eq!(gone, Some((ROOT_INO, b"orphaned".to_vec())));
    // A name at the limit still fits its suffix.
    let long = "n".repeat(255);
    ix.recreate_file(ino + 12, &creation(ROOT_INO, &long), 0)
        .unwrap();
    let longer = ix
        .recreate_file(ino + 13, &creation(ROOT_INO, &long), 0)
        .unwrap();
    let (_, name) = longer.unwrap();
    assert_eq!(name.len(), 255);
    assert!(name.ends_with(format!(".recovered-{}", ino + 13).as_bytes()));
    assert_err!(
        ix.recreate_file(ROOT_INO, &creation(ROOT_INO, "root"), 0),
        IndexError::InvalidArgument(_)
    );
    ix.check().unwrap();
    drop(ix);
    let ix = reopen(&dir);
    assert_eq!(ix.lookup(d.ino, b"f").unwrap().ino, ino);
    ix.check().unwrap();
}
