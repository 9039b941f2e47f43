//! The write-back journal end to end: a killed mount loses nothing closed; an outage makes
//! writers wait (and only writers) and they resume when the nodes return; `--sync-close`
//! keeps close waiting for the network; unmount with the network gone keeps the data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
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

#[test]
fn kill9_with_closed_files_in_the_journal_loses_nothing() {
    let m = Mount::new();
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
    let big = random_bytes((10 << 20) + 99, 1000);
    let mut f = create(&m.join("big"));
    f.write_all(&big).unwrap();
    close_checked(f).unwrap();
    m.kill9();
    m.net().up_again();
    m.mount_again();
    for (i, data) in small.iter().enumerate() {
        let p = m.join(format!("s{i}"));
        evict_path(&p);
        assert_same_bytes(&fs::read(&p).unwrap(), data, &format!("s{i} after kill -9"));
    }
    assert_same_bytes(&fs::read(m.join("big")).unwrap(), &big, "big after kill -9");
    // The replayed journal drains to the network: a cold remount reads it from the nodes.
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    m.remount();
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
