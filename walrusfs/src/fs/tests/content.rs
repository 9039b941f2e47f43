//! Model test of one file's content through every place a chunk can be: random writes,
//! truncations, reads (through the writing handle, whose reads seek and so fetch ranges, and
//! through a fresh one), closes, fsyncs, syncs and crashes after a close, against a plain byte
//! vector. The dirty budget is a few chunks, so spills under memory pressure happen all the
//! time, and a read's chunks are often split between buffers, the journal and the store.
//!
//! A second model adds names: files created, renamed (over others too), hard-linked and
//! unlinked while open, the journal reclaimed, and crashes after closing everything; every
//! name must lead to its file's bytes, size and link count, and a file kept only by an open
//! handle must read whole through it. `WALRUSFS_CONTENT_CASES=N` runs N cases of each.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Truncate { len: u64 },
    Read { offset: u64, len: u32, fresh: bool },
    Close,
    Fsync,
    SyncAll,
    CrashAfterClose,
}

/// Offsets within four chunks, chunk boundaries and the byte before one often.
fn offset() -> impl Strategy<Value = u64> {
    let c = u64::from(CHUNK);
    prop_oneof![
        2 => 0..4 * c,
        1 => (0..4u64).prop_map(move |i| i * c),
        1 => (1..5u64).prop_map(move |i| i * c - 1),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let c = u64::from(CHUNK);
    prop_oneof![
        8 => (offset(), 1..(3 * CHUNK as usize / 2), any::<u8>())
            .prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => (0..5 * c).prop_map(|len| Op::Truncate { len }),
        6 => (offset(), 1..(2 * CHUNK), any::<bool>())
            .prop_map(|(offset, len, fresh)| Op::Read { offset, len, fresh }),
        2 => Just(Op::Close),
        1 => Just(Op::Fsync),
        1 => Just(Op::SyncAll),
        1 => Just(Op::CrashAfterClose),
    ]
}

/// `got` against the model's bytes `offset..offset + len`, or a message saying where they
/// differ.
fn check_read(model: &[u8], offset: u64, len: u32, got: &[u8]) -> Result<(), TestCaseError> {
    let start = (offset as usize).min(model.len());
    let end = (offset as usize)
        .saturating_add(len as usize)
        .min(model.len());
    let want = &model[start..end];
    let diff = got.iter().zip(want).position(|(a, b)| a != b);
    prop_assert!(
        got == want,
        "read {offset}+{len}: {} bytes, {} expected, first difference at {diff:?}",
        got.len(),
        want.len()
    );
    Ok(())
}

/// Both models' configuration: a dirty budget of three chunks, so spills under memory
/// pressure happen all the time.
fn small_budget() -> FsConfig {
    FsConfig {
        dirty_budget: 3 * u64::from(CHUNK),
        ..config()
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let Setup { fs, store, dir, rt } = setup_with(small_budget());
    let open = || open_fs(dir.path(), store.clone(), &rt, small_budget());
    let mut fs = fs;
    let ino = fs
        .create_node(CTX, ROOT_INO, b"f", FileKind::File, 0o644, 0, None)
        .unwrap()
        .ino;
    let mut fh = fs.open(ino, true).unwrap();
    let mut model: Vec<u8> = Vec::new();
    for op in ops {
        match *op {
            Op::Write { offset, len, seed } => {
                let data = pattern(len, seed);
                prop_assert_eq!(fs.write(fh, offset, &data).unwrap(), len);
                let (start, end) = (offset as usize, offset as usize + len);
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[start..end].copy_from_slice(&data);
            }
            Op::Truncate { len } => {
                let cut = SetAttr {
                    size: Some(len),
                    ..SetAttr::default()
                };
                prop_assert_eq!(fs.setattr(ino, cut).unwrap().size, len);
                model.resize(len as usize, 0);
            }
            Op::Read { offset, len, fresh } => {
                let h = if fresh {
                    fs.open(ino, false).unwrap()
                } else {
                    fh
                };
                let got = fs.read(h, offset, len).unwrap();
                check_read(&model, offset, len, &got)?;
                if fresh {
                    fs.release(h).unwrap();
                }
            }
            Op::Close => fs.flush(fh).unwrap(),
            Op::Fsync => fs.fsync(ino).unwrap(),
            Op::SyncAll => fs.sync_all().unwrap(),
            Op::CrashAfterClose => {
                // What close returned for survives: the next mount replays the journal.
                fs.flush(fh).unwrap();
                fs.release(fh).unwrap();
                crash(fs);
                fs = open();
                fh = fs.open(ino, true).unwrap();
            }
        }
    }
    prop_assert_eq!(fs.getattr(ino).unwrap().size, model.len() as u64);
    let got = fs.read(fh, 0, u32::MAX).unwrap();
    check_read(&model, 0, u32::MAX, &got)?;
    fs.sync_all().unwrap();
    let fresh = fs.open(ino, false).unwrap();
    check_read(&model, 0, u32::MAX, &fs.read(fresh, 0, u32::MAX).unwrap())?;
    fs.index().check().unwrap();
    crash(fs);
    Ok(())
}

/// Names of the namespace model: few, so operations collide often.
const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum NsOp {
    Create {
        name: usize,
    },
    Write {
        name: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        name: usize,
        len: u64,
    },
    Read {
        name: usize,
        offset: u64,
        len: u32,
    },
    Close {
        name: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Unlink {
        name: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Fsync {
        name: usize,
    },
    SyncAll,
    /// The journal reclaimer's round: segments whose records are all stored go.
    Reclaim,
    CrashAfterClose,
}

fn ns_op() -> impl Strategy<Value = NsOp> {
    let c = u64::from(CHUNK);
    let name = || 0..NAMES.len();
    prop_oneof![
        3 => name().prop_map(|name| NsOp::Create { name }),
        8 => (name(), offset(), 1..(3 * CHUNK as usize / 2), any::<u8>())
            .prop_map(|(name, offset, len, seed)| NsOp::Write { name, offset, len, seed }),
        1 => (name(), 0..5 * c).prop_map(|(name, len)| NsOp::Truncate { name, len }),
        4 => (name(), offset(), 1..(2 * CHUNK))
            .prop_map(|(name, offset, len)| NsOp::Read { name, offset, len }),
        3 => name().prop_map(|name| NsOp::Close { name }),
        2 => (name(), name()).prop_map(|(from, to)| NsOp::Rename { from, to }),
        2 => name().prop_map(|name| NsOp::Unlink { name }),
        1 => (name(), name()).prop_map(|(from, to)| NsOp::Link { from, to }),
        1 => name().prop_map(|name| NsOp::Fsync { name }),
        1 => Just(NsOp::SyncAll),
        1 => Just(NsOp::Reclaim),
        1 => Just(NsOp::CrashAfterClose),
    ]
}

/// The model: names to file ids, each file's bytes and link count; and the real side: each
/// file's inode and its open read-write handle, if any.
#[derive(Default)]
struct Ns {
    names: BTreeMap<usize, usize>,
    content: Vec<Vec<u8>>,
    nlink: Vec<u32>,
    ino: Vec<u64>,
    fh: BTreeMap<usize, u64>,
}

impl Ns {
    /// The open handle of file `id`, opened now if there is none.
    fn handle(&mut self, fs: &Fs<MemoryStore>, id: usize) -> u64 {
        let ino = self.ino[id];
        *self
            .fh
            .entry(id)
            .or_insert_with(|| fs.open(ino, true).unwrap())
    }
}

fn run_ns(ops: &[NsOp]) -> Result<(), TestCaseError> {
    let Setup { fs, store, dir, rt } = setup_with(small_budget());
    let open = || open_fs(dir.path(), store.clone(), &rt, small_budget());
    let mut fs = fs;
    let mut m = Ns::default();
    let name = |i: usize| NAMES[i].as_bytes();
    for op in ops {
        match *op {
            NsOp::Create { name: n } => {
                let made = fs.create_node(CTX, ROOT_INO, name(n), FileKind::File, 0o644, 0, None);
                match m.names.get(&n) {
                    Some(_) => prop_assert!(matches!(made, Err(FsError::Index(_))), "{made:?}"),
                    None => {
                        let id = m.content.len();
                        m.content.push(Vec::new());
                        m.nlink.push(1);
                        m.ino.push(made.unwrap().ino);
                        m.names.insert(n, id);
                        m.handle(&fs, id);
                    }
                }
            }
            NsOp::Write {
                name: n,
                offset,
                len,
                seed,
            } => {
                let Some(&id) = m.names.get(&n) else { continue };
                let fh = m.handle(&fs, id);
                let data = pattern(len, seed);
                prop_assert_eq!(fs.write(fh, offset, &data).unwrap(), len);
                let (start, end) = (offset as usize, offset as usize + len);
                let c = &mut m.content[id];
                if c.len() < end {
                    c.resize(end, 0);
                }
                c[start..end].copy_from_slice(&data);
            }
            NsOp::Truncate { name: n, len } => {
                let Some(&id) = m.names.get(&n) else { continue };
                let cut = SetAttr {
                    size: Some(len),
                    ..SetAttr::default()
                };
                fs.setattr(m.ino[id], cut).unwrap();
                m.content[id].resize(len as usize, 0);
            }
            NsOp::Read {
                name: n,
                offset,
                len,
            } => {
                let Some(&id) = m.names.get(&n) else { continue };
                let fh = m.handle(&fs, id);
                check_read(
                    &m.content[id],
                    offset,
                    len,
                    &fs.read(fh, offset, len).unwrap(),
                )?;
            }
            NsOp::Close { name: n } => {
                let Some(&id) = m.names.get(&n) else { continue };
                if let Some(fh) = m.fh.remove(&id) {
                    fs.flush(fh).unwrap();
                    fs.release(fh).unwrap();
                }
            }
            NsOp::Rename { from, to } => {
                let done = fs.rename(ROOT_INO, name(from), ROOT_INO, name(to), false, false);
                let Some(&id) = m.names.get(&from) else {
                    prop_assert!(done.is_err());
                    continue;
                };
                done.unwrap();
                // POSIX: a rename between two names of one file does nothing.
                if m.names.get(&to) != Some(&id) {
                    if let Some(old) = m.names.insert(to, id) {
                        m.nlink[old] -= 1;
                    }
                    m.names.remove(&from);
                }
            }
            NsOp::Unlink { name: n } => {
                let done = fs.unlink(ROOT_INO, name(n));
                match m.names.remove(&n) {
                    Some(id) => {
                        done.unwrap();
                        m.nlink[id] -= 1;
                    }
                    None => prop_assert!(done.is_err()),
                }
            }
            NsOp::Link { from, to } => {
                let (Some(&id), None) = (m.names.get(&from), m.names.get(&to)) else {
                    continue;
                };
                fs.link(m.ino[id], ROOT_INO, name(to)).unwrap();
                m.names.insert(to, id);
                m.nlink[id] += 1;
            }
            NsOp::Fsync { name: n } => {
                let Some(&id) = m.names.get(&n) else { continue };
                fs.fsync(m.ino[id]).unwrap();
            }
            NsOp::SyncAll => fs.sync_all().unwrap(),
            NsOp::Reclaim => drop(fs.reclaim_journal().unwrap()),
            NsOp::CrashAfterClose => {
                for (_, fh) in std::mem::take(&mut m.fh) {
                    fs.flush(fh).unwrap();
                    fs.release(fh).unwrap();
                }
                crash(fs);
                fs = open();
            }
        }
    }
    // Every name leads to its file, whole; files kept only by a handle read through it.
    for (&n, &id) in &m.names {
        let a = fs.lookup(ROOT_INO, name(n)).unwrap();
        prop_assert_eq!(a.ino, m.ino[id], "{}", NAMES[n]);
        prop_assert_eq!(a.size, m.content[id].len() as u64, "size of {}", NAMES[n]);
        prop_assert_eq!(a.nlink, m.nlink[id], "links of {}", NAMES[n]);
        let fh = fs.open(a.ino, false).unwrap();
        check_read(
            &m.content[id],
            0,
            u32::MAX,
            &fs.read(fh, 0, u32::MAX).unwrap(),
        )?;
        fs.release(fh).unwrap();
    }
    for (&id, &fh) in &m.fh {
        check_read(
            &m.content[id],
            0,
            u32::MAX,
            &fs.read(fh, 0, u32::MAX).unwrap(),
        )?;
    }
    for (n, text) in NAMES.iter().enumerate() {
        if !m.names.contains_key(&n) {
            prop_assert!(fs.lookup(ROOT_INO, name(n)).is_err(), "{text} exists");
        }
    }
    for (_, fh) in std::mem::take(&mut m.fh) {
        fs.release(fh).unwrap();
    }
    fs.sync_all().unwrap();
    fs.index().check().unwrap();
    crash(fs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("WALRUSFS_CONTENT_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn file_content_matches_a_byte_vector_through_buffers_journal_and_store(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        run(&ops)?;
    }

    #[test]
    fn files_match_a_model_through_renames_links_unlinks_and_crashes(
        ops in proptest::collection::vec(ns_op(), 1..50)
    ) {
        run_ns(&ops)?;
    }
}
