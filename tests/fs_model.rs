//! Model-based test: random sequences of filesystem operations run against a walrusfs mount and
//! against a plain local directory (the model: the kernel's own filesystem). After every
//! operation both must agree — same result, or the same errno — and at the end of each case the
//! two trees must match in names, kinds, sizes, contents, modes, link counts, hard-link groups
//! and symlink targets.
//!
//! One mount serves every case (each case gets a fresh directory on it). `WALRUSFS_MODEL_CASES`
//! overrides the number of cases (default 48).

#![allow(clippy::unwrap_used)] // A panic in a test helper is a test failure, with its location.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use common::mount::{close_checked, diff_trees, evict_path, snapshot, Compare, Mount};
use common::random_bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The chunk size walrusfs probably uses: a few writes are larger, most far smaller.
const CHUNK: u64 = 4 << 20;
/// Default number of random cases; each runs 40 to 80 operations.
const DEFAULT_CASES: u32 = 48;

/// A path relative to the case root, built from a tiny alphabet so operations collide often
/// (same names, parents that are files, directories that are not empty).
#[derive(Clone)]
struct P(String);

impl std::fmt::Debug for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One operation. Every file operation opens, acts and closes, so closes (which upload) are
/// exercised all the time.
#[derive(Clone, Debug)]
enum Op {
    Create {
        path: P,
        excl: bool,
    },
    Write {
        path: P,
        offset: u64,
        len: usize,
        seed: u64,
    },
    Truncate {
        path: P,
        len: u64,
    },
    Read {
        path: P,
        offset: u64,
        len: usize,
    },
    Rename {
        from: P,
        to: P,
    },
    Unlink {
        path: P,
    },
    Mkdir {
        path: P,
    },
    Rmdir {
        path: P,
    },
    Link {
        from: P,
        to: P,
    },
    Symlink {
        target: String,
        path: P,
    },
    Fsync {
        path: P,
    },
    Chmod {
        path: P,
        mode: u32,
    },
    Stat {
        path: P,
    },
    ReadDir {
        path: P,
    },
}

/// What an operation returned, in a form both filesystems must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Value {
    Unit,
    Bytes(Vec<u8>),
    /// kind, size (0 for directories: their sizes are filesystem-specific), mode, nlink.
    Stat(&'static str, u64, u32, u64),
    Names(Vec<String>),
}

type Outcome = Result<Value, i32>;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn path_strategy() -> impl Strategy<Value = P> {
    let name = || prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        4 => name().prop_map(|a| P(a.to_owned())),
        // Mostly under "a", which the prelude makes a directory.
        4 => name().prop_map(|b| P(format!("a/{b}"))),
        1 => (name(), name()).prop_map(|(a, b)| P(format!("{a}/{b}"))),
        1 => name().prop_map(|c| P(format!("a/b/{c}"))),
    ]
}

/// Every case starts from this state, so the random operations find files, directories and
/// depth to work on instead of failing with ENOENT.
fn prelude() -> Vec<Op> {
    let p = |s: &str| P(s.to_owned());
    let write = |path: &str, len: usize, seed: u64| Op::Write {
        path: p(path),
        offset: 0,
        len,
        seed,
    };
    vec![
        Op::Mkdir { path: p("a") },
        Op::Mkdir { path: p("a/b") },
        Op::Create {
            path: p("b"),
            excl: true,
        },
        write("b", 5000, 1),
        Op::Create {
            path: p("a/a"),
            excl: true,
        },
        write("a/a", 100_000, 2),
        Op::Create {
            path: p("a/c"),
            excl: false,
        },
        Op::Create {
            path: p("a/b/c"),
            excl: false,
        },
        write("a/b/c", 10, 3),
    ]
}

fn offset_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0..70_000u64,
        2 => (CHUNK - 3000)..(CHUNK + 3000),
        1 => 0..(9u64 << 20),
    ]
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        15 => 0..10_000usize,
        3 => 10_000..300_000usize,
        1 => (CHUNK as usize)..(CHUNK as usize + 500_000),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = path_strategy;
    prop_oneof![
        10 => (p(), any::<bool>()).prop_map(|(path, excl)| Op::Create { path, excl }),
        20 => (p(), offset_strategy(), len_strategy(), any::<u64>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        6 => (p(), offset_strategy()).prop_map(|(path, len)| Op::Truncate { path, len }),
        12 => (p(), offset_strategy(), len_strategy())
            .prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
        8 => (p(), p()).prop_map(|(from, to)| Op::Rename { from, to }),
        6 => p().prop_map(|path| Op::Unlink { path }),
        8 => p().prop_map(|path| Op::Mkdir { path }),
        4 => p().prop_map(|path| Op::Rmdir { path }),
        4 => (p(), p()).prop_map(|(from, to)| Op::Link { from, to }),
        4 => (p(), p()).prop_map(|(target, path)| Op::Symlink { target: target.0, path }),
        4 => p().prop_map(|path| Op::Fsync { path }),
        4 => (p(), prop::sample::select(vec![0o600u32, 0o644, 0o755, 0o700, 0o444, 0o000]))
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
        6 => p().prop_map(|path| Op::Stat { path }),
        4 => p().prop_map(|path| Op::ReadDir { path }),
    ]
}

/// Runs `op` under `root`.
fn apply(root: &Path, op: &Op) -> Outcome {
    let at = |p: &P| root.join(&p.0);
    let unit = |r: io::Result<()>| r.map(|()| Value::Unit).map_err(errno);
    match op {
        Op::Create { path, excl } => {
            let mut o = OpenOptions::new();
            o.write(true).mode(0o644);
            if *excl {
                o.create_new(true);
            } else {
                o.create(true);
            }
            unit(o.open(at(path)).and_then(close_checked))
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let data = random_bytes(*len, *seed);
            unit(OpenOptions::new().write(true).open(at(path)).and_then(|f| {
                f.write_all_at(&data, *offset)?;
                close_checked(f)
            }))
        }
        Op::Truncate { path, len } => unit(
            OpenOptions::new()
                .write(true)
                .open(at(path))
                .and_then(|f| f.set_len(*len).and_then(|()| close_checked(f))),
        ),
        Op::Read { path, offset, len } => {
            let f = File::open(at(path)).map_err(errno)?;
            let mut buf = vec![0u8; *len];
            let mut done = 0;
            while done < *len {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(errno(e)),
                }
            }
            buf.truncate(done);
            Ok(Value::Bytes(buf))
        }
        Op::Rename { from, to } => unit(fs::rename(at(from), at(to))),
        Op::Unlink { path } => unit(fs::remove_file(at(path))),
        Op::Mkdir { path } => unit(fs::create_dir(at(path))),
        Op::Rmdir { path } => unit(fs::remove_dir(at(path))),
        Op::Link { from, to } => unit(fs::hard_link(at(from), at(to))),
        Op::Symlink { target, path } => unit(std::os::unix::fs::symlink(target, at(path))),
        Op::Fsync { path } => unit(File::open(at(path)).and_then(|f| f.sync_all())),
        Op::Chmod { path, mode } => unit(fs::set_permissions(
            at(path),
            fs::Permissions::from_mode(*mode),
        )),
        Op::Stat { path } => {
            let m = fs::symlink_metadata(at(path)).map_err(errno)?;
            let ft = m.file_type();
            let (kind, size) = if ft.is_dir() {
                ("dir", 0)
            } else if ft.is_symlink() {
                ("symlink", m.len())
            } else {
                ("file", m.len())
            };
            Ok(Value::Stat(kind, size, m.mode() & 0o7777, m.nlink()))
        }
        Op::ReadDir { path } => {
            let mut names = Vec::new();
            for entry in fs::read_dir(at(path)).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(Value::Names(names))
        }
    }
}

/// A short description of an outcome (reads can be megabytes).
fn show(o: &Outcome) -> String {
    match o {
        Ok(Value::Bytes(b)) => format!(
            "Ok({} bytes, first {:02x?})",
            b.len(),
            &b[..b.len().min(12)]
        ),
        Ok(v) => format!("Ok({v:?})"),
        Err(e) => format!("Err({})", io::Error::from_raw_os_error(*e)),
    }
}

/// Drops the kernel's cached pages of every regular file under `root`, so the final comparison
/// reads through walrusfs.
fn evict_tree(root: &Path) {
    for (rel, entry) in snapshot(root) {
        if matches!(entry.kind, common::mount::Kind::File(_)) {
            evict_path(&root.join(rel));
        }
    }
}

/// How often each kind of operation succeeded or failed (printed at the end, to show that the
/// generated sequences do reach deep states rather than failing with ENOENT everywhere).
static STATS: Mutex<BTreeMap<String, (usize, usize)>> = Mutex::new(BTreeMap::new());

fn count(op: &Op, outcome: &Outcome) {
    let name = format!("{op:?}");
    let name = name.split([' ', '{']).next().unwrap_or("?").to_owned();
    let mut stats = STATS.lock().unwrap();
    let entry = stats.entry(name).or_default();
    if outcome.is_ok() {
        entry.0 += 1;
    } else {
        entry.1 += 1;
    }
}

fn run_case(m: &Mount, ops: &[Op]) -> Result<(), TestCaseError> {
    let on_mount = m.fresh_dir("case");
    let local_dir = tempfile::tempdir().unwrap();
    let local = local_dir.path();
    for (i, op) in ops.iter().enumerate() {
        let got = apply(&on_mount, op);
        let want = apply(local, op);
        count(op, &want);
        if got != want {
            return Err(TestCaseError::fail(format!(
                "op {i} {op:?}: walrusfs {} but the local filesystem {}\n(dir {})",
                show(&got),
                show(&want),
                on_mount.display()
            )));
        }
    }
    evict_tree(&on_mount);
    let cmp = Compare {
        mode: true,
        owner: true,
        nlink: true,
        dir_nlink: true,
        mtime: false,
        hard_links: true,
        xattrs: false,
    };
    let diffs = diff_trees(
        &snapshot(&on_mount),
        &snapshot(local),
        cmp,
        "walrusfs",
        "local",
    );
    if !diffs.is_empty() {
        return Err(TestCaseError::fail(format!(
            "after {} ops the trees differ:\n  {}",
            ops.len(),
            diffs.join("\n  ")
        )));
    }
    fs::remove_dir_all(&on_mount)
        .map_err(|e| TestCaseError::fail(format!("rm -r {}: {e}", on_mount.display())))?;
    Ok(())
}

#[test]
fn random_operation_sequences_match_a_local_directory() {
    let cases = std::env::var("WALRUSFS_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let m = Mount::new();
    let mut runner = TestRunner::new(Config {
        cases,
        // Each shrink step replays a whole case against the mount: keep shrinking bounded.
        max_shrink_iters: 200,
        // No regression files next to the sources; a failure prints its minimal sequence.
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(op_strategy(), 40..=80).prop_map(|ops| {
        let mut all = prelude();
        all.extend(ops);
        all
    });
    let result = runner.run(&strategy, |ops| run_case(&m, &ops));
    let stats = STATS.lock().unwrap();
    let (ok, err): (usize, usize) = stats.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    eprintln!("{cases} cases, {ok} ops succeeded, {err} failed identically; by kind (ok, err):");
    for (name, (ok, err)) in stats.iter() {
        eprintln!("  {name:<10} {ok:>5} {err:>5}");
    }
    if let Err(e) = result {
        panic!("{e}\nmount logs:\n{}", m.logs());
    }
    // The generator must reach real states: most kinds of operation succeed at least sometimes.
    let dead: Vec<&String> = stats
        .iter()
        .filter(|(_, v)| v.0 == 0)
        .map(|(k, _)| k)
        .collect();
    assert!(dead.is_empty(), "operations that never succeeded: {dead:?}");
}
