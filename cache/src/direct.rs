//! Writing new files around the page cache (`O_DIRECT`), for data written once and read back
//! rarely: a storage node's slivers, the mount's on-disk chunk cache.
//!
//! Through the page cache, every byte is first copied into a freshly allocated cache page,
//! written back later, and the page then sits in memory pushing out what is worth caching;
//! for the chunk cache it even duplicates what the kernel already caches of the file itself,
//! in plaintext. That copy into fresh pages was the largest cost of a node while a mount wrote
//! (31% of its CPU in `copy_folio_from_iter_atomic`), and of the mount while it filled its
//! chunk cache during a cold read (20% with two nodes down). On the development VM a GiB
//! written through the page cache costs 2.3-2.8 s of kernel CPU, against 0.13 s with
//! `O_DIRECT` (`dd` of 1 GiB with and without `oflag=direct`).
//!
//! `O_DIRECT` wants the buffer, the file offset and the length aligned to the device's logical
//! block size; 4 KiB covers every common device. The data is copied piece by piece into an
//! aligned buffer kept per thread (a copy within the CPU cache, far cheaper than the page
//! cache's), the last piece padded with zeros, and the file then cut to its true length.
//!
//! Durability is the caller's, as with a buffered write: `O_DIRECT` alone does not make the
//! file's size or the device's cache durable, so a caller that needs that still syncs.
//!
//! A filesystem that refuses `O_DIRECT` (`EINVAL`: tmpfs before Linux 6.6, some FUSE and
//! network filesystems) gets the buffered write, for this file and, from then on, every file
//! of the same [`DirectWrites`].

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of buffer, offsets and lengths for `O_DIRECT`: a multiple of any common logical
/// block size (512 bytes or 4 KiB).
pub const ALIGN: usize = 4096;
/// Files smaller than this are written through the page cache (a node's metadata and the
/// slivers of tiny blobs, small cache entries), where the alignment padding would cost more
/// than it saves.
pub const DIRECT_MIN: usize = 64 << 10;
/// Size of the aligned buffer the data is copied through.
const PIECE: usize = 1 << 20;

thread_local! {
    /// `PIECE + ALIGN` bytes, so that an aligned `PIECE` lies within. Kept per thread: a
    /// fresh buffer per file would fault in fresh pages, the very cost this avoids.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes new files around the page cache while the filesystem allows it.
#[derive(Debug)]
pub struct DirectWrites {
    on: AtomicBool,
}

impl DirectWrites {
    /// Around the page cache if `on`, until the filesystem refuses it (found at the first
    /// large file).
    pub fn new(on: bool) -> Self {
        Self {
            on: AtomicBool::new(on),
        }
    }

    /// Whether large files still go around the page cache.
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Creates `path` (which must not exist) holding the concatenation of `parts`, and
    /// returns it open for writing. Not durable: the caller syncs if it needs to. On error
    /// the file may exist, partly written; the caller removes it.
    pub fn write_new(&self, path: &Path, parts: &[&[u8]]) -> io::Result<File> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len >= DIRECT_MIN && self.enabled() {
            match write_direct(path, parts, len) {
                Ok(f) => return Ok(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    if self.on.swap(false, Ordering::Relaxed) {
                        tracing::warn!(path = %path.display(), "the filesystem refuses O_DIRECT: files are written through the page cache");
                    }
                    let _ = fs::remove_file(path);
                }
                Err(e) => return Err(e),
            }
        }
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        for part in parts {
            f.write_all(part)?;
        }
        Ok(f)
    }
}

/// The `len` bytes of `parts` into a new file at `path`, with `O_DIRECT`.
fn write_direct(path: &Path, parts: &[&[u8]], len: usize) -> io::Result<File> {
    let f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    BUF.with(|cell| -> io::Result<()> {
        let mut buf = cell.borrow_mut();
        if buf.len() < PIECE + ALIGN {
            *buf = vec![0; PIECE + ALIGN];
        }
        let start = buf.as_ptr().align_offset(ALIGN);
        let piece = &mut buf[start..start + PIECE];
        let mut filled = 0; // bytes of `piece` holding data
        let mut offset = 0u64; // file offset of `piece`
        for part in parts {
            let mut part: &[u8] = part;
            // Where the caller's memory is aligned as O_DIRECT wants it and so is the file
            // offset (nothing waits in the piece), its aligned blocks go straight from it:
            // no copy (a node's sliver bodies are received into such buffers).
            if filled == 0 && part.as_ptr().align_offset(ALIGN) == 0 {
                let blocks = part.len() / ALIGN * ALIGN;
                if blocks > 0 {
                    f.write_all_at(&part[..blocks], offset)?;
                    offset += blocks as u64;
                    part = &part[blocks..];
                }
            }
            while !part.is_empty() {
                let n = part.len().min(PIECE - filled);
                piece[filled..filled + n].copy_from_slice(&part[..n]);
                filled += n;
                part = &part[n..];
                if filled == PIECE {
                    f.write_all_at(piece, offset)?;
                    offset += PIECE as u64;
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            let padded = filled.next_multiple_of(ALIGN);
            piece[filled..padded].fill(0);
            f.write_all_at(&piece[..padded], offset)?;
        }
        Ok(())
    })?;
    if !len.is_multiple_of(ALIGN) {
        f.set_len(len as u64)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn files_written_around_the_page_cache_hold_exactly_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let direct = DirectWrites::new(true);
        let sizes = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 1,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            3 * PIECE + 12_345,
        ];
        for (i, &len) in sizes.iter().enumerate() {
            let data = bytes(len, i as u8);
            let path = dir.path().join(format!("f{i}"));
            direct.write_new(&path, &[&data]).unwrap();
            assert_eq!(fs::read(&path).unwrap(), data, "{len} bytes");
        }
        // Where the filesystem takes O_DIRECT (ext4, xfs, btrfs), the path above was the direct
        // one; elsewhere the fallback, and the data must be the same.
        let probe = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("probe"));
        assert_eq!(direct.enabled(), probe.is_ok(), "{probe:?}");
    }

    /// `len` bytes of `seed` at an address aligned for O_DIRECT, within `store`.
    fn aligned(store: &mut Vec<u8>, len: usize, seed: u8) -> std::ops::Range<usize> {
        *store = vec![0; len + ALIGN];
        let start = store.as_ptr().align_offset(ALIGN);
        store[start..start + len].copy_from_slice(&bytes(len, seed));
        start..start + len
    }

    #[test]
    fn aligned_parts_go_straight_to_the_file_and_hold_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let direct = DirectWrites::new(true);
        let mut stores: Vec<Vec<u8>> = (0..3).map(|_| Vec::new()).collect();
        for (i, len) in [ALIGN * 16, ALIGN * 16 + 7, 2 * PIECE + ALIGN + 5]
            .into_iter()
            .enumerate()
        {
            let r = aligned(&mut stores[0], len, i as u8);
            let path = dir.path().join(format!("one-{i}"));
            direct.write_new(&path, &[&stores[0][r.clone()]]).unwrap();
            assert_eq!(fs::read(&path).unwrap(), &stores[0][r], "{len} bytes");
        }
        // Aligned after aligned (the file offset stays aligned), after a part that leaves
        // the file offset unaligned (through the piece), and then an unaligned one.
        let ra = aligned(&mut stores[0], ALIGN * 20, 7);
        let rb = aligned(&mut stores[1], ALIGN * 20 + 3, 8);
        let rc = aligned(&mut stores[2], ALIGN * 20, 9);
        let odd = bytes(ALIGN * 17 + 1, 10);
        let (a, b, c) = (&stores[0][ra], &stores[1][rb], &stores[2][rc]);
        let path = dir.path().join("mixed");
        direct.write_new(&path, &[a, b, c, &odd]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), [a, b, c, &odd[..]].concat());
    }

    #[test]
    fn parts_are_written_back_to_back_across_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let direct = DirectWrites::new(true);
        let (a, b, c) = (bytes(24, 1), bytes(PIECE + 5, 2), bytes(ALIGN * 3 + 1, 3));
        direct
            .write_new(&dir.path().join("f"), &[&a, &[], &b, &c])
            .unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), [a, b, c].concat());
    }

    #[test]
    fn an_existing_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"old").unwrap();
        let err = DirectWrites::new(true)
            .write_new(&path, &[&bytes(DIRECT_MIN * 2, 1)])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    /// A ramfs mounted for the test, unmounted when dropped (also when the test panics).
    struct Ramfs(tempfile::TempDir);

    impl Drop for Ramfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// ramfs refuses `O_DIRECT` (`EINVAL` at open): the write falls back to the page cache,
    /// the data is whole, and later files of the same `DirectWrites` go buffered at once.
    /// Mounting needs root (as `scripts/test` runs in CI); skipped where it cannot mount.
    #[test]
    fn a_filesystem_refusing_o_direct_gets_buffered_writes_with_the_same_data() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting a ramfs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "ramfs", "none"])
            .arg(dir.path())
            .status();
        if !mounted.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("skipped: mount -t ramfs failed here ({mounted:?})");
            return;
        }
        let ramfs = Ramfs(dir);
        let direct = DirectWrites::new(true);
        let data = bytes(PIECE + 4097, 5);
        direct
            .write_new(&ramfs.0.path().join("a"), &[&data])
            .unwrap();
        assert!(!direct.enabled(), "ramfs took O_DIRECT?");
        assert_eq!(fs::read(ramfs.0.path().join("a")).unwrap(), data);
        direct
            .write_new(
                &ramfs.0.path().join("b"),
                &[&data[..DIRECT_MIN], &data[DIRECT_MIN..]],
            )
            .unwrap();
        assert_eq!(fs::read(ramfs.0.path().join("b")).unwrap(), data);
    }

    #[test]
    fn buffered_writes_when_direct_is_off_hold_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let buffered = DirectWrites::new(false);
        let data = bytes(PIECE + 7, 3);
        buffered.write_new(&dir.path().join("f"), &[&data]).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), data);
    }
}
