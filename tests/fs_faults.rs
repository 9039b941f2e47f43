//! Faults under a real mount: storage nodes dying (up to f = 2 of 7 is invisible, a third makes
//! durable writes fail with EIO and loses nothing already stored), the mount process crashing
//! (`kill -9`: everything a successful fsync covered survives, the directory stays consistent)
//! or being asked to stop (SIGTERM, `fusermount3 -u`: closed data is stored first). Each test
//! owns its mount, since it kills things.

#![allow(clippy::unwrap_used)] // A panic in a test helper is a test failure, with its location.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::mount::{
    assert_errno, assert_same_bytes, close_checked, evict_path, is_mountpoint, snapshot,
    wait_until, Kind, Mount, Options,
};
use common::{alive, random_bytes};

fn create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Writes `data` to a new file at `path` and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) {
    let mut f = create(path);
    f.write_all(data).unwrap();
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", path.display()));
    close_checked(f).unwrap();
}

/// The kernel thread id of the calling thread (from `/proc/thread-self`, i.e. `PID/task/TID`).
fn thread_id() -> u32 {
    let link = fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// Whether thread `tid` of this process is blocked waiting for a FUSE reply.
fn waits_on_fuse(tid: u32) -> bool {
    fs::read_to_string(format!("/proc/self/task/{tid}/wchan"))
        .is_ok_and(|w| w.trim() == "request_wait_answer")
}

#[track_caller]
fn assert_file(path: &Path, want: &[u8], what: &str) {
    evict_path(path);
    let got = fs::read(path).unwrap_or_else(|e| panic!("{what}: read {}: {e}", path.display()));
    assert_same_bytes(&got, want, &format!("{what}: {}", path.display()));
}

#[test]
fn f_node_failures_are_invisible_and_one_more_fails_fsync_but_loses_nothing() {
    let m = Mount::new();
    let net = m.net();
    let a = random_bytes((6 << 20) + 333, 1);
    write_synced(&m.join("a"), &a);
    // A cold mount, so reads must go to the nodes (not to the mount's memory or disk cache).
    m.remount_cold();

    // f = 2 nodes down, both holding systematic slivers: reads decode from recovery slivers.
    net.kill(0);
    net.kill(1);
    // Seeking reads fetch just the ranges they need; those of slivers 0 and 1 are rebuilt from
    // the same ranges of k other slivers (not by falling back to whole chunks).
    let f = File::open(m.join("a")).unwrap();
    for (off, len) in [
        (5_000_000u64, 4096),
        (1_000_000, 100),
        (4_194_000, 600),
        (6 << 20, 333),
    ] {
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, off).unwrap();
        let want = &a[off as usize..off as usize + len];
        assert!(buf == want, "pread {off}+{len} with nodes 0 and 1 down");
    }
    drop(f);
    let logs = m.logs();
    assert!(
        !logs.contains("reading the whole chunk"),
        "a seeking read fell back to a whole chunk:\n{logs}"
    );
    assert_file(&m.join("a"), &a, "read with nodes 0 and 1 down");
    let b = random_bytes(3 << 20, 2);
    write_synced(&m.join("b"), &b);
    assert_file(&m.join("b"), &b, "write + fsync with 2 nodes down");
    fs::create_dir(m.join("dir")).unwrap();
    fs::rename(m.join("b"), m.join("dir/b")).unwrap();

    // A third node down: n - f = 5 confirmations are out of reach.
    net.kill(2);
    assert_file(&m.join("a"), &a, "read with 3 nodes down (4 >= k = 3 left)");
    let c = random_bytes(1 << 20, 3);
    let mut fc = create(&m.join("c"));
    fc.write_all(&c).unwrap();
    assert_errno(fc.sync_all(), libc::EIO, "fsync with 3 of 7 nodes down");
    // Again with a second descriptor of the file closed while fsync waits for the nodes (every
    // fork + exec in a threaded program closes inherited descriptors like this): the close's
    // flush must not swallow the failure that fsync has to report.
    let c2 = random_bytes(200_000, 6);
    let mut f2 = create(&m.join("c2"));
    f2.write_all(&c2).unwrap();
    let other = f2.try_clone().unwrap();
    let tid = Arc::new(AtomicU32::new(0));
    let fsync = {
        let tid = tid.clone();
        std::thread::spawn(move || {
            tid.store(thread_id(), Ordering::SeqCst);
            let r = f2.sync_all();
            (f2, r)
        })
    };
    let waiting = wait_until(Duration::from_secs(30), || {
        let t = tid.load(Ordering::SeqCst);
        t != 0 && waits_on_fuse(t)
    });
    assert!(
        waiting.is_some(),
        "the fsync never blocked on the filesystem"
    );
    let closed = close_checked(other);
    let (f2, synced) = fsync.join().unwrap();
    assert_errno(
        synced,
        libc::EIO,
        "fsync racing a close of another descriptor, 3 nodes down",
    );
    // A close only needs the local journal: it succeeds, and the data is kept.
    closed.expect("close of a second descriptor with 3 nodes down (journaled)");

    let d = random_bytes(100_000, 4);
    let mut fd = create(&m.join("d"));
    fd.write_all(&d).unwrap();
    close_checked(fd).expect("close of a written file with 3 nodes down (journaled)");
    assert_file(
        &m.join("d"),
        &d,
        "d read back from the journal while nodes are down",
    );

    // Nodes back: the journal drains; every byte written is there, fsynced or not.
    net.up_again();
    fc.sync_all().expect("fsync once the nodes are back");
    close_checked(fc).expect("close after a successful fsync");
    drop(f2);
    let synced = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(synced.status.success(), "walrusfs sync: {synced:?}");
    assert_file(&m.join("c"), &c, "c after the outage");
    assert_file(&m.join("d"), &d, "d after the outage");
    assert_file(&m.join("c2"), &c2, "c2 after the outage");
    assert_file(&m.join("a"), &a, "a with all nodes back");
    assert_file(&m.join("dir/b"), &b, "b with all nodes back");

    m.remount();
    assert_file(&m.join("a"), &a, "a after remount");
    assert_file(&m.join("dir/b"), &b, "b after remount");
    assert_file(&m.join("c"), &c, "c after remount");
    assert_file(&m.join("d"), &d, "d after remount");
    assert_file(&m.join("c2"), &c2, "c2 after remount");
    // And the filesystem still takes new data.
    let e = random_bytes(500_000, 5);
    write_synced(&m.join("e"), &e);
    assert_file(&m.join("e"), &e, "new file after the outage");
}

/// Resumes stopped processes when dropped, so a failing test does not leave nodes frozen.
struct Frozen(Vec<i32>);

impl Frozen {
    fn stop(pids: Vec<i32>) -> Self {
        for &p in &pids {
            common::mount::signal(p, libc::SIGSTOP);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &p in &self.0 {
            common::mount::signal(p, libc::SIGCONT);
        }
    }
}

#[test]
fn readers_waiting_for_frozen_nodes_do_not_stall_lookups_listings_or_local_writes() {
    let m = Mount::new();
    const READERS: usize = 12; // more than FUSE has threads
    let files: Vec<Vec<u8>> = (0..READERS)
        .map(|i| random_bytes(300_000 + i, 900 + i as u64))
        .collect();
    for (i, data) in files.iter().enumerate() {
        fs::write(m.join(format!("r{i}")), data).unwrap();
    }
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // No chunk cache on disk: a read after the remount must go to the nodes.
    m.remount_with(Options {
        extra: &["--disk-cache-mib", "0"],
        ..Options::default()
    });
    let frozen = Frozen::stop(
        (0..common::mount::NODES)
            .filter_map(|i| m.net().pid(i))
            .collect(),
    );
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let path = m.join(format!("r{i}"));
            std::thread::spawn(move || fs::read(path))
        })
        .collect();
    // Every reader waits (for FUSE's answer, or on a page the kernel's readahead asked for).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "a read finished with every node frozen"
    );
    // Meanwhile lookups, listings and local writes answer: on a thread that may hang, so a
    // regression fails this test instead of hanging it.
    let root = m.path().to_path_buf();
    let (done, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let listed = fs::read_dir(&root).map(|d| d.count());
        let stat = fs::metadata(root.join("r3")).map(|a| a.len());
        let made =
            fs::create_dir(root.join("d")).and_then(|()| fs::write(root.join("d/new"), b"local"));
        let _ = done.send((listed.ok(), stat.ok(), made.is_ok()));
    });
    let got = answered.recv_timeout(Duration::from_secs(10));
    drop(frozen);
    let (listed, stat, made) = got.expect("metadata and local writes waited for the frozen nodes");
    assert_eq!(listed, Some(READERS), "the listing");
    assert_eq!(stat, Some(300_003), "the stat");
    assert!(made, "mkdir and a small write");
    for (i, r) in readers.into_iter().enumerate() {
        let got = r
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("reader {i}: {e}"));
        assert_same_bytes(&got, &files[i], &format!("r{i} once the nodes resumed"));
    }
    assert_eq!(fs::read(m.join("d/new")).unwrap(), b"local");
}

#[test]
fn nodes_that_are_gone_cost_no_connect_timeout_to_mount_read_write_or_unmount() {
    // Two nodes (both holding systematic slivers) are stopped and the mount is given a
    // 60-second connect timeout: whatever waits for a gone node's connect to time out, instead
    // of for a quorum and a hedge delay, takes a minute. (With the default 3 s, the mount
    // waited 5 s to come up.)
    let m = Mount::new();
    let a = random_bytes((9 << 20) + 5, 21);
    write_synced(&m.join("a"), &a);
    m.unmount();
    m.net().kill(0);
    m.net().kill(1);
    let start = std::time::Instant::now();
    m.mount_again_with(Options {
        extra: &["--connect-timeout-secs", "60"],
        ..Options::default()
    });
    let mounted = start.elapsed();
    assert_file(&m.join("a"), &a, "read with nodes 0 and 1 gone");
    let b = random_bytes(3 << 20, 22);
    write_synced(&m.join("b"), &b);
    let st = nix::sys::statvfs::statvfs(m.path()).unwrap();
    assert!(
        st.blocks_available() > 0,
        "statfs with two nodes gone: no room"
    );
    m.unmount();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "mount {mounted:?}, and with a read, a write and the unmount {took:?}: something waited for the connect timeout"
    );
    // What was written with the nodes gone was published at the unmount.
    m.net().up_again();
    m.mount_again();
    assert_file(&m.join("b"), &b, "after the nodes came back");
}

#[test]
fn with_more_than_f_nodes_gone_a_read_only_mount_reads_what_k_nodes_hold() {
    // Three of seven nodes gone: no quorum for the root (n - f = 5), but every chunk is still
    // readable from k = 3 of the four left. A writer is refused, saying what can be done; a
    // read-only mount serves the newest version the nodes that answer hold, and says so.
    let m = Mount::new();
    let a = random_bytes((9 << 20) + 77, 31);
    write_synced(&m.join("a"), &a);
    fs::create_dir(m.join("d")).unwrap();
    fs::write(m.join("d/small"), b"small file\n").unwrap();
    m.unmount();
    for i in 0..3 {
        m.net().kill(i);
    }
    // `walrusfs mount` of `state` at the mountpoint with `options`. Where the mount must fail,
    // it waits for the connect timeout of the nodes that are gone (the default 3 s); where it
    // succeeds, 60 s, which nothing may wait for.
    const FAILING: [&str; 2] = ["--connect-timeout-secs", "3"];
    const READ_ONLY: [&str; 3] = ["--connect-timeout-secs", "60", "--read-only"];
    let mount = |state: &str, options: &[&str]| {
        let mut args = vec!["mount", "--testnet", m.net().dir_str(), "--state", state];
        args.extend_from_slice(options);
        args.push(m.path().to_str().unwrap());
        m.net().cli(&args)
    };
    let state = m.state().to_str().unwrap().to_owned();
    let out = mount(&state, &FAILING);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a writer mounted without a quorum: {out:?}"
    );
    assert!(
        err.contains("only 4 nodes answered, 5 needed") && err.contains("--read-only"),
        "{err}"
    );
    assert!(!m.is_mounted());

    // Read-only, with the state directory the writer left, and with a fresh one (the index
    // restored from what the four nodes hold). A 60 s connect timeout: nothing waits for it.
    let other = tempfile::tempdir().unwrap();
    let fresh = other.path().join("state").to_str().unwrap().to_owned();
    for state in [state.clone(), fresh] {
        let start = std::time::Instant::now();
        let out = mount(&state, &READ_ONLY);
        let took = start.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "read-only mount with 4 of 7 nodes: {out:?}"
        );
        assert!(
            err.contains("too few nodes answer for a quorum"),
            "the mount did not say its version may not be the latest: {err}"
        );
        assert!(
            took < Duration::from_secs(30),
            "read-only mount took {took:?}"
        );
        assert_file(&m.join("a"), &a, "read with 3 of 7 nodes gone");
        assert_eq!(fs::read(m.join("d/small")).unwrap(), b"small file\n");
        assert_errno(
            fs::write(m.join("d/new"), b"x"),
            libc::EROFS,
            "write to a read-only mount",
        );
        let mnt = m.path().to_str().unwrap();
        m.net().cli_ok(&["unmount", mnt]);
    }

    // A read-only mount made while three are away says so once they are back (it follows
    // every second here), and serves on.
    let out = mount(
        &state,
        &[&READ_ONLY[..], &["--follow-interval", "1"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    m.net().up_again();
    let log = m.state().join("mount.log");
    let back = wait_until(Duration::from_secs(60), || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("a quorum of nodes answers again"))
    });
    assert!(
        back.is_some(),
        "the follower never saw a quorum again:\n{}",
        m.logs()
    );
    assert_eq!(fs::read(m.join("d/small")).unwrap(), b"small file\n");
    m.net().cli_ok(&["unmount", m.path().to_str().unwrap()]);

    // Two left, fewer than k: nothing can be read, and the mount says so.
    for i in 0..5 {
        m.net().kill(i);
    }
    let out = mount(&state, &[&FAILING[..], &["--read-only"]].concat());
    assert!(
        !out.status.success(),
        "read-only mount with 2 of 7 nodes: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only 2 nodes answered, 3 needed"),
        "{out:?}"
    );
    m.net().up_again();
    m.mount_again();
    assert_file(&m.join("a"), &a, "after the nodes came back");
}

#[test]
fn kill9_after_fsync_loses_nothing_fsynced() {
    let m = Mount::new();
    fs::create_dir(m.join("d")).unwrap();
    let mut f1 = random_bytes((5 << 20) + 17, 10);
    write_synced(&m.join("d/f1"), &f1);
    // Overwrite across the chunk boundary and fsync again: the new version must survive.
    let patch = random_bytes(10_000, 11);
    let f = OpenOptions::new().write(true).open(m.join("d/f1")).unwrap();
    f.write_all_at(&patch, (4 << 20) - 5000).unwrap();
    f.sync_data().unwrap();
    drop(f);
    f1[(4 << 20) - 5000..(4 << 20) + 5000].copy_from_slice(&patch);
    let f2 = random_bytes(1234, 12);
    write_synced(&m.join("f2"), &f2);
    fs::rename(m.join("f2"), m.join("d/f2-renamed")).unwrap();
    File::open(m.join("d")).unwrap().sync_all().unwrap();
    File::open(m.path()).unwrap().sync_all().unwrap();

    // Unsynced activity at the moment of the crash: an open file with buffered data, and a
    // writer streaming a large file.
    let mut pending = create(&m.join("pending"));
    pending.write_all(&random_bytes(3 << 20, 13)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (m.join("stream"), stop.clone());
        std::thread::spawn(move || -> io::Result<u64> {
            let mut f = File::create(path)?;
            let block = random_bytes(1 << 20, 14);
            let mut written = 0;
            while !stop.load(Ordering::Relaxed) && written < (64 << 20) {
                f.write_all(&block)?;
                written += block.len() as u64;
            }
            Ok(written)
        })
    };
    // Crash mid-stream: once a few MiB of it are in.
    let streaming = wait_until(Duration::from_secs(30), || {
        fs::metadata(m.join("stream")).is_ok_and(|md| md.len() >= 3 << 20)
    });
    assert!(streaming.is_some(), "the stream writer never got going");
    m.kill9();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join().unwrap(); // it fails with ENOTCONN: the mount is gone
    drop(pending);

    m.mount_again();
    assert_file(
        &m.join("d/f1"),
        &f1,
        "fsynced and re-fsynced file after kill -9",
    );
    assert_file(
        &m.join("d/f2-renamed"),
        &f2,
        "fsynced file renamed + dir fsynced",
    );
    assert!(
        !m.join("f2").exists(),
        "old name of a renamed file came back"
    );
    // Consistency: every listed entry can be stat'ed and read in full (no EIO, no dangling
    // entries), whatever happened to the unsynced files.
    for (rel, entry) in snapshot(m.path()) {
        if let Kind::File(content) = entry.kind {
            assert_eq!(
                content.len() as u64,
                entry.size,
                "{} reads {} bytes but stats {}",
                rel.display(),
                content.len(),
                entry.size
            );
        }
    }
    let names: Vec<_> = fs::read_dir(m.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["f1", "f2-renamed"], "directory d after kill -9");
    // The index still takes writes.
    let g = random_bytes(100_000, 15);
    write_synced(&m.join("d/g"), &g);
    m.remount();
    assert_file(&m.join("d/g"), &g, "write after crash recovery, remounted");
    assert_file(&m.join("d/f1"), &f1, "f1 after a second remount");
}

#[test]
fn sigterm_and_fusermount_store_closed_data_first() {
    let m = Mount::new();
    let files: Vec<(String, Vec<u8>)> = [0usize, 1, 4096, 300_000, (9 << 20) + 1]
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("sig-{i}"), random_bytes(len, 20 + i as u64)))
        .collect();
    for (name, data) in &files {
        let mut f = create(&m.join(name)); // written and closed, never fsynced
        f.write_all(data).unwrap();
        close_checked(f).unwrap();
    }
    let pid = m.pid().unwrap();
    assert!(
        m.signal_and_wait(libc::SIGTERM),
        "mount process {pid} ignored SIGTERM"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !m.is_mounted()).is_some(),
        "SIGTERM ended the mount process but left the mountpoint mounted"
    );
    m.mount_again();
    for (name, data) in &files {
        assert_file(&m.join(name), data, "after SIGTERM and remount");
    }

    // The same through `fusermount3 -u`.
    let more = random_bytes((4 << 20) + 5, 30);
    let mut f = create(&m.join("more"));
    f.write_all(&more).unwrap();
    close_checked(f).unwrap();
    let pid = m.pid().unwrap();
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(m.path())
        .status()
        .unwrap();
    assert!(st.success(), "fusermount3 -u failed: {st}");
    assert!(
        wait_until(Duration::from_secs(60), || !alive(pid)).is_some(),
        "mount process {pid} did not exit after fusermount3 -u"
    );
    m.mount_again();
    assert_file(&m.join("more"), &more, "after fusermount3 -u and remount");
    for (name, data) in &files {
        assert_file(&m.join(name), data, "still there");
    }
}

#[test]
fn harness_unmounts_and_stops_nodes_when_a_test_panics() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = Mount::new();
        fs::write(m.join("x"), b"x").unwrap();
        let nodes: Vec<i32> = (0..m.net().n).filter_map(|i| m.net().pid(i)).collect();
        seen = Some((m.path().to_path_buf(), m.pid().unwrap(), nodes));
        panic!("deliberate panic with a live mount");
    }));
    assert!(result.is_err());
    let (path, pid, nodes) = seen.expect("the mount came up");
    assert!(
        !is_mountpoint(&path),
        "{} still mounted after the panic",
        path.display()
    );
    assert!(!alive(pid), "mount process {pid} survived the panic");
    let live: Vec<_> = nodes.into_iter().filter(|&p| alive(p)).collect();
    assert!(
        live.is_empty(),
        "node processes {live:?} survived the panic"
    );
}

/// `walrusfs fsck` of `m`'s (unmounted) state directory; asserts it finds no problem and
/// returns its report.
fn fsck_passes(m: &Mount, when: &str) -> String {
    let state = m.state().to_str().unwrap().to_owned();
    let out = m
        .net()
        .cli(&["fsck", "--testnet", m.net().dir_str(), "--state", &state]);
    assert!(
        out.status.success(),
        "fsck {when}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_crash_at_each_point_of_the_write_path_loses_nothing_fsynced_and_fsck_passes() {
    for point in [
        "spill.sealed",
        "upload.stored",
        "publish.parts_stored",
        "publish.root_written",
        "gc.deleted",
    ] {
        let m = Mount::with_options(Options {
            extra: &["--gc-grace-secs", "0"],
            ..Options::default()
        });
        let kept = random_bytes(700_000, 1);
        write_synced(&m.join("kept"), &kept);
        fs::write(m.join("doomed"), random_bytes(300_000, 2)).unwrap();
        let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let pid = m.pid().unwrap();
        fs::write(m.state().join("crash-at"), point).unwrap();
        match point {
            // The close seals the file into the journal and dies there.
            "spill.sealed" => {
                let mut f = create(&m.join("new"));
                let _ = f.write_all(&random_bytes(50_000, 3));
                let _ = close_checked(f);
            }
            // The fsync stores the file on the network and dies before committing it.
            "upload.stored" => {
                let mut f = create(&m.join("new"));
                let _ = f.write_all(&random_bytes(50_000, 3));
                let _ = f.sync_all();
            }
            "publish.parts_stored" | "publish.root_written" => {
                write_synced(&m.join("new"), &random_bytes(50_000, 3));
                let _ = m.net().cli(&["sync", m.path().to_str().unwrap()]);
            }
            // The delete is published; GC deletes the blob and dies before recording it.
            _ => {
                fs::remove_file(m.join("doomed")).unwrap();
                let _ = m.net().cli(&["sync", m.path().to_str().unwrap()]);
            }
        }
        m.await_crash(pid);
        fs::remove_file(m.state().join("crash-at")).unwrap();
        let report = fsck_passes(&m, &format!("after a crash at {point}"));
        if point == "upload.stored" {
            // The blob the nodes stored but the index never took in is not leaked: its upload
            // was recorded, as queued for GC, before a byte left (the commit would have taken
            // it off the queue).
            let queued: u64 = report
                .split(" blobs queued for GC")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no GC count in {report}"));
            assert!(queued >= 1, "{point}: the stored blob is unknown: {report}");
        }
        m.mount_again();
        assert_file(&m.join("kept"), &kept, point);
        if point == "gc.deleted" {
            assert!(
                !m.join("doomed").exists(),
                "{point}: a published delete came back"
            );
        }
        // The state directory still takes writes and drains.
        write_synced(&m.join("after"), &random_bytes(10_000, 4));
        let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{point}: sync after recovery: {out:?}"
        );
        m.unmount();
        let _ = fsck_passes(&m, &format!("after recovering from {point}"));
    }
}

#[test]
fn fsck_refuses_a_mounted_archive_and_names_blobs_the_network_lost() {
    let m = Mount::new();
    write_synced(&m.join("f"), &random_bytes(400_000, 9));
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let state = m.state().to_str().unwrap().to_owned();
    let fsck = || {
        m.net()
            .cli(&["fsck", "--testnet", m.net().dir_str(), "--state", &state])
    };
    let out = fsck();
    assert!(!out.status.success(), "fsck of a mounted archive");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unmount it first"),
        "{out:?}"
    );
    m.unmount();
    let _ = fsck_passes(&m, "of a healthy archive");
    // Five of seven nodes lose their disks: k = 3 slivers of nothing remain.
    for i in 0..5u16 {
        m.net().kill(i);
        fs::remove_dir_all(m.net().node_dir(i).join("store")).unwrap();
    }
    m.net().up_again();
    let out = fsck();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "fsck with data lost: {out:?}");
    assert!(
        err.contains("only 2 nodes hold a sliver, 3 are needed"),
        "fsck names the lost blobs: {err}"
    );
}

/// Unmounts the tmpfs a test put under a state directory.
struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_disk_is_enospc_to_writers_and_nothing_is_lost_once_there_is_room() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let m = Mount::with_options(Options {
        extra: &["--disk-cache-mib", "0"],
        ..Options::default()
    });
    let kept = random_bytes(300_000, 70);
    write_synced(&m.join("kept"), &kept);
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    m.unmount();
    // The state directory moves onto a 64 MiB filesystem of its own.
    let saved = m.state().with_extension("saved");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(m.state())
        .arg(&saved)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
        .arg(m.state())
        .status()
        .unwrap()
        .success());
    let _tmpfs = TmpfsGuard(m.state().to_owned());
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cp -a {}/. {}/",
            saved.display(),
            m.state().display()
        ))
        .status()
        .unwrap()
        .success());
    m.mount_again();
    // Fill it up, but for a few KiB.
    let filler = m.state().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .status();
    // A writer gets ENOSPC (its to fix), not EIO; reads and listings still answer.
    let big = random_bytes(8 << 20, 71);
    let r = std::fs::write(m.join("big"), &big);
    let code = r.as_ref().err().and_then(std::io::Error::raw_os_error);
    assert!(
        matches!(code, Some(libc::ENOSPC) | Some(libc::EDQUOT)),
        "writing to a full state disk: {r:?}\n{}",
        m.logs()
    );
    assert_file(&m.join("kept"), &kept, "full state disk");
    assert!(fs::read_dir(m.path()).unwrap().count() >= 1);
    // Room again: writes work, sync stores everything, and after a remount all is there.
    fs::remove_file(&filler).unwrap();
    // (The failed write left a partial "big", as on any full disk.)
    write_synced(&m.join("big-again"), &big);
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "sync after the disk had room again: {out:?}"
    );
    m.unmount();
    let _ = fsck_passes(&m, "after the state disk was full");
    m.mount_again();
    assert_file(&m.join("big-again"), &big, "after the state disk was full");
    assert_file(&m.join("kept"), &kept, "after the state disk was full");
    m.unmount();
}
