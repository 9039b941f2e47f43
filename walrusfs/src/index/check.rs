//! A full consistency check of the index (fsck): verifies every invariant listed in the module
//! doc of [`index`](super). O(size of the index) in time and memory; for tests, debugging and
//! an optional check at mount.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::error::{IndexError, Result};
use super::layout::{
    decode, ino_key, pair_key, parse_blob_id, parse_change_key, parse_ino_key, parse_named_key,
    parse_pair_key, validate_name, DirentVal, TreeId, FIRST_COOKIE,
};
use super::types::{BlobInfo, ChunkRef, FileKind, GcEntry, Ino, InodeAttr, JChunk, ROOT_INO};
use super::Index;

/// What [`Index::check`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Inodes (orphans included).
    pub inodes: u64,
    /// Directory entries.
    pub dirents: u64,
    /// Chunk refs.
    pub chunks: u64,
    /// Orphans.
    pub orphans: u64,
    /// Blobs queued for GC.
    pub gc: u64,
    /// Blobs chunk refs point into.
    pub blobs: u64,
    /// Chunks whose latest content is in the write-back journal.
    pub journal: u64,
}

/// Fails with `Corrupt(msg)` unless `ok`.
fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(IndexError::Corrupt(msg()))
    }
}

impl Index {
    /// Checks every invariant of the index; `Corrupt` names the first violation found.
    /// Run it while no mutation is in flight (it takes the writer lock).
    pub fn check(&self) -> Result<CheckReport> {
        let _w = self.writer()?;
        let t = &self.trees;
        let counters = t.counters()?;
        let cs = u64::from(self.chunk_size());
        let mut report = CheckReport::default();

        let mut inodes = BTreeMap::<Ino, InodeAttr>::new();
        for item in t.inodes.iter() {
            let (key, value) = item?;
            let ino = parse_ino_key(&key)?;
            let attr: InodeAttr = decode(&value, "inode")?;
            ensure(attr.ino == ino, || {
                format!("inode {ino} stored as {}", attr.ino)
            })?;
            ensure(ino < counters.next_ino, || {
                format!("inode {ino} >= next_ino")
            })?;
            inodes.insert(ino, attr);
        }
        report.inodes = inodes.len() as u64;
        let root = inodes.get(&ROOT_INO);
        ensure(root.is_some_and(|r| r.kind == FileKind::Dir), || {
            "no root dir".into()
        })?;

        // Entries: links per inode, subdirectories per directory, parents of directories.
        let mut links = HashMap::<Ino, u32>::new();
        let mut subdirs = HashMap::<Ino, u32>::new();
        let mut entry_parent = HashMap::<Ino, Ino>::new();
        for item in t.dirents.iter() {
            let (key, value) = item?;
            let (parent, name) = parse_named_key(&key)?;
            let entry: DirentVal = decode(&value, "dirent")?;
            let at = || format!("entry {parent}/{:?}", String::from_utf8_lossy(name));
            validate_name(name).map_err(|_| IndexError::Corrupt(format!("{}: bad name", at())))?;
            let p = inodes.get(&parent);
            ensure(
                p.is_some_and(|p| p.kind == FileKind::Dir && p.nlink > 0),
                || format!("{}: parent is not a live directory", at()),
            )?;
            let child = inodes.get(&entry.ino);
            ensure(child.is_some_and(|c| c.kind == entry.kind), || {
                format!("{}: inode {} missing or of another kind", at(), entry.ino)
            })?;
            ensure(
                (FIRST_COOKIE..counters.next_cookie).contains(&entry.cookie),
                || format!("{}: cookie {} out of range", at(), entry.cookie),
            )?;
            let back = t.dircookies.get(pair_key(parent, entry.cookie))?;
            ensure(back.as_deref() == Some(name), || {
                format!("{}: cookie mismatch", at())
            })?;
            *links.entry(entry.ino).or_default() += 1;
            if entry.kind == FileKind::Dir {
                *subdirs.entry(parent).or_default() += 1;
                entry_parent.insert(entry.ino, parent);
            }
            report.dirents += 1;
        }
        // Each entry has its cookie record (checked above); equal counts make it a bijection.
        let cookies = t.dircookies.len() as u64;
        ensure(cookies == report.dirents, || {
            format!("{cookies} cookie records for {} entries", report.dirents)
        })?;

        let orphans = t
            .orphans
            .iter()
            .keys()
            .map(|k| parse_ino_key(&k?))
            .collect::<Result<BTreeSet<Ino>>>()?;
        report.orphans = orphans.len() as u64;
        let mut bytes = 0u64;
        for (&ino, attr) in &inodes {
            let n = links.get(&ino).copied().unwrap_or(0);
            if attr.kind == FileKind::Dir {
                let expected = if ino == ROOT_INO { 0 } else { 1 };
                ensure(n == expected, || format!("directory {ino} has {n} entries"))?;
                let sub = subdirs.get(&ino).copied().unwrap_or(0);
                ensure(attr.nlink == 2 + sub, || {
                    format!("directory {ino}: nlink {} with {sub} subdirs", attr.nlink)
                })?;
                let parent = match t.parents.get(ino_key(ino))? {
                    Some(v) => decode::<Ino>(&v, "parent")?,
                    None => return Err(IndexError::Corrupt(format!("dir {ino} has no parent"))),
                };
                let want = entry_parent.get(&ino).copied().unwrap_or(ROOT_INO);
                ensure(parent == want, || {
                    format!("dir {ino}: parent {parent}, entry in {want}")
                })?;
            } else {
                ensure(attr.nlink == n, || {
                    format!("inode {ino}: nlink {} with {n} entries", attr.nlink)
                })?;
            }
            ensure((attr.nlink == 0) == orphans.contains(&ino), || {
                format!("inode {ino}: nlink {} vs orphan record", attr.nlink)
            })?;
            let target = t.symlinks.get(ino_key(ino))?;
            match attr.kind {
                FileKind::Symlink => ensure(
                    target.as_ref().is_some_and(|t| t.len() as u64 == attr.size),
                    || format!("symlink {ino}: target missing or of the wrong length"),
                )?,
                _ => ensure(target.is_none(), || {
                    format!("non-symlink {ino} has a target")
                })?,
            }
            if attr.kind == FileKind::File {
                bytes += attr.size;
            }
        }
        ensure(orphans.iter().all(|o| inodes.contains_key(o)), || {
            "orphan record without inode".into()
        })?;
        for item in t.parents.iter().keys() {
            let dir = parse_ino_key(&item?)?;
            ensure(
                inodes.get(&dir).is_some_and(|a| a.kind == FileKind::Dir),
                || format!("parent record for non-directory {dir}"),
            )?;
        }
        // Every directory reaches the root: no detached cycles.
        for &dir in entry_parent.keys() {
            let mut cur = dir;
            for _ in 0..=entry_parent.len() {
                cur = entry_parent.get(&cur).copied().unwrap_or(ROOT_INO);
                if cur == ROOT_INO {
                    break;
                }
            }
            ensure(cur == ROOT_INO, || {
                format!("directory {dir} does not reach the root")
            })?;
        }

        let mut refs = HashMap::<netcore::codec::BlobId, (u64, u64)>::new();
        for item in t.chunks.iter() {
            let (key, value) = item?;
            let (ino, index) = parse_pair_key(&key)?;
            let c: ChunkRef = decode(&value, "chunk ref")?;
            let attr = inodes.get(&ino).filter(|a| a.kind == FileKind::File);
            let Some(attr) = attr else {
                return Err(IndexError::Corrupt(format!(
                    "chunk {index} of non-file {ino}"
                )));
            };
            let start = index.saturating_mul(cs);
            ensure(
                u64::from(c.len) <= cs
                    && start.saturating_add(u64::from(c.len)) <= attr.size
                    && start < attr.size,
                || {
                    format!(
                        "chunk {index} of {ino} (len {}) beyond size {}",
                        c.len, attr.size
                    )
                },
            )?;
            ensure(!t.gc.contains_key(c.blob_id.0)?, || {
                format!("chunk {index} of {ino} refers to a blob queued for GC")
            })?;
            ensure(c.len <= c.stored_len, || {
                format!(
                    "chunk {index} of {ino}: len {} > stored {}",
                    c.len, c.stored_len
                )
            })?;
            let counted = refs.entry(c.blob_id).or_insert((0, 0));
            counted.0 += 1;
            counted.1 += c.sealed_len(self.segments());
            report.chunks += 1;
        }
        // Journal chunks: within their file, listed in the queue under their record.
        let mut queued = 0u64;
        for item in t.jchunks.iter() {
            let (key, value) = item?;
            let (ino, index) = parse_pair_key(&key)?;
            let j: JChunk = decode(&value, "journal chunk")?;
            let attr = inodes.get(&ino).filter(|a| a.kind == FileKind::File);
            let Some(attr) = attr else {
                return Err(IndexError::Corrupt(format!(
                    "journal chunk {index} of non-file {ino}"
                )));
            };
            let start = index.saturating_mul(cs);
            ensure(
                start < attr.size && start + u64::from(j.len) <= attr.size && j.len <= j.stored_len,
                || {
                    format!(
                        "journal chunk {index} of {ino} (len {}) beyond size {}",
                        j.len, attr.size
                    )
                },
            )?;
            let back = t.jqueue.get(j.seq.to_be_bytes())?;
            ensure(back.as_deref() == Some(&key[..]), || {
                format!(
                    "journal chunk {index} of {ino}: record {} not queued",
                    j.seq
                )
            })?;
            queued += 1;
        }
        ensure(t.jqueue.len() as u64 == queued, || {
            format!(
                "{} queued journal records for {queued} journal chunks",
                t.jqueue.len()
            )
        })?;
        report.journal = queued;
        // Blob records: exactly the blobs refs point into, with the right counts.
        let mut blobs = 0usize;
        for item in t.blobs.iter() {
            let (key, value) = item?;
            let blob = parse_blob_id(&key)?;
            let info: BlobInfo = decode(&value, "blob record")?;
            let (n, live) = refs.get(&blob).copied().unwrap_or((0, 0));
            ensure(info.refs == n && info.live_bytes == live && n > 0, || {
                format!(
                    "blob {blob}: record says {} refs / {} bytes, found {n} / {live}",
                    info.refs, info.live_bytes
                )
            })?;
            ensure(info.metadata.blob_id() == blob, || {
                format!("blob {blob}: metadata of another blob")
            })?;
            blobs += 1;
        }
        ensure(blobs == refs.len(), || {
            format!("{} blobs referenced, {blobs} blob records", refs.len())
        })?;
        report.blobs = blobs as u64;
        // Proofs: only of recorded blobs, each a confirmation of that blob.
        for item in t.tree(TreeId::Proofs).iter() {
            let (key, value) = item?;
            let blob = parse_blob_id(&key)?;
            ensure(t.blobs.contains_key(&key)?, || {
                format!("proofs of blob {blob}, which has no record")
            })?;
            let proofs: Vec<netcore::wire::StorageConfirmation> = decode(&value, "blob proofs")?;
            ensure(proofs.iter().all(|c| c.blob_id == blob), || {
                format!("blob {blob}: proofs of another blob")
            })?;
        }
        for item in t.xattrs.iter().keys() {
            let key = item?;
            let (ino, _) = parse_named_key(&key)?;
            ensure(inodes.contains_key(&ino), || {
                format!("xattr of missing inode {ino}")
            })?;
        }
        for item in t.gc.iter() {
            let (key, value) = item?;
            parse_blob_id(&key)?;
            let entry: GcEntry = decode(&value, "GC entry")?;
            ensure(entry.dropped_seq <= counters.seq, || {
                format!("GC entry from the future: seq {}", entry.dropped_seq)
            })?;
            report.gc += 1;
        }
        for item in t.changes.iter() {
            let (key, value) = item?;
            parse_change_key(&key)?;
            let seq = value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| IndexError::Corrupt("change stamp of the wrong size".into()))?;
            ensure(seq <= counters.seq, || {
                format!("change stamped {seq}, counter at {}", counters.seq)
            })?;
        }
        ensure(counters.inodes == report.inodes, || {
            format!(
                "counter says {} inodes, found {}",
                counters.inodes, report.inodes
            )
        })?;
        ensure(counters.bytes == bytes, || {
            format!("counter says {} bytes, found {bytes}", counters.bytes)
        })?;
        Ok(report)
    }
}
