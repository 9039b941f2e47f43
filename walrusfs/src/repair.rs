//! `walrusfs repair`: walks every blob the archive references (its published index, every
//! snapshot, and the index records themselves), checks each node's sliver, and restores the
//! missing and bad ones from `k` verified slivers. Resumable: blobs already checked and whole
//! are listed in the work directory, and a run that is interrupted or leaves a node unrepaired
//! starts after them next time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt};
use netcore::client::{Client, ClientError};
use netcore::codec::{BlobId, BlobMetadata};
use netcore::root::{RootAnswers, RootRecord};
use netcore::wire::StorageConfirmation;
use walrusfs::archive::body::{pick, IndexChain, RootBody};
use walrusfs::archive::key::ArchiveKey;
use walrusfs::archive::restore::{apply_chain, Quiet};
use walrusfs::data::store::NetworkStore;
use walrusfs::index::Index;

use crate::keys::{archive_key, KeyArgs};
use crate::network::{runtime, NetworkArgs};

/// Blobs checked at once.
const PARALLEL_BLOBS: usize = 4;
/// The list of blobs checked and whole, in the work directory.
const DONE_FILE: &str = "done";

/// Options of `walrusfs repair`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  walrusfs repair --testnet .walrusfs/testnet\n  walrusfs repair --committee committee.toml --client-key client.key --key archive.key\n\n\
Every node's sliver of every blob is fetched and verified; missing or damaged ones are rebuilt\n\
from k verified slivers and stored again. Nodes that cannot be reached are reported: run repair\n\
again once they are back (it resumes after the blobs already checked)."
)]
pub struct RepairArgs {
    #[command(flatten)]
    net: NetworkArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Where to keep progress between runs (default: under the XDG state directory, or the
    /// testnet directory).
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Check every blob again, forgetting what an earlier, unfinished run checked.
    #[arg(long)]
    fresh: bool,
}

#[derive(Default)]
struct Totals {
    roots_restored: u64,
    blobs: u64,
    skipped: u64,
    slivers_intact: u64,
    slivers_restored: u64,
    bytes_fetched: u64,
    bytes_stored: u64,
    /// Blobs with nodes that could not be checked or repaired.
    incomplete: Vec<(BlobId, String)>,
    /// Blobs that could not be rebuilt at all.
    lost: Vec<(BlobId, String)>,
}

/// Runs `walrusfs repair`.
pub fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let (key, _) = archive_key(&args.key, &args.net)?;
    let work = work_dir(&args, &key)?;
    if args.fresh && work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let rt = runtime()?;
    let totals = rt.block_on(async {
        let client = args.net.client()?;
        let r = run(&client, &key, &work).await;
        client.close(Duration::from_secs(10)).await;
        r
    })?;
    println!(
        "repair: root record restored on {} nodes; {} blobs checked ({} already checked by an earlier run), {} slivers intact, {} restored; {} fetched, {} stored",
        totals.roots_restored,
        totals.blobs,
        totals.skipped,
        totals.slivers_intact,
        totals.slivers_restored,
        human(totals.bytes_fetched),
        human(totals.bytes_stored),
    );
    for (blob, why) in &totals.lost {
        eprintln!("blob {blob} cannot be rebuilt: {why}");
    }
    for (blob, why) in totals.incomplete.iter().take(20) {
        eprintln!("blob {blob} not fully checked: {why}");
    }
    if !totals.lost.is_empty() {
        bail!(
            "{} blobs have fewer than k intact slivers on the nodes that answered: bring the missing nodes back and run repair again",
            totals.lost.len()
        );
    }
    if !totals.incomplete.is_empty() {
        bail!(
            "{} blobs could not be checked on every node (see above): run repair again once those nodes are back; it resumes where it stopped",
            totals.incomplete.len()
        );
    }
    // A complete run: the next one starts from scratch.
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn work_dir(args: &RepairArgs, key: &ArchiveKey) -> anyhow::Result<PathBuf> {
    if let Some(w) = &args.work {
        return Ok(w.clone());
    }
    let id = key.archive_id().to_string();
    let name = format!("repair-{}", &id[..16]);
    if let Some(t) = &args.net.testnet {
        return Ok(t.join(name));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("no --work given and neither XDG_STATE_HOME nor HOME is set")?;
    Ok(base.join("walrusfs").join(name))
}

/// The archive's latest root record on the network, opened: every node's answer, the record,
/// and its body.
pub(crate) async fn latest_root(
    client: &Client,
    key: &ArchiveKey,
) -> anyhow::Result<(RootAnswers, RootRecord, RootBody)> {
    let answers = client
        .get_root(&key.archive_id())
        .await
        .context("cannot read the archive's root record")?;
    let latest = answers.latest();
    if latest.is_empty() {
        bail!("no archive {} on this network", key.archive_id());
    }
    let Some((record, body)) = pick(&key.index_key(), &latest) else {
        bail!("no copy of the archive's latest root record opens under this key");
    };
    let record = record.clone();
    drop(latest);
    Ok((answers, record, body))
}

/// What an archive's published state references.
pub(crate) struct ArchiveBlobs {
    /// Every blob, with its metadata where the index records it.
    pub blobs: BTreeMap<BlobId, Option<BlobMetadata>>,
    /// The storage confirmations the index keeps, per blob (evidence for audits).
    pub proofs: BTreeMap<BlobId, Vec<StorageConfirmation>>,
}

/// Every blob root version `version` (with `body`) references: its index records, and the
/// blobs its index and every snapshot's refer to, with their metadata and storage
/// confirmations where the index records them. Each index is restored into a scratch
/// directory under `work`, then removed.
pub(crate) async fn archive_blobs(
    store: &NetworkStore,
    key: &ArchiveKey,
    body: &RootBody,
    version: u64,
    work: &Path,
) -> anyhow::Result<ArchiveBlobs> {
    let mut blobs: BTreeMap<BlobId, Option<BlobMetadata>> = BTreeMap::new();
    let mut proofs: BTreeMap<BlobId, Vec<StorageConfirmation>> = BTreeMap::new();
    for id in body.index_blobs() {
        blobs.insert(id, None);
    }
    let mut chains: Vec<(String, &IndexChain)> = Vec::new();
    if let Some(c) = &body.index {
        chains.push(("the index".into(), c));
    }
    for s in &body.snapshots {
        chains.push((format!("snapshot {}", s.name), &s.index));
    }
    for (i, (what, chain)) in chains.iter().enumerate() {
        let dir = work.join(format!("index-{i}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        let index = Index::open_replica(&dir)?;
        let index_key = key.index_key();
        apply_chain(
            store,
            &index_key,
            key.archive_id(),
            chain,
            0,
            &index,
            &Quiet,
        )
        .await
        .with_context(|| format!("cannot read {what} of root version {version}"))?;
        for (id, info) in index.blobs()? {
            blobs.insert(id, Some(info.metadata));
            let p = index.proofs(&id)?;
            if !p.is_empty() {
                proofs.insert(id, p);
            }
        }
        drop(index);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ArchiveBlobs { blobs, proofs })
}

async fn run(client: &Client, key: &ArchiveKey, work: &Path) -> anyhow::Result<Totals> {
    let store = NetworkStore::new(client.clone());
    let (answers, record, body) = latest_root(client, key).await?;
    let version = record.version;
    // Nodes that lost (a wiped disk) or missed the latest root record get it again.
    let behind: Vec<u16> = (0..client.committee().n)
        .filter(|i| {
            !answers
                .answers
                .iter()
                .any(|(n, r)| n == i && r.as_ref().is_some_and(|r| r.version >= version))
        })
        .collect();
    let mut totals = Totals::default();
    for (node, r) in client.put_root_on(&record, &behind).await {
        match r {
            Ok(()) => totals.roots_restored += 1,
            Err(e) => tracing::info!(node, "root record not restored: {e}"),
        }
    }
    let blobs = archive_blobs(&store, key, &body, version, work)
        .await?
        .blobs;

    let done_path = work.join(DONE_FILE);
    let done: BTreeSet<BlobId> = match std::fs::read_to_string(&done_path) {
        Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", done_path.display())),
    };
    let mut done_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&done_path)
        .with_context(|| format!("cannot open {}", done_path.display()))?;

    let todo: Vec<(BlobId, Option<BlobMetadata>)> = blobs
        .into_iter()
        .filter(|(id, _)| {
            let skip = done.contains(id);
            totals.skipped += u64::from(skip);
            !skip
        })
        .collect();
    totals.blobs = totals.skipped;
    let bar = crate::progress::bar("repair", todo.len() as u64, Some("blobs"));
    let started = Instant::now();
    let mut results = stream::iter(todo)
        .map(|(id, metadata)| async move {
            let metadata = match metadata {
                Some(m) => m,
                None => match client.get_metadata(&id).await {
                    Ok(m) => m,
                    Err(e) => return (id, Err(e)),
                },
            };
            (id, client.repair(&id, &metadata).await)
        })
        .buffer_unordered(PARALLEL_BLOBS);
    while let Some((id, result)) = results.next().await {
        totals.blobs += 1;
        bar.inc(1);
        match result {
            Ok(report) => {
                totals.slivers_intact += report.intact.len() as u64;
                totals.slivers_restored += report.restored.len() as u64;
                totals.bytes_fetched += report.bytes_fetched;
                totals.bytes_stored += report.bytes_stored;
                if !report.restored.is_empty() {
                    let nodes: Vec<u16> = report.restored.iter().map(|c| c.index).collect();
                    tracing::info!(blob = %id, ?nodes, "restored slivers");
                }
                if report.failed.0.is_empty() {
                    writeln!(done_file, "{id}")
                        .with_context(|| format!("cannot write {}", done_path.display()))?;
                } else {
                    totals.incomplete.push((id, report.failed.to_string()));
                }
            }
            Err(e @ ClientError::NotEnoughSlivers { .. })
            | Err(e @ ClientError::MetadataUnavailable { .. }) => {
                totals.lost.push((id, e.to_string()))
            }
            Err(e) => totals.incomplete.push((id, e.to_string())),
        }
    }
    done_file.sync_all().ok();
    bar.finish_and_clear();
    tracing::debug!(elapsed = ?started.elapsed(), "repair walk finished");
    Ok(totals)
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
