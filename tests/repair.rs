//! `walrusfs repair` end to end: a node whose disk was wiped, and nodes whose slivers rotted or
//! were cut short, get everything back; afterwards those nodes alone (k of n) serve every file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::process::Output;

use common::mount::{assert_same_bytes, evict_path, Mount, Options};
use common::random_bytes;

fn repair(m: &Mount) -> Output {
    let out = m.net().cli(&["repair", "--testnet", m.net().dir_str()]);
    eprintln!(
        "repair: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The number before `word` in repair's summary line ("7 restored").
fn count(out: &Output, word: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == word)
        .unwrap_or_else(|| panic!("no {word:?} in {text}"));
    words[at - 1].parse().unwrap()
}

#[test]
fn wiped_and_damaged_nodes_are_restored_and_then_serve_every_file_alone() {
    // No chunk caches in the mount: every read below goes to the nodes.
    const NO_CACHES: &[&str] = &["--cache-mib", "0", "--disk-cache-mib", "0"];
    let m = Mount::with_options(Options {
        extra: NO_CACHES,
        ..Options::default()
    });
    let mut files = Vec::new();
    for i in 0..30 {
        files.push((format!("small{i}"), random_bytes(500 + i * 300, i as u64)));
    }
    files.push(("big".into(), random_bytes((9 << 20) + 7, 100)));
    files.push(("medium".into(), random_bytes(1_500_000, 101)));
    fs::create_dir(m.join("dir")).unwrap();
    for (name, data) in &files {
        fs::write(m.join("dir").join(name), data).unwrap();
    }
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // A healthy archive: repair finds nothing to do beyond slivers still on their way.
    let out = repair(&m);
    assert!(out.status.success(), "repair of a healthy archive: {out:?}");
    let blobs = count(&out, "blobs");
    assert!(blobs >= 4, "data and index blobs walked: {blobs}");
    // Unmounted while the nodes are damaged and repaired: a mount publishes again when its
    // index changes (late confirmations, kept in it, do that within seconds of a sync), and
    // an index blob stored while the slivers below are being damaged, but published only
    // after the first repair below read the root, was damaged and left for the second
    // repair to find (seen once in a full run).
    m.unmount();

    // Node 1 loses its disk: every sliver and the root record.
    m.net().kill(1);
    fs::remove_dir_all(m.net().node_dir(1).join("store")).unwrap();
    fs::remove_dir_all(m.net().node_dir(1).join("roots")).unwrap();
    m.net().up_again();
    // Node 2's slivers rot (same length, flipped bytes); node 3's are cut short.
    for (node, damage) in [(2u16, "flip"), (3, "truncate")] {
        let blobs_dir = m.net().node_dir(node).join("store/blobs");
        for sliver in walk(&blobs_dir).into_iter().filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sliver-"))
        }) {
            let mut bytes = fs::read(&sliver).unwrap();
            if bytes.is_empty() {
                continue;
            }
            match damage {
                "flip" => {
                    for i in (0..bytes.len()).step_by(1000) {
                        bytes[i] ^= 0xff;
                    }
                }
                _ => bytes.truncate(bytes.len() / 2),
            }
            fs::write(&sliver, &bytes).unwrap();
        }
    }

    let out = repair(&m);
    assert!(out.status.success(), "repair: {out:?}");
    let restored = count(&out, "restored;");
    assert!(
        restored >= 3 * blobs - 3,
        "nodes 1, 2 and 3 lost (nearly) every sliver of {blobs} blobs, only {restored} restored"
    );
    // Node 1's root record is back: restored by repair, or already by the mount's next
    // publish (a restarted node gets the mount's writes at once; see the last test below).
    let roots = fs::read_dir(m.net().node_dir(1).join("roots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))
        })
        .count();
    assert!(
        count(&out, "nodes;") >= 1 || roots >= 1,
        "node 1's root record restored: {out:?}"
    );
    // Nothing left to do.
    let out = repair(&m);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(count(&out, "restored;"), 0, "a second repair finds nothing");

    m.mount_again_with(Options {
        extra: NO_CACHES,
        ..Options::default()
    });
    // Only the repaired nodes are left: k = 3 of 7. Every file still reads, from them alone.
    for i in [0u16, 4, 5, 6] {
        m.net().kill(i);
    }
    for (name, data) in &files {
        let p = m.join("dir").join(name);
        evict_path(&p);
        assert_same_bytes(&fs::read(&p).unwrap(), data, name);
    }
    m.net().up_again();
}

#[test]
fn repair_reports_nodes_it_cannot_reach_and_fails_until_they_are_back() {
    let m = Mount::new();
    fs::write(m.join("a"), random_bytes(200_000, 1)).unwrap();
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    m.net().kill(6);
    let out = repair(&m);
    assert!(
        !out.status.success(),
        "a node could not be checked: {out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run repair again"),
        "the error says what to do: {err}"
    );
    m.net().up_again();
    let out = repair(&m);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_node_scrubber_quarantines_rot_and_repair_restores_it() {
    let m = Mount::with_options(Options {
        extra: &["--cache-mib", "0", "--disk-cache-mib", "0"],
        ..Options::default()
    });
    let mut files = Vec::new();
    for i in 0..5 {
        let data = random_bytes(300_000 + i * 1000, i as u64);
        fs::write(m.join(format!("f{i}")), &data).unwrap();
        files.push((format!("f{i}"), data));
    }
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Node 2's slivers rot in place (same length: only hashing finds it), then its scrubber
    // runs a pass every second.
    let store = m.net().node_dir(2).join("store");
    m.net().kill(2);
    let mut rotted = 0;
    for sliver in walk(&store.join("blobs")).into_iter().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("sliver-"))
    }) {
        let mut bytes = fs::read(&sliver).unwrap();
        if let Some(b) = bytes.get_mut(7) {
            *b ^= 0x01;
            fs::write(&sliver, &bytes).unwrap();
            rotted += 1;
        }
    }
    assert!(
        rotted >= 2,
        "a data pack and an index record to rot: {rotted}"
    );
    m.net().up_again();
    m.net().reconfigure(
        2,
        &[("scrub_interval_secs", "1"), ("scrub_mib_per_sec", "1000")],
    );
    let quarantine = store.join("quarantine");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::read_dir(&quarantine).map_or(0, |d| d.count()) < rotted {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrubber quarantined {} of {rotted} rotted slivers",
            fs::read_dir(&quarantine).map_or(0, |d| d.count())
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = repair(&m);
    assert!(out.status.success(), "{out:?}");
    assert!(
        count(&out, "restored;") >= 1,
        "repair restores what the scrubber found"
    );
    // The next scrub passes find nothing more: the restored slivers are intact.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(fs::read_dir(&quarantine).unwrap().count(), rotted);
    // Node 2 is needed for every read now (k = 3 of 2, 5, 6), and serves.
    for i in [0u16, 1, 3, 4] {
        m.net().kill(i);
    }
    for (name, data) in &files {
        let p = m.join(name);
        evict_path(&p);
        assert_same_bytes(&fs::read(&p).unwrap(), data, name);
    }
    m.net().up_again();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_read_that_meets_a_damaged_sliver_gets_it_repaired_in_the_background() {
    let m = Mount::with_options(Options {
        extra: &[
            "--cache-mib",
            "0",
            "--disk-cache-mib",
            "0",
            "--repair-interval-secs",
            "1",
        ],
        ..Options::default()
    });
    let data = random_bytes(2_000_000, 77);
    fs::write(m.join("f"), &data).unwrap();
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Rot node 0's slivers (systematic: a reader asks node 0 first); keep the good bytes.
    let mut good = Vec::new();
    for sliver in walk(&m.net().node_dir(0).join("store/blobs"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy() == "sliver-0")
        })
    {
        let bytes = fs::read(&sliver).unwrap();
        let mut bad = bytes.clone();
        if let Some(b) = bad.get_mut(5) {
            *b ^= 0x10;
        }
        fs::write(&sliver, &bad).unwrap();
        good.push((sliver, bytes));
    }
    assert!(!good.is_empty());
    // An ordinary read: correct data, and the mount notes what it met.
    evict_path(&m.join("f"));
    assert_same_bytes(&fs::read(m.join("f")).unwrap(), &data, "read past the rot");
    // Without any command, the data blob's sliver on node 0 is whole again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !good
        .iter()
        .any(|(p, bytes)| bytes.len() > 100_000 && fs::read(p).is_ok_and(|b| &b == bytes))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount never repaired the sliver its read found damaged:\n{}",
            m.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `walrusfs audit`'s table row for `node`: (served, failed, unreachable).
fn audit_row(out: &Output, node: u16) -> (u64, u64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&node.to_string()))
        .unwrap_or_else(|| panic!("no row for node {node} in {text}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0], f[1], f[2])
}

#[test]
fn audit_scores_every_node_and_names_the_ones_that_lost_or_rotted_slivers() {
    let m = Mount::new();
    // Files over 1 MiB are stored one blob each: a dozen blobs, each confirmed by all 7 nodes
    // (5 before the upload returns, the others moments later: kept all the same).
    for i in 0..12 {
        fs::write(m.join(format!("f{i}")), random_bytes(1_200_000, 60 + i)).unwrap();
    }
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let audit = || m.net().cli(&["audit", "--testnet", m.net().dir_str()]);
    // `sync` returns at n - f confirmations; the last slivers follow within moments.
    let mut out = audit();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !out.status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        out = audit();
    }
    assert!(out.status.success(), "a healthy archive: {out:?}");
    let (served, failed, unreachable) = audit_row(&out, 3);
    assert!(served >= 2 && failed == 0 && unreachable == 0, "{out:?}");
    // Every node holds its slivers now, so every confirmation is in: a sync publishes the
    // late ones (the first audit saw only the quorums if the slower nodes were slow).
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    // Node 2's slivers rot; node 4 loses its disk.
    for sliver in walk(&m.net().node_dir(2).join("store/blobs"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sliver-"))
        })
    {
        let mut bytes = fs::read(&sliver).unwrap();
        if let Some(b) = bytes.get_mut(3) {
            *b ^= 0x20;
        }
        fs::write(&sliver, &bytes).unwrap();
    }
    m.net().kill(4);
    fs::remove_dir_all(m.net().node_dir(4).join("store")).unwrap();
    m.net().up_again();
    let out = audit();
    assert!(!out.status.success(), "an audit with failures: {out:?}");
    for node in [2u16, 4] {
        let (served, failed, _) = audit_row(&out, node);
        assert!(served == 0 && failed >= 2, "node {node}: {out:?}");
    }
    for node in [0u16, 1, 3, 5, 6] {
        assert_eq!(audit_row(&out, node).1, 0, "node {node} is honest: {out:?}");
    }
    // The nodes that broke their promises are shown their own signed confirmations, and the
    // signatures check out against their keys.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let committee =
        netcore::committee::Committee::load(&m.net().dir.path().join("committee.toml")).unwrap();
    for node in [2u16, 4] {
        let line = text
            .lines()
            .find(|l| {
                l.contains(&format!(
                    "evidence: node {node} confirmed storing sliver {node} of blob"
                ))
            })
            .unwrap_or_else(|| panic!("no evidence against node {node}: {text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |w: &str| words.iter().position(|x| *x == w).unwrap() + 1;
        let blob_id: netcore::codec::BlobId = words[at("blob")].parse().unwrap();
        let signature = hex::decode(words[at("signature")].trim_end_matches(',')).unwrap();
        let key = committee.nodes[usize::from(node)].public_key;
        let message = netcore::wire::StorageConfirmation::message(&blob_id, node);
        assert!(key.verify(&message, &signature), "{line}");
    }
    for node in [0u16, 1, 3, 5, 6] {
        assert!(!text.contains(&format!("evidence: node {node} ")), "{text}");
    }
    // Repair restores them; the audit is clean again.
    assert!(repair(&m).status.success());
    let out = audit();
    assert!(out.status.success(), "after repair: {out:?}");
}

/// A node slower than every upload's quorum signs for its slivers after each upload returned;
/// its confirmations are kept all the same (added to the blobs' proofs when they come in), so
/// an audit can hold that node to them once it loses its disk.
#[test]
fn a_slow_nodes_late_confirmations_are_kept_as_evidence() {
    let m = Mount::new();
    // Node 6 answers every request 0.4 s late: the other six reach the quorum of 5 first.
    m.net().misbehave(6, "delay_ms = 400");
    // A fresh client, so that this test is about confirmations, not about how the mount's
    // connection to the restarted node ends (the next test).
    m.remount();
    for i in 0..3 {
        fs::write(m.join(format!("f{i}")), random_bytes(1_200_000, 90 + i)).unwrap();
    }
    let sync = || {
        let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    };
    sync();
    // Node 6's confirmations arrive within moments; the next sync publishes them.
    std::thread::sleep(std::time::Duration::from_secs(2));
    sync();
    m.net().kill(6);
    fs::remove_dir_all(m.net().node_dir(6).join("store")).unwrap();
    m.net().up_again();
    let out = m.net().cli(&["audit", "--testnet", m.net().dir_str()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "node 6 lost its slivers: {text}");
    let (served, failed, _) = audit_row(&out, 6);
    assert!(served == 0 && failed >= 3, "{text}");
    let committee =
        netcore::committee::Committee::load(&m.net().dir.path().join("committee.toml")).unwrap();
    let evidence: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("evidence: node 6 confirmed storing sliver 6 of blob"))
        .collect();
    assert!(!evidence.is_empty(), "no evidence against node 6: {text}");
    for line in evidence {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = |w: &str| words.iter().position(|x| *x == w).unwrap() + 1;
        let blob_id: netcore::codec::BlobId = words[at("blob")].parse().unwrap();
        let signature = hex::decode(words[at("signature")].trim_end_matches(',')).unwrap();
        let message = netcore::wire::StorageConfirmation::message(&blob_id, 6);
        assert!(
            committee.nodes[6].public_key.verify(&message, &signature),
            "{line}"
        );
    }
}

/// A node restarted under a live mount gets the mount's next writes at once: its new process
/// answers packets on the old process's connections with a stateless reset the mount can
/// verify (keys derived from the node's identity), so the mount connects again instead of
/// waiting out its request timeout (10 s) on a dead connection.
#[test]
fn a_node_restarted_under_a_mount_gets_its_next_writes_at_once() {
    let m = Mount::new();
    let sync = || {
        let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    };
    fs::write(m.join("a"), random_bytes(2_000_000, 70)).unwrap();
    sync();
    let slivers = || {
        walk(&m.net().node_dir(6).join("store/blobs"))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("sliver-"))
            })
            .count()
    };
    m.net().kill(6);
    m.net().up_again();
    let before = slivers();
    fs::write(m.join("b"), random_bytes(2_000_000, 71)).unwrap();
    sync();
    assert!(
        common::mount::wait_until(std::time::Duration::from_secs(5), || slivers() > before)
            .is_some(),
        "node 6 got nothing within 5 s of its restart ({before} slivers):\n{}",
        m.logs()
    );
}
