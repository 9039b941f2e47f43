//! Real tools on a real walrusfs mount: `cp -a`, `rsync`, `tar`, `git`, `sqlite3`, and the
//! backup tools `restic` and `borg` (repositories on the mount, checked after a remount) each do
//! their ordinary job and the result is checked against the source (with `diff -r` and an
//! exact tree comparison of names, kinds, contents, modes, mtimes and hard links).
//!
//! The tools must be installed (`source scripts/lib/deps.sh && install_test_deps`).

#![allow(clippy::unwrap_used)] // A panic in a test helper is a test failure, with its location.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::mount::{
    assert_ok, assert_same_tree, is_mountpoint, run_ok, run_with_timeout, shared, snapshot,
    wait_until, Compare, Mount,
};
use common::random_bytes;

/// What `cp -a`, `rsync -a` and `tar` preserve: everything but ownership is compared here
/// (all files are root's anyway) and directory link counts (`Compare::ALL` checks those
/// elsewhere).
const PRESERVED: Compare = Compare {
    mode: true,
    owner: true,
    nlink: true,
    dir_nlink: false,
    mtime: true,
    hard_links: true,
    xattrs: false,
};

/// Panics with install instructions unless `tool` is on PATH.
fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: source scripts/lib/deps.sh && install_test_deps"
    );
}

/// A small source tree: files of several sizes (one past a 4 MiB chunk), nested dirs, a
/// relative symlink, a dangling symlink, a hard link, varied modes and fixed mtimes.
fn make_source_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    fs::create_dir_all(p("src/nested/deeper")).unwrap();
    fs::create_dir_all(p("empty-dir")).unwrap();
    fs::write(p("README"), b"a small tree\n").unwrap();
    fs::write(p("empty"), b"").unwrap();
    fs::write(p("src/main.c"), b"int main(void) { return 0; }\n").unwrap();
    fs::write(p("src/nested/data.bin"), random_bytes(300_001, 1)).unwrap();
    fs::write(
        p("src/nested/deeper/big.bin"),
        random_bytes((4 << 20) + 12_345, 2),
    )
    .unwrap();
    fs::write(p("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::os::unix::fs::symlink("src/main.c", p("link-to-main")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", p("dangling")).unwrap();
    fs::hard_link(p("README"), p("src/README.hard")).unwrap();
    for (path, mode) in [
        ("run.sh", 0o755),
        ("src/main.c", 0o600),
        ("src/nested", 0o700),
        ("empty", 0o444),
    ] {
        fs::set_permissions(p(path), fs::Permissions::from_mode(mode)).unwrap();
    }
    // Fixed mtimes with sub-second parts, set children first so directories keep theirs.
    let mut paths: Vec<_> = snapshot(root).into_keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, rel) in paths.iter().enumerate() {
        let path = root.join(rel);
        if fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
        {
            continue;
        }
        let t = UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 1000, 500_000_000);
        let f = fs::File::open(&path).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }
}

fn diff_r(a: &Path, b: &Path) {
    run_ok(
        Path::new("/"),
        "diff",
        &[
            "-r",
            "--no-dereference",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
}

#[test]
fn cp_a_preserves_a_tree() {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    let dst = shared().fresh_dir("cp").join("tree");
    run_ok(
        Path::new("/"),
        "cp",
        &["-a", src.to_str().unwrap(), dst.to_str().unwrap()],
    );
    diff_r(&src, &dst);
    assert_same_tree(
        &snapshot(&dst),
        &snapshot(&src),
        PRESERVED,
        "cp -a onto the mount",
    );
    // And back off the mount.
    let back = local.path().join("back");
    run_ok(
        Path::new("/"),
        "cp",
        &["-a", dst.to_str().unwrap(), back.to_str().unwrap()],
    );
    assert_same_tree(
        &snapshot(&back),
        &snapshot(&src),
        PRESERVED,
        "cp -a off the mount",
    );
}

#[test]
fn rsync_twice_transfers_nothing_and_inplace_updates() {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    let dst = shared().fresh_dir("rsync");
    let (s, d) = (format!("{}/", src.display()), format!("{}/", dst.display()));
    let rsync = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([s.as_str(), d.as_str()]);
        run_ok(Path::new("/"), "rsync", &all)
    };
    rsync(&["-a", "-H"]);
    diff_r(&src, &dst);
    assert_same_tree(
        &snapshot(&dst),
        &snapshot(&src),
        PRESERVED,
        "after rsync -a",
    );

    // Second run: rsync's quick check (size + mtime) finds everything up to date.
    let changes = rsync(&["-a", "-H", "--itemize-changes"]);
    assert_eq!(
        changes.trim(),
        "",
        "second rsync -a changed things:\n{changes}"
    );
    let stats = rsync(&["-a", "-H", "--stats"]);
    assert!(
        stats.contains("Number of regular files transferred: 0"),
        "second rsync -a transferred files:\n{stats}"
    );

    // Modify a file (same size, new mtime) and sync in place: the destination inode is kept.
    let target = "src/nested/deeper/big.bin";
    let mut data = fs::read(src.join(target)).unwrap();
    data[1000] ^= 0xff;
    data[(4 << 20) + 7] ^= 0xff;
    fs::write(src.join(target), &data).unwrap();
    let ino = fs::metadata(dst.join(target)).unwrap().ino();
    let changes = rsync(&[
        "-a",
        "-H",
        "--inplace",
        "--no-whole-file",
        "--itemize-changes",
    ]);
    assert!(
        changes.contains(target),
        "rsync --inplace did not update {target}:\n{changes}"
    );
    assert_eq!(
        fs::metadata(dst.join(target)).unwrap().ino(),
        ino,
        "--inplace rewrote the same inode"
    );
    diff_r(&src, &dst);
    assert_same_tree(
        &snapshot(&dst),
        &snapshot(&src),
        PRESERVED,
        "after rsync --inplace",
    );
}

#[test]
fn tar_round_trip_through_the_mount() {
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    let base = shared().fresh_dir("tar");
    // Extract a locally made archive onto the mount.
    let archive = local.path().join("local.tar");
    run_ok(
        &src,
        "tar",
        &["cf", archive.to_str().unwrap(), "--format=posix", "."],
    );
    let on_mount = base.join("x");
    fs::create_dir(&on_mount).unwrap();
    run_ok(&on_mount, "tar", &["xpf", archive.to_str().unwrap()]);
    diff_r(&src, &on_mount);
    assert_same_tree(
        &snapshot(&on_mount),
        &snapshot(&src),
        PRESERVED,
        "tar x onto the mount",
    );
    // Archive the tree on the mount (the archive itself written to the mount) and extract it
    // both locally and onto the mount again.
    let archive2 = base.join("mount.tar");
    run_ok(
        &on_mount,
        "tar",
        &["cf", archive2.to_str().unwrap(), "--format=posix", "."],
    );
    for dest in [local.path().join("out"), base.join("y")] {
        fs::create_dir(&dest).unwrap();
        run_ok(&dest, "tar", &["xpf", archive2.to_str().unwrap()]);
        diff_r(&src, &dest);
        assert_same_tree(
            &snapshot(&dest),
            &snapshot(&src),
            PRESERVED,
            &format!("tar c on the mount, tar x into {}", dest.display()),
        );
    }
}

#[test]
fn git_commit_on_the_mount() {
    require("git");
    let repo = shared().fresh_dir("git");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Walrus Test",
                "-c",
                "user.email=test@walrusfs.invalid",
            ])
            .args(["-c", "init.defaultBranch=main", "-c", "core.fsync=all"])
            .args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", &repo)
            .output()
            .unwrap();
        assert_ok(&out, &format!("git {}", args.join(" ")))
    };
    git(&["init", "-q"]);
    make_source_tree(&repo);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    assert_eq!(
        git(&["status", "--porcelain"]),
        "",
        "clean after the first commit"
    );
    fs::write(repo.join("README"), b"changed\n").unwrap();
    fs::write(repo.join("new-file"), random_bytes(50_000, 9)).unwrap();
    fs::remove_file(repo.join("run.sh")).unwrap();
    let status = git(&["status", "--porcelain"]);
    assert_eq!(
        status, " M README\n D run.sh\n M src/README.hard\n?? new-file\n",
        "status sees exactly the changes"
    );
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "second"]);
    assert_eq!(
        git(&["status", "--porcelain"]),
        "",
        "clean after the second commit"
    );
    assert_eq!(git(&["rev-list", "--count", "HEAD"]).trim(), "2");
    git(&["fsck", "--full", "--strict"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(
        git(&["show", "HEAD~1:README"]),
        "a small tree\n",
        "old blob readable after gc"
    );
}

/// Runs an SQL script with the sqlite3 CLI on `db`; returns its output.
fn sqlite(db: &Path, sql: &str) -> String {
    let mut cmd = Command::new("sqlite3");
    cmd.arg("-bail").arg(db).arg(sql);
    let out = cmd.output().unwrap();
    assert_ok(&out, &format!("sqlite3 {} {sql:?}", db.display()))
}

const SQL_SETUP: &str = "
    CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB);
    BEGIN;
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
    INSERT INTO t (id, name, payload) SELECT i, 'row ' || i, randomblob(200 + i % 300) FROM n;
    COMMIT;
    BEGIN;
    DELETE FROM t WHERE id % 2 = 0;
    INSERT INTO t (id, name) VALUES (5000, 'rolled back');
    ROLLBACK;
    CREATE INDEX t_name ON t (name);
";

const SQL_CHECK: &str = "SELECT count(*), sum(id), count(payload) FROM t; PRAGMA integrity_check;";
const SQL_EXPECTED: &str = "1000|500500|1000\nok\n";

#[test]
fn sqlite_transactions_survive_remount() {
    require("sqlite3");
    let m = Mount::new();
    let journal = m.join("journal.db");
    let wal = m.join("wal.db");
    sqlite(&journal, SQL_SETUP);
    assert_eq!(
        sqlite(&journal, SQL_CHECK),
        SQL_EXPECTED,
        "rollback-journal db"
    );
    // WAL mode uses a MAP_SHARED -shm file and fsyncs the log.
    assert_eq!(sqlite(&wal, "PRAGMA journal_mode=WAL;"), "wal\n");
    sqlite(&wal, SQL_SETUP);
    assert_eq!(sqlite(&wal, SQL_CHECK), SQL_EXPECTED, "WAL db");
    // 1000 single-statement transactions (each its own fsync).
    let singles: String = (0..200)
        .map(|i| {
            format!(
                "INSERT INTO t (id, name) VALUES ({}, 'single');",
                10_000 + i
            )
        })
        .collect();
    sqlite(&journal, &singles);
    sqlite(&journal, "DELETE FROM t WHERE id >= 10000;");
    m.remount();
    for db in [&journal, &wal] {
        assert_eq!(
            sqlite(db, SQL_CHECK),
            SQL_EXPECTED,
            "{} after remount",
            db.display()
        );
        assert_eq!(
            sqlite(db, "SELECT name FROM t WHERE id = 777;"),
            "row 777\n",
            "{}",
            db.display()
        );
    }
    let leftovers: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-journal"))
        .collect();
    assert!(leftovers.is_empty(), "stale journals: {leftovers:?}");
}

/// Runs `program ARGS` in `dir` with `env` set; asserts success and returns stdout.
#[track_caller]
fn run_env(dir: &Path, env: &[(&str, &OsStr)], program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert_ok(&out, &format!("{program} {}", args.join(" ")))
}

/// A backup tool's two snapshots of a source tree made at `src`: `take("first")` of the
/// tree as made, then, after one file changed in place, one added and one removed,
/// `take("second")`. Returns each tag with the tree as it was at that snapshot (a copy of
/// the first state, next to `src`; `src` itself for the second).
fn two_snapshots(src: &Path, take: impl Fn(&str)) -> [(&'static str, PathBuf); 2] {
    fs::create_dir(src).unwrap();
    make_source_tree(src);
    take("first");
    let first = src.with_file_name("first");
    run_ok(
        Path::new("/"),
        "cp",
        &["-a", src.to_str().unwrap(), first.to_str().unwrap()],
    );
    let big = src.join("src/nested/deeper/big.bin");
    let mut data = fs::read(&big).unwrap();
    data[12_345] ^= 0x5a;
    fs::write(&big, &data).unwrap();
    fs::write(src.join("added.txt"), b"in the second snapshot only\n").unwrap();
    fs::remove_file(src.join("README")).unwrap();
    take("second");
    [("first", first), ("second", src.to_owned())]
}

/// `restored` holds exactly `expected` (`diff -r`, then the tree comparison `compare`).
#[track_caller]
fn assert_restored(restored: &Path, expected: &Path, compare: Compare, what: &str) {
    diff_r(expected, restored);
    assert_same_tree(&snapshot(restored), &snapshot(expected), compare, what);
}

#[test]
fn restic_backs_up_checks_and_restores_through_the_mount() {
    require("restic");
    let m = Mount::new();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    let password = local.path().join("password");
    fs::write(&password, "walrusfs-test\n").unwrap();
    let cache = local.path().join("restic-cache");
    let repo = m.join("restic-repo");
    let env = [
        ("RESTIC_PASSWORD_FILE", password.as_os_str()),
        ("RESTIC_CACHE_DIR", cache.as_os_str()),
        ("RESTIC_REPOSITORY", repo.as_os_str()),
    ];
    let restic = |args: &[&str]| run_env(local.path(), &env, "restic", args);
    restic(&["init", "-q"]);
    let states = two_snapshots(&src, |tag| {
        restic(&["backup", "-q", "--tag", tag, src.to_str().unwrap()]);
    });

    // Everything restic wrote (packs, indexes, snapshots, locks come and go) survives a
    // remount, and every byte of every pack still matches its hash.
    m.remount();
    restic(&["check", "--read-data"]);
    for (tag, expected) in &states {
        let target = local.path().join(format!("restored-{tag}"));
        restic(&[
            "restore",
            "-q",
            "latest",
            "--tag",
            tag,
            "--target",
            target.to_str().unwrap(),
        ]);
        // restic restores a snapshot under the absolute path it was taken from.
        assert_restored(
            &target.join(src.strip_prefix("/").unwrap()),
            expected,
            Compare {
                hard_links: false,
                ..PRESERVED
            },
            &format!("restic restore of the {tag} snapshot"),
        );
    }
}

#[test]
fn borg_creates_checks_and_extracts_through_the_mount() {
    require("borg");
    let m = Mount::new();
    let local = tempfile::tempdir().unwrap();
    // Borg keeps its key cache, config and security state under BORG_BASE_DIR: a temp dir,
    // so the test neither reads nor leaves state in the home directory.
    let base = local.path().join("borg-base");
    let passphrase = local.path().join("passphrase");
    fs::write(&passphrase, "walrusfs-test").unwrap();
    let pass = format!("cat {}", passphrase.display());
    let env = [
        ("BORG_BASE_DIR", base.as_os_str()),
        ("BORG_PASSCOMMAND", OsStr::new(&pass)),
    ];
    let repo = m.join("borg-repo");
    let repo_s = repo.to_str().unwrap();
    let borg = |dir: &Path, args: &[&str]| run_env(dir, &env, "borg", args);
    borg(local.path(), &["init", "--encryption", "repokey", repo_s]);
    // Archive the tree relative to `local` (borg stores the paths it was given).
    let states = two_snapshots(&local.path().join("tree"), |name| {
        borg(
            local.path(),
            &["create", &format!("{repo_s}::{name}"), "tree"],
        );
    });

    // The repository's segments, index and hints survive a remount and verify, data included.
    m.remount();
    borg(local.path(), &["check", "--verify-data", repo_s]);
    for (name, expected) in &states {
        let target = local.path().join(format!("extracted-{name}"));
        fs::create_dir(&target).unwrap();
        borg(&target, &["extract", &format!("{repo_s}::{name}")]);
        assert_restored(
            &target.join("tree"),
            expected,
            PRESERVED,
            &format!("borg extract of the {name} archive"),
        );
    }
}

#[test]
fn walrusfs_up_smoke() {
    // `walrusfs up` with its default state folder (.walrusfs) relative to a temp cwd.
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    struct Cleanup<'a>(&'a Path, &'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let bin = common::bin();
            let _ = Command::new(bin).arg("unmount").arg(self.1).output();
            if is_mountpoint(self.1) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(self.1)
                    .status();
            }
            let _ = Command::new(bin)
                .args(["testnet", "down", "--dir"])
                .arg(self.0.join(".walrusfs/testnet"))
                .output();
        }
    }
    let _cleanup = Cleanup(work.path(), &mnt);
    let log = fs::File::create(work.path().join("up.log")).unwrap();
    let status = run_with_timeout(
        Command::new(common::bin())
            .arg("up")
            .arg("mnt")
            .current_dir(work.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
        Duration::from_secs(120),
    );
    let log = fs::read_to_string(work.path().join("up.log")).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "walrusfs up failed ({status:?}):\n{log}"
    );
    assert!(
        is_mountpoint(&mnt),
        "walrusfs up returned without a mount:\n{log}"
    );
    let data = random_bytes(1 << 20, 5);
    fs::write(mnt.join("hello"), &data).unwrap();
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), data);
    let out = Command::new(common::bin())
        .arg("unmount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert_ok(&out, "walrusfs unmount");
    assert!(
        wait_until(Duration::from_secs(5), || !is_mountpoint(&mnt)).is_some(),
        "still mounted after walrusfs unmount"
    );
}
