//! Commands that act on a running mount through its control socket, or on the archive
//! directly: `walrusfs sync`, `walrusfs snapshot create|list|delete`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use walrusfs::archive::writer::{Writer, WriterConfig};
use walrusfs::control::{self, Op, Response};
use walrusfs::data::store::NetworkStore;

use crate::keys::{archive_key, KeyArgs};
use crate::mountinfo;
use crate::network::{runtime, NetworkArgs};

/// Runs `walrusfs sync MOUNTPOINT`.
pub fn sync(mountpoint: &Path) -> anyhow::Result<()> {
    let state = mountinfo::state_of(mountpoint)?;
    let message = call(&state, Op::Sync)?;
    println!("{message}");
    Ok(())
}

/// Sends `op` to the mount with state directory `state`; its message, or its error.
fn call(state: &Path, op: Op) -> anyhow::Result<String> {
    let rt = runtime()?;
    let response = rt.block_on(control::call(state, op)).with_context(|| {
        format!(
            "cannot reach the mount's control socket in {}",
            state.display()
        )
    })?;
    match response {
        Response::Ok { message } => Ok(message),
        Response::Error { message } => bail!("{message}"),
        Response::Status(s) => Ok(format!("{s:?}")),
    }
}

/// `walrusfs snapshot` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Make a snapshot: an immutable, named version of everything written so far.
    #[command(
        after_help = "Examples:\n  walrusfs snapshot create --mount ~/archive before-upgrade\n  walrusfs snapshot create --committee c.toml --client-key client.key --key archive.key nightly-2026-11-23"
    )]
    Create {
        #[command(flatten)]
        target: Target,
        /// The snapshot's name.
        name: String,
    },
    /// List the archive's snapshots.
    #[command(after_help = "Example:\n  walrusfs snapshot list --testnet .walrusfs/testnet")]
    List {
        #[command(flatten)]
        net: NetworkArgs,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Delete a snapshot (what only it kept is then garbage collected).
    #[command(
        after_help = "Example:\n  walrusfs snapshot delete --mount ~/archive before-upgrade"
    )]
    Delete {
        #[command(flatten)]
        target: Target,
        /// The snapshot's name.
        name: String,
    },
}

/// Where a snapshot change is made: through the writer's mount, or (no writer mounted) by
/// taking the writer lease for the moment.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The archive's read-write mount on this machine (asked over its control socket).
    #[arg(long, value_name = "MOUNTPOINT", conflicts_with_all = ["testnet", "committee"])]
    mount: Option<PathBuf>,
    /// A local testnet directory.
    #[arg(long, conflicts_with_all = ["committee", "client_key"])]
    testnet: Option<PathBuf>,
    /// A committee file describing the network.
    #[arg(long, requires = "client_key")]
    committee: Option<PathBuf>,
    /// The client key to authenticate to the nodes with.
    #[arg(long)]
    client_key: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// State directory to use while holding the lease (default: a temporary one).
    #[arg(long)]
    state: Option<PathBuf>,
}

impl Target {
    fn net(&self) -> Option<NetworkArgs> {
        (self.testnet.is_some() || self.committee.is_some()).then(|| NetworkArgs {
            testnet: self.testnet.clone(),
            committee: self.committee.clone(),
            client_key: self.client_key.clone(),
            connect_timeout_secs: crate::network::DEFAULT_CONNECT_TIMEOUT_SECS,
        })
    }
}

/// Runs `walrusfs snapshot ...`.
pub fn snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::List { net, key } => list(&net, &key),
        SnapshotCommand::Create { target, name } => {
            let msg = change(&target, Op::SnapshotCreate { name })?;
            println!("{msg}");
            Ok(())
        }
        SnapshotCommand::Delete { target, name } => {
            let msg = change(&target, Op::SnapshotDelete { name })?;
            println!("{msg}");
            Ok(())
        }
    }
}

fn list(net: &NetworkArgs, key_args: &KeyArgs) -> anyhow::Result<()> {
    let (key, _) = archive_key(key_args, net)?;
    let rt = runtime()?;
    let root = rt.block_on(async {
        let client = net.client()?;
        let store = NetworkStore::new(client.clone());
        let r = walrusfs::archive::latest_root(&store, &key).await;
        client.close(Duration::from_secs(5)).await;
        anyhow::Ok(r?)
    })?;
    let Some((_, body)) = root else {
        bail!("no archive {} on this network", key.archive_id());
    };
    if body.snapshots.is_empty() {
        println!("no snapshots");
    }
    for s in &body.snapshots {
        let when: std::time::SystemTime = walrusfs::index::Timestamp {
            secs: s.created_secs,
            nanos: 0,
        }
        .into();
        let age = when.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        println!("{}\tversion {}\tcreated {} s ago", s.name, s.version, age);
    }
    Ok(())
}

fn change(target: &Target, op: Op) -> anyhow::Result<String> {
    if let Some(mp) = &target.mount {
        let state = mountinfo::state_of(mp)?;
        return call(&state, op);
    }
    let Some(net) = &target.net() else {
        bail!("give --mount MOUNTPOINT (the archive's read-write mount), or --testnet DIR / --committee FILE --client-key K --key KEYFILE");
    };
    let (key, _) = archive_key(&target.key, net)?;
    // A read-write mount of this archive on this machine holds the lease: go through it.
    if let Some(state) = mountinfo::writer_mount_of(&key.archive_id().to_string()) {
        return call(&state, op);
    }
    let temp;
    let state = match &target.state {
        Some(s) => s.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("walrusfs-snapshot-")
                .tempdir()
                .context("cannot create a temporary state directory")?;
            temp.path().to_owned()
        }
    };
    let rt = runtime()?;
    rt.block_on(async {
        let client = net.client()?;
        let store = Arc::new(NetworkStore::new(client.clone()));
        let r = async {
            let writer = Writer::open(
                store,
                key.clone(),
                &state.join("index"),
                walrusfs::index::IndexOptions {
                    root_uid: 0,
                    root_gid: 0,
                    root_perm: 0o755,
                    chunk_size: crate::mount::DEFAULT_CHUNK_SIZE,
                },
                WriterConfig::default(),
            )
            .await?;
            let result = match op {
                Op::SnapshotCreate { name } => writer
                    .create_snapshot(&name)
                    .await
                    .map(|s| format!("snapshot {} created (version {})", s.name, s.version)),
                Op::SnapshotDelete { name } => writer
                    .delete_snapshot(&name)
                    .await
                    .map(|()| format!("snapshot {name} deleted")),
                other => bail!("unexpected {other:?}"),
            };
            let released = writer.release().await;
            let msg = result?;
            released?;
            anyhow::Ok(msg)
        }
        .await;
        client.close(Duration::from_secs(10)).await;
        r
    })
}
