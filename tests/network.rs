//! End-to-end tests of the storage network: real `walrusfs node` processes on loopback, real
//! QUIC, real disks, driven through the `walrusfs` CLI the way an operator would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::quic::{self, exchange, frame};
use common::{random_bytes, Testnet};

const SIZES: &[usize] = &[0, 1, 1000, 1 << 20, (17 << 20) + 1];

#[test]
fn blobs_round_trip_and_survive_f_failures_and_restarts() {
    let net = Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let mut blobs = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let data = random_bytes(size, i as u64);
        let id = net.put_bytes(work.path(), &data);
        assert_eq!(id.len(), 64, "blob id is 64 hex digits: {id:?}");
        assert_eq!(
            net.get_bytes(work.path(), &id),
            data,
            "round trip of {size} bytes"
        );
        blobs.push((id, data));
    }

    // Kill f = 2 nodes holding systematic slivers, so reads must decode from recovery slivers.
    net.kill(0);
    net.kill(1);
    for (id, data) in &blobs {
        assert_eq!(
            &net.get_bytes(work.path(), id),
            data,
            "read with nodes 0,1 down"
        );
    }
    // Writes also still succeed with f nodes down.
    let late = random_bytes(300_000, 99);
    let late_id = net.put_bytes(work.path(), &late);

    // Restart them: their data is still on disk and served.
    net.up_again();
    let status = net.cli_ok(&["blob", "status", "--testnet", net.dir_str(), &blobs[3].0]);
    for node in ["0", "1"] {
        let line = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap();
        assert!(
            line.contains("yes"),
            "restarted node {node} lost its data: {status}"
        );
    }
    net.kill(4);
    net.kill(5);
    for (id, data) in &blobs {
        assert_eq!(
            &net.get_bytes(work.path(), id),
            data,
            "read with nodes 4,5 down"
        );
    }
    assert_eq!(net.get_bytes(work.path(), &late_id), late);

    // A third failure is more than f: reads still succeed (4 slivers left, k = 3 needed), but a
    // write can no longer reach n - f = 5 confirmations and must fail loudly.
    net.kill(6);
    assert_eq!(
        net.get_bytes(work.path(), &blobs[4].0),
        blobs[4].1,
        "read with 3 nodes down"
    );
    let file = work.path().join("unstorable");
    std::fs::write(&file, random_bytes(1000, 5)).unwrap();
    let r = net.cli(&[
        "blob",
        "put",
        "--testnet",
        net.dir_str(),
        file.to_str().unwrap(),
    ]);
    assert!(
        !r.status.success(),
        "a write with 3 of 7 nodes down must fail"
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("required confirmations"),
        "unclear error: {err}"
    );
    assert!(r.stdout.is_empty(), "a failed put must not print a blob id");

    // With fewer than k nodes left, a read fails cleanly and writes nothing.
    net.kill(2);
    net.kill(3);
    let out = work.path().join("should-not-exist");
    let r = net.cli(&[
        "blob",
        "get",
        "--testnet",
        net.dir_str(),
        &blobs[3].0,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success(), "read with 5 nodes down must fail");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("slivers verified"), "unclear error: {err}");
    assert!(!out.exists(), "a failed read must not leave an output file");
}

#[test]
fn corrupted_slivers_are_detected_and_the_read_is_still_correct() {
    let net = Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(3 << 20, 7);
    let id = net.put_bytes(work.path(), &data);
    net.wait_all_slivers(&id);
    // Flip bytes in the stored slivers of two systematic nodes, which a reader asks first:
    // f = 2 lying nodes must not change what is read. The length stays right, so the nodes
    // serve the damaged bytes and only the client's verification can catch them.
    for node in [0u16, 2] {
        let path = net.sliver_path(node, &id);
        let mut bytes = std::fs::read(&path).unwrap();
        for i in (0..bytes.len()).step_by(4096) {
            bytes[i] ^= 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    let out_file = work.path().join("flipped");
    let out = std::process::Command::new(common::bin())
        .args(["blob", "get", "--testnet", net.dir_str(), &id, "-o"])
        .arg(&out_file)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&out_file).unwrap(), data, "2 lying nodes");
    let log = String::from_utf8_lossy(&out.stderr);
    for node in ["node=0", "node=2"] {
        assert!(
            log.lines()
                .any(|l| l.contains(node) && l.contains("failed verification")),
            "the client must have rejected {node}'s sliver and asked another node:\n{log}"
        );
    }
    // Truncate a third node's sliver too: 4 honest slivers remain, k = 3 suffice.
    let path = net.sliver_path(1, &id);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_eq!(
        net.get_bytes(work.path(), &id),
        data,
        "3 damaged, 4 honest slivers"
    );
}

#[test]
fn lying_slow_flaky_and_refusing_nodes_cannot_spoil_writes_or_reads() {
    let net = Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let before: Vec<(String, Vec<u8>)> = [1000usize, 2 << 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let d = random_bytes(n, 40 + i as u64);
            (net.put_bytes(work.path(), &d), d)
        })
        .collect();
    // Node 0 serves other blobs' slivers, node 1 cut and flipped ones; node 2 refuses stores
    // and answers late; node 3 drops every second connection's request.
    net.misbehave(0, "wrong_slivers = true");
    net.misbehave(1, "truncate_slivers = true\ncorrupt_slivers = true");
    net.misbehave(2, "refuse_stores = true\ndelay_ms = 300");
    net.misbehave(3, "drop_every = 2");
    // Writes reach n - f = 5 confirmations without node 2.
    let data = random_bytes(3 << 20, 50);
    let id = net.put_bytes(work.path(), &data);
    let started = std::time::Instant::now();
    while [4u16, 5, 6]
        .iter()
        .any(|&i| !net.sliver_path(i, &id).exists())
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "honest nodes never stored it"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The new blob reached n - f = 5 nodes or more, two of them liars: k honest ones remain.
    // The older blobs are read with two honest nodes gone too: of the five left only nodes 2
    // (slow), 3 (flaky) and 4 serve good slivers, exactly k, so a request node 3 drops must be
    // retried on a new connection.
    let out_file = work.path().join("read");
    for (n, (id, want)) in [(id.clone(), data)].iter().chain(before.iter()).enumerate() {
        if n == 1 {
            net.kill(5);
            net.kill(6);
        }
        let out = std::process::Command::new(common::bin())
            .args(["blob", "get", "--testnet", net.dir_str(), id, "-o"])
            .arg(&out_file)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(&std::fs::read(&out_file).unwrap(), want);
        let log = String::from_utf8_lossy(&out.stderr);
        // The reader had to ask nodes 0 and 1, and must have rejected what they served.
        for node in ["node=0", "node=1"] {
            assert!(
                log.lines()
                    .any(|l| l.contains(node) && l.contains("failed verification")),
                "{node}'s bad sliver was not rejected:\n{log}"
            );
        }
    }
    assert!(
        !net.sliver_path(2, &id).exists(),
        "node 2 refused the store"
    );
    net.up_again();
}

/// Nodes 0 and 1 (two of the three systematic slivers) announce a whole sliver and end the
/// stream halfway through it: the reader takes it as the node's failure, asks others, and
/// returns the right bytes, for whole slivers and for ranges.
#[test]
fn nodes_that_end_an_answer_early_are_read_around() {
    let net = Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes((3 << 20) + 777, 81);
    let id = net.put_bytes(work.path(), &data);
    net.wait_all_slivers(&id);
    net.misbehave(0, "short_bodies = true");
    net.misbehave(1, "short_bodies = true");
    for range in [None, Some((100_000u64, 200_000u64))] {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["blob", "get", "--testnet", net.dir_str(), &id, "-o", "-"])
            .env("RUST_LOG", "netcore=debug");
        if let Some((offset, len)) = range {
            cmd.arg(format!("--range={offset}:{len}"));
        }
        let out = cmd.output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{range:?}: {log}");
        let want = match range {
            None => &data[..],
            Some((o, l)) => &data[o as usize..(o + l) as usize],
        };
        assert!(out.stdout == want, "{range:?}: wrong bytes");
        // A whole blob is read from both systematic nodes first; a range from the one
        // holding it.
        let liars: &[&str] = match range {
            None => &["node=0", "node=1"],
            Some(_) => &["node="],
        };
        for node in liars {
            assert!(
                log.lines()
                    .any(|l| l.contains(node) && l.contains("ended at")),
                "{range:?}: {node}'s short answer was not seen:\n{log}"
            );
        }
    }
    net.up_again();
}

#[test]
fn untrusted_clients_cannot_store_or_delete() {
    let net = Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(50_000, 3);
    let id = net.put_bytes(work.path(), &data);

    let key = work.path().join("stranger.key");
    net.cli_ok(&["keygen", "--out", key.to_str().unwrap()]);
    let committee = net.dir.path().join("committee.toml");
    let file = work.path().join("payload");
    std::fs::write(&file, b"not yours to store").unwrap();
    let stranger = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend([
            "--committee",
            committee.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ]);
        net.cli(&full)
    };
    let r = stranger(&["blob", "put", file.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not authorized"),
        "{r:?}"
    );
    let r = stranger(&["blob", "delete", &id]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("not authorized"),
        "{r:?}"
    );
    // Reads are open to any key (slivers are ciphertext fragments), and the blob is intact.
    let out = work.path().join("out");
    let r = stranger(&["blob", "get", &id, "-o", out.to_str().unwrap()]);
    assert!(r.status.success(), "{r:?}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // The trusted client can delete.
    net.cli_ok(&["blob", "delete", "--testnet", net.dir_str(), &id]);
    let r = net.cli(&[
        "blob",
        "get",
        "--testnet",
        net.dir_str(),
        &id,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!r.status.success());
}

#[test]
fn testnet_status_and_clean_shutdown() {
    let net = Testnet::up(4);
    let work = tempfile::tempdir().unwrap();
    net.put_bytes(work.path(), &random_bytes(10_000, 1));
    net.wait_all_nodes_hold(1);
    net.wait_status(|s| s.lines().filter(|l| l.contains(" up ")).count() == 4);
    net.kill(3);
    net.wait_status(|s| s.contains("3 of 4 nodes up"));
    net.cli_ok(&["testnet", "down", "--dir", net.dir_str()]);
    for i in 0..3 {
        let ndir = net.dir.path().join(format!("node-{i}"));
        assert!(
            !ndir.join("node.pid").exists(),
            "node {i} left its pid file"
        );
        let log = std::fs::read_to_string(ndir.join("node.log")).unwrap();
        assert!(
            log.contains("storage node stopped"),
            "node {i} did not stop cleanly: {log}"
        );
    }
    // A node that cannot start (its port taken by another program) fails `up` at once, and
    // the error shows why from the node's log.
    let committee =
        netcore::committee::Committee::load(&net.dir.path().join("committee.toml")).unwrap();
    let squatter = std::net::UdpSocket::bind(committee.nodes[1].address).unwrap();
    let started = Instant::now();
    let out = net.cli(&["testnet", "up", "--dir", net.dir_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "up succeeded with a node's port taken"
    );
    assert!(
        err.contains("nodes [1] exited while starting") && err.contains("cannot listen on"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a node that exited was waited for: {:?}",
        started.elapsed()
    );
    drop(squatter);
    // Up again restarts all nodes with their data.
    net.up_again();
    net.wait_status(|s| s.contains("4 of 4 nodes up"));
    assert!(Path::new(&net.dir.path().join("node-0/node.pid")).exists());
}

#[test]
fn malformed_and_oversize_frames_get_errors_and_the_node_keeps_serving() {
    use netcore::wire::{Request, RequestFrame, Response, WireError, PROTOCOL_VERSION};
    let net = Testnet::up(4);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(20_000, 11);
    let id = net.put_bytes(work.path(), &data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (committee, client) = quic::committee_and_client(&net);
        let conn = quic::connect(&committee, 0, &client, "127.0.0.1")
            .await
            .unwrap();
        // Garbage that is not a request.
        let r = exchange(&conn, &[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99]).await;
        assert!(
            matches!(r, Response::Error(WireError::InvalidRequest(_))),
            "{r:?}"
        );
        // A frame claiming 4 GiB.
        let r = exchange(&conn, &[0xff, 0xff, 0xff, 0xff, 0, 0]).await;
        assert!(
            matches!(r, Response::Error(WireError::TooLarge { .. })),
            "{r:?}"
        );
        // A future protocol version.
        let mut future = Vec::new();
        let req = RequestFrame {
            version: PROTOCOL_VERSION + 1,
            request: Request::Health,
        };
        netcore::wire::write_frame(&mut future, &req).await.unwrap();
        let r = exchange(&conn, &future).await;
        assert!(
            matches!(r, Response::Error(WireError::VersionMismatch { .. })),
            "{r:?}"
        );
        // A sliver body far beyond the node's limit is refused before it is read.
        let blob_id: netcore::codec::BlobId = id.parse().unwrap();
        let meta = match exchange(&conn, &frame(Request::GetMetadata { blob_id }).await).await {
            Response::Metadata(m) => m,
            other => panic!("{other:?}"),
        };
        let huge = Request::StoreSliver {
            blob_id,
            metadata: meta,
            index: 0,
            len: 1 << 40,
        };
        let r = exchange(&conn, &frame(huge).await).await;
        assert!(
            matches!(
                r,
                Response::Error(WireError::InvalidRequest(_) | WireError::TooLarge { .. })
            ),
            "{r:?}"
        );
        // The same connection still serves well-formed requests.
        let r = exchange(&conn, &frame(Request::Health).await).await;
        assert!(matches!(r, Response::Health(_)), "{r:?}");
    });
    // And other clients are served as before.
    assert_eq!(net.get_bytes(work.path(), &id), data);
}

/// `blob get --range` against real nodes: ranges anywhere in a blob (inside a granule, across
/// slivers, at the end) come back exact and move no whole sliver; a node serving damaged bytes
/// is caught by the proof and the range rebuilt from others; with two systematic nodes dead
/// their ranges are rebuilt too.
#[test]
fn ranged_reads_are_verified_and_survive_lying_and_dead_nodes() {
    let net = Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes((3 << 20) + 12_345, 77);
    let id = net.put_bytes(work.path(), &data);
    net.wait_all_slivers(&id);
    let sliver = (data.len().div_ceil(3) as u64 + 1) & !1; // even, as the codec rounds
    let get = |offset: u64, len: u64| {
        let out = std::process::Command::new(common::bin())
            .args(["blob", "get", "--testnet", net.dir_str(), &id, "-o", "-"])
            .arg(format!("--range={offset}:{len}"))
            .env("RUST_LOG", "netcore=debug")
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases = [
        (0, 1),
        (5000, 4096),
        (sliver - 10, 20),
        (sliver + 70_000, 300_000),
        (data.len() as u64 - 100, 100),
    ];
    for &(offset, len) in &cases {
        let (ok, bytes, log) = get(offset, len);
        assert!(ok, "{offset}:{len}: {log}");
        assert!(
            bytes == data[offset as usize..(offset + len) as usize],
            "{offset}:{len}"
        );
        assert!(log.contains("sliver range verified"), "{log}");
        assert!(
            !log.contains("get_sliver"),
            "a whole sliver was fetched:\n{log}"
        );
    }
    let (ok, _, log) = get(data.len() as u64 - 10, 11);
    assert!(!ok && log.contains("past the end of the blob"), "{log}");

    // Rot on node 2's disk, inside the range read: caught, and the range rebuilt.
    let path = net.sliver_path(2, &id);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (data.len() as u64 - 50 - 2 * sliver) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, bytes, log) = get(data.len() as u64 - 100, 100);
    assert!(ok, "{log}");
    assert!(bytes == data[data.len() - 100..], "rotted range");

    // Node 1 lost its outboard, and its sliver rotted (outside the range asked for). Asked
    // for a range, it rebuilds the outboard from the whole sliver, finds that it does not
    // match the commitment and answers Corrupt: no proof of rotted bytes, no outboard built
    // from them. The range is rebuilt from others.
    let sliver1 = net.sliver_path(1, &id);
    let outboard1 = sliver1.with_file_name("outboard-1");
    assert!(outboard1.exists(), "no outboard stored at put");
    std::fs::remove_file(&outboard1).unwrap();
    let mut bytes = std::fs::read(&sliver1).unwrap();
    bytes[1000] ^= 0x5a;
    std::fs::write(&sliver1, &bytes).unwrap();
    net.kill(1); // its cached outboard goes with it
    net.up_again();
    let (ok, bytes, log) = get(sliver + 70_000, 300_000);
    assert!(ok, "{log}");
    assert!(bytes == data[(sliver + 70_000) as usize..(sliver + 370_000) as usize]);
    assert!(
        !log.lines()
            .any(|l| l.contains("node=1") && l.contains("failed verification")),
        "node 1 proved a range of a rotted sliver:\n{log}"
    );
    assert!(
        !outboard1.exists(),
        "node 1 stored an outboard built from a rotted sliver"
    );

    // Node 0 flips the bytes it serves: its range fails its proof and is rebuilt.
    net.misbehave(0, "corrupt_slivers = true");
    let (ok, bytes, log) = get(5000, 4096);
    assert!(ok, "{log}");
    assert!(bytes == data[5000..9096]);
    assert!(
        log.lines()
            .any(|l| l.contains("node=0") && l.contains("failed verification")),
        "node 0's range was not rejected:\n{log}"
    );
    // Nodes 0 and 1 gone: ranges of both their slivers are rebuilt from k others.
    net.kill(0);
    net.kill(1);
    for &(offset, len) in &cases {
        let (ok, bytes, log) = get(offset, len);
        assert!(ok, "{offset}:{len} with nodes 0 and 1 down: {log}");
        assert!(
            bytes == data[offset as usize..(offset + len) as usize],
            "{offset}:{len} degraded"
        );
    }
    net.up_again();
}

#[test]
fn testnet_down_stops_the_nodes_of_a_renamed_binary() {
    // Installed under another name, the binary must still find and stop its own nodes (it
    // used to recognise them by "walrusfs" in their command line and leave them running).
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("wfs");
    std::fs::copy(common::bin(), &bin).unwrap();
    let dir = work.path().join("net");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["testnet", "up", "--nodes", "4"]);
    let pids: Vec<i32> = (0..4)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("node-{i}/node.pid")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    // Whatever happens below, none of them outlives the test.
    struct Reap(Vec<i32>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for &pid in &self.0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _reap = Reap(pids.clone());
    // Named relative to another working directory, they are the same nodes.
    let out = std::process::Command::new(&bin)
        .current_dir(work.path())
        .args(["testnet", "status", "--dir", "net"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("4 of 4 nodes up"), "{out:?}");
    for pid in &pids {
        assert!(
            status.contains(&format!(" {pid} ")),
            "pid {pid} not shown: {status}"
        );
    }
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not a walrusfs node"),
        "{out:?}"
    );
    let out = run(&["testnet", "down"]);
    assert!(out.contains("stopped 4 node(s)"), "{out}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X");
        assert!(!alive, "node pid {pid} still running after testnet down");
    }
}
