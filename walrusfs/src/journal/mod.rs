//! The write-back journal: sealed chunks waiting to be stored on the network, in segment files
//! in the state directory.
//!
//! A close (or a spill under memory pressure) seals the file's dirty chunks and appends them
//! here; the index then points the chunks at their records (its `jchunks` tree), in record
//! order: the commit is made, or queued for the next index transaction (a small file's close,
//! see `Index::defer_journal`), while the append still holds the journal's order lock. The uploader later stores records as blobs (packing small ones
//! together) and repoints the chunks at the blobs; a segment is deleted once no chunk points
//! into it any more and the index saying so is durable.
//!
//! # Why this is crash safe
//!
//! A record is written (`write(2)`) before the index transaction that points at it, and the
//! journal is not fsynced: a killed process loses nothing the kernel has (the page cache
//! survives it); a power cut loses what was not fsynced, as on any filesystem (fsync goes
//! further: it stores the data on the network). At the next mount, every record newer than
//! the index's journal mark (the last record whose transaction is durable) is applied to the
//! index again ([`Journal::open`] returns them): sled recovers a prefix of its transactions, so
//! the index is then exactly as if every record had been committed in order. Before the index
//! is made durable, the journal is fsynced ([`Journal::sync`]), so a durable index never points
//! at records a power cut could lose.
//!
//! A close of a file created moments ago also appends the file's creation (a creation record,
//! see [`format`]) ahead of its data, so the index's own record of the creation need not be
//! in the kernel when the close returns: a replay creates the file from it if the index lost
//! it (see `index::fresh` for when that is sound).
//!
//! The journal holds only sealed (encrypted) chunks; headers carry inode numbers, chunk
//! indexes, sizes and times, and creation records names, modes and owners, as the local index
//! does.

pub mod format;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use format::{
    checksum, decode_header, parse_segment_header, record_prefix, segment_header, CREATION,
    MAX_HEADER, RECORD_PREFIX, SEGMENT_HEADER,
};
pub use format::{Creation, EntryHeader, RecordAttrs, MAX_CREATION};

/// Segment files are rotated at this size: big enough that a segment holds many records, small
/// enough that one pending record keeps little else on disk.
const SEGMENT_MAX: u64 = 64 << 20;
/// Largest record body accepted at replay (a sealed 64 MiB chunk, the largest chunk size).
const MAX_BODY: u64 = (64 << 20) + (64 << 20) / 4096;
/// Extension of segment files.
const EXT: &str = "wj";
/// Extension of spare segment files: dead segments kept to be reused (see [`format`]), named
/// `LAST-NUMBER.wjs` (hex) after the highest sequence number in them and their old number.
const SPARE_EXT: &str = "wjs";
/// Dead segment files kept for reuse at most (each up to [`SEGMENT_MAX`] on disk, beside the
/// journal's own bytes).
const MAX_SPARES: usize = 2;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The journal stayed full (the network is not taking data) past the wait allowed.
    #[error("write-back journal full ({bytes} of {max} bytes) for {waited:?}: the network is not storing data")]
    Full {
        /// Bytes in the journal.
        bytes: u64,
        /// Its limit.
        max: u64,
        /// How long the writer waited.
        waited: Duration,
    },
    /// A record the index points at is gone (its segment was reclaimed): look the chunk up
    /// again.
    #[error("journal segment {0} no longer exists")]
    Gone(u64),
}

/// Where a record's body (the sealed chunk) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Loc {
    /// Segment number.
    pub segment: u64,
    /// Offset of the body in the segment file.
    pub offset: u64,
    /// Body length.
    pub len: u32,
}

/// A record found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its header.
    pub header: EntryHeader,
    /// Attribute changes it carries.
    pub attrs: Option<RecordAttrs>,
    /// A creation record's creation (its body, decoded).
    pub creation: Option<Creation>,
    /// Where its body is.
    pub loc: Loc,
}

/// A record to append: its header (the sequence number is assigned by the journal) and body.
pub struct Append<'a> {
    /// Header; `seq` is overwritten.
    pub header: EntryHeader,
    /// Attribute changes to carry.
    pub attrs: Option<RecordAttrs>,
    /// The sealed chunk.
    pub body: &'a [u8],
}

struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Highest sequence number in the segment (0: none).
    last_seq: u64,
}

struct Current {
    number: u64,
    file: File,
    len: u64,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    current: Option<Current>,
    next_seq: u64,
    /// Segment numbers are never reused within a process (a stale location must not find
    /// another segment's bytes).
    next_segment: u64,
    bytes: u64,
    readers: HashMap<u64, Arc<File>>,
    /// Dead segment files to reuse, newest last.
    spares: Vec<PathBuf>,
}

/// The journal in one directory. `Send + Sync`; blocking file I/O.
pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Held across an append and the caller's index commit, so commits happen in record order.
    order: Mutex<()>,
    /// Signalled when segments are reclaimed.
    space: Condvar,
}

/// Writes `a` then `b` with vectored writes (`Write::write_all_vectored` is not stable).
fn write_all_both(file: &mut File, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let total = a.len() + b.len();
    let mut done = 0;
    while done < total {
        let res = if done < a.len() {
            file.write_vectored(&[IoSlice::new(&a[done..]), IoSlice::new(b)])
        } else {
            file.write(&b[done - a.len()..])
        };
        match res {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir`, holding at most `max_bytes` (one record is always
    /// accepted into an empty journal, whatever its size). Returns the records it holds, in
    /// sequence order; a record torn by a crash, and what follows it in its segment, is cut off.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Vec<Record>), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut numbers: Vec<u64> = Vec::new();
        let mut spares: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(&format!(".{EXT}"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            {
                numbers.push(n);
            } else if let Some(stem) = name.strip_suffix(&format!(".{SPARE_EXT}")) {
                match stem
                    .split_once('-')
                    .and_then(|(last, _)| u64::from_str_radix(last, 16).ok())
                {
                    Some(last) if spares.len() < MAX_SPARES => spares.push((last, entry.path())),
                    _ => {
                        let path = entry.path();
                        std::fs::remove_file(&path).map_err(io(&path))?;
                    }
                }
            }
        }
        numbers.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut records = Vec::new();
        let mut bytes = 0;
        // INV: new records get sequence numbers above every record in a spare file, so a reused
        // file's leftovers are told apart at replay (see `format`) whatever the caller does.
        let mut next_seq = spares.iter().map(|(last, _)| last + 1).max().unwrap_or(1);
        let spares: Vec<PathBuf> = spares.into_iter().map(|(_, p)| p).collect();
        for n in numbers {
            let path = segment_path(dir, n);
            let (found, len) = scan_segment(&path, n)?;
            let last_seq = found.last().map_or(0, |r| r.header.seq);
            next_seq = next_seq.max(last_seq + 1);
            bytes += len;
            records.extend(found);
            segments.insert(
                n,
                Segment {
                    path,
                    bytes: len,
                    last_seq,
                },
            );
        }
        records.sort_by_key(|r| r.header.seq);
        let next_segment = segments.keys().next_back().map_or(1, |n| n + 1);
        let journal = Journal {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State {
                segments,
                current: None,
                next_seq,
                next_segment,
                bytes,
                readers: HashMap::new(),
                spares,
            }),
            order: Mutex::new(()),
            space: Condvar::new(),
        };
        Ok((journal, records))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes in the journal's segment files.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The configured limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// Makes the next record's sequence number follow `seq` (the index's journal mark): an
    /// empty journal (every segment reclaimed) would otherwise start again from 1, and records
    /// numbered at or below the mark are taken as committed by the next mount's replay.
    pub fn continue_after(&self, seq: u64) {
        let mut st = self.lock();
        st.next_seq = st.next_seq.max(seq.saturating_add(1));
    }

    /// Waits (up to `deadline`) until `need` more bytes fit, without taking the order lock:
    /// callers that must not block others while waiting wait here first, then append with
    /// no wait.
    pub fn wait_for_space(&self, need: u64, deadline: Instant) -> Result<(), JournalError> {
        let started = Instant::now();
        let mut st = self.lock();
        while st.bytes > 0 && st.bytes + need > self.max_bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(JournalError::Full {
                    bytes: st.bytes,
                    max: self.max_bytes,
                    waited: started.elapsed(),
                });
            }
            st = self
                .space
                .wait_timeout(st, left.min(Duration::from_secs(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Bytes an append of bodies this long needs at most.
    pub fn needed(body_lens: impl Iterator<Item = usize>) -> u64 {
        body_lens
            .map(|l| (RECORD_PREFIX + MAX_HEADER + l) as u64)
            .sum()
    }

    /// Appends `items` (waiting up to `wait` for space while the journal is full), then runs
    /// `commit` with each record's sequence number and location while still holding the order
    /// lock: commits happen in record order. Returns what `commit` returns.
    pub fn append<R>(
        &self,
        items: &[Append<'_>],
        wait: Duration,
        commit: impl FnOnce(&[(u64, Loc)]) -> R,
    ) -> Result<R, JournalError> {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let need: u64 = items
            .iter()
            .map(|i| (RECORD_PREFIX + MAX_HEADER + i.body.len()) as u64)
            .sum();
        let started = Instant::now();
        let mut st = self.lock();
        // INV: the journal stays within its size (writers wait for the uploader), except that
        // an empty journal always takes one append so a huge record cannot wait forever.
        while st.bytes > 0 && st.bytes + need > self.max_bytes {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(JournalError::Full {
                    bytes: st.bytes,
                    max: self.max_bytes,
                    waited: started.elapsed(),
                });
            }
            st = self
                .space
                .wait_timeout(st, left.min(Duration::from_secs(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut assigned = Vec::with_capacity(items.len());
        for item in items {
            let mut header = item.header;
            header.seq = st.next_seq;
            let prefix = record_prefix(&header, item.attrs.as_ref(), item.body);
            let record_len = (prefix.len() + item.body.len()) as u64;
            let rotate = st
                .current
                .as_ref()
                .is_none_or(|c| c.len > SEGMENT_HEADER as u64 && c.len + record_len > SEGMENT_MAX);
            if rotate {
                self.rotate(&mut st)?;
            }
            let cur = st
                .current
                .as_mut()
                .unwrap_or_else(|| unreachable!("rotate made a current segment"));
            let path = segment_path(&self.dir, cur.number);
            if let Err(e) = write_all_both(&mut cur.file, &prefix, item.body) {
                // The next record goes where this one started, over whatever part of it was
                // written (a replay would stop at that torn record, and lose what follows).
                let _ = cur.file.seek(SeekFrom::Start(cur.len));
                return Err(io(&path)(e));
            }
            let body_offset = cur.len + prefix.len() as u64;
            cur.len += record_len;
            let number = cur.number;
            if let Some(seg) = st.segments.get_mut(&number) {
                seg.bytes += record_len;
                seg.last_seq = header.seq;
            }
            st.bytes += record_len;
            st.next_seq += 1;
            assigned.push((
                header.seq,
                Loc {
                    segment: number,
                    offset: body_offset,
                    len: item.body.len() as u32,
                },
            ));
        }
        drop(st);
        Ok(commit(&assigned))
    }

    /// Starts a new segment for appends.
    fn rotate(&self, st: &mut State) -> Result<(), JournalError> {
        let number = st.next_segment;
        st.next_segment += 1;
        let path = segment_path(&self.dir, number);
        // A spare first: its pages are likely still cached. Renamed before its header is
        // rewritten, so a crash in between leaves a segment with another number in its header,
        // which a replay empties.
        let reused = st.spares.pop().and_then(|spare| {
            let reuse = std::fs::rename(&spare, &path)
                .and_then(|()| OpenOptions::new().write(true).open(&path));
            match reuse {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::debug!(spare = %spare.display(), "journal spare not reused: {e}");
                    let _ = std::fs::remove_file(&spare);
                    None
                }
            }
        });
        let mut file = match reused {
            Some(file) => file,
            None => OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?,
        };
        // Records from here on have sequence numbers from `next_seq` up; a reused file's older
        // records, below it, end the segment at replay.
        file.write_all(&segment_header(number, st.next_seq))
            .map_err(io(&path))?;
        st.segments.insert(
            number,
            Segment {
                path,
                bytes: SEGMENT_HEADER as u64,
                last_seq: 0,
            },
        );
        st.bytes += SEGMENT_HEADER as u64;
        st.current = Some(Current {
            number,
            file,
            len: SEGMENT_HEADER as u64,
        });
        Ok(())
    }

    /// Reads a record's body.
    pub fn read(&self, loc: &Loc) -> Result<Vec<u8>, JournalError> {
        let mut buf = Vec::new();
        self.read_into(loc, &mut buf)?;
        Ok(buf)
    }

    /// Appends a record's body to `out`. On error `out` is as it was.
    pub fn read_into(&self, loc: &Loc, out: &mut Vec<u8>) -> Result<(), JournalError> {
        let start = out.len();
        out.resize(start + loc.len as usize, 0);
        if let Err(e) = self.read_at(loc, &mut out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Reads a record's body into `out`, which must be exactly its length (the uploader
    /// gathers a blob's records into one reused buffer this way, without zeroing it first
    /// or a copy per record).
    pub fn read_at(&self, loc: &Loc, out: &mut [u8]) -> Result<(), JournalError> {
        if out.len() != loc.len as usize {
            return Err(JournalError::Io {
                path: segment_path(&self.dir, loc.segment),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a record of {} bytes read into {} bytes",
                        loc.len,
                        out.len()
                    ),
                ),
            });
        }
        let file = {
            let mut st = self.lock();
            match st.readers.get(&loc.segment) {
                Some(f) => f.clone(),
                None => {
                    if !st.segments.contains_key(&loc.segment) {
                        return Err(JournalError::Gone(loc.segment));
                    }
                    let path = segment_path(&self.dir, loc.segment);
                    let f = Arc::new(File::open(&path).map_err(io(&path))?);
                    st.readers.insert(loc.segment, f.clone());
                    f
                }
            }
        };
        file.read_exact_at(out, loc.offset)
            .map_err(io(&segment_path(&self.dir, loc.segment)))
    }

    /// Runs `f` with the next record's sequence number while no append is in progress (every
    /// record appended so far has been committed by its appender).
    pub fn quiesced<R>(&self, f: impl FnOnce(u64) -> R) -> R {
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let next = self.lock().next_seq;
        f(next)
    }

    /// Makes every record appended so far durable (fsync of the segments written since the
    /// last sync, and of the directory).
    pub fn sync(&self) -> Result<(), JournalError> {
        let st = self.lock();
        if let Some(cur) = &st.current {
            let path = segment_path(&self.dir, cur.number);
            cur.file.sync_data().map_err(io(&path))?;
        }
        drop(st);
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Deletes every segment whose records all have sequence numbers below `keep_from` (the
    /// oldest record a chunk still points at, in the durable index), keeping up to
    /// [`MAX_SPARES`] of their files to reuse for new segments. Returns the bytes freed.
    pub fn reclaim(&self, keep_from: u64) -> Result<u64, JournalError> {
        let mut st = self.lock();
        let cur = st.current.as_ref().map(|c| c.number);
        let dead = dead_segments(&st, keep_from);
        let mut freed = 0;
        for n in dead {
            if Some(n) == cur {
                // Appends go to a new segment from now on.
                st.current = None;
            }
            if let Some(seg) = st.segments.remove(&n) {
                // Reused only if no read holds the file open (a reader that took it before
                // could otherwise read the next segment's bytes); new readers find the segment
                // gone, as they would a deleted one.
                let unread = st
                    .readers
                    .remove(&n)
                    .is_none_or(|f| Arc::strong_count(&f) == 1);
                if unread && st.spares.len() < MAX_SPARES {
                    let spare = self
                        .dir
                        .join(format!("{:016x}-{n:016x}.{SPARE_EXT}", seg.last_seq));
                    if std::fs::rename(&seg.path, &spare).is_ok() {
                        st.spares.push(spare);
                        st.bytes = st.bytes.saturating_sub(seg.bytes);
                        freed += seg.bytes;
                        continue;
                    }
                }
                match std::fs::remove_file(&seg.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        st.segments.insert(n, seg);
                        return Err(io(&self.dir)(e));
                    }
                }
                st.bytes = st.bytes.saturating_sub(seg.bytes);
                freed += seg.bytes;
            }
        }
        drop(st);
        if freed > 0 {
            self.space.notify_all();
        }
        Ok(freed)
    }

    /// Whether [`Journal::reclaim`] with `keep_from` would delete a segment.
    pub fn reclaimable(&self, keep_from: u64) -> bool {
        !dead_segments(&self.lock(), keep_from).is_empty()
    }
}

/// The segments holding only records before `keep_from` (the current one only if it holds
/// any record).
fn dead_segments(st: &State, keep_from: u64) -> Vec<u64> {
    let cur = st.current.as_ref().map(|c| c.number);
    st.segments
        .iter()
        .filter(|(n, s)| s.last_seq < keep_from && (Some(**n) != cur || s.last_seq > 0))
        .map(|(n, _)| *n)
        .collect()
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.{EXT}"))
}

/// Reads a segment's records, truncating it at the first torn one (or, in a reused file, at the
/// first left over from its earlier use). Returns the records and the segment's length after
/// that.
fn scan_segment(path: &Path, number: u64) -> Result<(Vec<Record>, u64), JournalError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let total = file.metadata().map_err(io(path))?.len();
    let mut head = [0u8; SEGMENT_HEADER];
    let got = read_up_to(&file, &mut head).map_err(io(path))?;
    let Some((header_len, first_seq)) = parse_segment_header(&head[..got], number) else {
        // A segment whose header never made it to disk holds nothing (nor does a reused file
        // whose new header did not).
        tracing::warn!(path = %path.display(), "journal segment without a valid header: emptied");
        file.set_len(0).map_err(io(path))?;
        file.write_all_at(&segment_header(number, 0), 0)
            .map_err(io(path))?;
        return Ok((Vec::new(), SEGMENT_HEADER as u64));
    };
    file.seek(SeekFrom::Start(header_len as u64))
        .map_err(io(path))?;
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let mut pos = header_len as u64;
    let mut records: Vec<Record> = Vec::new();
    let mut leftover = false;
    loop {
        let mut prefix = [0u8; RECORD_PREFIX];
        if total - pos < RECORD_PREFIX as u64 || r.read_exact(&mut prefix).is_err() {
            break;
        }
        let body_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let header_len = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        let size = RECORD_PREFIX as u64 + u64::from(header_len) + u64::from(body_len);
        if header_len as usize > MAX_HEADER || u64::from(body_len) > MAX_BODY || pos + size > total
        {
            break;
        }
        let mut header = vec![0u8; header_len as usize];
        let mut body = vec![0u8; body_len as usize];
        if r.read_exact(&mut header).is_err() || r.read_exact(&mut body).is_err() {
            break;
        }
        if checksum(body_len, &header, &body)[..] != prefix[8..] {
            break;
        }
        let Some((h, attrs)) = decode_header(&header) else {
            break;
        };
        // INV: a segment's records have increasing sequence numbers from its header's first
        // seq on; anything else is a record of the file's earlier use.
        if h.seq < first_seq || records.last().is_some_and(|p| h.seq <= p.header.seq) {
            leftover = true;
            break;
        }
        let creation = if h.stored_len == CREATION {
            let Some(c) = Creation::decode(&body) else {
                break;
            };
            Some(c)
        } else {
            None
        };
        records.push(Record {
            header: h,
            attrs,
            creation,
            loc: Loc {
                segment: number,
                offset: pos + RECORD_PREFIX as u64 + u64::from(header_len),
                len: body_len,
            },
        });
        pos += size;
    }
    if pos < total {
        if first_seq == 0 {
            tracing::warn!(path = %path.display(), cut = total - pos, "journal segment ends in a torn record: cut off");
        } else {
            // In format 2 a file may have been reused, with its earlier records after the new
            // ones, complete (`leftover`) or not, and those cannot be told from a torn record:
            // either way the end of the segment (a record torn by a crash was never
            // acknowledged).
            tracing::debug!(path = %path.display(), cut = total - pos, leftover, "journal segment ends: the rest cut off");
        }
        file.set_len(pos).map_err(io(path))?;
    }
    Ok((records, pos))
}

/// Reads from the start of `file` into `buf` until it is full or the file ends; returns the
/// bytes read.
fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests;
