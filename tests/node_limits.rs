//! A storage node under load from anyone: hundreds of concurrent readers (trusted and not, some
//! reading slowly) keep its memory within its configured budget plus a fixed overhead, and a
//! flood of connections and abandoned handshakes from strangers does not lock out the trusted
//! client. Real node processes, real QUIC on loopback; the strangers come from other loopback
//! addresses (127.0.0.2, 127.0.0.3), as other machines would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::quic::{committee_and_client, connect, exchange, frame};
use common::{random_bytes, Testnet};
use netcore::committee::Committee;
use netcore::identity::Identity;
use netcore::wire::{self, Request, Response, WireError};

/// Asks for a sliver; reads the body after `pause` (a slow reader). Returns its length, or
/// the node's error.
async fn read_sliver(
    conn: &quinn::Connection,
    blob_id: netcore::codec::BlobId,
    index: u16,
    pause: Duration,
) -> Result<usize, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&frame(Request::GetSliver { blob_id, index }).await)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    let response: Response = wire::read_frame(&mut recv)
        .await
        .map_err(|e| e.to_string())?;
    match response {
        Response::Sliver { len } => {
            tokio::time::sleep(pause).await;
            let body = wire::read_body(&mut recv, len as usize)
                .await
                .map_err(|e| e.to_string())?;
            Ok(body.len())
        }
        Response::Error(e) => Err(format!("{e:?}")),
        other => Err(format!("unexpected {other:?}")),
    }
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn node_memory_stays_within_its_budget_under_hundreds_of_readers() {
    const BUDGET: u64 = 32 << 20;
    let net = Testnet::up(4);
    let work = tempfile::tempdir().unwrap();
    // 8 MiB at k = 2: 4 MiB slivers; the budget holds 8 of them at once.
    let id = net.put_bytes(work.path(), &random_bytes(8 << 20, 5));
    net.wait_all_slivers(&id);
    net.reconfigure(
        0,
        &[
            ("max_inflight_bytes", &BUDGET.to_string()),
            ("max_sliver_bytes", &BUDGET.to_string()),
        ],
    );
    let pid = net.pid(0).unwrap();
    let idle = peak_rss(pid);
    let (committee, trusted) = committee_and_client(&net);
    let blob_id: netcore::codec::BlobId = id.parse().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (trusted_ok, trusted_errors, strangers_ok, strangers_busy) = rt.block_on(async {
        let mut readers = tokio::task::JoinSet::new();
        // 100 trusted readers over 4 connections.
        for _ in 0..4 {
            let conn = connect(&committee, 0, &trusted, "127.0.0.1").await.unwrap();
            for _ in 0..25 {
                let conn = conn.clone();
                readers.spawn(async move {
                    (true, read_sliver(&conn, blob_id, 0, Duration::ZERO).await)
                });
            }
        }
        // 128 readers under 16 keys the node does not trust, from another address; half of
        // them stall 3 s between the response header and the body.
        for c in 0..16 {
            let stranger = Identity::generate().unwrap();
            let conn = connect(&committee, 0, &stranger, "127.0.0.2")
                .await
                .unwrap();
            for r in 0..8 {
                let conn = conn.clone();
                let pause = Duration::from_secs(if (c + r) % 2 == 0 { 3 } else { 0 });
                readers.spawn(async move { (false, read_sliver(&conn, blob_id, 0, pause).await) });
            }
        }
        let (mut t_ok, mut t_err, mut s_ok, mut s_busy) = (0, Vec::new(), 0, 0);
        while let Some(r) = readers.join_next().await {
            match r.unwrap() {
                (true, Ok(len)) => {
                    assert_eq!(len, 4 << 20);
                    t_ok += 1
                }
                (true, Err(e)) => t_err.push(e),
                (false, Ok(_)) => s_ok += 1,
                (false, Err(e)) => {
                    assert!(
                        e.contains("Busy"),
                        "a stranger's read failed otherwise: {e}"
                    );
                    s_busy += 1
                }
            }
        }
        (t_ok, t_err, s_ok, s_busy)
    });
    let peak = peak_rss(pid);
    eprintln!(
        "node 0: budget {} MiB, idle peak RSS {} MiB, peak RSS under 228 readers {} MiB; \
         trusted reads {trusted_ok} ok, strangers {strangers_ok} ok, {strangers_busy} busy",
        BUDGET >> 20,
        idle >> 20,
        peak >> 20
    );
    assert!(
        trusted_errors.is_empty(),
        "every trusted read succeeds: {trusted_errors:?}"
    );
    assert_eq!(trusted_ok, 100);
    assert!(strangers_ok > 0, "strangers may read too");
    // Without the budget covering reads, 228 readers of 4 MiB slivers hold ~900 MiB; with it
    // but with glibc's default malloc caching, ~150 MiB.
    let overhead = 48 << 20;
    assert!(
        peak <= idle + BUDGET + overhead,
        "node peak RSS {} MiB exceeds idle {} MiB + budget {} MiB + {} MiB",
        peak >> 20,
        idle >> 20,
        BUDGET >> 20,
        overhead >> 20
    );
}

#[test]
fn a_flood_of_strangers_does_not_lock_out_the_trusted_client() {
    let net = Testnet::up(4);
    net.reconfigure(0, &[("max_connections", "64")]);
    let committee = Committee::load(&net.dir.path().join("committee.toml")).unwrap();
    let node0: SocketAddr = committee.nodes[0].address;
    let work = tempfile::tempdir().unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _held = rt.block_on(async {
        // 200 connections from strangers on one address, kept open; then 300 handshakes from
        // another address abandoned part-way (the client endpoint disappears).
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            match connect(&committee, 0, &Identity::generate().unwrap(), "127.0.0.2").await {
                Ok(c) => {
                    // A connection that was let in but then closed by the node does not count.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if c.close_reason().is_none() {
                        held.push(c);
                    } else {
                        refused += 1;
                    }
                }
                Err(_) => refused += 1,
            }
        }
        for _ in 0..300 {
            let id = Identity::generate().unwrap();
            let tls = id.client_tls(committee.nodes[0].public_key).unwrap();
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
            let mut endpoint =
                netcore::transport::endpoint("127.0.0.3:0".parse().unwrap(), None).unwrap();
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            let connecting = endpoint.connect(node0, "walrusfs").unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(connecting);
            drop(endpoint);
        }
        eprintln!(
            "flood: {} stranger connections held, {refused} refused; 300 handshakes abandoned",
            held.len()
        );
        assert!(
            held.len() <= 32,
            "strangers hold at most half the node's 64 connections: {}",
            held.len()
        );
        held
    });

    // The trusted client, during the flood: its put reaches node 0 and node 0 serves it.
    let started = Instant::now();
    let data = random_bytes(300_000, 3);
    let id = net.put_bytes(work.path(), &data);
    net.wait_all_slivers(&id);
    assert!(
        net.sliver_path(0, &id).exists(),
        "node 0 stored the trusted client's sliver"
    );
    net.kill(1);
    net.kill(2);
    // k = 2 of 4: node 0 and node 3 must both serve.
    assert_eq!(net.get_bytes(work.path(), &id), data);
    eprintln!(
        "trusted put + get during the flood: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    net.up_again();
}

#[test]
fn a_node_refuses_slivers_for_another_index_or_committee() {
    let net = Testnet::up(4);
    let work = tempfile::tempdir().unwrap();
    let id = net.put_bytes(work.path(), &random_bytes(50_000, 8));
    net.wait_all_slivers(&id);
    let (committee, trusted) = committee_and_client(&net);
    let blob_id: netcore::codec::BlobId = id.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = connect(&committee, 0, &trusted, "127.0.0.1").await.unwrap();
        let metadata = match exchange(&conn, &frame(Request::GetMetadata { blob_id }).await).await {
            Response::Metadata(m) => m,
            other => panic!("{other:?}"),
        };
        let len = metadata.sliver_len().unwrap() as u64;
        // Node 0 is asked to store sliver 1 (another node's).
        let req = Request::StoreSliver {
            blob_id,
            metadata,
            index: 1,
            len,
        };
        let r = exchange(&conn, &frame(req).await).await;
        match r {
            Response::Error(WireError::InvalidRequest(why)) => {
                assert!(why.contains("stores sliver 0"), "{why}")
            }
            other => panic!("a sliver for another index was not refused: {other:?}"),
        }
    });
}

#[test]
fn a_node_refuses_stores_that_would_eat_its_free_space_reserve() {
    let net = Testnet::up(4);
    // A reserve no disk has: node 0 must refuse every store, loudly, and the others carry on.
    net.reconfigure(0, &[("min_free_mib", "1099511627776")]);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(100_000, 21);
    let id = net.put_bytes(work.path(), &data);
    let started = Instant::now();
    while (1..4u16).any(|i| !net.sliver_path(i, &id).exists()) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "others never stored it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!net.sliver_path(0, &id).exists(), "node 0 kept its reserve");
    let (committee, trusted) = committee_and_client(&net);
    let blob_id: netcore::codec::BlobId = id.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = connect(&committee, 1, &trusted, "127.0.0.1").await.unwrap();
        let Response::Metadata(metadata) =
            exchange(&conn, &frame(Request::GetMetadata { blob_id }).await).await
        else {
            panic!("no metadata")
        };
        let len = metadata.sliver_len().unwrap() as u64;
        let conn = connect(&committee, 0, &trusted, "127.0.0.1").await.unwrap();
        let req = Request::StoreSliver {
            blob_id,
            metadata,
            index: 0,
            len,
        };
        let r = exchange(&conn, &frame(req).await).await;
        match r {
            Response::Error(e @ WireError::NoSpace { .. }) => {
                assert!(e.to_string().contains("disk nearly full"), "{e}")
            }
            other => panic!("the store was not refused: {other:?}"),
        }
        // And it says so when asked: no room.
        let Response::Health(h) = exchange(&conn, &frame(Request::Health).await).await else {
            panic!("no health answer")
        };
        assert_eq!(h.free_bytes, 0);
    });
}

/// Whether node `i` holds its sliver of `id`, waiting up to 2 s for a slow store.
fn holds(net: &Testnet, i: u16, id: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if net.sliver_path(i, id).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_client_stores_no_more_than_its_quota_on_a_node() {
    let net = Testnet::up(4);
    net.reconfigure(0, &[("quota_mib", "1")]);
    let quota = 1u64 << 20;
    let work = tempfile::tempdir().unwrap();
    // 400 kB blobs until node 0 refuses one; the others store every one (puts succeed).
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let id = net.put_bytes(work.path(), &random_bytes(400_000, 100 + i));
        if holds(&net, 0, &id) {
            stored.push(id);
        } else {
            refused = Some(id);
            break;
        }
    }
    let refused = refused.expect("node 0 never refused a store");
    let size = |i: u16, id: &str| std::fs::metadata(net.sliver_path(i, id)).unwrap().len();
    let used: u64 = stored.iter().map(|id| size(0, id)).sum();
    assert!(!stored.is_empty());
    assert!(used <= quota, "{used} stored against a quota of {quota}");
    assert!(used + size(1, &refused) > quota, "refused with room left");
    assert!(holds(&net, 1, &refused), "the other nodes store it");

    // The client is told how much quota it has left.
    let (committee, trusted) = committee_and_client(&net);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let left = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let conn = connect(&committee, 0, &trusted, "127.0.0.1").await.unwrap();
            match exchange(&conn, &frame(Request::Health).await).await {
                Response::Health(h) => h.quota_left_bytes,
                other => panic!("{other:?}"),
            }
        })
    };
    assert_eq!(left(&rt), Some(quota - used));

    // Restarted, the node recounts what the client stores from disk: still refused.
    net.kill(0);
    net.up_again();
    assert_eq!(left(&rt), Some(quota - used));
    let again = net.put_bytes(work.path(), &random_bytes(400_000, 999));
    assert!(!holds(&net, 0, &again), "quota forgotten at restart");

    // A deleted blob no longer counts: the next store fits.
    net.cli_ok(&["blob", "delete", "--testnet", net.dir_str(), &stored[0]]);
    let fits = net.put_bytes(work.path(), &random_bytes(400_000, 1000));
    assert!(
        holds(&net, 0, &fits),
        "deleting did not give the quota back"
    );
}

/// `D/scrub.toml` of node `i`: (pass start, last blob checked).
fn scrub_state(net: &Testnet, i: u16) -> Option<(u64, Option<String>)> {
    let text = std::fs::read_to_string(net.node_dir(i).join("scrub.toml")).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    Some((
        v.get("started_secs")?.as_integer()? as u64,
        v.get("last").and_then(|l| l.as_str()).map(str::to_owned),
    ))
}

#[test]
fn a_restarted_node_resumes_its_scrub_pass() {
    let net = Testnet::up(4);
    let work = tempfile::tempdir().unwrap();
    for i in 0..40 {
        net.put_bytes(work.path(), &random_bytes(300_000, 500 + i));
    }
    // Slowly (1 MiB/s over ~6 MB of slivers): the pass is still running when the node dies.
    // (The pass over the empty store at start finished; the next is due a second later.)
    net.reconfigure(
        0,
        &[("scrub_mib_per_sec", "1"), ("scrub_interval_secs", "1")],
    );
    let mut during = None;
    let started = Instant::now();
    while during.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no position saved"
        );
        if let Some((start, Some(last))) = scrub_state(&net, 0) {
            during = Some((start, last));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (pass_start, _) = during.unwrap();
    net.kill(0);
    let (_, last) = scrub_state(&net, 0).unwrap();
    assert!(last.is_some(), "killed mid-pass");
    net.up_again();
    // The same pass resumes after the last blob checked, and finishes.
    let log = net.node_dir(0).join("node.log");
    let finished = started.elapsed();
    loop {
        if let Some((start, None)) = scrub_state(&net, 0) {
            assert_eq!(
                start, pass_start,
                "a new pass started instead of the old one resuming"
            );
            break;
        }
        assert!(
            started.elapsed() < finished + Duration::from_secs(60),
            "the pass never finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("resuming the pass"), "{text}");
}
