//! `walrusfs fsck`: checks an unmounted state directory and the network behind it — the index's
//! invariants, that every record of the write-back journal reads back, that the archive's root
//! record opens under the key, and that every blob the index refers to is retrievable (at least
//! `k` nodes hold a sliver and the metadata; with `--full`, fetched, verified and decoded).
//! Opening the journal cuts off a record torn by a crash, as the next mount would.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use netcore::codec::BlobId;
use walrusfs::index::Index;

use crate::keys::{archive_key, KeyArgs};
use crate::mount::{state_dir, INDEX_DIR, JOURNAL_DIR};
use crate::network::{runtime, NetworkArgs};

/// Blobs checked at once.
const PARALLEL_BLOBS: usize = 8;

/// Options of `walrusfs fsck`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  walrusfs fsck --testnet .walrusfs/testnet\n  walrusfs fsck --committee committee.toml --client-key client.key --key archive.key --full\n\n\
Run it with the archive unmounted. Exit status 0: everything checked is sound; 1: something is\n\
wrong (each problem is listed)."
)]
pub struct FsckArgs {
    #[command(flatten)]
    net: NetworkArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// The mount's state directory (default: as `walrusfs mount` chooses it).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Fetch, verify and decode every blob instead of asking nodes what they hold.
    #[arg(long)]
    full: bool,
}

/// Runs `walrusfs fsck`.
pub fn fsck(args: FsckArgs) -> anyhow::Result<()> {
    let (key, _) = archive_key(&args.key, &args.net)?;
    let state = state_dir(args.state.as_deref(), args.net.testnet.as_deref(), &key, "")?;
    let index_dir = state.join(INDEX_DIR);
    if !index_dir.exists() {
        bail!(
            "{} holds no index: not a walrusfs state directory",
            state.display()
        );
    }
    let mut problems: Vec<String> = Vec::new();

    // The index: sled holds a lock on it while a mount serves it.
    let index = Index::open_replica(&index_dir).with_context(|| {
        format!(
            "cannot open the index in {} (is the archive mounted? unmount it first)",
            index_dir.display()
        )
    })?;
    match index.check() {
        Ok(r) => println!(
            "index: {} inodes, {} entries, {} chunk refs into {} blobs, {} orphans, {} blobs queued for GC, {} chunks in the journal",
            r.inodes, r.dirents, r.chunks, r.blobs, r.orphans, r.gc, r.journal
        ),
        Err(e) => problems.push(format!("index: {e}")),
    }

    // The write-back journal: every record it holds reads back whole.
    let journal_dir = state.join(JOURNAL_DIR);
    if journal_dir.exists() {
        match walrusfs::journal::Journal::open(&journal_dir, u64::MAX) {
            Ok((journal, records)) => {
                let mut bytes = 0u64;
                for r in &records {
                    match journal.read(&r.loc) {
                        Ok(body) => bytes += body.len() as u64,
                        Err(e) => problems.push(format!("journal record {}: {e}", r.header.seq)),
                    }
                }
                println!(
                    "journal: {} records, {} waiting for the network",
                    records.len(),
                    indicatif::HumanBytes(bytes)
                );
            }
            Err(e) => problems.push(format!("journal: {e}")),
        }
    }

    // Blobs something still points into (a blob whose last ref went is GC's, not ours).
    let blobs: Vec<BlobId> = index
        .blobs()?
        .into_iter()
        .filter(|(_, info)| info.refs > 0)
        .map(|(id, _)| id)
        .collect();
    drop(index);
    let rt = runtime()?;
    let net_problems = rt.block_on(async {
        let client = args.net.client()?;
        let mut problems = Vec::new();
        // The archive's root record: on the network and opening under this key.
        match client.get_root(&key.archive_id()).await {
            Ok(answers) => {
                let latest = answers.latest();
                match walrusfs::archive::body::pick(&key.index_key(), &latest) {
                    Some((record, _)) => println!("root: version {} opens under the key", record.version),
                    None if latest.is_empty() => problems.push(format!("root: no archive {} on this network", key.archive_id())),
                    None => problems.push("root: no copy of the latest root record opens under this key".into()),
                }
            }
            Err(e) => problems.push(format!("root: {e}")),
        }
        let k = usize::from(client.committee().k);
        let n = usize::from(client.committee().n);
        let full = args.full;
        let client_ref = &client;
        let mut results = stream::iter(blobs.iter().copied())
            .map(|id| async move {
                if full {
                    return (id, client_ref.get(&id).await.map(|_| n).map_err(|e| e.to_string()));
                }
                let held = client_ref
                    .status(&id)
                    .await
                    .into_iter()
                    .filter(|(node, r)| {
                        r.as_ref()
                            .is_ok_and(|s| s.has_metadata && s.slivers.contains(node))
                    })
                    .count();
                (id, Ok(held))
            })
            .buffer_unordered(PARALLEL_BLOBS);
        let (mut whole, mut degraded) = (0usize, 0usize);
        while let Some((id, r)) = results.next().await {
            match r {
                Ok(held) if held >= n => whole += 1,
                Ok(held) if held >= k => degraded += 1,
                Ok(held) => problems.push(format!(
                    "blob {id}: only {held} nodes hold a sliver, {k} are needed"
                )),
                Err(e) => problems.push(format!("blob {id}: {e}")),
            }
        }
        if full {
            println!("blobs: {whole} of {} fetched, verified and decoded", blobs.len());
        } else {
            println!(
                "blobs: {} checked: {whole} on every node, {degraded} retrievable but missing on some nodes{}",
                blobs.len(),
                if degraded > 0 { " (walrusfs repair restores them)" } else { "" }
            );
        }
        client.close(Duration::from_secs(5)).await;
        Ok::<_, anyhow::Error>(problems)
    })?;
    problems.extend(net_problems);
    if problems.is_empty() {
        println!("fsck: no problems found");
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    bail!("fsck: {} problems found", problems.len())
}
