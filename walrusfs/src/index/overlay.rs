//! What the index's queue will change, as reads must see it before the queue is applied: new
//! regular files ([`Index::create_file`]), their renames while their creation is queued
//! ([`Index::rename_queued`]) and attribute changes of directories, symlinks and special
//! files ([`Index::setattr_queued`]), queued with the journal commits and file attribute
//! changes of the filesystem core (`index::journal`).
//!
//! Such a change costs no transaction of its own: the next one applies the whole queue, in
//! order (the flusher's tick, a full queue, or any mutation, which applies the queue first).
//! `tar -x` then costs a transaction per directory instead of four per directory and one per
//! file, and a loop of `cp`, or rsync's write-then-rename of each file, one per few dozen
//! files instead of one or two per file.
//!
//! Until then this overlay answers for what the queue changed: attribute reads and lookups
//! return the inodes as the queue leaves them, and a create sees the names it took. What
//! reads more than that (a directory's entries, the inode count of `statfs`) applies the queue
//! first.
//!
//! What a killed mount may lose is what it could lose before (DESIGN 3): a new file that was
//! closed has a creation record in the journal (see `index::fresh`), written or empty, so the
//! next mount creates it; a queued rename, or an attribute change of a directory, is lost if
//! the kill comes before the flusher's next tick, as an unlogged rename transaction or a
//! file's queued attribute change is (the renamed file comes back under the name its close
//! journaled).

use std::collections::HashMap;

use super::types::{Ino, InodeAttr};

/// See the [module doc](self). Changed only with the index's writer lock held, and emptied
/// when the queue is applied (under the same lock), so a reader holding the read lock sees
/// the queue and this overlay agree.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Inodes as the queued changes leave them.
    attrs: HashMap<Ino, InodeAttr>,
    /// The entries of the queued new files, by directory (so a lookup by a borrowed name
    /// allocates nothing).
    names: HashMap<Ino, HashMap<Vec<u8>, Ino>>,
    /// One past the highest inode number handed out to a queued new file (0: none).
    next_ino: Ino,
}

impl Overlay {
    /// Whether the queue holds new files.
    pub(crate) fn has_creations(&self) -> bool {
        !self.names.is_empty()
    }

    /// The inode number the next queued new file gets, given the index's counter.
    pub(crate) fn next_ino(&self, counter: Ino) -> Ino {
        counter.max(self.next_ino)
    }

    /// Notes the queued creation of `attr` as `name` in `parent`.
    pub(crate) fn create(&mut self, parent: Ino, name: &[u8], attr: InodeAttr) {
        self.next_ino = self.next_ino.max(attr.ino.saturating_add(1));
        self.names
            .entry(parent)
            .or_default()
            .insert(name.to_vec(), attr.ino);
        self.attrs.insert(attr.ino, attr);
    }

    /// Notes the queued rename of the queued new file `parent/name` to `new_parent/new_name`,
    /// which leaves it as `attr`.
    pub(crate) fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        attr: InodeAttr,
    ) {
        if let Some(dir) = self.names.get_mut(&parent) {
            dir.remove(name);
            if dir.is_empty() {
                self.names.remove(&parent);
            }
        }
        self.create(new_parent, new_name, attr);
    }

    /// Notes that the queue leaves inode `attr.ino` as `attr`.
    pub(crate) fn set(&mut self, attr: InodeAttr) {
        self.attrs.insert(attr.ino, attr);
    }

    /// The queued new file `name` in `parent`, if any.
    pub(crate) fn lookup(&self, parent: Ino, name: &[u8]) -> Option<InodeAttr> {
        let ino = self.names.get(&parent)?.get(name)?;
        self.attrs.get(ino).cloned()
    }

    /// Inode `ino` as the queue leaves it, if the queue changes it.
    pub(crate) fn attr(&self, ino: Ino) -> Option<InodeAttr> {
        self.attrs.get(&ino).cloned()
    }

    /// Forgets everything: the queue was applied.
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A queued new file, as the transaction that applies it needs it.
#[derive(Debug, Clone)]
pub(crate) struct NewFile {
    pub(crate) parent: Ino,
    pub(crate) name: Vec<u8>,
    pub(crate) attr: InodeAttr,
}
