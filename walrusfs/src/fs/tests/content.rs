//! Model test of one file's content through every place a chunk can be: random writes,
//! truncations, reads (through the writing handle, whose reads seek and so fetch ranges, and
//! through a fresh one), closes, fsyncs, syncs and crashes after a close, against a plain byte
//! vector. The dirty budget is a few chunks, so spills under memory pressure happen all the
//! time, and a read's chunks are often split between buffers, the journal and the store.

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

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::default());
    let cfg = FsConfig {
        dirty_budget: 3 * u64::from(CHUNK),
        ..config()
    };
    let open = || open_fs(dir.path(), store.clone(), &rt, cfg.clone());
    let mut fs = open();
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
}
