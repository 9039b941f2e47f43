//! Fuzz target of the index's value formats (see `netcore::fuzzing`): one stored value of a
//! populated index, in any tree, is mutated as disk damage would; opening the index, checking
//! it and reading through it must give values or errors, never a panic.

use proptest::prelude::*;

use netcore::fuzzing::{cases, mutate, Mutation};

use super::*;

/// A small index with one of everything: directories, files with chunks, a symlink, xattrs,
/// a hard link, a blob queued for GC.
fn populated(dir: &TempDir) -> Index {
    let ix = Index::open(&dir.path().join("index"), opts()).unwrap();
    let d = mkdir(&ix, ROOT_INO, "d");
    let f = mkfile(&ix, d.ino, "f");
    ix.commit(
        f.ino,
        vec![(0, chunk_ref(CS)), (1, chunk_ref(500))],
        1500,
        t(20),
        t(20),
    )
    .unwrap();
    ix.create(d.ino, b"s", symlink(b"../target"), t(11))
        .unwrap();
    ix.set_xattr(f.ino, b"user.k", b"value", XattrFlags::default(), t(12))
        .unwrap();
    ix.link(f.ino, ROOT_INO, b"hard", t(13)).unwrap();
    let g = mkfile(&ix, ROOT_INO, "gone");
    ix.commit(g.ino, vec![(0, chunk_ref(10))], 10, t(14), t(14))
        .unwrap();
    ix.unlink(ROOT_INO, b"gone", t(15), &closed).unwrap();
    ix.check().unwrap();
    ix
}

/// Reads everything through the index's API.
fn read_all(ix: &Index) {
    let _ = ix.check();
    let mut stack = vec![ROOT_INO];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > 100 {
            return; // a damaged tree may loop; the API need not detect that, only not crash
        }
        let Ok(entries) = ix.readdir(dir, 0, 1000) else {
            continue;
        };
        for e in entries {
            let _ = ix.lookup(dir, &e.name);
            if let Ok(attr) = ix.get_attr(e.ino) {
                for c in 0..4 {
                    let _ = ix.chunk(e.ino, c);
                }
                let _ = ix.readlink(e.ino);
                let _ = ix.list_xattrs(e.ino);
                if attr.kind == FileKind::Dir {
                    stack.push(e.ino);
                }
            }
        }
    }
    let _ = ix.gc_pending(None, 100);
    let _ = ix.blobs();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases() / 5))]

    #[test]
    fn fuzz_index_values(pick in any::<usize>(), ops in proptest::collection::vec(any::<Mutation>(), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let ix = populated(&dir);
        // Every (tree, key) holding a value.
        let mut slots = Vec::new();
        for (t, tree) in ix.trees.all.iter().enumerate() {
            for kv in tree.iter() {
                let (k, _) = kv.unwrap();
                slots.push((t, k));
            }
        }
        let (t, key) = &slots[pick % slots.len()];
        let tree = &ix.trees.all[*t];
        let old = tree.get(key).unwrap().unwrap();
        tree.insert(key.clone(), mutate(&old, &ops)).unwrap();
        read_all(&ix);
        drop(ix);
        if let Ok(ix) = Index::open(&dir.path().join("index"), opts()) {
            read_all(&ix);
        }
    }
}
