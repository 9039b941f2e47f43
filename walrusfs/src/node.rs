//! `walrusfs node`: run (or initialise) a storage node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use netcore::identity::{Identity, PublicKey};
use netcore::node::{config, Node, NodeConfig};

/// Arguments of `walrusfs node`.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// The node's directory: `node.toml`, `node.key`, the sliver store.
    #[arg(long)]
    dir: PathBuf,
    /// Create `node.toml` and `node.key` in DIR, print the node's public key, and exit.
    #[arg(long)]
    init: bool,
    /// With --init: the UDP address to listen on.
    #[arg(long, requires = "init")]
    listen: Option<SocketAddr>,
    /// With --init: a client public key allowed to store and delete (repeatable).
    #[arg(long = "trust-client", requires = "init")]
    trust_client: Vec<PublicKey>,
}

/// Runs the command.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.init {
        let listen = args.listen.context("--init needs --listen ADDR")?;
        return init(&args.dir, listen, args.trust_client);
    }
    let node = Node::open(&args.dir)
        .with_context(|| format!("cannot open node directory {}", args.dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start async runtime")?;
    rt.block_on(node.serve(shutdown_signal()))?;
    Ok(())
}

/// Creates a node directory with a fresh key and a configuration with default limits.
pub fn init(
    dir: &std::path::Path,
    listen: SocketAddr,
    trusted: Vec<PublicKey>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(config::CONFIG_FILE).exists() {
        anyhow::bail!("{} already holds a node configuration", dir.display());
    }
    let id = Identity::load_or_generate(&dir.join(config::KEY_FILE))?;
    NodeConfig::new(listen, trusted).save(dir)?;
    println!("{}", id.public_key());
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
