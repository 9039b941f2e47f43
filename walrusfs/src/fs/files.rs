//! Open files and handles.
//!
//! An [`OpenFile`] exists for an inode while it has open handles or dirty buffers. Its state
//! is the file's [`FileBuffers`] (what writes changed that no journal record holds yet) and
//! the number of handles. Reads see buffers first, so a reader never observes the index
//! lagging behind writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::buffers::FileBuffers;
use super::{Fs, FsError, FsResult};
use crate::data::store::BlobStore;
use crate::index::types::{FileKind, Ino};

/// Mutable state of an open file.
pub(crate) struct FileState {
    pub(crate) handles: u32,
    /// Dirty buffers and uncommitted attributes.
    pub(crate) buf: FileBuffers,
}

/// An inode with open handles or dirty buffers.
pub(crate) struct OpenFile {
    pub(crate) ino: Ino,
    pub(crate) state: Mutex<FileState>,
}

impl OpenFile {
    pub(crate) fn lock(&self) -> MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether anything of this file is not yet journaled or committed.
    pub(crate) fn has_unstored(st: &FileState) -> bool {
        st.buf.is_dirty()
    }
}

/// An open file handle.
pub(crate) struct Handle {
    pub(crate) ino: Ino,
    pub(crate) writable: bool,
    /// End offset of the last read, to detect sequential readers.
    pub(crate) last_read_end: AtomicU64,
    /// Set once a read was not where the previous one ended.
    pub(crate) seeks: AtomicU64,
    /// Set by the first write through this handle: only a close of a handle that wrote makes
    /// the index changes the data depends on safe from a killed mount.
    pub(crate) wrote: AtomicBool,
}

impl<B: BlobStore> Fs<B> {
    /// Opens inode `ino` (a regular file); returns a handle number.
    pub fn open(&self, ino: Ino, writable: bool) -> FsResult<u64> {
        if writable {
            self.inner.check_writable()?;
        }
        let attr = self.inner.index.get_attr(ino)?;
        if attr.kind == FileKind::Dir {
            return Err(crate::index::IndexError::IsDir.into());
        }
        let file = self.open_file(ino, true)?;
        drop(file);
        let fh = self.inner.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            ino,
            writable,
            last_read_end: AtomicU64::new(0),
            seeks: AtomicU64::new(0),
            wrote: AtomicBool::new(false),
        });
        self.inner
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, handle);
        Ok(fh)
    }

    /// Creates regular file `name` in `parent` and opens it (FUSE `create`): the new file's
    /// open record starts with the versions its creation reserved, so its first closes need
    /// no version transaction.
    pub fn create_and_open(
        &self,
        ctx: super::RequestCtx,
        parent: Ino,
        name: &[u8],
        perm: u16,
        writable: bool,
    ) -> FsResult<(super::Attr, u64)> {
        let attr = self.create_node(ctx, parent, name, FileKind::File, perm, 0, None)?;
        let fh = self.open(attr.ino, writable)?;
        if let Some(file) = self.existing_file(attr.ino) {
            let mut st = file.lock();
            // Only the record made for this open, before anything was written, may use them.
            if st.handles == 1 && !st.buf.is_dirty() {
                let first = crate::index::FIRST_VERSION;
                st.buf
                    .created_with_versions(first..first + crate::index::CREATOR_VERSIONS);
            }
        }
        Ok((attr, fh))
    }

    /// The open-file record of `ino`, creating it from the index if needed; with
    /// `new_handle`, counts one more handle.
    pub(crate) fn open_file(&self, ino: Ino, new_handle: bool) -> FsResult<Arc<OpenFile>> {
        let mut open = self.inner.lock_open();
        if let Some(f) = open.get(&ino) {
            if new_handle {
                f.lock().handles += 1;
            }
            return Ok(f.clone());
        }
        let attr = self.inner.index.get_attr(ino)?;
        let file = Arc::new(OpenFile {
            ino,
            state: Mutex::new(FileState {
                handles: u32::from(new_handle),
                buf: FileBuffers::new(attr.size, attr.mtime, attr.ctime),
            }),
        });
        open.insert(ino, file.clone());
        Ok(file)
    }

    /// The open-file record of `ino` if there is one.
    pub(crate) fn existing_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.inner.lock_open().get(&ino).cloned()
    }

    pub(crate) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.inner
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Closes handle `fh`. At the last close of an inode: forgets the open-file record once
    /// its data is stored, and frees the inode if it was unlinked while open.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let handle = self
            .inner
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .ok_or(FsError::BadHandle)?;
        let Some(file) = self.existing_file(handle.ino) else {
            return Ok(());
        };
        let last = {
            let mut st = file.lock();
            st.handles = st.handles.saturating_sub(1);
            st.handles == 0
        };
        if !last {
            return Ok(());
        }
        // The kernel sent flush before release, so the data is normally journaled by now. If
        // it could not be, the record stays and the background flusher keeps trying.
        self.forget_if_idle(&file);
        Ok(())
    }

    /// Drops the open-file record if it has no handles and nothing dirty; frees the inode if
    /// it was an orphan (unlinked while open).
    pub(crate) fn forget_if_idle(&self, file: &Arc<OpenFile>) {
        let mut open = self.inner.lock_open();
        {
            let mut st = file.lock();
            self.settle(&mut st);
            if st.handles > 0 || OpenFile::has_unstored(&st) {
                return;
            }
        }
        open.remove(&file.ino);
        drop(open);
        if !self
            .inner
            .read_only
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            match self.inner.index.release(file.ino) {
                Ok(true) => self.inner.gc_wake.notify_one(),
                Ok(false) => {}
                Err(e) => tracing::warn!(ino = file.ino, "releasing inode failed: {e}"),
            }
        }
    }

    /// Whether `ino` is open (used by unlink/rename to keep unlinked files readable).
    pub(crate) fn is_open(&self, ino: Ino) -> bool {
        self.inner.lock_open().contains_key(&ino)
    }
}
