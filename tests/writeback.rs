//! The write-back journal end to end: a killed mount loses nothing closed; an outage makes
//! writers wait (and only writers) and they resume when the nodes return; `--sync-close`
//! keeps close waiting for the network; unmount with the network gone keeps the data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{
    assert_errno, assert_same_bytes, close_checked, evict_path, run_with_timeout, wait_until,
    Mount, Options,
};
use common::random_bytes;

fn create(path: &std::path::Path) -> fs::File {
    fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Closes `f` with the mount armed to die at the end of that close (before anything else
/// can hand the index to the kernel), and waits until it is gone.
fn close_as_the_mount_dies(m: &Mount, f: fs::File) {
    let pid = m.pid().unwrap();
    fs::write(m.state().join("crash-at"), "close.done").unwrap();
    let _ = close_checked(f);
    m.await_crash(pid);
    fs::remove_file(m.state().join("crash-at")).unwrap();
}

/// [`close_as_the_mount_dies`], then mounts again (the nodes 0 to 2 it finds down are up for
/// the mount, and down again after).
fn close_and_come_back(m: &Mount, f: fs::File) {
    close_as_the_mount_dies(m, f);
    m.net().up_again(); // a mount needs the archive's root
    m.mount_again();
    for i in 0..3 {
        m.net().kill(i);
    }
}

#[test]
fn kill9_with_closed_files_in_the_journal_loses_nothing() {
    let m = Mount::new();
    // Nothing hands the index's log to the kernel in the background (the test fault
    // `hold-index-log`). sled still writes the transactions before one out when that one
    // begins, so a kill at the end of a new file's close always loses the file's creation
    // (nothing follows it): the file comes back only from the creation record the close wrote.
    fs::write(m.state().join("hold-index-log"), "").unwrap();
    m.remount();
    // Nothing can reach the network: every closed byte is only in the journal.
    for i in 0..3 {
        m.net().kill(i);
    }
    let small: Vec<Vec<u8>> = (0..300)
        .map(|i| random_bytes(100 + i * 37, i as u64))
        .collect();
    for (i, data) in small.iter().enumerate() {
        let mut f = create(&m.join(format!("s{i}")));
        f.write_all(data).unwrap();
        close_checked(f).expect("close with the network down: the journal has it");
    }
    // A shell's `> f`: the first close comes before any write (it is the descriptor the
    // shell dup2'ed to stdout), the one that protects the data after it.
    let sources = tempfile::tempdir().unwrap();
    let shell: Vec<Vec<u8>> = (0..20)
        .map(|i| random_bytes(50 + i * 411, 500 + i as u64))
        .collect();
    for (i, data) in shell.iter().enumerate() {
        let src = sources.path().join(format!("src{i}"));
        fs::write(&src, data).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg("cat \"$1\" > \"$2\"")
            .arg("sh")
            .arg(&src)
            .arg(m.join(format!("sh{i}")))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let big = random_bytes((10 << 20) + 99, 1000);
    let mut f = create(&m.join("big"));
    f.write_all(&big).unwrap();
    close_checked(f).unwrap();
    // A file truncated and rewritten sparse: the truncation is an index change its new
    // record depends on (replayed onto the old contents, the hole would show old bytes).
    let mut f = create(&m.join("t"));
    f.write_all(&random_bytes(3 << 20, 77)).unwrap();
    close_checked(f).unwrap();
    let mut f = create(&m.join("t")); // O_TRUNC
    let tail = random_bytes(1000, 78);
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(2 << 20)).unwrap();
    f.write_all(&tail).unwrap();
    close_checked(f).unwrap();
    let mut rewritten = vec![0u8; 2 << 20];
    rewritten.extend_from_slice(&tail);
    // A name freed by an unlink and taken again: the new file's creation record needs the
    // unlink in the index, or the replay finds the name taken by the old file. (Whether a kill
    // here would lose the unlink without the close's guard depends on sled's own writes; the
    // guard itself is pinned by the index's tests.)
    fs::write(m.join("reused"), b"the first file of that name").unwrap();
    fs::remove_file(m.join("reused")).unwrap();
    let reused = random_bytes(3000, 83);
    let mut f = create(&m.join("reused"));
    f.write_all(&reused).unwrap();
    close_and_come_back(&m, f);
    assert_same_bytes(
        &fs::read(m.join("reused")).unwrap_or_default(),
        &reused,
        "a name taken again, closed as the mount died",
    );
    // A file in a directory made moments ago: its creation record needs the mkdir.
    fs::create_dir(m.join("new-dir")).unwrap();
    let inner = random_bytes(7000, 82);
    let mut f = create(&m.join("new-dir/inner"));
    f.write_all(&inner).unwrap();
    close_and_come_back(&m, f);
    assert_same_bytes(
        &fs::read(m.join("new-dir/inner")).unwrap_or_default(),
        &inner,
        "a file in a new directory, closed as the mount died",
    );
    // Files killed at the end of their close, before anything else (the uploader, sled's
    // timer) can hand the index to the kernel. A new one: its creation must be there. An
    // old one, appended to: the mode and times set while its data was buffered (as tar
    // does) must be there too, though its records alone would not carry the mode.
    let last = random_bytes(5000, 79);
    let mut f = create(&m.join("last"));
    f.write_all(&last).unwrap();
    close_and_come_back(&m, f);
    assert_same_bytes(
        &fs::read(m.join("last")).unwrap_or_default(),
        &last,
        "a new file closed as the mount died",
    );
    let mut last = last;
    let more = random_bytes(3000, 80);
    last.extend_from_slice(&more);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("last"))
        .unwrap();
    f.write_all(&more).unwrap();
    let then = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    f.set_modified(then).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    close_as_the_mount_dies(&m, f);
    m.net().up_again();
    m.mount_again();
    for (i, data) in small.iter().enumerate() {
        let p = m.join(format!("s{i}"));
        evict_path(&p);
        assert_same_bytes(&fs::read(&p).unwrap(), data, &format!("s{i} after kill -9"));
    }
    assert_same_bytes(&fs::read(m.join("big")).unwrap(), &big, "big after kill -9");
    for (i, data) in shell.iter().enumerate() {
        let p = m.join(format!("sh{i}"));
        assert_same_bytes(
            &fs::read(&p).unwrap(),
            data,
            &format!("sh{i} after kill -9"),
        );
    }
    assert_same_bytes(
        &fs::read(m.join("t")).unwrap(),
        &rewritten,
        "truncated and rewritten after kill -9",
    );
    assert_same_bytes(
        &fs::read(m.join("new-dir/inner")).unwrap_or_default(),
        &inner,
        "a file in a new directory after kill -9",
    );
    assert_same_bytes(
        &fs::read(m.join("reused")).unwrap_or_default(),
        &reused,
        "a name taken again after kill -9",
    );
    assert_same_bytes(
        &fs::read(m.join("last")).unwrap_or_default(),
        &last,
        "an appended file closed as the mount died",
    );
    let meta = fs::metadata(m.join("last")).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "mode set before close"
    );
    assert_eq!(meta.modified().unwrap(), then, "mtime set before close");
    // The replayed journal drains to the network: a cold remount reads it from the nodes.
    fs::remove_file(m.state().join("hold-index-log")).unwrap();
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    m.remount_cold();
    assert_same_bytes(
        &fs::read(m.join("big")).unwrap(),
        &big,
        "big from the nodes",
    );
    assert_same_bytes(
        &fs::read(m.join("s299")).unwrap(),
        &small[299],
        "s299 from the nodes",
    );
    // Once every record is stored, the reclaimer deletes every journal segment. A mount
    // starting from that empty journal must number its records past the index's mark, or
    // the replay after a kill takes a close's record for a committed one and drops it.
    assert!(
        wait_until(Duration::from_secs(60), || m.journal_segments() == 0).is_some(),
        "the journal was never reclaimed"
    );
    m.remount();
    let fresh = random_bytes(4000, 81);
    let mut f = create(&m.join("after-reclaim"));
    f.write_all(&fresh).unwrap();
    close_as_the_mount_dies(&m, f);
    m.mount_again();
    assert_same_bytes(
        &fs::read(m.join("after-reclaim")).unwrap_or_default(),
        &fresh,
        "a file closed as the mount died, after the journal was emptied",
    );
}

#[test]
fn an_outage_makes_writers_wait_while_metadata_answers_and_they_resume() {
    let m = Mount::with_options(Options {
        extra: &["--journal-mib", "48", "--journal-wait-secs", "300"],
        ..Options::default()
    });
    fs::write(m.join("small"), b"stored before the outage").unwrap();
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success());
    // 3 of 7 nodes stopped: no write reaches n - f.
    for i in 0..3 {
        m.net().kill(i);
    }
    eprintln!("nodes 0..3 stopped");
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let path = m.join(format!("w{i}"));
            // The shell opens the file, not this process: an fd to a written file held here
            // would be inherited by every child forked below, and each exec closes it, which
            // is a FUSE flush that waits for journal space like any other close.
            std::thread::spawn(move || {
                let out = Command::new("sh")
                    .arg("-c")
                    .arg("exec head -c 20000000 /dev/urandom > \"$1\"")
                    .arg("sh")
                    .arg(&path)
                    .output()
                    .unwrap();
                out
            })
        })
        .collect();
    // 160 MB into a 48 MiB journal: the writers fill it and wait.
    std::thread::sleep(Duration::from_secs(8));
    eprintln!("writers started");
    assert!(
        writers.iter().any(|w| !w.is_finished()),
        "writers should be waiting"
    );
    for what in ["ls", "mkdir", "cat", "stat"] {
        let t = Instant::now();
        let mut cmd = match what {
            "ls" => {
                let mut c = Command::new("ls");
                c.arg("-la").arg(m.path());
                c
            }
            "mkdir" => {
                let mut c = Command::new("mkdir");
                c.arg(m.join("newdir"));
                c
            }
            "cat" => {
                let mut c = Command::new("cat");
                c.arg(m.join("small"));
                c
            }
            _ => {
                let mut c = Command::new("stat");
                c.arg(m.join("w0"));
                c
            }
        };
        cmd.stdout(std::process::Stdio::null());
        eprintln!("running {what}");
        let status = run_with_timeout(&mut cmd, Duration::from_secs(20));
        eprintln!("{what}: {status:?} in {:?}", t.elapsed());
        assert!(
            status.is_some_and(|s| s.success()),
            "{what} during the outage: {status:?} after {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what} took {:?} during the outage",
            t.elapsed()
        );
    }
    assert_eq!(
        fs::read(m.join("small")).unwrap(),
        b"stored before the outage"
    );
    // The nodes come back: every writer finishes, without an error.
    eprintln!("restarting nodes");
    m.net().up_again();
    eprintln!("nodes back");
    let done = wait_until(Duration::from_secs(180), || {
        writers.iter().all(|w| w.is_finished())
    });
    assert!(done.is_some(), "writers never resumed:\n{}", m.logs());
    for (i, w) in writers.into_iter().enumerate() {
        let out = w.join().unwrap();
        assert!(out.status.success(), "writer {i}: {out:?}\n{}", m.logs());
    }
    for i in 0..8 {
        assert_eq!(
            fs::metadata(m.join(format!("w{i}"))).unwrap().len(),
            20_000_000
        );
    }
}

#[test]
fn sync_close_makes_close_wait_for_the_network() {
    let m = Mount::with_options(Options {
        extra: &["--sync-close"],
        ..Options::default()
    });
    let data = random_bytes(300_000, 5);
    let mut f = create(&m.join("a"));
    f.write_all(&data).unwrap();
    close_checked(f).unwrap();
    for i in 0..3 {
        m.net().kill(i);
    }
    let mut f = create(&m.join("b"));
    f.write_all(&data).unwrap();
    assert_errno(
        close_checked(f),
        libc::EIO,
        "close with --sync-close and 3 nodes down",
    );
    m.net().up_again();
    // What close reported as failed is still kept, and stored once the nodes are back.
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    m.remount();
    assert_same_bytes(&fs::read(m.join("a")).unwrap(), &data, "a");
    assert_same_bytes(&fs::read(m.join("b")).unwrap(), &data, "b");
}

#[test]
fn unmount_with_the_network_gone_keeps_the_data_for_the_next_mount() {
    let m = Mount::new();
    for i in 0..3 {
        m.net().kill(i);
    }
    let data = random_bytes(2_000_000, 8);
    fs::write(m.join("kept"), &data).unwrap();
    // The unmount cannot store it; it must not drop it either.
    let out = m.net().cli(&["unmount", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        m.logs().contains("kept in the state directory"),
        "the unmount says what it kept:\n{}",
        m.logs()
    );
    m.net().up_again();
    m.mount_again();
    assert_same_bytes(
        &fs::read(m.join("kept")).unwrap(),
        &data,
        "after the next mount",
    );
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// The journal writes new segments over the files of dead ones (journal format 2). A kill -9
/// with closed files only in such a reused file loses nothing, and the files stored before
/// (whose records the reused file held) read back unchanged.
#[test]
fn kill9_after_journal_files_were_reused_loses_nothing() {
    let m = Mount::new();
    // Segments of 64 MiB filled, stored and reclaimed: their files become spares.
    let big: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(40 << 20, 70 + i)).collect();
    for (i, data) in big.iter().enumerate() {
        fs::write(m.join(format!("big{i}")), data).unwrap();
        let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(
        wait_until(Duration::from_secs(60), || m.journal_spares() > 0).is_some(),
        "no journal segment was kept to be reused"
    );
    let before = m.journal_spares();
    // Nothing can reach the network: what follows is only in the journal, written into a
    // reused file over records of the big files.
    for i in 0..3 {
        m.net().kill(i);
    }
    let small: Vec<Vec<u8>> = (0..40)
        .map(|i| random_bytes(1000 + i * 50_000, 200 + i as u64))
        .collect();
    for (i, data) in small.iter().enumerate() {
        let mut f = create(&m.join(format!("s{i}")));
        f.write_all(data).unwrap();
        close_checked(f).expect("close with the network down: the journal has it");
    }
    assert!(
        m.journal_spares() < before,
        "the new records did not go into a reused file"
    );
    m.kill9();
    m.net().up_again();
    m.mount_again();
    for (i, data) in small.iter().enumerate() {
        let path = m.join(format!("s{i}"));
        assert_same_bytes(&fs::read(&path).unwrap(), data, &path.display().to_string());
    }
    for (i, data) in big.iter().enumerate() {
        evict_path(&m.join(format!("big{i}")));
        assert_same_bytes(
            &fs::read(m.join(format!("big{i}"))).unwrap(),
            data,
            &format!("big{i}"),
        );
    }
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}
