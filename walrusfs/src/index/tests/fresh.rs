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

mod replayed_prefixes {
    //! The guard's soundness, by brute force: random namespace changes, with the log handed
    //! to the kernel at random moments, and "closes" of files that record the creation and the
    //! guard a close would wait for. Then every prefix of the transactions that a kill could
    //! leave (at least what was handed over, at least the guard, but without the file's
    //! creation) is rebuilt on a second index, which must have the file's directory, and its
    //! name free there: where the replay puts the file back.

    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 3] = ["a", "b", "c"];

    #[derive(Debug, Clone)]
    enum Op {
        Mkdir {
            dir: usize,
            name: usize,
        },
        Create {
            dir: usize,
            name: usize,
        },
        Unlink {
            dir: usize,
            name: usize,
        },
        Rmdir {
            dir: usize,
            name: usize,
        },
        Rename {
            dir: usize,
            name: usize,
            to_dir: usize,
            to_name: usize,
        },
        Chmod {
            file: usize,
        },
        /// The log handed to the kernel (a flusher tick, an fsync).
        Flush,
        /// A close of the `file`-th file made so far.
        Close {
            file: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let i = || 0..16usize;
        let n = || 0..NAMES.len();
        prop_oneof![
            2 => (i(), n()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
            5 => (i(), n()).prop_map(|(dir, name)| Op::Create { dir, name }),
            3 => (i(), n()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
            1 => (i(), n()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
            3 => (i(), n(), i(), n()).prop_map(|(dir, name, to_dir, to_name)| Op::Rename {
                dir,
                name,
                to_dir,
                to_name
            }),
            1 => i().prop_map(|file| Op::Chmod { file }),
            2 => Just(Op::Flush),
            4 => i().prop_map(|file| Op::Close { file }),
        ]
    }

    /// A change that committed, replayable on another index.
    #[derive(Debug, Clone)]
    enum Done {
        Create(Ino, Vec<u8>, FileKind),
        Unlink(Ino, Vec<u8>),
        Rmdir(Ino, Vec<u8>),
        Rename(Ino, Vec<u8>, Ino, Vec<u8>),
        Chmod(Ino),
    }

    fn apply(ix: &Index, d: &Done) -> bool {
        match d {
            Done::Create(p, n, k) => ix.create(*p, n, node(*k), t(10)).is_ok(),
            Done::Unlink(p, n) => ix.unlink(*p, n, t(11), &closed).is_ok(),
            Done::Rmdir(p, n) => ix.rmdir(*p, n, t(12)).is_ok(),
            Done::Rename(p, n, q, m) => ix
                .rename(*p, n, *q, m, RenameFlags::default(), t(13), &closed)
                .is_ok(),
            Done::Chmod(ino) => ix.setattr(*ino, chmod(0o600), t(14)).is_ok(),
        }
    }

    fn chmod(perm: u16) -> SetAttr {
        SetAttr {
            perm: Some(perm),
            ..SetAttr::default()
        }
    }

    /// A close to check: file `ino` created by transaction `at`, its creation record `c`, and
    /// the prefixes a kill after the close could leave: `from..at`.
    struct Closed {
        ino: Ino,
        at: u64,
        from: u64,
        c: Creation,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn every_prefix_a_kill_leaves_has_the_directory_and_the_name_free(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let (_d, ix) = open();
            ix.flush_log().unwrap();
            let base = ix.committed();
            let mut dirs = vec![ROOT_INO];
            let mut files: Vec<(Ino, u64)> = Vec::new();
            let mut done: Vec<Done> = Vec::new();
            let mut closes: Vec<Closed> = Vec::new();
            for op in &ops {
                let before = ix.committed();
                let d = match *op {
                    Op::Mkdir { dir, name } | Op::Create { dir, name } => {
                        let p = dirs[dir % dirs.len()];
                        let kind = if matches!(op, Op::Mkdir { .. }) { FileKind::Dir } else { FileKind::File };
                        match ix.create(p, NAMES[name].as_bytes(), node(kind), t(10)) {
                            Ok(a) => {
                                if kind == FileKind::Dir {
                                    dirs.push(a.ino);
                                } else {
                                    files.push((a.ino, ix.committed()));
                                }
                                Some(Done::Create(p, NAMES[name].as_bytes().to_vec(), kind))
                            }
                            Err(_) => None,
                        }
                    }
                    Op::Unlink { dir, name } => {
                        let p = dirs[dir % dirs.len()];
                        let n = NAMES[name].as_bytes();
                        ix.unlink(p, n, t(11), &closed).ok().map(|_| Done::Unlink(p, n.to_vec()))
                    }
                    Op::Rmdir { dir, name } => {
                        let p = dirs[dir % dirs.len()];
                        let n = NAMES[name].as_bytes();
                        ix.rmdir(p, n, t(12)).ok().map(|_| Done::Rmdir(p, n.to_vec()))
                    }
                    Op::Rename { dir, name, to_dir, to_name } => {
                        let (p, q) = (dirs[dir % dirs.len()], dirs[to_dir % dirs.len()]);
                        let (n, m) = (NAMES[name].as_bytes(), NAMES[to_name].as_bytes());
                        ix.rename(p, n, q, m, RenameFlags::default(), t(13), &closed)
                            .ok()
                            .map(|_| Done::Rename(p, n.to_vec(), q, m.to_vec()))
                    }
                    Op::Chmod { file } if !files.is_empty() => {
                        let ino = files[file % files.len()].0;
                        ix.setattr(ino, chmod(0o600), t(14)).ok().map(|_| Done::Chmod(ino))
                    }
                    Op::Chmod { .. } => None,
                    Op::Flush => {
                        ix.flush_log().unwrap();
                        None
                    }
                    Op::Close { file } if !files.is_empty() => {
                        let (ino, at) = files[file % files.len()];
                        if let Some(c) = ix.fresh_creation(ino) {
                            // What the close does: wait for the guard, rely on the record.
                            let guard = ix.creation_guard(ino);
                            ix.flush_log_through(guard).unwrap();
                            let logged = ix.logged.load(std::sync::atomic::Ordering::Acquire);
                            closes.push(Closed { ino, at, from: guard.max(logged), c });
                        }
                        None
                    }
                    Op::Close { .. } => None,
                };
                // Each change that succeeded is one transaction, and nothing else is.
                let expect = before + u64::from(d.is_some());
                prop_assert_eq!(ix.committed(), expect, "op {:?}", op);
                done.extend(d);
            }
            // Rebuild every prefix on a second index and check each close that a kill after
            // it could have left with that prefix.
            let (_d2, replica) = open();
            for p in base..=base + done.len() as u64 {
                if p > base {
                    let d = &done[(p - base - 1) as usize];
                    prop_assert!(apply(&replica, d), "replaying {:?}", d);
                }
                for cl in closes.iter().filter(|cl| cl.from <= p && p < cl.at) {
                    let parent = replica.get_attr(cl.c.parent);
                    prop_assert!(
                        parent.as_ref().is_ok_and(|a| a.kind == FileKind::Dir),
                        "prefix {}: directory {} of file {} missing", p, cl.c.parent, cl.ino
                    );
                    prop_assert!(
                        matches!(replica.lookup(cl.c.parent, &cl.c.name), Err(IndexError::NotFound)),
                        "prefix {}: name {:?} of file {} taken", p, String::from_utf8_lossy(&cl.c.name), cl.ino
                    );
                }
            }
        }
    }
}
