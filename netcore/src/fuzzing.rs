//! Mutation fuzzing on the stable toolchain (test builds only; proptest drives it).
//!
//! A fuzz target takes seeds — valid encodings built by the test and the files committed under
//! `fuzz/corpus/<target>/` — mutates them with [`mutate`] (bit flips, cuts, insertions,
//! overwrites, copied ranges, boundary integers) and feeds each result to a decoder that reads
//! bytes from the network or a disk. The decoder must return a value or an error: never panic,
//! hang, or allocate beyond its limits. Cases per target: `WALRUSFS_FUZZ_CASES` (default 500,
//! a few seconds in the test suite; long runs by name, e.g.
//! `WALRUSFS_FUZZ_CASES=200000 cargo test --features walrusfs/faults fuzz_`). A failure is
//! shrunk and saved by proptest under `proptest-regressions/`; commit that file and it is
//! replayed first on every run, a regression test from then on.

use std::path::PathBuf;

/// One mutation: what, where (taken modulo the input length), and a value.
pub type Mutation = (u8, u32, u32);

/// Applies `ops` to a copy of `seed`.
pub fn mutate(seed: &[u8], ops: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for &(kind, pos, value) in ops {
        let at = |len: usize| if len == 0 { 0 } else { pos as usize % len };
        match kind % 7 {
            0 if !b.is_empty() => {
                let i = at(b.len());
                b[i] ^= 1 << (value % 8);
            }
            1 => {
                let i = at(b.len() + 1);
                b.truncate(i);
            }
            2 => {
                let i = at(b.len() + 1);
                let n = (value % 64) as usize;
                b.splice(i..i, std::iter::repeat_n(value as u8, n));
            }
            3 if !b.is_empty() => {
                let i = at(b.len());
                b[i] = value as u8;
            }
            4 if !b.is_empty() => {
                // A range copied elsewhere (a spliced field).
                let from = at(b.len());
                let len = ((value % 32) as usize).min(b.len() - from);
                let chunk = b[from..from + len].to_vec();
                let to = (value as usize >> 5) % (b.len() + 1);
                b.splice(to..to, chunk);
            }
            5 if !b.is_empty() => {
                // A boundary value where a length or count may sit (LEB128 or fixed-width).
                let i = at(b.len());
                let v: &[u8] = match value % 5 {
                    0 => &[0],
                    1 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                    2 => &[0xff; 10],
                    3 => &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
                    _ => &[0x7f],
                };
                let end = (i + v.len()).min(b.len());
                b.splice(i..end, v.iter().copied());
            }
            _ => {
                let i = at(b.len());
                if i < b.len() {
                    b.remove(i);
                }
            }
        }
    }
    b
}

/// Cases per fuzz target (`WALRUSFS_FUZZ_CASES`, default 500).
pub fn cases() -> u32 {
    std::env::var("WALRUSFS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// The committed corpus of `target`: `fuzz/corpus/<target>/*` at the workspace root.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Where `target`'s corpus lives.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Writes `seeds` as `target`'s corpus when `WALRUSFS_WRITE_CORPUS=1` (run once when a format
/// changes, and commit the files); otherwise does nothing.
pub fn write_corpus(target: &str, seeds: &[Vec<u8>]) {
    if std::env::var("WALRUSFS_WRITE_CORPUS").as_deref() != Ok("1") {
        return;
    }
    let dir = corpus_dir(target);
    let _ = std::fs::create_dir_all(&dir);
    for (i, s) in seeds.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("seed-{i:03}")), s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds() {
        for kind in 0..8u8 {
            for pos in [0u32, 1, 7, u32::MAX] {
                for value in [0u32, 3, 31, 1000, u32::MAX] {
                    for seed in [&[][..], &[1][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9][..]] {
                        let _ = mutate(seed, &[(kind, pos, value)]);
                    }
                }
            }
        }
        assert_eq!(mutate(&[0, 0], &[(0, 1, 3)]), vec![0, 8]);
        assert_eq!(mutate(&[1, 2, 3], &[(1, 1, 0)]), vec![1]);
    }
}
