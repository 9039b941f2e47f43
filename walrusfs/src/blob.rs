//! `walrusfs blob`: store and fetch raw blobs (no filesystem, no encryption: what goes in is
//! what the nodes' slivers encode).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use netcore::codec::BlobId;

use netcore::client::Client;

use crate::network::{runtime, NetworkArgs};

/// How long `blob put` keeps sending slivers to slow nodes after the write quorum is reached
/// before the process exits.
const BACKGROUND_GRACE: Duration = Duration::from_secs(30);

/// `walrusfs blob` subcommands.
#[derive(clap::Subcommand)]
pub enum BlobCommand {
    /// Store FILE as a blob; prints the blob id on stdout.
    #[command(
        after_help = "Examples:\n  walrusfs blob put --testnet .walrusfs/testnet photo.jpg\n  walrusfs blob put --committee committee.toml --client-key client.key backup.tar"
    )]
    Put {
        #[command(flatten)]
        net: NetworkArgs,
        /// The file to store.
        file: PathBuf,
    },
    /// Fetch a blob, verify it and write it to OUT.
    #[command(
        after_help = "Examples:\n  walrusfs blob get --testnet .walrusfs/testnet 3f2a...e9 -o photo.jpg\n  walrusfs blob get --committee committee.toml --client-key client.key 3f2a...e9 -o - | tar -t\n  walrusfs blob get --testnet .walrusfs/testnet 3f2a...e9 --range 1048576:4096 -o - | xxd"
    )]
    Get {
        #[command(flatten)]
        net: NetworkArgs,
        /// The blob id (64 hex digits).
        blob_id: BlobId,
        /// Fetch only LEN bytes from OFFSET, each verified with a proof from the node that
        /// serves it (no whole slivers are fetched).
        #[arg(long, value_name = "OFFSET:LEN", value_parser = parse_range)]
        range: Option<(u64, u64)>,
        /// Output file (written atomically; `-` for stdout).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Show which slivers each node holds of a blob.
    #[command(
        after_help = "Example:\n  walrusfs blob status --testnet .walrusfs/testnet 3f2a...e9"
    )]
    Status {
        #[command(flatten)]
        net: NetworkArgs,
        /// The blob id.
        blob_id: BlobId,
    },
    /// Delete a blob from every reachable node.
    #[command(
        after_help = "Example:\n  walrusfs blob delete --testnet .walrusfs/testnet 3f2a...e9"
    )]
    Delete {
        #[command(flatten)]
        net: NetworkArgs,
        /// The blob id.
        blob_id: BlobId,
    },
}

/// Runs the command.
pub fn run(cmd: BlobCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let (BlobCommand::Put { net, .. }
        | BlobCommand::Get { net, .. }
        | BlobCommand::Status { net, .. }
        | BlobCommand::Delete { net, .. }) = &cmd;
        let client = net.client()?;
        let result = match &cmd {
            BlobCommand::Put { file, .. } => put(&client, file).await,
            BlobCommand::Get {
                blob_id,
                out,
                range,
                ..
            } => get(&client, blob_id, *range, out).await,
            BlobCommand::Status { blob_id, .. } => status(&client, blob_id).await,
            BlobCommand::Delete { blob_id, .. } => delete(&client, blob_id).await,
        };
        client.close(BACKGROUND_GRACE).await;
        result
    })
}

async fn put(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Sliver bytes to send: n slivers of about len / k each; put returns at n - f of them.
    let params = client.committee().params();
    let total = (data.len() as u64).div_ceil(u64::from(params.k)) * u64::from(params.n);
    let bar = crate::progress::bar("storing", total, None);
    let outcome = {
        let _follow = {
            let c = client.clone();
            crate::progress::Follow::start(bar.clone(), move || {
                c.traffic().sent.load(std::sync::atomic::Ordering::Relaxed)
            })
        };
        client.put(&data).await
    };
    bar.finish_and_clear();
    let outcome = outcome?;
    println!("{}", outcome.blob_id);
    let _ = std::io::stdout().flush();
    eprintln!(
        "stored {} bytes; certified by {} of {} nodes",
        data.len(),
        outcome.confirmations.len(),
        client.committee().n
    );
    Ok(())
}

/// `OFFSET:LEN` in bytes.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (offset, len) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected OFFSET:LEN (bytes), e.g. 1048576:4096"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|e| format!("{v:?} in {s:?}: {e}"))
    };
    Ok((num(offset)?, num(len)?))
}

async fn get(
    client: &Client,
    blob_id: &BlobId,
    range: Option<(u64, u64)>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let metadata = client.get_metadata(blob_id).await?;
    if let Some((offset, len)) = range {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > metadata.blob_len)
        {
            anyhow::bail!(
                "range {offset}:{len} runs past the end of the blob ({} bytes)",
                metadata.blob_len
            );
        }
    }
    let k = u64::from(metadata.params.k);
    let total = match range {
        Some((_, len)) => len,
        None => metadata.sliver_len().map_or(0, |l| l as u64 * k),
    };
    let bar = crate::progress::bar("fetching", total, None);
    let data = {
        let _follow = {
            let c = client.clone();
            crate::progress::Follow::start(bar.clone(), move || {
                c.traffic()
                    .received
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
        };
        match range {
            Some((offset, len)) => client.get_range(blob_id, &metadata, offset, len).await,
            None => client.get_with_metadata(blob_id, &metadata).await,
        }
    };
    bar.finish_and_clear();
    let data = data?;
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(&data)?;
        return Ok(());
    }
    // Write to a temporary file beside OUT and rename, so OUT is never left half-written.
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1
        .write_all(&data)
        .with_context(|| format!("cannot write {}", tmp.0.display()))?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

fn tempfile_in(dir: &std::path::Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".walrusfs-get-{}.tmp", std::process::id()));
    let f = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok((path, f))
}

async fn status(client: &Client, blob_id: &BlobId) -> anyhow::Result<()> {
    println!("{:<6} {:<10} slivers", "node", "metadata");
    for (node, r) in client.status(blob_id).await {
        match r {
            Ok(s) => println!(
                "{node:<6} {:<10} {:?}",
                if s.has_metadata { "yes" } else { "no" },
                s.slivers
            ),
            Err(e) => println!("{node:<6} {:<10} {e}", "?"),
        }
    }
    Ok(())
}

async fn delete(client: &Client, blob_id: &BlobId) -> anyhow::Result<()> {
    let mut failed = 0;
    for (node, r) in client.delete(blob_id).await {
        match r {
            Ok(existed) => println!(
                "node {node}: {}",
                if existed { "deleted" } else { "had nothing" }
            ),
            Err(e) => {
                failed += 1;
                println!("node {node}: failed: {e}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} node(s) could not delete the blob; run again when they are up");
    }
    Ok(())
}
