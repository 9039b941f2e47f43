//! POSIX behaviour of a real walrusfs mount, one behaviour per test: exact contents and exact
//! errno, through std::fs, std::os::unix and raw libc calls where std has no wrapper.
//!
//! Most tests share one mount (`mount::shared`, torn down at exit) and work in their own fresh
//! directory; the persistence test owns a mount because it unmounts, remounts and mounts
//! read-only.

#![allow(unsafe_code)] // libc: renameat2, xattrs, statvfs, mmap, mkfifo.
#![allow(clippy::unwrap_used)] // A panic in a test helper is a test failure, with its location.

mod common;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mount::{
    as_nobody, assert_errno, assert_ok, assert_same_bytes, assert_same_tree, assert_tool_errno,
    evict, evict_path, sh_as_nobody, shared, snapshot, Compare, Mount, Options, NOBODY,
};
use common::random_bytes;
use rand::{Rng, SeedableRng};

/// The chunk size walrusfs probably uses; sizes and offsets below straddle its multiples.
const CHUNK: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// libc wrappers for calls std does not offer.

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cpath(from), cpath(to));
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    })
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    // SAFETY: valid C strings; `value` is a live slice of the given length.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// getxattr into a buffer of exactly `cap` bytes (0 = ask for the size).
fn getxattr_cap(path: &Path, name: &str, cap: usize) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    let mut buf = vec![0u8; cap];
    // SAFETY: valid C strings; `buf` has `cap` writable bytes (a null pointer when cap is 0 is
    // allowed: size query).
    let len = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            if cap == 0 {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr().cast()
            },
            cap,
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(if cap == 0 { 0 } else { len as usize });
    if cap == 0 {
        buf = vec![0; len as usize];
    }
    Ok(buf)
}

fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let size = getxattr_cap(path, name, 0)?.len();
    getxattr_cap(path, name, size)
}

/// The names listxattr returns in the `user.` namespace, sorted.
fn list_user_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path);
    // SAFETY: valid C string; a null buffer with size 0 asks for the needed size.
    let size = unsafe { libc::listxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: `buf` has `size` writable bytes.
    let len = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    let mut names: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| n.starts_with("user."))
        .collect();
    names.sort();
    Ok(names)
}

/// The `system.posix_acl_access` value of a minimal ACL equivalent to `mode` (version 2
/// header, then USER_OBJ, GROUP_OBJ and OTHER entries: tag u16, perm u16, id u32, little endian).
fn posix_acl_for_mode(mode: u32) -> Vec<u8> {
    const UNDEFINED_ID: u32 = u32::MAX;
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, shift) in [(0x01u16, 6), (0x04, 3), (0x20, 0)] {
        acl.extend(tag.to_le_bytes());
        acl.extend((((mode >> shift) & 7) as u16).to_le_bytes());
        acl.extend(UNDEFINED_ID.to_le_bytes());
    }
    acl
}

fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path), CString::new(name).expect("name"));
    // SAFETY: valid C strings.
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) })
}

fn statvfs(path: &Path) -> libc::statvfs {
    let p = cpath(path);
    // SAFETY: statvfs is plain old data; all-zero is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a pointer to a live statvfs.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) }).expect("statvfs");
    st
}

fn mkfifo(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let p = cpath(path);
    // SAFETY: valid C string.
    check(unsafe { libc::mkfifo(p.as_ptr(), mode) })
}

/// Writes `data` into `file` (already at least `data.len()` long) through a MAP_SHARED mapping,
/// then msync(MS_SYNC) and munmap.
fn write_through_mmap(file: &File, data: &[u8]) {
    // SAFETY: a fresh shared mapping of a file we own; length is nonzero.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            data.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    // SAFETY: the mapping is `data.len()` bytes, writable, and nothing else aliases it.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.cast::<u8>(), data.len()) };
    // SAFETY: `ptr` is the mapping created above with this length.
    check(unsafe { libc::msync(ptr, data.len(), libc::MS_SYNC) }).expect("msync");
    // SAFETY: as above; the mapping is not used afterwards.
    check(unsafe { libc::munmap(ptr, data.len()) }).expect("munmap");
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn m() -> &'static Mount {
    shared()
}

fn read_at(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file
            .read_at(&mut buf[done..], offset + done as u64)
            .unwrap_or_else(|e| panic!("pread {len} bytes at {offset}: {e}"));
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} rw: {e}", path.display()))
}

fn create_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Writes `data` at `offset` into `model`, growing it with zeros like a file does.
fn model_write(model: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if model.len() < offset + data.len() {
        model.resize(offset + data.len(), 0);
    }
    model[offset..offset + data.len()].copy_from_slice(data);
}

// ---------------------------------------------------------------------------------------------
// Data.

#[test]
fn read_and_write_at_any_offset() {
    let dir = m().fresh_dir("rw");
    let path = dir.join("f");
    let f = create_rw(&path);
    let mut model = Vec::new();
    for (offset, len, seed) in [
        (0, 5, 1),
        (3, 10, 2),
        (100, 1, 3),
        (50, 70, 4),
        (0, 0, 5),
        (4095, 2, 6),
        (8191, 8193, 7),
        (1, 1, 8),
    ] {
        let data = random_bytes(len, seed);
        f.write_all_at(&data, offset as u64)
            .unwrap_or_else(|e| panic!("pwrite {len} at {offset}: {e}"));
        model_write(&mut model, offset, &data);
        assert_eq!(
            f.metadata().unwrap().len(),
            model.len() as u64,
            "size after writing {len} at {offset}"
        );
        assert_same_bytes(&read_at(&f, 0, model.len() + 10), &model, "after pwrite");
    }
    // Reads: inside, straddling EOF (short), at and past EOF (empty).
    assert_same_bytes(&read_at(&f, 60, 30), &model[60..90], "read inside");
    let end = model.len() as u64;
    assert_same_bytes(
        &read_at(&f, end - 3, 100),
        &model[model.len() - 3..],
        "read over EOF",
    );
    assert!(
        read_at(&f, end, 10).is_empty(),
        "read at EOF returns nothing"
    );
    assert!(
        read_at(&f, end + 1000, 10).is_empty(),
        "read past EOF returns nothing"
    );
    // Sequential read/write through the file position.
    let mut g = rw(&path);
    g.seek(SeekFrom::Start(2)).unwrap();
    g.write_all(b"XY").unwrap();
    model_write(&mut model, 2, b"XY");
    let mut head = [0u8; 6];
    g.seek(SeekFrom::Start(0)).unwrap();
    g.read_exact(&mut head).unwrap();
    assert_eq!(&head, &model[..6], "sequential read after sequential write");
    drop((f, g));
    assert_same_bytes(&fs::read(&path).unwrap(), &model, "after close");
    // A read-only descriptor refuses writes, a write-only one refuses reads (EBADF).
    let ro = File::open(&path).unwrap();
    assert_errno(ro.write_at(b"no", 0), libc::EBADF, "write on O_RDONLY fd");
    let wo = OpenOptions::new().write(true).open(&path).unwrap();
    assert_errno(
        wo.read_at(&mut [0u8; 4], 0),
        libc::EBADF,
        "read on O_WRONLY fd",
    );
}

#[test]
fn append_mode_always_writes_at_the_end() {
    let dir = m().fresh_dir("append");
    let path = dir.join("log");
    fs::write(&path, b"start\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(&path).unwrap();
    let mut b = OpenOptions::new().append(true).open(&path).unwrap();
    a.write_all(b"a1\n").unwrap();
    b.write_all(b"b1\n").unwrap();
    // Seeking does not move O_APPEND writes away from the end.
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"a2\n").unwrap();
    // Another writer extends the file; the appender still lands after its data.
    let other = OpenOptions::new().write(true).open(&path).unwrap();
    other.write_all_at(b"XXXX", 15).unwrap();
    b.write_all(b"b2\n").unwrap();
    drop((a, b, other));
    assert_eq!(
        fs::read(&path).unwrap(),
        b"start\na1\nb1\na2\nXXXXb2\n",
        "appends from two descriptors, one after a seek, one after another writer"
    );
}

#[test]
fn sparse_files_read_holes_as_zeros() {
    let dir = m().fresh_dir("sparse");
    let path = dir.join("sparse");
    let far = 16 * CHUNK + 777;
    let mut f = create_rw(&path);
    f.write_all(b"head").unwrap();
    f.seek(SeekFrom::Start(far)).unwrap();
    f.write_all(b"tail").unwrap();
    // A hole inside a single chunk, too: data, hole, data within chunk 2.
    f.write_all_at(b"mid1", 2 * CHUNK + 10).unwrap();
    f.write_all_at(b"mid2", 2 * CHUNK + 100_000).unwrap();
    let check = |f: &File, when: &str| {
        assert_eq!(
            f.metadata().unwrap().len(),
            far + 4,
            "size of sparse file {when}"
        );
        assert_eq!(read_at(f, 0, 4), b"head", "{when}");
        assert_eq!(
            read_at(f, 4, 1 << 20),
            vec![0u8; 1 << 20],
            "hole after head {when}"
        );
        assert_eq!(
            read_at(f, CHUNK - 8, 16),
            vec![0u8; 16],
            "hole across a chunk boundary {when}"
        );
        let mid = read_at(f, 2 * CHUNK, 100_004);
        assert_eq!(&mid[..10], &[0u8; 10], "hole before mid1 {when}");
        assert_eq!(&mid[10..14], b"mid1", "{when}");
        assert!(
            mid[14..100_000].iter().all(|&b| b == 0),
            "hole between mids {when}"
        );
        assert_eq!(&mid[100_000..], b"mid2", "{when}");
        let tail = read_at(f, far - 100, 200);
        assert_eq!(tail.len(), 104, "short read at EOF {when}");
        assert_eq!(&tail[..100], &[0u8; 100], "hole before tail {when}");
        assert_eq!(&tail[100..], b"tail", "{when}");
    };
    check(&f, "before fsync");
    f.sync_all().unwrap();
    evict(&f);
    check(&f, "after fsync and eviction");
    drop(f);
    check(&File::open(&path).unwrap(), "after reopen");
}

#[test]
fn large_file_spanning_many_chunks() {
    let dir = m().fresh_dir("large");
    let path = dir.join("big");
    let mut data = random_bytes(20 << 20, 42);
    let mut f = create_rw(&path);
    // Odd-sized pieces so writes straddle every chunk boundary at a different offset.
    let pieces = [
        1usize,
        4095,
        65_537,
        (1 << 20) + 3,
        7,
        300_001,
        (4 << 20) + 1,
    ];
    let mut at = 0;
    for p in pieces.iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + p).min(data.len());
        f.write_all(&data[at..end]).unwrap();
        at = end;
    }
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), data.len() as u64, "size");
    evict(&f);
    assert_same_bytes(&fs::read(&path).unwrap(), &data, "20 MiB read back");

    // Overwrite across a chunk boundary after the chunks were uploaded.
    let patch = random_bytes(100_000, 43);
    let off = CHUNK as usize - 50_000;
    f.write_all_at(&patch, off as u64).unwrap();
    model_write(&mut data, off, &patch);
    f.sync_data().unwrap();
    evict(&f);

    let mut rng = rand::rngs::StdRng::seed_from_u64(44);
    for i in 0..300 {
        let offset = if i % 3 == 0 {
            // Near a chunk boundary.
            let b = rng.random_range(1..5) * CHUNK as usize;
            b - rng.random_range(0..5000)
        } else {
            rng.random_range(0..data.len())
        };
        let len = rng.random_range(1..200_000);
        let got = read_at(&f, offset as u64, len);
        let want = &data[offset..(offset + len).min(data.len())];
        assert_same_bytes(
            &got,
            want,
            &format!("random read {i}: {len} bytes at {offset}"),
        );
    }
    drop(f);
    assert_same_bytes(&fs::read(&path).unwrap(), &data, "whole file after patch");
}

#[test]
fn truncate_down_and_up_zeroes_the_cut_region() {
    let dir = m().fresh_dir("truncate");
    for fsync_between in [false, true] {
        let path = dir.join(format!("t-{fsync_between}"));
        let data = random_bytes(10 << 20, 7);
        let f = create_rw(&path);
        f.write_all_at(&data, 0).unwrap();
        let sync = |f: &File| {
            if fsync_between {
                f.sync_all().unwrap();
                evict(f);
            }
        };
        sync(&f);
        let what = |s: &str| format!("{s} (fsync between steps: {fsync_between})");

        // Down to the middle of chunk 1, then back up past the old end.
        let cut = CHUNK + 12_345;
        f.set_len(cut).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            cut,
            "{}",
            what("size after cut")
        );
        sync(&f);
        f.set_len(9 << 20).unwrap();
        sync(&f);
        let mut model = data[..cut as usize].to_vec();
        model.resize(9 << 20, 0);
        assert_same_bytes(
            &read_at(&f, 0, 10 << 20),
            &model,
            &what("cut then extended"),
        );

        // Write inside the zeroed region, extend by writing, truncate to 0, regrow.
        f.write_all_at(b"poke", 8 << 20).unwrap();
        model_write(&mut model, 8 << 20, b"poke");
        sync(&f);
        assert_same_bytes(&read_at(&f, 0, 10 << 20), &model, &what("poke in hole"));
        f.set_len(0).unwrap();
        sync(&f);
        assert!(
            read_at(&f, 0, 100).is_empty(),
            "{}",
            what("empty after set_len(0)")
        );
        f.set_len(100).unwrap();
        assert_eq!(
            read_at(&f, 0, 200),
            vec![0u8; 100],
            "{}",
            what("regrown to 100")
        );
        drop(f);
        assert_eq!(
            fs::read(&path).unwrap(),
            vec![0u8; 100],
            "{}",
            what("after close")
        );
    }
    // truncate(2) by path (through an O_WRONLY open in std) and on a file opened elsewhere.
    let path = dir.join("by-path");
    fs::write(&path, b"0123456789").unwrap();
    let reader = File::open(&path).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(
        read_at(&reader, 0, 100),
        b"0123",
        "other descriptor sees the truncation"
    );
}

#[test]
fn fsync_and_fdatasync_succeed_and_keep_data() {
    let dir = m().fresh_dir("fsync");
    let path = dir.join("f");
    let data = random_bytes(300_000, 9);
    let mut f = create_rw(&path);
    f.write_all(&data).unwrap();
    f.sync_data().expect("fdatasync after write");
    f.sync_all().expect("fsync with nothing new");
    f.write_all(b"more").unwrap();
    f.sync_all().expect("fsync after append");
    File::open(&dir)
        .unwrap()
        .sync_all()
        .expect("fsync of the directory");
    File::open(&path)
        .unwrap()
        .sync_all()
        .expect("fsync on a read-only descriptor");
    evict(&f);
    let mut want = data.clone();
    want.extend_from_slice(b"more");
    assert_same_bytes(&fs::read(&path).unwrap(), &want, "after fsyncs");
}

#[test]
fn unlinked_open_file_stays_usable_until_closed() {
    let dir = m().fresh_dir("unlink-open");
    let path = dir.join("victim");
    let f = create_rw(&path);
    let data = random_bytes(5 << 20, 11);
    f.write_all_at(&data, 0).unwrap();
    fs::remove_file(&path).unwrap();
    assert!(
        names(&dir).is_empty(),
        "unlinked name still listed: {:?}",
        names(&dir)
    );
    assert_errno(fs::metadata(&path), libc::ENOENT, "stat of unlinked name");
    assert_eq!(
        f.metadata().unwrap().nlink(),
        0,
        "fstat nlink of unlinked file"
    );
    // Still readable and writable through the descriptor.
    assert_same_bytes(
        &read_at(&f, 0, 6 << 20),
        &data,
        "read through fd after unlink",
    );
    f.write_all_at(b"after", 1000).unwrap();
    f.sync_all().expect("fsync of an unlinked file");
    assert_eq!(
        read_at(&f, 1000, 5),
        b"after",
        "write through fd after unlink"
    );
    // A new file under the same name is independent.
    fs::write(&path, b"new").unwrap();
    assert_eq!(
        read_at(&f, 0, 3),
        &data[..3],
        "old fd unaffected by the new file"
    );
    assert_eq!(fs::read(&path).unwrap(), b"new");
    drop(f);
    assert_eq!(
        names(&dir),
        ["victim"],
        "only the new file remains after close"
    );
}

// ---------------------------------------------------------------------------------------------
// Namespace.

#[test]
fn mkdir_and_rmdir_errors() {
    let dir = m().fresh_dir("mkdir");
    let a = dir.join("a");
    fs::create_dir(&a).unwrap();
    assert!(fs::metadata(&a).unwrap().is_dir());
    assert_errno(fs::create_dir(&a), libc::EEXIST, "mkdir existing");
    fs::write(a.join("f"), b"x").unwrap();
    assert_errno(fs::remove_dir(&a), libc::ENOTEMPTY, "rmdir non-empty");
    assert_errno(
        fs::remove_dir(a.join("f")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    assert_errno(
        fs::remove_dir(dir.join("missing")),
        libc::ENOENT,
        "rmdir missing",
    );
    assert_errno(
        fs::create_dir(dir.join("no/such")),
        libc::ENOENT,
        "mkdir in missing parent",
    );
    assert_errno(
        fs::create_dir(a.join("f/sub")),
        libc::ENOTDIR,
        "mkdir under a file",
    );
    fs::create_dir(a.join("sub")).unwrap();
    fs::create_dir(a.join("sub2")).unwrap();
    assert_eq!(
        fs::metadata(&a).unwrap().nlink(),
        4,
        "directory nlink = 2 + subdirectories"
    );
    fs::remove_file(a.join("f")).unwrap();
    fs::remove_dir(a.join("sub")).unwrap();
    fs::remove_dir(a.join("sub2")).unwrap();
    fs::remove_dir(&a).unwrap();
    assert_errno(fs::metadata(&a), libc::ENOENT, "stat removed dir");
    assert!(names(&dir).is_empty());
    // mkdir honours the mode (umask 022 in tests leaves 0750 alone).
    let b = dir.join("b");
    fs::DirBuilder::new().mode(0o750).create(&b).unwrap();
    assert_eq!(
        fs::metadata(&b).unwrap().mode() & 0o7777,
        0o750,
        "mkdir mode"
    );
}

#[test]
fn rename_files_and_directories() {
    let d = m().fresh_dir("rename");
    let p = |s: &str| d.join(s);
    fs::write(p("a"), b"A").unwrap();
    fs::rename(p("a"), p("b")).unwrap();
    assert_errno(fs::metadata(p("a")), libc::ENOENT, "old name after rename");
    assert_eq!(fs::read(p("b")).unwrap(), b"A");

    // Across directories, replacing an existing file.
    fs::create_dir(p("x")).unwrap();
    fs::create_dir(p("y")).unwrap();
    fs::write(p("x/d"), b"D").unwrap();
    fs::rename(p("b"), p("x/d")).unwrap();
    assert_eq!(
        fs::read(p("x/d")).unwrap(),
        b"A",
        "replaced target has source contents"
    );
    assert_eq!(names(&p("x")), ["d"]);
    assert_eq!(names(&d), ["x", "y"]);

    // Replacing a file that is open: the descriptor keeps the old contents.
    fs::write(p("y/t"), b"old target").unwrap();
    let open_target = File::open(p("y/t")).unwrap();
    fs::write(p("y/s"), b"new").unwrap();
    fs::rename(p("y/s"), p("y/t")).unwrap();
    assert_eq!(
        read_at(&open_target, 0, 100),
        b"old target",
        "open replaced file"
    );
    assert_eq!(fs::read(p("y/t")).unwrap(), b"new");
    // The renamed file's own open descriptor follows it.
    let moving = File::open(p("y/t")).unwrap();
    fs::rename(p("y/t"), p("x/moved")).unwrap();
    assert_eq!(read_at(&moving, 0, 100), b"new");

    // A directory with contents, across directories.
    fs::create_dir_all(p("x/sub/deep")).unwrap();
    fs::write(p("x/sub/deep/f"), b"F").unwrap();
    fs::rename(p("x/sub"), p("y/sub2")).unwrap();
    assert_eq!(
        fs::read(p("y/sub2/deep/f")).unwrap(),
        b"F",
        "child of renamed dir"
    );
    assert_errno(fs::metadata(p("x/sub")), libc::ENOENT, "old dir name");
    assert_eq!(
        fs::metadata(p("x")).unwrap().nlink(),
        2,
        "source parent lost a subdir"
    );
    assert_eq!(
        fs::metadata(p("y")).unwrap().nlink(),
        3,
        "target parent gained a subdir"
    );

    // Directory over an empty directory: allowed. Over a non-empty one: ENOTEMPTY.
    fs::create_dir(p("e1")).unwrap();
    fs::create_dir(p("e2")).unwrap();
    fs::write(p("e1/f"), b"1").unwrap();
    fs::rename(p("e1"), p("e2")).unwrap();
    assert_eq!(fs::read(p("e2/f")).unwrap(), b"1");
    fs::create_dir(p("e3")).unwrap();
    assert_errno(
        fs::rename(p("e3"), p("e2")),
        libc::ENOTEMPTY,
        "dir over non-empty dir",
    );

    // Kind mismatches, missing source, a directory into itself.
    fs::write(p("file"), b"f").unwrap();
    assert_errno(
        fs::rename(p("file"), p("e3")),
        libc::EISDIR,
        "file over dir",
    );
    assert_errno(
        fs::rename(p("e3"), p("file")),
        libc::ENOTDIR,
        "dir over file",
    );
    assert_errno(
        fs::rename(p("nope"), p("zz")),
        libc::ENOENT,
        "rename missing source",
    );
    fs::create_dir(p("e2/inner")).unwrap();
    assert_errno(
        fs::rename(p("e2"), p("e2/inner/x")),
        libc::EINVAL,
        "dir into own subdir",
    );
    assert_errno(
        fs::rename(p("e2"), p("e2/inner")),
        libc::EINVAL,
        "dir onto own subdir",
    );

    // Renaming onto itself, and onto another hard link of the same file, changes nothing.
    fs::rename(p("file"), p("file")).unwrap();
    fs::hard_link(p("file"), p("file2")).unwrap();
    fs::rename(p("file"), p("file2")).unwrap();
    assert_eq!(
        fs::read(p("file")).unwrap(),
        b"f",
        "rename onto own hard link is a no-op"
    );
    assert_eq!(fs::metadata(p("file2")).unwrap().nlink(), 2);

    // renameat2 flags.
    fs::write(p("n1"), b"N1").unwrap();
    fs::write(p("n2"), b"N2").unwrap();
    assert_errno(
        renameat2(&p("n1"), &p("n2"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto an existing file",
    );
    assert_eq!(
        fs::read(p("n2")).unwrap(),
        b"N2",
        "NOREPLACE left the target alone"
    );
    renameat2(&p("n1"), &p("n3"), libc::RENAME_NOREPLACE).expect("NOREPLACE to a free name");
    assert_eq!(fs::read(p("n3")).unwrap(), b"N1");
    renameat2(&p("n2"), &p("n3"), libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE files");
    assert_eq!(fs::read(p("n2")).unwrap(), b"N1", "exchanged");
    assert_eq!(fs::read(p("n3")).unwrap(), b"N2", "exchanged");
    renameat2(&p("n2"), &p("y"), libc::RENAME_EXCHANGE).expect("RENAME_EXCHANGE file and dir");
    assert_eq!(
        fs::read(p("y")).unwrap(),
        b"N1",
        "file now under the dir's name"
    );
    assert_eq!(
        fs::read(p("n2/sub2/deep/f")).unwrap(),
        b"F",
        "dir now under the file's name"
    );
    assert_errno(
        renameat2(&p("n3"), &p("absent"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
        "RENAME_EXCHANGE with a missing target",
    );
}

#[test]
fn readdir_of_100k_entries() {
    const N: usize = 100_000;
    let dir = m().fresh_dir("bigdir");
    let name = |i: usize| format!("entry-{i:06}-{}", "x".repeat(i % 17));
    std::thread::scope(|s| {
        for part in 0..2 {
            let dir = &dir;
            s.spawn(move || {
                for i in (part..N).step_by(2) {
                    File::create_new(dir.join(name(i)))
                        .unwrap_or_else(|e| panic!("create entry {i}: {e}"));
                }
            });
        }
    });
    let mut seen = HashSet::with_capacity(N);
    let mut listed = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.expect("readdir entry");
        listed += 1;
        let meta = entry.metadata().expect("stat of a listed entry");
        assert!(
            meta.is_file() && meta.len() == 0,
            "{:?}: {meta:?}",
            entry.file_name()
        );
        let n = entry.file_name().into_string().expect("utf-8 name");
        assert!(seen.insert(n.clone()), "{n} listed twice");
    }
    assert_eq!(listed, N, "readdir returned {listed} entries");
    let missing: Vec<String> = (0..N)
        .map(name)
        .filter(|n| !seen.contains(n))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing from readdir: {missing:?}...");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ls -f '{}' | wc -l", dir.display()))
        .output()
        .unwrap();
    assert_eq!(
        assert_ok(&out, "ls -f | wc -l").trim(),
        (N + 2).to_string(),
        "ls -f lists every entry plus . and .."
    );
}

/// A listing carries each entry's attributes to the kernel (READDIRPLUS), which answers the
/// stats that follow from them: they must be the entries' current attributes, also of a file
/// open with data not yet closed, of one changed just before, of a hard link and of a symlink.
#[test]
fn listings_carry_each_entrys_current_attributes() {
    let dir = m().fresh_dir("listing-attrs");
    let mut want: Vec<(String, u64, u32, u64)> = Vec::new(); // name, size, mode & 0o7777, nlink
    for i in 0..40u64 {
        let name = format!("file-{i:02}");
        let data = random_bytes((i * 997) as usize, i);
        fs::write(dir.join(&name), &data).unwrap();
        let mode = 0o600 | (i as u32 % 8) << 3;
        fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(mode)).unwrap();
        want.push((name, data.len() as u64, mode, 1));
    }
    // Open, written, not closed: the listing has the size the writes made.
    let mut open = create_rw(&dir.join("open"));
    open.write_all(&random_bytes(70_000, 99)).unwrap();
    open.set_permissions(fs::Permissions::from_mode(0o604))
        .unwrap();
    want.push(("open".into(), 70_000, 0o604, 1));
    // Grown and chmodded just before the listing.
    fs::write(dir.join("file-03"), random_bytes(5_000, 3)).unwrap();
    fs::set_permissions(dir.join("file-03"), fs::Permissions::from_mode(0o640)).unwrap();
    want[3] = ("file-03".into(), 5_000, 0o640, 1);
    fs::hard_link(dir.join("file-05"), dir.join("link-05")).unwrap();
    want[5].3 = 2;
    want.push(("link-05".into(), want[5].1, want[5].2, 2));
    std::os::unix::fs::symlink("file-07", dir.join("sym")).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    fs::set_permissions(dir.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    // Past the kernel's 1 s attribute timeout, so what the stats see comes from the listing
    // (or, without READDIRPLUS, from lookups).
    std::thread::sleep(Duration::from_millis(1_200));

    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        assert_eq!(
            meta.ino(),
            entry.ino(),
            "{name}: the listing's inode number"
        );
        match name.as_str() {
            "sym" => {
                assert!(meta.file_type().is_symlink(), "{name}: {meta:?}");
                assert_eq!(meta.len(), "file-07".len() as u64, "{name}");
            }
            "sub" => {
                assert!(meta.is_dir(), "{name}: {meta:?}");
                assert_eq!(meta.mode() & 0o7777, 0o750, "{name}");
            }
            _ => {
                let (_, size, mode, nlink) = want.iter().find(|w| w.0 == name).unwrap();
                assert!(meta.is_file(), "{name}: {meta:?}");
                assert_eq!(meta.len(), *size, "{name}: size");
                assert_eq!(meta.mode() & 0o7777, *mode, "{name}: mode");
                assert_eq!(meta.nlink(), *nlink, "{name}: link count");
                assert_eq!(meta.blocks(), size.div_ceil(512), "{name}: blocks");
            }
        }
        seen += 1;
    }
    assert_eq!(seen, want.len() + 2, "entries listed");
    drop(open);
}

#[test]
fn symlinks() {
    let d = m().fresh_dir("symlink");
    fs::write(d.join("target"), b"T").unwrap();
    std::os::unix::fs::symlink("target", d.join("rel")).unwrap();
    std::os::unix::fs::symlink(d.join("target"), d.join("abs")).unwrap();
    let long = "l".repeat(200) + "/" + &"o".repeat(200) + "/" + &"n".repeat(200);
    std::os::unix::fs::symlink(&long, d.join("long")).unwrap();
    std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
    assert_eq!(fs::read_link(d.join("rel")).unwrap(), Path::new("target"));
    assert_eq!(fs::read_link(d.join("abs")).unwrap(), d.join("target"));
    assert_eq!(
        fs::read_link(d.join("long")).unwrap(),
        Path::new(&long),
        "602-byte target"
    );
    let meta = fs::symlink_metadata(d.join("rel")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(meta.len(), 6, "symlink size is the target length");
    assert_eq!(
        fs::read(d.join("rel")).unwrap(),
        b"T",
        "read through relative symlink"
    );
    assert_eq!(
        fs::read(d.join("abs")).unwrap(),
        b"T",
        "read through absolute symlink"
    );
    fs::write(d.join("rel"), b"via link").unwrap();
    assert_eq!(
        fs::read(d.join("target")).unwrap(),
        b"via link",
        "write through symlink"
    );
    assert_errno(
        fs::metadata(d.join("dangling")),
        libc::ENOENT,
        "stat dangling symlink",
    );
    assert_errno(
        fs::read_link(d.join("target")),
        libc::EINVAL,
        "readlink of a file",
    );
    assert_errno(
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(d.join("rel")),
        libc::ELOOP,
        "O_NOFOLLOW on a symlink",
    );
    assert_errno(
        std::os::unix::fs::symlink("x", d.join("rel")),
        libc::EEXIST,
        "symlink over an existing name",
    );
    // Creating through a dangling symlink creates its target.
    fs::write(d.join("dangling"), b"made").unwrap();
    assert_eq!(fs::read(d.join("nowhere")).unwrap(), b"made");
    fs::remove_file(d.join("rel")).unwrap();
    assert_eq!(
        fs::read(d.join("target")).unwrap(),
        b"via link",
        "unlinking a link"
    );
}

#[test]
fn hard_links_count_names() {
    let d = m().fresh_dir("hardlink");
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("a"), b"one").unwrap();
    fs::hard_link(d.join("a"), d.join("b")).unwrap();
    fs::hard_link(d.join("a"), d.join("sub/c")).unwrap();
    let ino = fs::metadata(d.join("a")).unwrap().ino();
    for n in ["a", "b", "sub/c"] {
        let meta = fs::metadata(d.join(n)).unwrap();
        assert_eq!(meta.nlink(), 3, "nlink of {n}");
        assert_eq!(meta.ino(), ino, "inode of {n}");
    }
    fs::write(d.join("b"), b"two!").unwrap();
    assert_eq!(
        fs::read(d.join("sub/c")).unwrap(),
        b"two!",
        "write via one name, read via other"
    );
    fs::remove_file(d.join("a")).unwrap();
    assert_eq!(
        fs::metadata(d.join("b")).unwrap().nlink(),
        2,
        "nlink after unlink"
    );
    fs::rename(d.join("b"), d.join("sub/b")).unwrap();
    assert_eq!(
        fs::metadata(d.join("sub/c")).unwrap().nlink(),
        2,
        "nlink after rename"
    );
    fs::remove_file(d.join("sub/b")).unwrap();
    let meta = fs::metadata(d.join("sub/c")).unwrap();
    assert_eq!(meta.nlink(), 1, "last name");
    assert_eq!(fs::read(d.join("sub/c")).unwrap(), b"two!");
    assert_errno(
        fs::hard_link(d.join("sub"), d.join("dirlink")),
        libc::EPERM,
        "link to dir",
    );
    fs::write(d.join("x"), b"").unwrap();
    assert_errno(
        fs::hard_link(d.join("x"), d.join("sub/c")),
        libc::EEXIST,
        "link onto name",
    );
    assert_errno(
        fs::hard_link(d.join("gone"), d.join("y")),
        libc::ENOENT,
        "link to missing",
    );
}

// ---------------------------------------------------------------------------------------------
// Metadata.

#[test]
fn chmod_chown_and_timestamps() {
    let d = m().fresh_dir("attrs");
    let f = d.join("f");
    fs::write(&f, b"data").unwrap();
    let started = SystemTime::now() - Duration::from_secs(2);

    for mode in [0o640, 0o4755, 0o000, 0o1777, 0o644] {
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().mode() & 0o7777,
            mode,
            "chmod {mode:o}"
        );
    }
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&f).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "chown");
    std::os::unix::fs::chown(&f, None, Some(42)).unwrap();
    let meta = fs::metadata(&f).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 42), "chown with uid -1");
    std::os::unix::fs::lchown(d.join("f"), Some(0), Some(0)).unwrap();

    // Exact timestamps with nanoseconds, on a file and on a directory.
    let atime = UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let mtime = UNIX_EPOCH + Duration::new(1_234_567_890, 987_654_321);
    for path in [&f, &d] {
        File::open(path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
            .unwrap();
        let meta = fs::metadata(path).unwrap();
        let what = path.display();
        assert_eq!(
            (meta.atime(), meta.atime_nsec()),
            (1_000_000_000, 123_456_789),
            "atime {what}"
        );
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_234_567_890, 987_654_321),
            "mtime {what}"
        );
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        assert!(
            ctime >= started,
            "ctime of {what} not updated by utimens: {ctime:?}"
        );
    }
    // Writing and truncating bump mtime to now.
    let w = OpenOptions::new().write(true).open(&f).unwrap();
    w.write_all_at(b"X", 0).unwrap();
    drop(w);
    let after_write = fs::metadata(&f).unwrap().modified().unwrap();
    assert!(after_write >= started, "mtime after write: {after_write:?}");
    File::open(&f)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(1)
        .unwrap();
    let after_trunc = fs::metadata(&f).unwrap().modified().unwrap();
    assert!(
        after_trunc >= started,
        "mtime after truncate: {after_trunc:?}"
    );
    // Creating an entry bumps the directory's mtime.
    File::open(&d)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    fs::write(d.join("new"), b"").unwrap();
    let dir_mtime = fs::metadata(&d).unwrap().modified().unwrap();
    assert!(
        dir_mtime >= started,
        "dir mtime after create: {dir_mtime:?}"
    );
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let d = m().fresh_dir("perms");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    let path = |n: &str| d.join(n).to_str().unwrap().to_owned();
    fs::write(d.join("public"), b"readable").unwrap();
    fs::set_permissions(d.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(d.join("secret"), b"hidden").unwrap();
    fs::set_permissions(d.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(d.join("closed")).unwrap();
    fs::set_permissions(d.join("closed"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(d.join("open")).unwrap();
    fs::set_permissions(d.join("open"), fs::Permissions::from_mode(0o777)).unwrap();

    // Positive control: the other user can reach the mount (allow_other) and read 0644.
    let out = as_nobody("cat", &[&path("public")]);
    assert_eq!(assert_ok(&out, "nobody: cat 0644 file"), "readable");

    assert_tool_errno(
        &as_nobody("cat", &[&path("secret")]),
        libc::EACCES,
        "nobody reads 0600",
    );
    assert_tool_errno(
        &as_nobody("chmod", &["777", &path("public")]),
        libc::EPERM,
        "nobody chmods root's file",
    );
    assert_tool_errno(
        &as_nobody("touch", &[&(path("closed") + "/x")]),
        libc::EACCES,
        "nobody creates in a 0755 root dir",
    );
    assert_tool_errno(
        &sh_as_nobody(&format!("echo x >> '{}'", path("public"))),
        libc::EACCES,
        "nobody writes a 0644 root file",
    );
    assert_tool_errno(
        &as_nobody("rm", &["-f", &path("public")]),
        libc::EACCES,
        "nobody unlinks in a 0755 root dir",
    );
    assert_eq!(
        fs::read(d.join("public")).unwrap(),
        b"readable",
        "unchanged"
    );

    // In a 0777 dir the other user creates files it owns, and may chmod them.
    let mine = path("open") + "/mine";
    assert_ok(
        &as_nobody("touch", &[&mine]),
        "nobody creates in a 0777 dir",
    );
    assert_ok(
        &as_nobody("chmod", &["600", &mine]),
        "nobody chmods its own file",
    );
    let meta = fs::metadata(&mine).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "owner of a file nobody created"
    );
    assert_eq!(meta.mode() & 0o7777, 0o600);
    // Root still reads everything (default_permissions lets root through).
    assert_eq!(fs::read(&mine).unwrap(), b"");
}

#[test]
fn chowns_drop_setuid_setgid_and_capabilities_of_all_but_directories() {
    // As Linux's chown does on a local filesystem, which the mount does itself under
    // FUSE_HANDLE_KILLPRIV_V2 (the kernel flags the chown and leaves the mode alone): a new
    // owner or group drops setuid, setgid if group-executable, and the capabilities xattr,
    // whoever makes the change; a directory keeps its mode.
    let d = m().fresh_dir("chown-killpriv");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let f = d.join("tool");
    fs::write(&f, b"#!/bin/sh\n").unwrap();

    chmod(&f, 0o6755);
    std::os::unix::fs::chown(&f, Some(NOBODY), None).unwrap();
    assert_eq!(mode(&f), 0o0755, "a new owner drops setuid and setgid");
    chmod(&f, 0o6745);
    std::os::unix::fs::chown(&f, None, Some(NOBODY)).unwrap();
    assert_eq!(
        mode(&f),
        0o2745,
        "a new group: setgid without group execute stays"
    );
    assert_eq!(fs::metadata(&f).unwrap().gid(), NOBODY);

    // struct vfs_cap_data, revision 2: effective, permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    setxattr(&f, "security.capability", &cap, 0).unwrap();
    std::os::unix::fs::chown(&f, Some(0), None).unwrap();
    assert_errno(
        getxattr(&f, "security.capability"),
        libc::ENODATA,
        "a chown drops the capabilities",
    );

    let sub = d.join("shared");
    fs::create_dir(&sub).unwrap();
    chmod(&sub, 0o2775);
    std::os::unix::fs::chown(&sub, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_eq!(mode(&sub), 0o2775, "a directory keeps setgid");
}

#[test]
fn writes_and_truncations_drop_setuid_setgid_and_capabilities() {
    // As Linux does for a local file (`file_remove_privs`), which the mount does itself
    // (FUSE_HANDLE_KILLPRIV_V2): a write or truncation by a caller without CAP_FSETID drops
    // setuid, and setgid if group-executable; any write drops the capabilities xattr.
    let d = m().fresh_dir("killpriv");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    let f = d.join("tool");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let append = format!("echo more >> '{}'", f.display());
    let truncate = format!("truncate -s 3 '{}'", f.display());

    chmod(&f, 0o6777);
    assert_ok(&sh_as_nobody(&append), "nobody appends to a 6777 file");
    assert_eq!(
        mode(&f),
        0o0777,
        "a write by another user drops setuid and setgid"
    );
    assert!(
        fs::read(&f).unwrap().ends_with(b"more\n"),
        "and the write went in"
    );
    chmod(&f, 0o6767);
    assert_ok(&sh_as_nobody(&append), "nobody appends to a 6767 file");
    assert_eq!(mode(&f), 0o2767, "setgid without group execute stays");
    chmod(&f, 0o6777);
    assert_ok(&sh_as_nobody(&truncate), "nobody truncates a 6777 file");
    assert_eq!(
        mode(&f),
        0o0777,
        "a truncation by another user drops them too"
    );
    assert_eq!(fs::metadata(&f).unwrap().len(), 3);

    chmod(&f, 0o6755);
    let mut w = OpenOptions::new().append(true).open(&f).unwrap();
    w.write_all(b"root\n").unwrap();
    drop(w);
    assert_eq!(mode(&f), 0o6755, "root (CAP_FSETID) keeps them");

    // struct vfs_cap_data, revision 2: effective, permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    setxattr(&f, "security.capability", &cap, 0).unwrap();
    assert_eq!(getxattr(&f, "security.capability").unwrap(), cap);
    let mut w = OpenOptions::new().append(true).open(&f).unwrap();
    w.write_all(b"again\n").unwrap();
    drop(w);
    assert_errno(
        getxattr(&f, "security.capability"),
        libc::ENODATA,
        "a write, even by root, drops the capabilities",
    );
    assert_eq!(mode(&f), 0o6755);
}

#[test]
fn extended_attributes() {
    let d = m().fresh_dir("xattr");
    let f = d.join("f");
    fs::write(&f, b"x").unwrap();
    for path in [&f, &d] {
        let what = path.display();
        assert_errno(
            getxattr(path, "user.none"),
            libc::ENODATA,
            "getxattr missing",
        );
        let value = b"v\0\x01\xffwith a NUL".to_vec();
        setxattr(path, "user.walrus", &value, 0).unwrap();
        assert_eq!(
            getxattr(path, "user.walrus").unwrap(),
            value,
            "round trip on {what}"
        );
        assert_eq!(
            getxattr_cap(path, "user.walrus", 0).unwrap().len(),
            value.len(),
            "size query"
        );
        assert_errno(
            getxattr_cap(path, "user.walrus", 3),
            libc::ERANGE,
            "buffer too small",
        );
        assert_errno(
            setxattr(path, "user.walrus", b"again", libc::XATTR_CREATE),
            libc::EEXIST,
            "XATTR_CREATE on an existing attribute",
        );
        assert_errno(
            setxattr(path, "user.none", b"v", libc::XATTR_REPLACE),
            libc::ENODATA,
            "XATTR_REPLACE on a missing attribute",
        );
        setxattr(path, "user.walrus", b"replaced", libc::XATTR_REPLACE).unwrap();
        assert_eq!(getxattr(path, "user.walrus").unwrap(), b"replaced");
        let big = random_bytes(4000, 5);
        setxattr(path, "user.big", &big, 0).unwrap();
        setxattr(path, "user.empty", b"", libc::XATTR_CREATE).unwrap();
        assert_eq!(getxattr(path, "user.big").unwrap(), big);
        assert_eq!(getxattr(path, "user.empty").unwrap(), b"", "empty value");
        assert_eq!(
            list_user_xattrs(path).unwrap(),
            ["user.big", "user.empty", "user.walrus"],
            "listxattr on {what}"
        );
        removexattr(path, "user.walrus").unwrap();
        assert_errno(
            getxattr(path, "user.walrus"),
            libc::ENODATA,
            "get after remove",
        );
        assert_errno(
            removexattr(path, "user.walrus"),
            libc::ENODATA,
            "remove missing",
        );
        assert_eq!(list_user_xattrs(path).unwrap(), ["user.big", "user.empty"]);
    }
    // POSIX ACLs: `cp -a` and `tar` set permission bits through system.posix_acl_access when
    // the filesystem accepts it. Storing it as an opaque attribute silently loses the mode; a
    // filesystem without ACLs must refuse it (EOPNOTSUPP), so tools fall back to chmod.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    match setxattr(&f, "system.posix_acl_access", &posix_acl_for_mode(0o644), 0) {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "setting an ACL failed with {e}"
        ),
        Ok(()) => assert_eq!(
            format!("{:o}", fs::metadata(&f).unwrap().mode() & 0o777),
            "644",
            "system.posix_acl_access was accepted but the mode bits did not follow it"
        ),
    }
    // Attributes follow the inode through rename and hard links.
    fs::rename(&f, d.join("g")).unwrap();
    fs::hard_link(d.join("g"), d.join("h")).unwrap();
    assert_eq!(getxattr(&d.join("h"), "user.empty").unwrap(), b"");
}

#[test]
fn statfs_is_sane() {
    let st = statvfs(m().path());
    assert!(st.f_bsize > 0, "f_bsize {}", st.f_bsize);
    assert!(st.f_frsize > 0, "f_frsize {}", st.f_frsize);
    assert!(st.f_blocks > 0, "f_blocks {}", st.f_blocks);
    assert!(
        st.f_bfree <= st.f_blocks,
        "f_bfree {} > f_blocks {}",
        st.f_bfree,
        st.f_blocks
    );
    assert!(
        st.f_bavail <= st.f_blocks,
        "f_bavail {} > f_blocks {}",
        st.f_bavail,
        st.f_blocks
    );
    assert!(
        (255..=4096).contains(&st.f_namemax),
        "f_namemax {} (expected 255, the Linux NAME_MAX)",
        st.f_namemax
    );
}

#[test]
fn name_and_type_errors() {
    let d = m().fresh_dir("errors");
    let max = "n".repeat(255);
    let too_long = "n".repeat(256);
    fs::write(d.join(&max), b"ok").expect("a 255-byte name is fine");
    assert_eq!(fs::read(d.join(&max)).unwrap(), b"ok");
    assert_errno(
        fs::write(d.join(&too_long), b""),
        libc::ENAMETOOLONG,
        "create 256-byte name",
    );
    assert_errno(
        fs::create_dir(d.join(&too_long)),
        libc::ENAMETOOLONG,
        "mkdir 256-byte name",
    );
    assert_errno(
        fs::metadata(d.join(&too_long)),
        libc::ENAMETOOLONG,
        "stat 256-byte name",
    );
    assert_errno(
        fs::rename(d.join(&max), d.join(&too_long)),
        libc::ENAMETOOLONG,
        "rename to 256-byte name",
    );

    fs::create_dir(d.join("dir")).unwrap();
    fs::write(d.join("file"), b"f").unwrap();
    assert_errno(
        OpenOptions::new().write(true).open(d.join("dir")),
        libc::EISDIR,
        "open a dir for writing",
    );
    assert_errno(fs::remove_file(d.join("dir")), libc::EISDIR, "unlink a dir");
    let mut buf = [0u8; 8];
    assert_errno(
        File::open(d.join("dir")).unwrap().read(&mut buf),
        libc::EISDIR,
        "read a dir",
    );
    assert_errno(
        File::open(d.join("file/x")),
        libc::ENOTDIR,
        "open through a file",
    );
    assert_errno(
        fs::write(d.join("file/x"), b""),
        libc::ENOTDIR,
        "create through a file",
    );
    assert_errno(
        fs::read_dir(d.join("file")),
        libc::ENOTDIR,
        "readdir of a file",
    );
    assert_errno(File::open(d.join("missing")), libc::ENOENT, "open missing");
    assert_errno(
        fs::remove_file(d.join("missing")),
        libc::ENOENT,
        "unlink missing",
    );
}

#[test]
fn open_flags_trunc_excl_and_mode() {
    let d = m().fresh_dir("flags");
    let f = d.join("f");
    fs::write(&f, random_bytes(6 << 20, 3)).unwrap();
    let t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    assert_eq!(t.metadata().unwrap().len(), 0, "O_TRUNC empties the file");
    t.write_all_at(b"new", 0).unwrap();
    drop(t);
    assert_eq!(fs::read(&f).unwrap(), b"new", "no old bytes after O_TRUNC");
    assert_errno(
        OpenOptions::new().write(true).create_new(true).open(&f),
        libc::EEXIST,
        "O_CREAT|O_EXCL on an existing file",
    );
    std::os::unix::fs::symlink("f", d.join("link")).unwrap();
    assert_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(d.join("link")),
        libc::EEXIST,
        "O_EXCL on a symlink",
    );
    let g = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(d.join("g"))
        .unwrap();
    drop(g);
    assert_eq!(
        fs::metadata(d.join("g")).unwrap().mode() & 0o7777,
        0o640,
        "O_CREAT mode"
    );
}

#[test]
fn fifo_via_mknod() {
    let d = m().fresh_dir("fifo");
    let p = d.join("pipe");
    mkfifo(&p, 0o640).unwrap();
    let meta = fs::symlink_metadata(&p).unwrap();
    assert!(
        meta.file_type().is_fifo(),
        "mkfifo made {:?}",
        meta.file_type()
    );
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_errno(mkfifo(&p, 0o640), libc::EEXIST, "mkfifo existing");
    // Pipe I/O is the kernel's; opening it must still work on this filesystem.
    let mut pipe = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    pipe.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    pipe.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(names(&d), ["pipe"]);
}

#[test]
fn shared_mmap_writes_reach_the_file() {
    let d = m().fresh_dir("mmap");
    let p = d.join("mapped");
    let data = random_bytes((5 << 20) + 4321, 77);
    let f = create_rw(&p);
    f.set_len(data.len() as u64).unwrap();
    write_through_mmap(&f, &data);
    drop(f);
    assert_same_bytes(&fs::read(&p).unwrap(), &data, "read after munmap + close");
    evict_path(&p);
    assert_same_bytes(&fs::read(&p).unwrap(), &data, "read after eviction");
}

// ---------------------------------------------------------------------------------------------
// Persistence and read-only mounts: an own mount.

/// Builds a tree exercising every kind of state the index keeps; returns the names that have
/// a `user.keep` xattr.
fn build_rich_tree(root: &Path) -> Vec<PathBuf> {
    let p = |s: &str| root.join(s);
    fs::write(p("hello.txt"), b"hello, walrus\n").unwrap();
    let mut big = random_bytes(9 << 20, 1);
    fs::write(p("big"), &big).unwrap();
    let patch = random_bytes(10_000, 2);
    let f = OpenOptions::new().write(true).open(p("big")).unwrap();
    f.write_all_at(&patch, CHUNK - 5000).unwrap();
    model_write(&mut big, CHUNK as usize - 5000, &patch);
    drop(f);
    let f = create_rw(&p("sparse"));
    f.write_all_at(b"end", 3 * CHUNK).unwrap();
    drop(f);
    fs::create_dir_all(p("d/e/f")).unwrap();
    fs::write(p("d/e/f/leaf"), b"leaf").unwrap();
    fs::write(p("empty"), b"").unwrap();
    fs::create_dir(p("emptydir")).unwrap();
    std::os::unix::fs::symlink("hello.txt", p("link")).unwrap();
    std::os::unix::fs::symlink("d/e/missing", p("dangling")).unwrap();
    fs::hard_link(p("hello.txt"), p("d/hello.hard")).unwrap();
    fs::set_permissions(p("big"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(p("d/e"), fs::Permissions::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(p("d/e/f/leaf"), Some(1234), Some(4321)).unwrap();
    File::open(p("hello.txt"))
        .unwrap()
        .set_times(
            fs::FileTimes::new()
                .set_modified(UNIX_EPOCH + Duration::new(1_500_000_000, 5))
                .set_accessed(UNIX_EPOCH + Duration::new(1_500_000_001, 7)),
        )
        .unwrap();
    let mapped = create_rw(&p("mapped"));
    let mdata = random_bytes(200_000, 3);
    mapped.set_len(mdata.len() as u64).unwrap();
    write_through_mmap(&mapped, &mdata);
    drop(mapped);
    mkfifo(&p("pipe"), 0o600).unwrap();
    let xattr_paths = vec![p("hello.txt"), p("d")];
    for path in &xattr_paths {
        setxattr(path, "user.keep", b"kept", 0).unwrap();
    }
    // A file unlinked after writing leaves no trace.
    fs::write(p("gone"), b"gone").unwrap();
    fs::remove_file(p("gone")).unwrap();
    assert_same_bytes(&fs::read(p("big")).unwrap(), &big, "big before remount");
    xattr_paths
}

#[test]
fn data_persists_across_remount_and_read_only_mount_refuses_writes() {
    let m = Mount::new();
    let root = m.path().to_path_buf();
    let xattr_paths = build_rich_tree(&root);
    let before = snapshot(&root);

    m.remount();
    let after = snapshot(&root);
    assert_same_tree(&after, &before, Compare::ALL, "after unmount + remount");
    for path in &xattr_paths {
        assert_eq!(
            getxattr(path, "user.keep").unwrap(),
            b"kept",
            "xattr of {}",
            path.display()
        );
    }
    assert_eq!(
        fs::metadata(root.join("hello.txt")).unwrap().atime(),
        1_500_000_001,
        "atime persists"
    );

    m.remount_with(Options {
        read_only: true,
        ..Options::default()
    });
    assert_same_tree(&snapshot(&root), &before, Compare::ALL, "read-only mount");
    let rofs = |r: io::Result<()>, what: &str| assert_errno(r, libc::EROFS, what);
    rofs(fs::write(root.join("newfile"), b"x"), "create");
    rofs(
        OpenOptions::new()
            .write(true)
            .open(root.join("hello.txt"))
            .map(drop),
        "open existing for write",
    );
    rofs(fs::create_dir(root.join("newdir")), "mkdir");
    rofs(fs::remove_file(root.join("empty")), "unlink");
    rofs(fs::remove_dir(root.join("emptydir")), "rmdir");
    rofs(
        fs::rename(root.join("empty"), root.join("empty2")),
        "rename",
    );
    rofs(
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    rofs(
        std::os::unix::fs::chown(root.join("empty"), Some(1), Some(1)),
        "chown",
    );
    rofs(std::os::unix::fs::symlink("x", root.join("sym")), "symlink");
    rofs(fs::hard_link(root.join("empty"), root.join("hard")), "link");
    rofs(setxattr(&root.join("empty"), "user.x", b"v", 0), "setxattr");
    rofs(
        removexattr(&root.join("hello.txt"), "user.keep"),
        "removexattr",
    );
    rofs(mkfifo(&root.join("fifo2"), 0o600), "mkfifo");
    rofs(
        File::open(root.join("empty"))
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(UNIX_EPOCH)),
        "utimens",
    );
    assert_same_tree(
        &snapshot(&root),
        &before,
        Compare::ALL,
        "read-only mount after refusals",
    );

    // Read-write again: still intact, and writable.
    m.remount();
    assert_same_tree(
        &snapshot(&root),
        &before,
        Compare::ALL,
        "read-write after read-only",
    );
    fs::write(root.join("newfile"), b"writable again").unwrap();
    assert_eq!(fs::read(root.join("newfile")).unwrap(), b"writable again");
}
