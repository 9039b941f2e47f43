//! Changes that wait in the index's queue with their overlay (`index::overlay`): new files
//! (`Index::create_file`) and attribute changes of other inodes (`Index::setattr_queued`).

use super::*;
use crate::index::journal::DEFER_MAX;
use crate::index::overlay::NewFile;

fn queue(ix: &Index, parent: Ino, name: &str, secs: i64) -> InodeAttr {
    ix.create_file(parent, name.as_bytes(), node(FileKind::File), t(secs))
        .unwrap()
}

#[test]
fn a_queued_file_is_seen_by_lookups_attribute_reads_and_later_creates_before_any_transaction() {
    let (_d, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    let before = ix.committed();
    let f = queue(&ix, d.ino, "f", 20);
    assert_eq!(ix.committed(), before, "the creation ran no transaction");
    assert!(!ix.deferred_empty());

    assert_eq!(ix.lookup(d.ino, b"f").unwrap(), f);
    assert_eq!(ix.get_attr(f.ino).unwrap(), f);
    assert_eq!(
        (f.kind, f.nlink, f.size, f.perm),
        (FileKind::File, 1, 0, 0o644)
    );
    let dir = ix.get_attr(d.ino).unwrap();
    assert_eq!(
        (dir.mtime, dir.ctime),
        (t(20), t(20)),
        "the directory's times"
    );
    assert_eq!(
        ix.lookup(ROOT_INO, b"d").unwrap().mtime,
        t(20),
        "and by name"
    );
    assert!(!ix.is_orphan(f.ino).unwrap());
    assert_err!(ix.get_xattr(f.ino, b"user.x"), IndexError::NoData);
    assert!(ix.list_xattrs(f.ino).unwrap().is_empty());

    // The name is taken, for a queued creation and for one in a transaction of its own.
    assert_err!(
        ix.create_file(d.ino, b"f", node(FileKind::File), t(21)),
        IndexError::Exists
    );
    assert_err!(
        ix.create(d.ino, b"f", node(FileKind::Dir), t(21)),
        IndexError::Exists
    );
    assert_err!(
        ix.create_file(f.ino, b"x", node(FileKind::File), t(21)),
        IndexError::NotDir
    );
    assert_eq!(
        ix.committed(),
        before + 1,
        "the failed mkdir applied the queue"
    );
    assert!(ix.deferred_empty());

    // A listing and the inode count apply the queue.
    let g = queue(&ix, d.ino, "g", 22);
    assert!(!ix.deferred_empty());
    let names: Vec<Vec<u8>> = list(&ix, d.ino, 10).into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec![b"f".to_vec(), b"g".to_vec()]);
    assert!(ix.deferred_empty());
    queue(&ix, d.ino, "h", 23);
    assert_eq!(ix.stats().unwrap().inodes, 5);
    assert!(ix.deferred_empty());
    assert_eq!(ix.get_attr(g.ino).unwrap(), g);
    let dir = ix.get_attr(d.ino).unwrap();
    assert_eq!((dir.mtime, dir.ctime), (t(23), t(23)));
    ix.check().unwrap();
}

#[test]
fn a_directorys_queued_attribute_changes_are_seen_at_once_and_applied_in_order_with_new_files() {
    let (_d, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    let before = ix.committed();
    let owner = SetAttr {
        uid: Some(7),
        gid: Some(8),
        ..SetAttr::default()
    };
    let a = ix.setattr_queued(d.ino, owner, t(30)).unwrap();
    assert_eq!((a.uid, a.gid, a.ctime, a.mtime), (7, 8, t(30), d.mtime));
    let times = SetAttr {
        mtime: Some(t(5)),
        atime: Some(t(6)),
        ..SetAttr::default()
    };
    // tar: a file in the directory, then the directory's times, then another file.
    queue(&ix, d.ino, "f", 31);
    ix.setattr_queued(d.ino, times, t(32)).unwrap();
    let seen = ix.get_attr(d.ino).unwrap();
    assert_eq!(
        (seen.uid, seen.mtime, seen.atime, seen.ctime),
        (7, t(5), t(6), t(32))
    );
    assert_eq!(ix.lookup(ROOT_INO, b"d").unwrap(), seen, "by name too");
    let chmod = SetAttr {
        perm: Some(0o2750),
        ..SetAttr::default()
    };
    assert_eq!(ix.setattr_queued(d.ino, chmod, t(33)).unwrap().perm, 0o2750);
    queue(&ix, d.ino, "g", 34);
    assert_eq!(ix.committed(), before, "all of it queued");
    let seen = ix.get_attr(d.ino).unwrap();
    assert_eq!((seen.perm, seen.mtime, seen.ctime), (0o2750, t(34), t(34)));

    ix.commit_deferred().unwrap();
    assert_eq!(ix.committed(), before + 1);
    assert_eq!(
        ix.get_attr(d.ino).unwrap(),
        seen,
        "the transaction left it as seen"
    );

    // A symlink's owner is queued too; a file's change, and a size change, are not.
    let l = ix
        .create(
            ROOT_INO,
            b"l",
            NewNode {
                symlink_target: Some(b"d".to_vec()),
                ..node(FileKind::Symlink)
            },
            t(40),
        )
        .unwrap();
    let before = ix.committed();
    assert_eq!(ix.setattr_queued(l.ino, owner, t(41)).unwrap().uid, 7);
    assert_eq!(ix.committed(), before);
    let f = mkfile(&ix, ROOT_INO, "plain");
    let before = ix.committed();
    assert_eq!(ix.setattr_queued(f.ino, chmod, t(42)).unwrap().perm, 0o2750);
    assert_eq!(
        ix.committed(),
        before + 1,
        "a file's change is a transaction"
    );
    assert_err!(
        ix.setattr_queued(
            d.ino,
            SetAttr {
                size: Some(1),
                ..SetAttr::default()
            },
            t(43)
        ),
        IndexError::IsDir
    );
    assert_err!(
        ix.setattr_queued(999_999, owner, t(44)),
        IndexError::NotFound
    );
    ix.check().unwrap();
}

#[test]
fn queued_files_are_renamed_linked_and_unlinked_as_committed_ones() {
    let (_d, ix) = open();
    let f = queue(&ix, ROOT_INO, ".f.tmp", 20);
    ix.set_xattr(f.ino, b"user.k", b"v", XattrFlags::default(), t(21))
        .unwrap();
    assert!(
        ix.deferred_empty(),
        "a change of the file applied the queue first"
    );

    // rsync: create, then rename; the rename applies the creation in its own transaction.
    let g = queue(&ix, ROOT_INO, ".g.tmp", 22);
    let before = ix.committed();
    ix.rename(
        ROOT_INO,
        b".g.tmp",
        ROOT_INO,
        b"g",
        RenameFlags::default(),
        t(23),
        &closed,
    )
    .unwrap();
    assert_eq!(ix.committed(), before + 1, "one transaction for both");
    assert_eq!(ix.lookup(ROOT_INO, b"g").unwrap().ino, g.ino);
    assert_err!(ix.lookup(ROOT_INO, b".g.tmp"), IndexError::NotFound);

    // Replacing a queued file, and linking and unlinking one.
    let h = queue(&ix, ROOT_INO, "h", 24);
    ix.rename(
        ROOT_INO,
        b"g",
        ROOT_INO,
        b"h",
        RenameFlags::default(),
        t(25),
        &closed,
    )
    .unwrap();
    assert_err!(ix.get_attr(h.ino), IndexError::NotFound);
    let i = queue(&ix, ROOT_INO, "i", 26);
    assert_eq!(ix.link(i.ino, ROOT_INO, b"j", t(27)).unwrap().nlink, 2);
    let k = queue(&ix, ROOT_INO, "k", 28);
    let gone = ix.unlink(ROOT_INO, b"k", t(29), &closed).unwrap();
    assert_eq!((gone.ino, gone.freed), (k.ino, true));
    ix.check().unwrap();
}

#[test]
fn a_new_file_renamed_while_its_creation_waits_moves_in_the_queue_and_its_creation_record_follows()
{
    let (_d, ix) = open();
    let d = mkdir(&ix, ROOT_INO, "d");
    ix.flush_log().unwrap();
    let f = queue(&ix, ROOT_INO, ".f.tmp", 20);
    let before = ix.committed();
    let out = ix
        .rename_queued(
            ROOT_INO,
            b".f.tmp",
            d.ino,
            b"f",
            RenameFlags::default(),
            t(21),
            &closed,
        )
        .unwrap();
    assert_eq!(out, RenameOutcome::default());
    assert_eq!(ix.committed(), before, "no transaction");
    assert_err!(ix.lookup(ROOT_INO, b".f.tmp"), IndexError::NotFound);
    let moved = ix.lookup(d.ino, b"f").unwrap();
    assert_eq!((moved.ino, moved.ctime, moved.mtime), (f.ino, t(21), t(20)));
    for dir in [ROOT_INO, d.ino] {
        let a = ix.get_attr(dir).unwrap();
        assert_eq!((a.mtime, a.ctime), (t(21), t(21)), "directory {dir}");
    }
    // A close now journals the creation under the new name; the old name waits for the
    // queue: a new file there relies on the rename, so its close applies the queue first.
    let c = ix.fresh_creation(f.ino).unwrap();
    assert_eq!((c.parent, c.name.as_slice()), (d.ino, &b"f"[..]));
    let g = queue(&ix, ROOT_INO, ".f.tmp", 22);
    assert_eq!(ix.creation_guard(g.ino), crate::index::fresh::QUEUED);
    ix.flush_log_through(ix.creation_guard(g.ino)).unwrap();
    assert!(ix.deferred_empty(), "the close's flush applied the queue");
    assert_eq!(ix.committed(), before + 1);
    assert!(
        ix.fresh_creation(g.ino).is_none(),
        "and handed it to the kernel"
    );
    assert_eq!(
        ix.lookup(d.ino, b"f").unwrap(),
        moved,
        "as the overlay said"
    );

    // Over an existing name, or a file already in the index: a transaction.
    let h = queue(&ix, ROOT_INO, "h", 23);
    let before = ix.committed();
    let out = ix
        .rename_queued(
            ROOT_INO,
            b"h",
            d.ino,
            b"f",
            RenameFlags::default(),
            t(24),
            &closed,
        )
        .unwrap();
    assert_eq!(out.replaced.map(|u| (u.ino, u.freed)), Some((f.ino, true)));
    assert!(ix.committed() > before);
    assert_eq!(ix.lookup(d.ino, b"f").unwrap().ino, h.ino);
    let before = ix.committed();
    ix.rename_queued(
        d.ino,
        b"f",
        ROOT_INO,
        b"h2",
        RenameFlags::default(),
        t(25),
        &closed,
    )
    .unwrap();
    assert_eq!(ix.committed(), before + 1);
    ix.check().unwrap();
}

#[test]
fn queued_and_committed_creations_never_share_an_inode_number() {
    let (dir, ix) = open();
    let mut inos = vec![];
    for i in 0..20 {
        let name = format!("n{i}");
        inos.push(if i % 3 == 0 {
            mkdir(&ix, ROOT_INO, &name).ino
        } else {
            queue(&ix, ROOT_INO, &name, 10).ino
        });
    }
    let mut sorted = inos.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), inos.len(), "{inos:?}");
    ix.flush().unwrap();
    ix.check().unwrap();
    drop(ix);
    let ix = reopen(&dir);
    let next = mkfile(&ix, ROOT_INO, "after");
    assert!(next.ino > *sorted.last().unwrap());
}

#[test]
fn a_full_queue_makes_the_next_creation_a_transaction_that_applies_it() {
    let (_d, ix) = open();
    for i in 0..DEFER_MAX {
        queue(&ix, ROOT_INO, &format!("f{i}"), 10);
    }
    let before = ix.committed();
    let last = queue(&ix, ROOT_INO, "last", 11);
    assert_eq!(ix.committed(), before + 1);
    assert!(ix.deferred_empty());
    assert_eq!(ix.lookup(ROOT_INO, b"last").unwrap().ino, last.ino);
    assert_eq!(ix.stats().unwrap().inodes, DEFER_MAX as u64 + 2);
    ix.check().unwrap();
}

#[test]
fn a_queued_file_whose_directory_or_name_is_gone_when_applied_is_found_not_lost() {
    // Every change applies the queue first, so this cannot happen through the API: the
    // queue is edited by hand, as a bug would leave it.
    let (_d, ix) = open();
    let taken = mkfile(&ix, ROOT_INO, "taken");
    let a = queue(&ix, ROOT_INO, "a", 20);
    let mut homeless = a.clone();
    homeless.ino = a.ino + 1;
    let mut clash = a.clone();
    clash.ino = a.ino + 2;
    {
        let mut d = ix.deferred.lock().unwrap();
        d.push_create(NewFile {
            parent: 999_999,
            name: b"homeless".to_vec(),
            attr: homeless.clone(),
        });
        d.push_create(NewFile {
            parent: ROOT_INO,
            name: b"taken".to_vec(),
            attr: clash.clone(),
        });
    }
    ix.commit_deferred().unwrap();
    assert_eq!(ix.lookup(ROOT_INO, b"homeless").unwrap().ino, homeless.ino);
    let recovered = format!("taken.recovered-{}", clash.ino);
    assert_eq!(
        ix.lookup(ROOT_INO, recovered.as_bytes()).unwrap().ino,
        clash.ino
    );
    assert_eq!(ix.lookup(ROOT_INO, b"taken").unwrap().ino, taken.ino);
    assert_eq!(ix.lookup(ROOT_INO, b"a").unwrap().ino, a.ino);
    ix.check().unwrap();
    // The counter moved past them all.
    assert!(mkfile(&ix, ROOT_INO, "next").ino > clash.ino);
}

#[test]
fn a_queued_creation_is_fresh_until_its_transaction_reaches_the_kernel() {
    let (_d, ix) = open();
    ix.flush_log().unwrap();
    let f = queue(&ix, ROOT_INO, "f", 20);
    let c = ix
        .fresh_creation(f.ino)
        .expect("a queued creation is fresh");
    assert_eq!(
        (c.parent, c.name.as_slice(), c.time),
        (ROOT_INO, &b"f"[..], t(20))
    );
    assert_eq!(ix.creation_guard(f.ino), 0);
    // A log flush before the queue is applied does not cover it.
    ix.flush_log().unwrap();
    assert!(ix.fresh_creation(f.ino).is_some());
    ix.commit_deferred().unwrap();
    assert!(
        ix.fresh_creation(f.ino).is_some(),
        "applied, not yet logged"
    );
    ix.flush_log().unwrap();
    assert!(ix.fresh_creation(f.ino).is_none());
}

#[test]
fn a_queue_never_applied_is_lost_with_its_inode_numbers() {
    // What a killed mount leaves: the index without the queue. The journal's creation
    // records (written at close) are what bring such files back; see `fs::tests`.
    let (dir, ix) = open();
    let f = queue(&ix, ROOT_INO, "f", 20);
    drop(ix);
    let ix = reopen(&dir);
    assert_err!(ix.lookup(ROOT_INO, b"f"), IndexError::NotFound);
    assert_err!(ix.get_attr(f.ino), IndexError::NotFound);
    ix.check().unwrap();
    assert_eq!(
        mkfile(&ix, ROOT_INO, "g").ino,
        f.ino,
        "nothing durable named it"
    );
}

mod overlay_property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        File {
            dir: usize,
            name: u8,
        },
        Mkdir {
            dir: usize,
            name: u8,
        },
        Chmod {
            dir: usize,
            perm: u16,
        },
        Times {
            dir: usize,
            mtime: i64,
        },
        Chown {
            dir: usize,
            uid: u32,
        },
        /// Rename the `file`-th name to a new name in the `dir`-th directory.
        Rename {
            file: usize,
            dir: usize,
        },
        Apply,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..8usize, 0..6u8).prop_map(|(dir, name)| Op::File { dir, name }),
            1 => (0..8usize, 0..6u8).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
            2 => (0..8usize, 0..0o7777u16).prop_map(|(dir, perm)| Op::Chmod { dir, perm }),
            2 => (0..8usize, 0..1000i64).prop_map(|(dir, mtime)| Op::Times { dir, mtime }),
            1 => (0..8usize, 0..5u32).prop_map(|(dir, uid)| Op::Chown { dir, uid }),
            3 => (0..16usize, 0..8usize).prop_map(|(file, dir)| Op::Rename { file, dir }),
            1 => Just(Op::Apply),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the queue holds, the overlay answers what applying it gives: every
        /// inode's attributes and every name, read before and after the transaction. Renames
        /// of directories are transactions; those of files made moments before are queued.
        #[test]
        fn the_overlay_answers_what_applying_the_queue_gives(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let (_d, ix) = open();
            let mut dirs = vec![ROOT_INO];
            let mut names: Vec<(Ino, Vec<u8>)> = vec![];
            let mut inos = vec![ROOT_INO];
            for (i, op) in ops.iter().enumerate() {
                let now = t(100 + i as i64);
                let dir = |d: usize| dirs[d % dirs.len()];
                match *op {
                    Op::File { dir: d, name } => {
                        let name = vec![b'f', b'0' + name];
                        if let Ok(a) = ix.create_file(dir(d), &name, node(FileKind::File), now) {
                            names.push((dir(d), name));
                            inos.push(a.ino);
                        }
                    }
                    Op::Mkdir { dir: d, name } => {
                        let name = vec![b'd', b'0' + name];
                        if let Ok(a) = ix.create(dir(d), &name, node(FileKind::Dir), now) {
                            names.push((dir(d), name));
                            inos.push(a.ino);
                            dirs.push(a.ino);
                        }
                    }
                    Op::Chmod { dir: d, perm } => {
                        let set = SetAttr { perm: Some(perm), ..SetAttr::default() };
                        ix.setattr_queued(dir(d), set, now).unwrap();
                    }
                    Op::Times { dir: d, mtime } => {
                        let set = SetAttr { mtime: Some(t(mtime)), ..SetAttr::default() };
                        ix.setattr_queued(dir(d), set, now).unwrap();
                    }
                    Op::Chown { dir: d, uid } => {
                        let set = SetAttr { uid: Some(uid), ..SetAttr::default() };
                        ix.setattr_queued(dir(d), set, now).unwrap();
                    }
                    Op::Rename { file, dir: d } => {
                        if names.is_empty() {
                            continue;
                        }
                        let k = file % names.len();
                        let (from, name) = names[k].clone();
                        let to = dir(d);
                        let new_name = format!("r{i}").into_bytes();
                        let got = ix.rename_queued(
                            from,
                            &name,
                            to,
                            &new_name,
                            RenameFlags::default(),
                            now,
                            &closed,
                        );
                        match got {
                            Ok(_) => names[k] = (to, new_name),
                            // A directory into itself or below.
                            Err(IndexError::InvalidArgument(_)) => {}
                            Err(e) => panic!("{op:?}: {e}"),
                        }
                    }
                    Op::Apply => ix.commit_deferred().unwrap(),
                }
            }
            let read = |ix: &Index| {
                let attrs: Vec<InodeAttr> = inos.iter().map(|&i| ix.get_attr(i).unwrap()).collect();
                let found: Vec<InodeAttr> = names
                    .iter()
                    .map(|(d, n)| ix.lookup(*d, n).unwrap())
                    .collect();
                (attrs, found)
            };
            let queued = read(&ix);
            ix.commit_deferred().unwrap();
            prop_assert!(ix.deferred_empty());
            prop_assert_eq!(read(&ix), queued);
            ix.check().unwrap();
        }
    }
}
