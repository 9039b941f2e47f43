//! The archive on the network, end to end: real node processes, real mounts, a second machine
//! in its own network namespace. Everything published survives the loss of the state
//! directory; the writer lease admits one writer; followers see each version; a root record
//! rolled back or forged on `f` nodes is ignored; snapshots survive overwrites and GC; key
//! mistakes fail clearly and change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)] // libc: mkfifo, lchown, utimensat, setxattr in the tree builder.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::archive::{Archive, Machine, Slot};
use common::mount::{assert_same_tree, snapshot, wait_until, Compare};
use common::{random_bytes, Testnet};

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn mkfifo(path: &Path) {
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c(path).as_ptr(), 0o640) }, 0);
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::lchown(c(path).as_ptr(), uid, gid) }, 0);
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid pointers and lengths.
    let rc = unsafe {
        libc::setxattr(
            c(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {}", path.display());
}

/// Sets mtime (and atime) of `path` without following symlinks.
fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    let times = [t, t];
    // SAFETY: valid path and array of two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

/// Builds a tree of about `files + 9000` entries of every kind under `root`: nested and wide
/// directories, files of many sizes (empty, small, crossing chunk boundaries, sparse), symlinks
/// (relative, absolute, dangling), hard links, fifos, xattrs, odd modes, other owners, old times.
fn build_tree(root: &Path, data_files: usize) -> usize {
    let mut n = 0;
    let mut deep = root.to_path_buf();
    for i in 0..30 {
        deep = deep.join(format!("deep{i}"));
        fs::create_dir(&deep).unwrap();
        n += 1;
    }
    for d in 0..150 {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir(&dir).unwrap();
        n += 1;
        if d % 10 == 0 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        }
    }
    let dir_of = |i: usize| root.join(format!("d{:03}", i % 150));
    for i in 0..data_files {
        let path = dir_of(i).join(format!("data{i}.bin"));
        let len = match i % 50 {
            0 => (4 << 20) + 17, // crosses a chunk boundary
            1 => 1,
            _ => 100 + (i * 997) % 20_000,
        };
        fs::write(&path, random_bytes(len, i as u64)).unwrap();
        n += 1;
        if i % 7 == 0 {
            setxattr(&path, "user.origin", format!("file {i}").as_bytes());
            setxattr(&path, "user.empty", b"");
        }
        if i % 13 == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o4751)).unwrap();
        }
        if i % 11 == 0 {
            lchown(&path, 1000 + (i % 3) as u32, 100);
        }
        if i % 5 == 0 {
            set_mtime(&path, 1_000_000_000 + i as i64, 123_456_789);
        }
    }
    // Sparse files: a hole at the start, a hole in the middle.
    {
        let mut f = fs::File::create(root.join("sparse-start")).unwrap();
        f.seek(SeekFrom::Start(9 << 20)).unwrap();
        f.write_all(b"end").unwrap();
        let mut g = fs::File::create(root.join("sparse-middle")).unwrap();
        g.write_all(&random_bytes(1000, 9)).unwrap();
        g.seek(SeekFrom::Start(6 << 20)).unwrap();
        g.write_all(&random_bytes(1000, 10)).unwrap();
        n += 2;
    }
    for i in 0..5500 {
        let path = dir_of(i).join(format!("empty{i}"));
        fs::File::create(&path).unwrap();
        if i % 100 == 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        n += 1;
    }
    for i in 0..2400 {
        let path = dir_of(i).join(format!("link{i}"));
        let target = match i % 3 {
            0 => format!("data{}.bin", i % data_files.max(1)),
            1 => "/etc/hostname".to_string(),
            _ => format!("../nowhere/{i}"),
        };
        symlink(target, &path).unwrap();
        if i % 50 == 0 {
            lchown(&path, 4242, 4242);
        }
        n += 1;
    }
    for i in 0..(data_files / 2).min(600) {
        let src = dir_of(i).join(format!("data{i}.bin"));
        fs::hard_link(&src, dir_of(i + 1).join(format!("hard{i}"))).unwrap();
        n += 1;
        if i % 4 == 0 {
            fs::hard_link(&src, root.join(format!("hard-extra{i}"))).unwrap();
            n += 1;
        }
    }
    for i in 0..300 {
        mkfifo(&dir_of(i).join(format!("fifo{i}")));
        n += 1;
    }
    let xdir = root.join("d007");
    setxattr(&xdir, "user.dir", b"attr on a directory");
    // Directory times last: creating entries changed them.
    for d in 0..150 {
        set_mtime(&dir_of(d), 1_500_000_000 + d as i64, 1);
    }
    n
}

/// Copies `src` into `dst` (both existing directories) preserving everything.
fn copy_tree(src: &Path, dst: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_tree_of_ten_thousand_entries_restores_on_a_second_machine() {
    let machine = Machine::new();
    let archive = Archive::on(Testnet::up_on(7, &machine.host_ip()));
    let src = tempfile::tempdir().unwrap();
    let entries = build_tree(src.path(), 1200);
    assert!(entries >= 10_000, "only {entries} entries");
    let expected = snapshot(src.path());

    // Machine A writes the tree and unmounts; its state directory is then lost.
    let a = archive.mount("a", &[]);
    copy_tree(src.path(), &a.path());
    assert_same_tree(&snapshot(&a.path()), &expected, Compare::ALL, "mount A");
    a.unmount();
    fs::remove_dir_all(a.state()).unwrap();

    // The key travels as an exported line, imported on the second machine.
    let line = archive.cli(&["key", "export", "--key", archive.key().to_str().unwrap()]);
    assert!(line.status.success());
    let imported = archive.base.path().join("imported.key");
    let import = std::process::Command::new(common::bin())
        .args(["key", "import", "--out", imported.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(&line.stdout);
    assert!(import.status.success(), "{import:?}");
    assert_eq!(
        fs::read(&imported).unwrap(),
        fs::read(archive.key()).unwrap()
    );

    // Machine B: its own network namespace, an empty state directory, key + passphrase +
    // committee only.
    let b = archive.slot("b").on_machine(&machine);
    b.mount(&archive, &[]).unwrap();
    let pid = b.pid().unwrap();
    assert_ne!(
        Machine::netns_of(pid),
        Machine::netns_of(std::process::id() as i32),
        "the second mount must run in its own network namespace"
    );
    assert_same_tree(
        &snapshot(&b.path()),
        &expected,
        Compare::ALL,
        "restored on machine B",
    );
    b.unmount();
}

/// `Command::output` with bytes fed to stdin.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = self.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn write(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Files present (name -> contents) at the top of a mount.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Mounts, writes `x*`, syncs, writes `y*`, arms `point`, syncs again (which dies at the
/// point), and returns the dead writer's slot.
fn crash_while_publishing(archive: &Archive, point: &str) -> Slot {
    let a = archive.mount(
        "writer",
        &["--publish-interval", "3600", "--lease-secs", "5"],
    );
    for i in 0..5 {
        write(&a.join(format!("x{i}")), &random_bytes(3000 + i, i as u64));
    }
    a.sync();
    for i in 0..5 {
        write(
            &a.join(format!("y{i}")),
            &random_bytes(5000 + i, 100 + i as u64),
        );
    }
    fs::write(a.state().join("crash-at"), point).unwrap();
    let _ = a.run(
        &["sync".into(), a.path().display().to_string()],
        Duration::from_secs(60),
    );
    assert!(
        a.wait_exit(Duration::from_secs(30)),
        "the writer did not die at {point}"
    );
    fs::remove_file(a.state().join("crash-at")).unwrap();
    a
}

#[test]
fn a_writer_killed_while_publishing_leaves_a_complete_version() {
    let archive = Archive::new();
    let x: Vec<String> = (0..5).map(|i| format!("x{i}")).collect();
    let y: Vec<String> = (0..5).map(|i| format!("y{i}")).collect();

    // Killed after storing the index record, before the root record names it: the archive
    // is still at the last complete version, x only.
    let a = crash_while_publishing(&archive, "publish.parts_stored");
    let b = archive.mount("reader", &["--read-only"]);
    let seen: Vec<String> = files(&b.path()).into_keys().collect();
    assert_eq!(seen, x, "a reader elsewhere sees the last complete version");
    b.unmount();
    // The crashed writer's state directory, mounted again, publishes what it never did.
    a.mount(&archive, &[]).unwrap();
    a.unmount();
    let c = archive.mount("after", &["--read-only"]);
    let seen: Vec<String> = files(&c.path()).into_keys().collect();
    assert_eq!(seen, [x.clone(), y.clone()].concat());
    c.unmount();

    // Killed after the root record reached its quorum, before the writer noted it: the new
    // version is complete; the writer's state adopts it on restart.
    let archive = Archive::new();
    let a = crash_while_publishing(&archive, "publish.root_written");
    let b = archive.mount("reader", &["--read-only"]);
    let got = files(&b.path());
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), [x, y].concat());
    assert_eq!(got["y3"], random_bytes(5003, 103));
    b.unmount();
    a.mount(&archive, &[]).unwrap();
    write(&a.join("z"), b"after restart");
    a.unmount();
    let c = archive.mount("after", &["--read-only"]);
    assert_eq!(fs::read(c.join("z")).unwrap(), b"after restart");
    c.unmount();
}

#[test]
fn a_follower_sees_each_version_the_writer_publishes() {
    let archive = Archive::new();
    let w = archive.mount("writer", &["--publish-interval", "3600"]);
    write(&w.join("v"), b"version 0");
    w.sync();
    let r = archive.mount("follower", &["--read-only", "--follow-interval", "1"]);
    assert_eq!(fs::read(r.join("v")).unwrap(), b"version 0");
    // A descriptor kept open across versions: the kernel's cached pages must be dropped.
    let mut open = fs::File::open(r.join("v")).unwrap();
    for i in 1..4 {
        // Each version longer than the last: the open descriptor must see the new size too.
        let content = format!("version {i} ").repeat(1 + 1000 * i);
        write(&w.join("v"), content.as_bytes());
        write(&w.join(format!("new{i}")), content.as_bytes());
        w.sync();
        let seen = wait_until(Duration::from_secs(20), || {
            fs::read(r.join(format!("new{i}"))).is_ok_and(|c| c == content.as_bytes())
        });
        assert!(
            seen.is_some(),
            "follower never saw version {i}:\n{}",
            r.log()
        );
        // The follower applies a version, then tells the kernel to drop what it cached of the
        // changed files: for that moment a reader may see a new name before a changed file's
        // cached pages are gone. Within a moment the open descriptor reads the new content.
        let fresh = wait_until(Duration::from_secs(5), || {
            let mut buf = Vec::new();
            open.seek(SeekFrom::Start(0)).unwrap();
            open.read_to_end(&mut buf).unwrap();
            buf == content.as_bytes()
        });
        assert!(fresh.is_some(), "stale data through an open descriptor");
    }
    // Deletions and renames reach the follower too.
    fs::remove_file(w.join("new1")).unwrap();
    fs::rename(w.join("new2"), w.join("renamed")).unwrap();
    w.sync();
    let seen = wait_until(Duration::from_secs(20), || {
        !r.join("new1").exists() && r.join("renamed").exists() && !r.join("new2").exists()
    });
    assert!(seen.is_some(), "follower never saw the delete and rename");
    assert!(
        fs::write(r.join("nope"), b"x").is_err(),
        "the follower is read-only"
    );
    drop(open);
    r.unmount();
    w.unmount();
}

/// The one root record file on node `i` (this testnet has one archive).
fn root_file(net: &Testnet, i: u16) -> std::path::PathBuf {
    let dir = net.node_dir(i).join("roots");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

#[test]
fn a_root_record_rolled_back_or_forged_on_f_nodes_is_ignored() {
    let archive = Archive::new();
    let w = archive.mount("writer", &["--publish-interval", "3600"]);
    write(&w.join("old"), b"old");
    w.sync();
    let saved: Vec<Vec<u8>> = (0..2)
        .map(|i| fs::read(root_file(&archive.net, i)).unwrap())
        .collect();
    write(&w.join("new"), b"new");
    w.sync();
    w.unmount();

    // Rollback: nodes 0 and 1 (f = 2) serve the older, validly signed version.
    for (i, bytes) in saved.iter().enumerate() {
        fs::write(root_file(&archive.net, i as u16), bytes).unwrap();
    }
    let r = archive.mount("after-rollback", &["--read-only"]);
    assert_eq!(
        fs::read(r.join("new")).unwrap(),
        b"new",
        "rolled back by f nodes"
    );
    r.unmount();

    // Forgery: nodes 0 and 1 answer with a forged record far ahead of the real version.
    for i in 0..2u16 {
        archive.net.misbehave(i, "forge_roots = true");
    }
    let r = archive.mount("after-forgery", &["--read-only"]);
    assert_eq!(
        fs::read(r.join("new")).unwrap(),
        b"new",
        "forged by f nodes"
    );
    r.unmount();
    // The writer still works: it reads past the forgers and writes to everyone.
    let w = archive.mount("writer-again", &[]);
    write(&w.join("newest"), b"newest");
    w.unmount();
    let r = archive.mount("final", &["--read-only"]);
    assert_eq!(fs::read(r.join("newest")).unwrap(), b"newest");
    r.unmount();
}

#[test]
fn a_second_writer_is_refused_until_the_first_unmounts() {
    let archive = Archive::new();
    let a = archive.mount("first", &[]);
    write(&a.join("f"), b"from A");
    let b = archive.slot("second");
    let err = b.mount(&archive, &[]).unwrap_err();
    assert!(
        err.contains("is being written by") && err.contains("expires"),
        "the refusal names the holder and the expiry: {err}"
    );
    // Read-only mounts always work, even while a writer holds the lease.
    let r = archive.mount("reader", &["--read-only"]);
    r.unmount();
    a.unmount();
    b.mount(&archive, &[]).unwrap();
    assert_eq!(fs::read(b.join("f")).unwrap(), b"from A");
    b.unmount();
}

#[test]
fn two_writers_racing_for_the_lease_never_both_win() {
    let archive = Archive::new();
    for round in 0..3 {
        let slots = [archive.slot("racer"), archive.slot("racer")];
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = slots
                .iter()
                .map(|slot| s.spawn(|| slot.mount(&archive, &[])))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: winners {won:?}: {results:?}");
        let loser = &results[1 - won[0]];
        assert!(
            loser.as_ref().unwrap_err().contains("lease")
                || loser.as_ref().unwrap_err().contains("being written"),
            "{loser:?}"
        );
        slots[won[0]].unmount();
    }
}

#[test]
fn a_crashed_writer_is_taken_over_only_when_asked() {
    let archive = Archive::new();
    let a = archive.mount("crashed", &["--lease-secs", "4"]);
    write(&a.join("kept"), b"published before the crash");
    a.sync();
    a.kill9();
    let b = archive.slot("next");
    let err = b.mount(&archive, &[]).unwrap_err();
    assert!(err.contains("is being written by"), "{err}");
    std::thread::sleep(Duration::from_secs(5));
    let err = b.mount(&archive, &[]).unwrap_err();
    assert!(
        err.contains("stopped without unmounting") && err.contains("--take-over"),
        "{err}"
    );
    b.mount(&archive, &["--take-over"]).unwrap();
    assert_eq!(
        fs::read(b.join("kept")).unwrap(),
        b"published before the crash"
    );
    b.unmount();
}

/// Blob ids node 0 holds whose sliver is at least `min` bytes (data blobs, not index records).
fn big_blobs_on_node0(net: &Testnet, min: u64) -> std::collections::BTreeSet<String> {
    let dir = net.node_dir(0).join("store/blobs");
    let mut out = std::collections::BTreeSet::new();
    for prefix in fs::read_dir(&dir).into_iter().flatten().flatten() {
        for blob in fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            let len = fs::metadata(blob.path().join("sliver-0")).map(|m| m.len());
            if len.is_ok_and(|l| l >= min) {
                out.insert(blob.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[test]
fn a_snapshot_survives_overwrites_deletes_and_gc() {
    let archive = Archive::new();
    let w = archive.mount("writer", &["--gc-grace-secs", "1"]);
    let original: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes(200_000 + i, 7 + i as u64))
        .collect();
    for (i, data) in original.iter().enumerate() {
        write(&w.join(format!("f{i}")), data);
    }
    let out = archive.cli(&[
        "snapshot",
        "create",
        "--mount",
        w.path().to_str().unwrap(),
        "before",
    ]);
    assert!(out.status.success(), "{out:?}");
    // Change everything the snapshot holds.
    write(&w.join("f0"), b"overwritten");
    fs::remove_file(w.join("f1")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(w.join("f2"))
        .unwrap()
        .set_len(10)
        .unwrap();
    // Garbage no snapshot holds: made and deleted after the snapshot.
    let held = big_blobs_on_node0(&archive.net, 50_000);
    write(&w.join("scratch"), &random_bytes(300_000, 99));
    w.sync();
    let scratch: Vec<String> = big_blobs_on_node0(&archive.net, 50_000)
        .difference(&held)
        .cloned()
        .collect();
    assert_eq!(scratch.len(), 1, "{scratch:?}");
    fs::remove_file(w.join("scratch")).unwrap();
    w.sync();
    let collected = wait_until(Duration::from_secs(60), || {
        !big_blobs_on_node0(&archive.net, 50_000).contains(&scratch[0])
    });
    assert!(collected.is_some(), "GC never ran:\n{}", w.log());
    let now = big_blobs_on_node0(&archive.net, 50_000);
    assert!(held.is_subset(&now), "GC deleted blobs the snapshot holds");

    let mut args = vec!["snapshot".to_string(), "list".into()];
    args.extend(archive.access());
    let list = archive.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("before"),
        "{list:?}"
    );
    let s = archive.mount("snap", &["--snapshot", "before"]);
    for (i, data) in original.iter().enumerate() {
        assert_eq!(
            &fs::read(s.join(format!("f{i}"))).unwrap(),
            data,
            "f{i} in the snapshot"
        );
    }
    assert!(
        fs::write(s.join("x"), b"x").is_err(),
        "snapshots are read-only"
    );
    s.unmount();
    assert_eq!(fs::read(w.join("f0")).unwrap(), b"overwritten");

    // Deleting the snapshot lets GC free what only it held (old f0, f1).
    let out = archive.cli(&[
        "snapshot",
        "delete",
        "--mount",
        w.path().to_str().unwrap(),
        "before",
    ]);
    assert!(out.status.success(), "{out:?}");
    w.sync();
    let freed = wait_until(Duration::from_secs(60), || {
        held.difference(&big_blobs_on_node0(&archive.net, 50_000))
            .count()
            >= 2
    });
    assert!(
        freed.is_some(),
        "blobs of the deleted snapshot were never collected"
    );
    assert_eq!(fs::read(w.join("f3")).unwrap(), original[3]);
    w.unmount();
}

#[test]
fn key_mistakes_give_clear_errors_and_change_nothing() {
    use walrusfs::archive::key::{ArchiveKey, KdfParams, KeyFile};
    let archive = Archive::new();
    let w = archive.mount("writer", &[]);
    write(&w.join("f"), b"data");
    w.unmount();
    let roots_before: Vec<Vec<u8>> = (0..7)
        .map(|i| fs::read(root_file(&archive.net, i)).unwrap())
        .collect();
    let mount_with = |slot: &Slot, key: &Path, pass: &Path| {
        let (status, log) = slot.run(
            &[
                "mount".into(),
                "--committee".into(),
                archive.committee(),
                "--client-key".into(),
                archive.client_key(),
                "--key".into(),
                key.display().to_string(),
                "--passphrase-file".into(),
                pass.display().to_string(),
                "--state".into(),
                slot.state().display().to_string(),
                slot.path().display().to_string(),
            ],
            Duration::from_secs(60),
        );
        assert!(!status.unwrap().success(), "mount should fail:\n{log}");
        assert!(
            !slot.state().exists(),
            "a failed mount must not create state:\n{log}"
        );
        log
    };
    let wrong_pass = archive.base.path().join("wrong-pass");
    fs::write(&wrong_pass, "not the passphrase\n").unwrap();
    let log = mount_with(&archive.slot("wrong-pass"), &archive.key(), &wrong_pass);
    assert!(log.contains("wrong passphrase"), "{log}");

    let damaged = archive.base.path().join("damaged.key");
    let mut text = fs::read_to_string(archive.key()).unwrap().into_bytes();
    let mid = text.len() / 2;
    text[mid] = if text[mid] == b'A' { b'B' } else { b'A' };
    fs::write(&damaged, &text).unwrap();
    fs::set_permissions(&damaged, fs::Permissions::from_mode(0o600)).unwrap();
    let log = mount_with(&archive.slot("damaged"), &damaged, &archive.passphrase());
    assert!(log.contains("damaged"), "{log}");

    let other = archive.base.path().join("other.key");
    let kdf = KdfParams {
        m_kib: 1024,
        t: 1,
        p: 1,
    };
    KeyFile::protect(&ArchiveKey::generate(), common::archive::PASSPHRASE, kdf)
        .unwrap()
        .save(&other)
        .unwrap();
    let slot = archive.slot("other-key");
    let (status, log) = slot.run(
        &[
            "mount".into(),
            "--committee".into(),
            archive.committee(),
            "--client-key".into(),
            archive.client_key(),
            "--key".into(),
            other.display().to_string(),
            "--passphrase-file".into(),
            archive.passphrase().display().to_string(),
            "--state".into(),
            slot.state().display().to_string(),
            slot.path().display().to_string(),
        ],
        Duration::from_secs(60),
    );
    assert!(!status.unwrap().success());
    assert!(log.contains("no archive"), "{log}");

    let loose = archive.base.path().join("loose.key");
    fs::copy(archive.key(), &loose).unwrap();
    fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).unwrap();
    let log = mount_with(&archive.slot("loose"), &loose, &archive.passphrase());
    assert!(log.contains("chmod 600"), "{log}");

    let roots_after: Vec<Vec<u8>> = (0..7)
        .map(|i| fs::read(root_file(&archive.net, i)).unwrap())
        .collect();
    assert_eq!(
        roots_before, roots_after,
        "failed mounts changed a root record"
    );
    let r = archive.mount("still-fine", &["--read-only"]);
    assert_eq!(fs::read(r.join("f")).unwrap(), b"data");
    r.unmount();
}
