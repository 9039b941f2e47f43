//! What a killed mount could lose of the index right now: the changes committed since sled's
//! log was last handed to the kernel by [`Index::flush_log`] or [`Index::flush`]. (sled buffers
//! its log in memory; it also writes a transaction's predecessors out when the next one begins,
//! and on its timer, but the mount cannot observe those writes, so it counts only its own.)
//! Kept so that a close need not hand the log over, a synchronous disk write, for every new
//! file.
//!
//! A close promises that a killed mount loses nothing of the file (DESIGN 3). Its data is in
//! the journal; what the index must keep for the journal's records to be replayed onto is the
//! file's inode, under its name. For a file created moments ago, the close appends a
//! *creation record* (`journal::Creation`) ahead of the data instead, and the next mount
//! creates the file from it if the index lost the creation. That is sound only if the index
//! recovered after a kill (a prefix of its transactions, one that ends before the creation)
//! has the parent directory and has the name free. The changes that could break that are a
//! `mkdir` of the parent and a removal of the name (unlink, rmdir, a rename away), so
//! [`Index::creation_guard`] asks for those, if any, to be handed to the kernel first. Any other
//! change of the file since its creation (a truncation, a link, a rename, xattrs, a mode
//! change committed on its own) is something the records do not carry: the guard then asks
//! for that change, and so the creation, to be handed over, as a close always did before.
//!
//! Every map holds only changes not yet handed to the kernel, and is pruned when sled's log
//! is ([`Fresh::prune`]); the filesystem's flusher does that every half second
//! (`Fs::log_index_soon`), so the maps hold the changes of about that long.

use std::collections::HashMap;

use crate::index::{FileKind, Index, Ino, InodeAttr};
use crate::journal::Creation;

/// See the [module doc](self). Values are [`Index::committed`] counts: the transaction that
/// made the change is handed to the kernel once `Index::logged` reaches it.
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    /// Regular files whose creation is not yet in the kernel.
    files: HashMap<Ino, FreshFile>,
    /// Inodes changed since by something other than their creation or a journal commit.
    touched: HashMap<Ino, u64>,
    /// Directories whose creation is not yet in the kernel.
    dirs: HashMap<Ino, u64>,
    /// Names freed (unlinked, removed, renamed away) in `(directory, name)`.
    freed: HashMap<(Ino, Vec<u8>), u64>,
    /// Some value is [`QUEUED`].
    queued: bool,
}

#[derive(Debug)]
struct FreshFile {
    /// The creating transaction.
    at: u64,
    /// What must be in the kernel before a close may rely on the creation record.
    guard: u64,
    /// The creation, for the record.
    creation: Creation,
}

/// The `at` of a change still in the index's queue (see `index::overlay`): no log flush
/// covers it before the queue is applied ([`Index::flush_log_through`] applies it first).
pub(crate) const QUEUED: u64 = u64::MAX;

impl Fresh {
    /// The queue was applied by transaction `at`: what waited in it is in that one.
    pub(crate) fn applied(&mut self, at: u64) {
        if !std::mem::take(&mut self.queued) {
            return;
        }
        let fix = |v: &mut u64| {
            if *v == QUEUED {
                *v = at;
            }
        };
        for f in self.files.values_mut() {
            fix(&mut f.at);
            fix(&mut f.guard);
        }
        self.touched.values_mut().for_each(fix);
        self.dirs.values_mut().for_each(fix);
        self.freed.values_mut().for_each(fix);
    }

    /// What a creation record of a file `name` in `parent` relies on: the directory's
    /// creation and an earlier removal of the name, if not yet in the kernel.
    fn guard_at(&self, parent: Ino, name: &[u8]) -> u64 {
        let dir = self.dirs.get(&parent).copied().unwrap_or(0);
        let freed = self.freed.get(&(parent, name.to_vec())).copied();
        dir.max(freed.unwrap_or(0))
    }

    /// Drops every change in transactions up to `logged`, now in the kernel.
    pub(crate) fn prune(&mut self, logged: u64) {
        self.files.retain(|_, f| f.at > logged);
        self.touched.retain(|_, &mut at| at > logged);
        self.dirs.retain(|_, &mut at| at > logged);
        self.freed.retain(|_, &mut at| at > logged);
    }
}

impl Index {
    pub(super) fn fresh(&self) -> std::sync::MutexGuard<'_, Fresh> {
        self.fresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the creation of `attr` as `name` in `parent`, committed as transaction `at`
    /// ([`QUEUED`]: not yet; [`Fresh::applied`] tells when).
    pub(crate) fn note_created(&self, parent: Ino, name: &[u8], attr: &InodeAttr, at: u64) {
        let mut f = self.fresh();
        f.queued |= at == QUEUED;
        match attr.kind {
            FileKind::File => {
                let guard = f.guard_at(parent, name);
                let creation = Creation {
                    parent,
                    name: name.to_vec(),
                    perm: attr.perm,
                    uid: attr.uid,
                    gid: attr.gid,
                    time: attr.crtime,
                };
                f.files.insert(
                    attr.ino,
                    FreshFile {
                        at,
                        guard,
                        creation,
                    },
                );
            }
            FileKind::Dir => {
                f.dirs.insert(attr.ino, at);
            }
            _ => {}
        }
    }

    /// Notes a change of `ino` (not its creation, not a journal commit) in transaction `at`.
    pub(crate) fn note_touched(&self, ino: Ino, at: u64) {
        self.fresh().touched.insert(ino, at);
    }

    /// Notes that `name` in `dir` was freed (unlinked, removed or renamed away) in transaction
    /// `at`.
    pub(crate) fn note_freed(&self, dir: Ino, name: &[u8], at: u64) {
        let mut f = self.fresh();
        f.queued |= at == QUEUED;
        f.freed.insert((dir, name.to_vec()), at);
    }

    /// Notes that the queued creation of `ino` is now that of `name` in `parent` (a queued
    /// rename): its creation record says so, and relies on what that place does.
    pub(crate) fn note_moved(&self, ino: Ino, parent: Ino, name: &[u8]) {
        let mut f = self.fresh();
        let guard = f.guard_at(parent, name);
        if let Some(file) = f.files.get_mut(&ino) {
            file.creation.parent = parent;
            file.creation.name = name.to_vec();
            file.guard = file.guard.max(guard);
        }
    }

    /// The creation of file `ino`, for a creation record, if the index may lose it to a kill
    /// and nothing else happened to the file since.
    pub fn fresh_creation(&self, ino: Ino) -> Option<Creation> {
        let f = self.fresh();
        if f.touched.contains_key(&ino) {
            return None;
        }
        f.files.get(&ino).map(|c| c.creation.clone())
    }

    /// The transaction count a close of `ino` must see handed to the kernel (with
    /// [`Index::flush_log_through`]) before it returns, given that its journal records carry
    /// the file's creation while [`Index::fresh_creation`] gives one: what the creation
    /// record relies on, or the file's last change that no record carries. 0: nothing.
    pub fn creation_guard(&self, ino: Ino) -> u64 {
        let f = self.fresh();
        if let Some(&at) = f.touched.get(&ino) {
            return at;
        }
        f.files.get(&ino).map_or(0, |c| c.guard)
    }
}
