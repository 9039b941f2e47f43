//! `walrusfs audit`: challenges every node for its slivers of randomly chosen blobs of the
//! archive (its published index, snapshots and index records), verifies each answer against
//! the blob's commitment, and prints a score per node. Unlike `repair` it writes nothing; unlike
//! `fsck` it needs no state directory, and it checks bytes, not only what nodes say they hold.
//! A node that fails a challenge for a sliver it signed a storage confirmation for (the index
//! keeps the confirmations each upload collected) is named with that confirmation, verified
//! against the node's key: evidence that it lost or withholds data it promised to keep.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use netcore::client::{Challenge, NodeError};
use netcore::codec::{BlobId, BlobMetadata};
use rand::seq::SliceRandom;
use walrusfs::data::store::NetworkStore;

use crate::keys::{archive_key, KeyArgs};
use crate::network::{runtime, NetworkArgs};

/// Challenges in flight at once.
const PARALLEL: usize = 8;

/// Options of `walrusfs audit`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  walrusfs audit --testnet .walrusfs/testnet\n  walrusfs audit --committee committee.toml --client-key client.key --key archive.key --blobs 500\n\n\
Exit status 0: every node served every challenged sliver; 1: some node failed a challenge or\n\
could not be asked (see the table; `walrusfs repair` restores what failed)."
)]
pub struct AuditArgs {
    #[command(flatten)]
    net: NetworkArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Blobs to challenge every node for, chosen at random (all, if the archive has fewer).
    #[arg(long, default_value_t = 100)]
    blobs: usize,
    /// Scratch space for restoring the archive's indexes (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
}

/// One node's results.
#[derive(Default)]
struct Score {
    served: u64,
    failed: u64,
    unreachable: u64,
    /// A few failures, as examples.
    examples: Vec<(BlobId, String)>,
    /// Failures of slivers the node had signed for.
    broken_promises: u64,
    /// A few of them: blob, the confirmation's signature (hex), what failed.
    evidence: Vec<(BlobId, String, String)>,
}

/// Examples and pieces of evidence shown per node.
const SHOWN: usize = 3;

/// Runs `walrusfs audit`.
pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let (key, _) = archive_key(&args.key, &args.net)?;
    let scratch = match &args.work {
        Some(w) => {
            std::fs::create_dir_all(w).with_context(|| format!("cannot create {}", w.display()))?;
            tempfile::tempdir_in(w)
        }
        None => tempfile::tempdir(),
    }
    .context("cannot create a scratch directory")?;
    let rt = runtime()?;
    let (n, scores, sampled) = rt.block_on(async {
        let client = args.net.client()?;
        let store = NetworkStore::new(client.clone());
        let (_, record, body) = crate::repair::latest_root(&client, &key).await?;
        let blobs =
            crate::repair::archive_blobs(&store, &key, &body, record.version, scratch.path())
                .await?;
        let proofs = blobs.proofs;
        let mut ids: Vec<(BlobId, Option<BlobMetadata>)> = blobs.blobs.into_iter().collect();
        ids.shuffle(&mut rand::rng());
        ids.truncate(args.blobs);
        let n = client.committee().n;
        let client_ref = &client;
        let challenges = stream::iter(ids.iter().cloned())
            .map(|(id, metadata)| async move {
                let metadata = match metadata {
                    Some(m) => m,
                    None => match client_ref.get_metadata(&id).await {
                        Ok(m) => m,
                        Err(e) => {
                            let why = e.to_string();
                            return (0..n)
                                .map(|node| {
                                    (
                                        node,
                                        id,
                                        Challenge::Unreachable(NodeError::Unexpected(why.clone())),
                                    )
                                })
                                .collect::<Vec<_>>();
                        }
                    },
                };
                let mut out = Vec::new();
                for node in 0..n {
                    out.push((node, id, client_ref.challenge(&id, &metadata, node).await));
                }
                out
            })
            .buffer_unordered(PARALLEL);
        let mut scores: BTreeMap<u16, Score> = (0..n).map(|i| (i, Score::default())).collect();
        let mut challenges = std::pin::pin!(challenges);
        let bar = crate::progress::bar("audit", ids.len() as u64, Some("blobs"));
        while let Some(results) = challenges.next().await {
            bar.inc(1);
            for (node, id, c) in results {
                let s = scores.entry(node).or_default();
                let why = match c {
                    Challenge::Served => {
                        s.served += 1;
                        continue;
                    }
                    Challenge::Failed(e) => {
                        s.failed += 1;
                        e.to_string()
                    }
                    Challenge::Unreachable(e) => {
                        s.unreachable += 1;
                        format!("unreachable: {e}")
                    }
                };
                if s.examples.len() < SHOWN {
                    s.examples.push((id, why.clone()));
                }
                let node_key = client.committee().nodes[usize::from(node)].public_key;
                let signed = proofs
                    .get(&id)
                    .and_then(|p| p.iter().find(|c| c.verify(&id, node, &node_key)));
                if let Some(c) = signed {
                    s.broken_promises += 1;
                    if s.evidence.len() < SHOWN {
                        s.evidence.push((id, hex::encode(&c.signature), why));
                    }
                }
            }
        }
        bar.finish_and_clear();
        client.close(Duration::from_secs(5)).await;
        Ok::<_, anyhow::Error>((n, scores, ids.len()))
    })?;

    println!("audit: {sampled} blobs challenged on each of {n} nodes");
    println!(
        "{:<6} {:>8} {:>8} {:>12} {:>7}",
        "node", "served", "failed", "unreachable", "score"
    );
    let mut bad = 0;
    for (node, s) in &scores {
        let total = (s.served + s.failed + s.unreachable).max(1);
        println!(
            "{node:<6} {:>8} {:>8} {:>12} {:>6.1}%",
            s.served,
            s.failed,
            s.unreachable,
            100.0 * s.served as f64 / total as f64
        );
        if s.failed + s.unreachable > 0 {
            bad += 1;
        }
    }
    for (node, s) in &scores {
        for (id, why) in &s.examples {
            eprintln!("node {node}, blob {id}: {why}");
        }
    }
    for (node, s) in &scores {
        if s.broken_promises == 0 {
            continue;
        }
        println!(
            "node {node} failed {} challenges for slivers it signed storage confirmations for",
            s.broken_promises
        );
        for (id, signature, why) in &s.evidence {
            println!(
                "  evidence: node {node} confirmed storing sliver {node} of blob {id} (ed25519 signature {signature}, verified against its key); now: {why}"
            );
        }
    }
    if bad > 0 {
        bail!("{bad} nodes failed challenges (walrusfs repair restores what they lost)");
    }
    Ok(())
}
