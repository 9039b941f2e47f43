//! Model-based test: random create/unlink/rmdir/link/rename/open/close sequences run against
//! the index and against a plain in-memory tree; after every step both must agree on every
//! result, entry, link count and orphan, and the index must pass [`Index::check`].

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

/// A small name space, so operations collide often.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    /// Create `name` in the `parent`-th inode (any kind of inode, to hit `NotDir`).
    Create {
        parent: usize,
        name: usize,
        dir: bool,
    },
    Unlink {
        parent: usize,
        name: usize,
    },
    Rmdir {
        parent: usize,
        name: usize,
    },
    /// Link the `file`-th non-directory.
    Link {
        file: usize,
        parent: usize,
        name: usize,
    },
    /// `flags`: bit 0 no_replace, bit 1 exchange.
    Rename {
        parent: usize,
        name: usize,
        new_parent: usize,
        new_name: usize,
        flags: u8,
    },
    Open {
        file: usize,
    },
    /// Close (and release) the `file`-th open inode.
    Close {
        file: usize,
    },
}

/// Rename flags, mostly plain.
fn flags() -> impl Strategy<Value = u8> {
    prop_oneof![10 => Just(0u8), 3 => Just(1u8), 4 => Just(2u8), 1 => Just(3u8)]
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0..64usize;
    let n = || 0..NAMES.len();
    prop_oneof![
        4 => (i(), n(), any::<bool>()).prop_map(|(parent, name, dir)| Op::Create { parent, name, dir }),
        2 => (i(), n()).prop_map(|(parent, name)| Op::Unlink { parent, name }),
        1 => (i(), n()).prop_map(|(parent, name)| Op::Rmdir { parent, name }),
        1 => (i(), i(), n()).prop_map(|(file, parent, name)| Op::Link { file, parent, name }),
        4 => (i(), n(), i(), n(), flags()).prop_map(|(parent, name, new_parent, new_name, flags)| {
            Op::Rename { parent, name, new_parent, new_name, flags }
        }),
        1 => i().prop_map(|file| Op::Open { file }),
        1 => i().prop_map(|file| Op::Close { file }),
    ]
}

#[derive(Debug, Clone)]
struct Node {
    dir: bool,
    nlink: u32,
    /// Directories: name -> child.
    entries: BTreeMap<String, Ino>,
    /// Directories: the parent.
    parent: Ino,
}

#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<Ino, Node>,
    open: BTreeSet<Ino>,
    freed: BTreeSet<Ino>,
}

/// The error kinds compared between model and index.
fn kind<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(IndexError::NotFound) => "NotFound",
        Err(IndexError::Exists) => "Exists",
        Err(IndexError::NotDir) => "NotDir",
        Err(IndexError::IsDir) => "IsDir",
        Err(IndexError::NotEmpty) => "NotEmpty",
        Err(IndexError::InvalidArgument(_)) => "InvalidArgument",
        Err(IndexError::NotPermitted) => "NotPermitted",
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

type Expect = std::result::Result<(), &'static str>;

impl Model {
    fn new() -> Self {
        let root = Node {
            dir: true,
            nlink: 2,
            entries: BTreeMap::new(),
            parent: ROOT_INO,
        };
        Self {
            nodes: BTreeMap::from([(ROOT_INO, root)]),
            ..Self::default()
        }
    }

    fn pick(&self, i: usize, want: impl Fn(&Node) -> bool) -> Option<Ino> {
        let v: Vec<Ino> = self
            .nodes
            .iter()
            .filter(|(_, n)| want(n))
            .map(|(i, _)| *i)
            .collect();
        (!v.is_empty()).then(|| v[i % v.len()])
    }

    fn dir(&self, ino: Ino) -> std::result::Result<&Node, &'static str> {
        match self.nodes.get(&ino) {
            Some(n) if n.dir => Ok(n),
            Some(_) => Err("NotDir"),
            None => Err("NotFound"),
        }
    }

    fn entry(&self, dir: Ino, name: &str) -> Option<Ino> {
        self.nodes[&dir].entries.get(name).copied()
    }

    /// Whether `anc` is `ino` or one of its ancestors.
    fn is_ancestor(&self, anc: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == anc {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            ino = self.nodes[&ino].parent;
        }
    }

    /// Drops one link of non-directory `ino`; returns whether it was freed.
    fn drop_link(&mut self, ino: Ino) -> bool {
        let node = self.nodes.get_mut(&ino).unwrap();
        node.nlink -= 1;
        if node.nlink == 0 && !self.open.contains(&ino) {
            self.nodes.remove(&ino);
            self.freed.insert(ino);
            return true;
        }
        false
    }

    fn unlink(&mut self, p: Ino, name: &str) -> std::result::Result<Unlinked, &'static str> {
        self.dir(p)?;
        let ino = self.entry(p, name).ok_or("NotFound")?;
        if self.nodes[&ino].dir {
            return Err("IsDir");
        }
        self.nodes.get_mut(&p).unwrap().entries.remove(name);
        Ok(Unlinked {
            ino,
            freed: self.drop_link(ino),
        })
    }

    fn rmdir(&mut self, p: Ino, name: &str) -> Expect {
        self.dir(p)?;
        let ino = self.entry(p, name).ok_or("NotFound")?;
        let n = &self.nodes[&ino];
        if !n.dir {
            return Err("NotDir");
        }
        if !n.entries.is_empty() {
            return Err("NotEmpty");
        }
        let parent = self.nodes.get_mut(&p).unwrap();
        parent.entries.remove(name);
        parent.nlink -= 1;
        self.nodes.remove(&ino);
        self.freed.insert(ino);
        Ok(())
    }

    fn link(&mut self, ino: Ino, p: Ino, name: &str) -> Expect {
        if self.nodes[&ino].nlink == 0 {
            return Err("NotFound");
        }
        self.dir(p)?;
        if self.entry(p, name).is_some() {
            return Err("Exists");
        }
        self.nodes
            .get_mut(&p)
            .unwrap()
            .entries
            .insert(name.into(), ino);
        self.nodes.get_mut(&ino).unwrap().nlink += 1;
        Ok(())
    }

    /// Moves directory link and parent of `ino` from `from` to `to`, if it is a directory.
    fn reparent(&mut self, ino: Ino, from: Ino, to: Ino) {
        if from != to && self.nodes[&ino].dir {
            self.nodes.get_mut(&from).unwrap().nlink -= 1;
            self.nodes.get_mut(&to).unwrap().nlink += 1;
            self.nodes.get_mut(&ino).unwrap().parent = to;
        }
    }

    fn rename(
        &mut self,
        (p, n): (Ino, &str),
        (np, nn): (Ino, &str),
        flags: RenameFlags,
    ) -> std::result::Result<Option<Unlinked>, &'static str> {
        if flags.no_replace && flags.exchange {
            return Err("InvalidArgument");
        }
        self.dir(p)?;
        let s = self.entry(p, n).ok_or("NotFound")?;
        self.dir(np)?;
        let d = self.entry(np, nn);
        let moves = p != np;
        let s_dir = self.nodes[&s].dir;
        if flags.exchange {
            let d = d.ok_or("NotFound")?;
            if d == s {
                return Ok(None);
            }
            let d_dir = self.nodes[&d].dir;
            if moves && ((s_dir && self.is_ancestor(s, np)) || (d_dir && self.is_ancestor(d, p))) {
                return Err("InvalidArgument");
            }
            self.nodes.get_mut(&p).unwrap().entries.insert(n.into(), d);
            self.nodes
                .get_mut(&np)
                .unwrap()
                .entries
                .insert(nn.into(), s);
            self.reparent(s, p, np);
            self.reparent(d, np, p);
            return Ok(None);
        }
        if d.is_some() && flags.no_replace {
            return Err("Exists");
        }
        if d == Some(s) {
            return Ok(None);
        }
        if s_dir && moves && self.is_ancestor(s, np) {
            return Err("InvalidArgument");
        }
        let mut replaced = None;
        if let Some(d) = d {
            let (d_dir, d_empty) = (self.nodes[&d].dir, self.nodes[&d].entries.is_empty());
            match (s_dir, d_dir) {
                (true, false) => return Err("NotDir"),
                (false, true) => return Err("IsDir"),
                (true, true) if !d_empty => return Err("NotEmpty"),
                _ => {}
            }
            self.nodes.get_mut(&np).unwrap().entries.remove(nn);
            let freed = if d_dir {
                self.nodes.get_mut(&np).unwrap().nlink -= 1;
                self.nodes.remove(&d);
                self.freed.insert(d);
                true
            } else {
                self.drop_link(d)
            };
            replaced = Some(Unlinked { ino: d, freed });
        }
        self.nodes.get_mut(&p).unwrap().entries.remove(n);
        self.nodes
            .get_mut(&np)
            .unwrap()
            .entries
            .insert(nn.into(), s);
        self.reparent(s, p, np);
        Ok(replaced)
    }

    /// Compares everything the index can be asked about with the model.
    fn compare(&self, ix: &Index) {
        self.compare_with(ix, true);
    }

    /// [`Model::compare`]; without `full`, only what a queued creation's overlay answers
    /// for (attributes, lookups), so the queue is not applied: listing a directory, the
    /// inode count and the check apply it.
    fn compare_with(&self, ix: &Index, full: bool) {
        for (&ino, node) in &self.nodes {
            let attr = ix.get_attr(ino).unwrap();
            assert_eq!(attr.nlink, node.nlink, "nlink of {ino}");
            assert_eq!(attr.kind == FileKind::Dir, node.dir, "kind of {ino}");
            assert_eq!(ix.is_orphan(ino).unwrap(), node.nlink == 0, "orphan {ino}");
            if !node.dir {
                continue;
            }
            assert_eq!(ix.parent_of(ino).unwrap(), node.parent, "parent of {ino}");
            for name in NAMES {
                let got = ix.lookup(ino, name.as_bytes()).ok().map(|a| a.ino);
                assert_eq!(got, node.entries.get(name).copied(), "lookup {ino}/{name}");
            }
            if !full {
                continue;
            }
            let listed: BTreeMap<String, Ino> = list(ix, ino, 3)
                .into_iter()
                .map(|e| (String::from_utf8(e.name).unwrap(), e.ino))
                .collect();
            assert_eq!(listed, node.entries, "entries of {ino}");
        }
        for &ino in &self.freed {
            assert_err!(ix.get_attr(ino), IndexError::NotFound);
        }
        if !full {
            return;
        }
        assert_eq!(ix.stats().unwrap().inodes, self.nodes.len() as u64);
        ix.check().unwrap();
    }
}

/// Runs one op on both sides and checks they agree. With `queued`, files are created with
/// [`Index::create_file`] and renamed with [`Index::rename_queued`] (both wait in the queue
/// when they may).
fn step(ix: &Index, m: &mut Model, op: &Op, queued: bool) {
    let open = m.open.clone();
    let is_open = move |ino: Ino| open.contains(&ino);
    let name = |i: usize| NAMES[i];
    // Parents: one pick in eight is any inode (to hit `NotDir`), the rest directories.
    let any = |m: &Model, i: usize| match i % 8 {
        0 => m.pick(i / 8, |_| true).unwrap(),
        _ => m.pick(i, |n| n.dir).unwrap(),
    };
    // Entry operands: mostly an existing entry (if any), else any parent and name.
    let entry = |m: &Model, i: usize, n: usize, existing_one_in: usize| {
        let all: Vec<(Ino, &'static str)> = m
            .nodes
            .iter()
            .flat_map(|(&d, node)| node.entries.keys().map(move |k| (d, k.as_str())))
            .map(|(d, k)| (d, NAMES.into_iter().find(|n| *n == k).unwrap()))
            .collect();
        if !i.is_multiple_of(existing_one_in) && !all.is_empty() {
            all[i % all.len()]
        } else {
            (any(m, i), name(n))
        }
    };
    match *op {
        Op::Create {
            parent,
            name: n,
            dir,
        } => {
            let p = any(m, parent);
            let kind_ = if dir { FileKind::Dir } else { FileKind::File };
            let got = if queued {
                ix.create_file(p, name(n).as_bytes(), node(kind_), t(1))
            } else {
                ix.create(p, name(n).as_bytes(), node(kind_), t(1))
            };
            let want = match m.dir(p) {
                Err(e) => Err(e),
                Ok(_) if m.entry(p, name(n)).is_some() => Err("Exists"),
                Ok(_) => Ok(()),
            };
            assert_eq!(kind(&got), want.err().unwrap_or("ok"), "{op:?}");
            if let Ok(attr) = got {
                if queued && !dir {
                    assert!(!ix.deferred_empty(), "{op:?} was not queued");
                }
                let new = Node {
                    dir,
                    nlink: if dir { 2 } else { 1 },
                    entries: BTreeMap::new(),
                    parent: p,
                };
                m.nodes.insert(attr.ino, new);
                let pn = m.nodes.get_mut(&p).unwrap();
                pn.entries.insert(name(n).into(), attr.ino);
                pn.nlink += u32::from(dir);
            }
        }
        Op::Unlink { parent, name: n } => {
            let (p, n) = entry(m, parent, n, 4);
            let got = ix.unlink(p, n.as_bytes(), t(1), &is_open);
            let want = m.unlink(p, n);
            assert_eq!(kind(&got), want.err().unwrap_or("ok"), "{op:?}");
            if let (Ok(g), Ok(w)) = (got, want) {
                assert_eq!(g, w, "{op:?}");
            }
        }
        Op::Rmdir { parent, name: n } => {
            let (p, n) = entry(m, parent, n, 4);
            let got = ix.rmdir(p, n.as_bytes(), t(1));
            assert_eq!(kind(&got), m.rmdir(p, n).err().unwrap_or("ok"), "{op:?}");
        }
        Op::Link {
            file,
            parent,
            name: n,
        } => {
            let Some(f) = m.pick(file, |n| !n.dir) else {
                return;
            };
            let p = any(m, parent);
            let got = ix.link(f, p, name(n).as_bytes(), t(1));
            assert_eq!(
                kind(&got),
                m.link(f, p, name(n)).err().unwrap_or("ok"),
                "{op:?}"
            );
        }
        Op::Rename {
            parent,
            name: n,
            new_parent,
            new_name,
            flags,
        } => {
            let (p, n) = entry(m, parent, n, 8);
            let (np, new_name) = entry(m, new_parent, new_name, 2);
            let flags = RenameFlags {
                no_replace: flags & 1 != 0,
                exchange: flags & 2 != 0,
            };
            let rename = if queued {
                Index::rename_queued
            } else {
                Index::rename
            };
            let got = rename(
                ix,
                p,
                n.as_bytes(),
                np,
                new_name.as_bytes(),
                flags,
                t(1),
                &is_open,
            );
            let want = m.rename((p, n), (np, new_name), flags);
            assert_eq!(kind(&got), want.err().unwrap_or("ok"), "{op:?}");
            if let (Ok(g), Ok(w)) = (got, want) {
                assert_eq!(g.replaced, w, "{op:?}");
            }
        }
        Op::Open { file } => {
            if let Some(f) = m.pick(file, |n| !n.dir) {
                m.open.insert(f);
            }
        }
        Op::Close { file } => {
            let v: Vec<Ino> = m.open.iter().copied().collect();
            if v.is_empty() {
                return;
            }
            let f = v[file % v.len()];
            m.open.remove(&f);
            let orphan = m.nodes[&f].nlink == 0;
            assert_eq!(ix.release(f).unwrap(), orphan, "{op:?}");
            if orphan {
                m.nodes.remove(&f);
                m.freed.insert(f);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn index_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let (_dir, ix) = open();
        let mut m = Model::new();
        for op in &ops {
            step(&ix, &mut m, op, false);
            m.compare(&ix);
        }
    }

    /// Files created through the queue: between full comparisons (every eighth step, and at
    /// the end) several creations wait in it, and every other operation, lookup and
    /// attribute read must see them as if they had been committed.
    #[test]
    fn index_with_queued_creations_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let (_dir, ix) = open();
        let mut m = Model::new();
        for (i, op) in ops.iter().enumerate() {
            step(&ix, &mut m, op, true);
            m.compare_with(&ix, i % 8 == 7);
        }
        m.compare(&ix);
        prop_assert!(ix.deferred_empty(), "the full comparison applied the queue");
    }
}
