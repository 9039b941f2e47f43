//! New regular files whose creating transaction waits in the index's queue, with the
//! journal commits and attribute changes queued there (see [`Index::create_file`]).
//!
//! A file created this way costs no transaction of its own: its creation is applied by the
//! next transaction, together with what else is queued (the flusher's tick, a full queue, or
//! any mutation, which applies the queue first). `tar -x` and a loop of `cp` then cost a
//! transaction per few hundred files instead of one per file, and rsync's create-then-rename
//! one per file instead of two.
//!
//! Until that transaction commits, the overlay here answers for the files: lookups, attribute
//! reads and the checks of a later create see them, and a directory they were created in
//! shows the times of its newest one. What reads more than one inode or entry (readdir, the
//! inode count of `statfs`) applies the queue first.
//!
//! What a killed mount may lose is unchanged: a file that was written and closed has a
//! creation record in the journal (see `index::fresh`), so the next mount creates it; an
//! empty one is lost if the kill comes before the flusher's next tick, as an empty file's
//! creation in sled's memory was before.

use std::collections::HashMap;

use super::types::{FileKind, Ino, InodeAttr, Timestamp};

/// See the [module doc](self). Changed only with the index's writer lock held, so a reader
/// holding the read lock sees the queue and this overlay agree.
#[derive(Debug, Default)]
pub(crate) struct Creating {
    files: HashMap<Ino, Queued>,
    names: HashMap<(Ino, Vec<u8>), Ino>,
    /// Directories with queued creations: the newest one's time, and how many.
    dirs: HashMap<Ino, (Timestamp, usize)>,
    /// One past the highest inode number handed out to a queued creation (0: none yet).
    next_ino: Ino,
}

#[derive(Debug)]
struct Queued {
    parent: Ino,
    name: Vec<u8>,
    attr: InodeAttr,
}

impl Creating {
    /// Whether no creation is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The inode number the next queued creation gets, given the index's counter.
    pub(crate) fn next_ino(&self, counter: Ino) -> Ino {
        counter.max(self.next_ino)
    }

    /// Notes the queued creation of `attr` as `name` in `parent`.
    pub(crate) fn insert(&mut self, parent: Ino, name: &[u8], attr: InodeAttr) {
        debug_assert_eq!(attr.kind, FileKind::File);
        self.next_ino = self.next_ino.max(attr.ino.saturating_add(1));
        let dir = self.dirs.entry(parent).or_insert((attr.ctime, 0));
        dir.0 = dir.0.max(attr.ctime);
        dir.1 += 1;
        self.names.insert((parent, name.to_vec()), attr.ino);
        self.files.insert(
            attr.ino,
            Queued {
                parent,
                name: name.to_vec(),
                attr,
            },
        );
    }

    /// Forgets the creation of `ino`: its transaction committed.
    pub(crate) fn remove(&mut self, ino: Ino) {
        let Some(q) = self.files.remove(&ino) else {
            return;
        };
        self.names.remove(&(q.parent, q.name));
        if let Some(dir) = self.dirs.get_mut(&q.parent) {
            dir.1 -= 1;
            if dir.1 == 0 {
                self.dirs.remove(&q.parent);
            }
        }
    }

    /// The queued file `name` in `parent`, if any.
    pub(crate) fn lookup(&self, parent: Ino, name: &[u8]) -> Option<InodeAttr> {
        let ino = self.names.get(&(parent, name.to_vec()))?;
        self.files.get(ino).map(|q| q.attr.clone())
    }

    /// The queued file `ino`, if it is one.
    pub(crate) fn attr(&self, ino: Ino) -> Option<InodeAttr> {
        self.files.get(&ino).map(|q| q.attr.clone())
    }

    /// `attr` (read from the index) as the queued creations leave it: a directory that has
    /// one gets the newest one's time as mtime and ctime, as their transaction will give it.
    /// (Nothing else changed the directory since: a transaction that does applies the queue
    /// first.)
    pub(crate) fn overlay(&self, attr: &mut InodeAttr) {
        if let Some(&(t, _)) = self.dirs.get(&attr.ino) {
            if attr.kind == FileKind::Dir {
                attr.mtime = t;
                attr.ctime = t;
            }
        }
    }
}

/// A queued creation, as the transaction that applies it needs it.
#[derive(Debug, Clone)]
pub(crate) struct NewFile {
    pub(crate) parent: Ino,
    pub(crate) name: Vec<u8>,
    pub(crate) attr: InodeAttr,
}
