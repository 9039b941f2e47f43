//! The FUSE adapter: each `fuser` callback runs one method of the filesystem core and replies
//! with its result or its errno. No filesystem logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug_span;

use netcore::metrics as m;

use crate::data::store::BlobStore;
use crate::fs::{Attr, Fs, FsError, FsResult, ReadData, RequestCtx};
use crate::index::{FileKind, SetAttr, Timestamp, NAME_MAX};

mod poll;
pub use poll::DevicePoll;

/// How long the kernel may cache attributes and entries. This mount is the only writer of its
/// index, so staleness can only come from the kernel's own cache; a second keeps `stat`-heavy
/// tools (rsync, git) from asking for every file again and again.
const TTL: Duration = Duration::from_secs(1);
/// Largest write request the kernel sends; bigger requests mean fewer round trips.
const MAX_WRITE: u32 = 1 << 20;
/// Kernel readahead window for sequential reads (the core adds its own chunk readahead).
const MAX_READAHEAD: u32 = 1 << 20;
/// Block size reported by `stat`, which tools use as their I/O size.
const BLKSIZE: u32 = 1 << 20;
/// Capacity reported by statfs beyond what is used while the network's free space is not
/// known (no node answered yet, or a filesystem without a network, in tests).
const REPORTED_HEADROOM: u64 = 1 << 40;
/// statfs block unit.
const STATFS_BSIZE: u32 = 4096;
/// readdir batch fetched from the index per call.
const READDIR_BATCH: usize = 256;

/// The `fuser::Filesystem` over a filesystem core.
pub struct FuseAdapter<B: BlobStore> {
    fs: Fs<B>,
    poll: Arc<DevicePoll>,
}

impl<B: BlobStore> FuseAdapter<B> {
    /// Wraps the core; `poll` watches the device after each answer (see [`DevicePoll`]).
    pub fn new(fs: Fs<B>, poll: Arc<DevicePoll>) -> Self {
        FuseAdapter { fs, poll }
    }

    /// Counts a FUSE operation and remembers it as this thread's current one; the returned
    /// guard, dropped when the handler returns (its answer sent, or a read handed to the
    /// runtime), watches the device for the next request.
    fn begin(&self, op: &'static str) -> Answered<'_> {
        OP.with(|o| o.set(op));
        metrics::counter!(m::FUSE_OPS, m::LABEL_OP => op).increment(1);
        Answered(&self.poll)
    }
}

/// Lingers on the device when a handler is done (see [`FuseAdapter::begin`]).
struct Answered<'a>(&'a DevicePoll);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.linger();
    }
}

thread_local! {
    /// The FUSE operation this thread is answering (a metrics label for its errors).
    static OP: std::cell::Cell<&'static str> = const { std::cell::Cell::new("other") };
}

fn errno(e: FsError) -> Errno {
    let op = OP.with(std::cell::Cell::get);
    // "No such name" and "no such attribute" are answers, not failures (every create looks
    // its name up first; the kernel asks for security.capability before each write).
    if !matches!(e.errno(), libc::ENOENT | libc::ENODATA) {
        metrics::counter!(m::FUSE_ERRORS, m::LABEL_OP => op).increment(1);
    }
    match &e {
        FsError::Network(_) | FsError::Integrity(_) | FsError::WriteBack(_) => {
            tracing::warn!("I/O error: {e}");
            crate::fs::note_error(format!("{op}: {e}"));
        }
        FsError::Index(crate::index::IndexError::Corrupt(_) | crate::index::IndexError::Db(_)) => {
            tracing::error!("index error: {e}")
        }
        _ => tracing::debug!("{e}"),
    }
    Errno::from_i32(e.errno())
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The attributes of a negative entry: only the node id 0 matters to the kernel.
fn missing_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn ctx(req: &Request) -> RequestCtx {
    RequestCtx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::SpecificTime(t) => t.into(),
        TimeOrNow::Now => Timestamp::now(),
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn node_kind(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFSOCK => FileKind::Socket,
        _ => return None,
    })
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: Result<Vec<u8>, FsError>) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

impl<B: BlobStore> FuseAdapter<B> {
    /// Lists directory `dir` from `offset`: "." (offset 1), ".." (offset 2), then entries in
    /// their stable index-cookie order (cookies >= 3). `emit(ino, next_offset, kind, name)`
    /// returns true once the reply buffer is full.
    fn walk_dir(
        &self,
        dir: u64,
        offset: u64,
        mut emit: impl FnMut(u64, u64, FileKind, &OsStr) -> bool,
    ) -> Result<(), FsError> {
        if offset < 1 && emit(dir, 1, FileKind::Dir, OsStr::new(".")) {
            return Ok(());
        }
        if offset < 2 && emit(self.fs.parent_of(dir)?, 2, FileKind::Dir, OsStr::new("..")) {
            return Ok(());
        }
        let mut cookie = offset.max(2);
        loop {
            let entries = self.fs.readdir(dir, cookie, READDIR_BATCH)?;
            if entries.is_empty() {
                return Ok(());
            }
            for e in entries {
                if emit(e.ino, e.cookie, e.kind, OsStr::from_bytes(&e.name)) {
                    return Ok(());
                }
                cookie = e.cookie;
            }
        }
    }
}

impl<B: BlobStore> fuser::Filesystem for FuseAdapter<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // Listings carry each entry's attributes (fuser does not ask for this by itself), so
        // `ls -l`, `du` and `find -size` stat each entry from the kernel's cache instead of one
        // lookup round trip per entry (rsync stats destination files by name, without a
        // listing, and gains nothing). AUTO lets the kernel fall back to plain readdir for a
        // listing that is not followed by stats.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        // A symlink's target never changes (a new target is a new inode), so the kernel may
        // keep it: one readlink round trip per symlink, not per path resolution through it.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        // The filesystem drops setuid, setgid and capabilities on write (`write`, `setattr`):
        // otherwise the kernel asks for `security.capability` before every write, a round trip
        // each (as many as the writes themselves for `tar -x`).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        tracing::info!(chunk_size = self.fs.chunk_size(), "filesystem mounted");
        Ok(())
    }

    fn destroy(&mut self) {
        match self.fs.shutdown() {
            Ok(()) => tracing::info!("all data stored; unmounted"),
            Err(e) => tracing::error!(
                "unmounted, but not everything could be stored on the network ({e}); \
                 it is kept in the state directory's journal and stored at the next mount"
            ),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = self.begin("lookup");
        let _s = debug_span!("lookup", parent = parent.0, ?name).entered();
        if name.len() > NAME_MAX {
            return reply.error(Errno::from_i32(libc::ENAMETOOLONG));
        }
        match self.fs.lookup(parent.0, name.as_bytes()) {
            // A negative entry (node id 0) with a timeout: the kernel then skips the lookup
            // that precedes every create of a new name (one FUSE round trip per new file).
            Err(e) if e.errno() == libc::ENOENT && self.fs.caches_missing_names() => {
                reply.entry(&TTL, &missing_attr(), Generation(0))
            }
            r => reply_entry(reply, r),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = self.begin("getattr");
        let _s = debug_span!("getattr", ino = ino.0).entered();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _op = self.begin("setattr");
        let _s = debug_span!("setattr", ino = ino.0, ?mode, ?uid, ?gid, ?size).entered();
        let mut perm = mode.map(|m| (m & 0o7777) as u16);
        if size.is_some() && perm.is_none() && req.uid() != 0 {
            // FUSE_HANDLE_KILLPRIV_V2 leaves dropping setuid and setgid on a truncation to the
            // filesystem when the caller lacks CAP_FSETID. fuser does not pass the kernel's
            // flag saying so (FATTR_KILL_SUIDGID): a caller other than root stands for it.
            match self.fs.perm_after_truncation(ino.0) {
                Ok(p) => perm = p,
                Err(e) => return reply.error(errno(e)),
            }
        }
        let chown = uid.is_some() || gid.is_some();
        if chown && perm.is_none() {
            // Likewise a chown, by anyone, of anything but a directory: the kernel flags it
            // with FATTR_KILL_SUIDGID and leaves the mode to us.
            match self.fs.perm_after_chown(ino.0) {
                Ok(p) => perm = p,
                Err(e) => return reply.error(errno(e)),
            }
        }
        let changes = SetAttr {
            perm,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
            ctime: ctime.map(Timestamp::from),
        };
        let set = self.fs.setattr(ino.0, changes).and_then(|a| {
            // A chown of anything but a directory drops its capabilities too (Linux's
            // ATTR_KILL_PRIV).
            if chown && a.kind != FileKind::Dir {
                self.fs.drop_capabilities(ino.0)?;
            }
            Ok(a)
        });
        match set {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = self.begin("readlink");
        let _s = debug_span!("readlink", ino = ino.0).entered();
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.begin("mknod");
        let _s = debug_span!("mknod", parent = parent.0, ?name, mode).entered();
        let Some(k) = node_kind(mode) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        let perm = (mode & !umask & 0o7777) as u16;
        reply_entry(
            reply,
            self.fs
                .create_node(ctx(req), parent.0, name.as_bytes(), k, perm, rdev, None),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = self.begin("mkdir");
        let _s = debug_span!("mkdir", parent = parent.0, ?name).entered();
        let perm = (mode & !umask & 0o7777) as u16;
        reply_entry(
            reply,
            self.fs.create_node(
                ctx(req),
                parent.0,
                name.as_bytes(),
                FileKind::Dir,
                perm,
                0,
                None,
            ),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.begin("unlink");
        let _s = debug_span!("unlink", parent = parent.0, ?name).entered();
        reply_empty(reply, self.fs.unlink(parent.0, name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.begin("rmdir");
        let _s = debug_span!("rmdir", parent = parent.0, ?name).entered();
        reply_empty(reply, self.fs.rmdir(parent.0, name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _op = self.begin("symlink");
        let _s = debug_span!("symlink", parent = parent.0, ?link_name).entered();
        let target = target.as_os_str().as_bytes().to_vec();
        reply_entry(
            reply,
            self.fs.create_node(
                ctx(req),
                parent.0,
                link_name.as_bytes(),
                FileKind::Symlink,
                0o777,
                0,
                Some(target),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("rename");
        let _s = debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        reply_empty(
            reply,
            self.fs.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.contains(RenameFlags::RENAME_NOREPLACE),
                flags.contains(RenameFlags::RENAME_EXCHANGE),
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = self.begin("link");
        let _s = debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        reply_entry(reply, self.fs.link(ino.0, newparent.0, newname.as_bytes()));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.begin("open");
        let _s = debug_span!("open", ino = ino.0).entered();
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match self.fs.open(ino.0, writable) {
            // This mount is the only writer, so the kernel's page cache stays valid across
            // opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = self.begin("read");
        let _s = debug_span!("read", ino = ino.0, offset, size).entered();
        let answer = |reply: ReplyData, read: FsResult<ReadData>| match read {
            Ok(data) => {
                metrics::counter!(m::READ_BYTES).increment(data.len() as u64);
                reply.data(&data)
            }
            Err(e) => reply.error(errno(e)),
        };
        match self.fs.read_nowait(fh.0, offset, size) {
            Err(FsError::WouldBlock) => {
                // Some of it is only on the network: read by a task of the runtime, so a slow
                // node or a cold read does not hold one of FUSE's threads, and the answer
                // that completes it is handled where it arrives (a thread of the blocking
                // pool waiting instead cost each such read one more thread woken).
                let fs = self.fs.clone();
                self.fs.spawn(async move {
                    let read = fs.read_async(fh.0, offset, size).await;
                    // Where `errno` looks for it, on the thread that answers.
                    OP.with(|o| o.set("read"));
                    answer(reply, read)
                });
            }
            read => answer(reply, read),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = self.begin("write");
        let _s = debug_span!("write", ino = ino.0, offset, len = data.len()).entered();
        metrics::counter!(m::WRITTEN_BYTES).increment(data.len() as u64);
        // FUSE_HANDLE_KILLPRIV_V2: the kernel sets this flag when the writer lacks CAP_FSETID.
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        if let Err(e) = self.fs.drop_privileges_for_write(ino.0, kill) {
            return reply.error(errno(e));
        }
        match self.fs.write_nowait(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(FsError::WouldBlock) => {
                // The journal is (nearly) full: this write may wait for the network. It waits
                // on a thread of its own, so FUSE's threads stay free for everything else
                // (`ls`, reads of stored data): stalled writers must not stall the mount.
                let fs = self.fs.clone();
                let data = data.to_vec();
                self.fs.offload(move || {
                    OP.with(|o| o.set("write"));
                    match fs.write(fh.0, offset, &data) {
                        Ok(n) => reply.written(n as u32),
                        Err(e) => reply.error(errno(e)),
                    }
                });
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("flush");
        let _s = debug_span!("flush", ino = ino.0).entered();
        match self.fs.flush_nowait(fh.0) {
            Err(FsError::WouldBlock) => {
                // May wait for the network: off FUSE's threads (see `write`).
                let fs = self.fs.clone();
                self.fs.offload(move || {
                    OP.with(|o| o.set("flush"));
                    reply_empty(reply, fs.flush(fh.0))
                });
            }
            r => reply_empty(reply, r),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("release");
        let _s = debug_span!("release", ino = ino.0).entered();
        reply_empty(reply, self.fs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("fsync");
        let _s = debug_span!("fsync", ino = ino.0).entered();
        // An fsync waits for the network: on a thread of its own (see `write`).
        let fs = self.fs.clone();
        self.fs.offload(move || {
            OP.with(|o| o.set("fsync"));
            reply_empty(reply, fs.fsync(ino.0))
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = self.begin("opendir");
        match self.fs.getattr(ino.0) {
            Ok(a) if a.kind == FileKind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = self.begin("readdir");
        let _s = debug_span!("readdir", ino = ino.0, offset).entered();
        let walked = self.walk_dir(ino.0, offset, |child, next, k, name| {
            reply.add(INodeNo(child), next, kind(k), name)
        });
        match walked {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = self.begin("readdirplus");
        let _s = debug_span!("readdirplus", ino = ino.0, offset).entered();
        let walked = self.walk_dir(ino.0, offset, |child, next, _, name| {
            match self.fs.getattr(child) {
                Ok(a) => reply.add(
                    INodeNo(child),
                    next,
                    name,
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                ),
                // Removed since the listing was read: skip it.
                Err(_) => false,
            }
        });
        match walked {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("fsyncdir");
        let _s = debug_span!("fsyncdir", ino = ino.0).entered();
        let fs = self.fs.clone();
        self.fs.offload(move || {
            OP.with(|o| o.set("fsync"));
            reply_empty(reply, fs.fsync(ino.0))
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = self.begin("statfs");
        match self.fs.statfs() {
            Ok(s) => {
                let bs = u64::from(STATFS_BSIZE);
                let used = (s.used_bytes + s.dirty_bytes).div_ceil(bs);
                // What the network can take, less what already waits to go there; a fixed
                // headroom only while no node has answered yet (or without a network).
                let free = match s.network_free {
                    Some(net) => net.saturating_sub(s.pending_bytes) / bs,
                    None => REPORTED_HEADROOM / bs,
                };
                let files_free = u64::from(u32::MAX);
                reply.statfs(
                    used + free,
                    free,
                    free,
                    s.inodes + files_free,
                    files_free,
                    STATFS_BSIZE,
                    NAME_MAX as u32,
                    STATFS_BSIZE,
                );
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("setxattr");
        let _s = debug_span!("setxattr", ino = ino.0, ?name).entered();
        // POSIX ACLs are not implemented: storing them as plain attributes would leave the
        // mode bits disagreeing with them (cp -a sets permissions through this attribute and
        // falls back to chmod only when it is refused).
        if name.as_bytes().starts_with(b"system.posix_acl_") {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let create = flags & libc::XATTR_CREATE != 0;
        let replace = flags & libc::XATTR_REPLACE != 0;
        reply_empty(
            reply,
            self.fs
                .setxattr(ino.0, name.as_bytes(), value, create, replace),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = self.begin("getxattr");
        let _s = debug_span!("getxattr", ino = ino.0, ?name).entered();
        xattr_reply(reply, size, self.fs.getxattr(ino.0, name.as_bytes()));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = self.begin("listxattr");
        let _s = debug_span!("listxattr", ino = ino.0).entered();
        let list = self.fs.listxattr(ino.0).map(|names| {
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(&n);
                out.push(0);
            }
            out
        });
        xattr_reply(reply, size, list);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _op = self.begin("removexattr");
        let _s = debug_span!("removexattr", ino = ino.0, ?name).entered();
        reply_empty(reply, self.fs.removexattr(ino.0, name.as_bytes()));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _op = self.begin("access");
        // default_permissions: the kernel checks permissions before asking us.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = self.begin("create");
        let _s = debug_span!("create", parent = parent.0, ?name).entered();
        let perm = (mode & !umask & 0o7777) as u16;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        match self
            .fs
            .create_and_open(ctx(req), parent.0, name.as_bytes(), perm, writable)
        {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _op = self.begin("fallocate");
        let _s = debug_span!("fallocate", ino = ino.0, offset, length, mode).entered();
        // Space is not reserved on the network ahead of time; plain fallocate only extends the
        // size, as the caller expects. Other modes (punch hole, ...) are not supported.
        if mode != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let r = self.fs.getattr(ino.0).and_then(|a| {
            let end = offset.saturating_add(length);
            if end > a.size {
                self.fs
                    .setattr(
                        ino.0,
                        SetAttr {
                            size: Some(end),
                            ..Default::default()
                        },
                    )
                    .map(|_| ())
            } else {
                Ok(())
            }
        });
        reply_empty(reply, r);
    }
}
