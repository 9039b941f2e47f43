//! `walrusfs node`: run (or initialise) a storage node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use netcore::identity::{Identity, PublicKey};
use netcore::node::config::CommitteeSlot;
use netcore::node::{config, Node, NodeConfig};

/// Arguments of `walrusfs node`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  walrusfs node --init --dir /var/lib/walrusfs-node/main --listen 0.0.0.0:7100 --trust-client 5c1f...a2 --slot 0/7/3\n  walrusfs node --dir /var/lib/walrusfs-node/main --metrics 127.0.0.1:9465\nLimits, quotas and the free-space reserve are set in DIR/node.toml."
)]
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
    /// With --init: this node's place in the committee as INDEX/N/K (it then refuses slivers
    /// for another index or committee shape).
    #[arg(long, requires = "init", value_name = "INDEX/N/K", value_parser = parse_slot)]
    slot: Option<CommitteeSlot>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9465), at /metrics.
    #[arg(long, value_name = "ADDR", conflicts_with = "init")]
    metrics: Option<SocketAddr>,
    /// Threads serving requests (QUIC, hashing); default: one per core. Set it lower where
    /// several nodes share a machine (`walrusfs testnet up` gives each node its share of the
    /// cores): threads beyond the node's share only hand each request from one to another.
    #[arg(long, value_name = "N", conflicts_with = "init", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

fn parse_slot(s: &str) -> Result<CommitteeSlot, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [index, n, k] = parts[..] else {
        return Err("expected INDEX/N/K, e.g. 0/7/3".into());
    };
    let num = |v: &str| v.parse::<u16>().map_err(|e| format!("{v:?}: {e}"));
    let slot = CommitteeSlot {
        index: num(index)?,
        n: num(n)?,
        k: num(k)?,
    };
    if slot.k == 0 || slot.k > slot.n || slot.index >= slot.n {
        return Err(format!("need 0 < K <= N and INDEX < N, got {s}"));
    }
    Ok(slot)
}

/// Runs the command.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.init {
        let listen = args.listen.context("--init needs --listen ADDR")?;
        return init(&args.dir, listen, args.trust_client, args.slot);
    }
    crate::limit_malloc_caching();
    if !args.dir.join(config::CONFIG_FILE).exists() {
        anyhow::bail!(
            "{} is not a node directory (no {}); make one with `walrusfs node --init --dir {} --listen ADDR --trust-client KEY`",
            args.dir.display(),
            config::CONFIG_FILE,
            args.dir.display()
        );
    }
    let mut node = Node::open(&args.dir)
        .with_context(|| format!("cannot open node directory {}", args.dir.display()))?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        rt.worker_threads(usize::from(threads));
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start async runtime")?;
    if let Some(addr) = args.metrics {
        let _guard = rt.enter();
        crate::telemetry::serve_metrics(addr)?;
    }
    // Readiness and stopping for systemd (`Type=notify`); no-ops elsewhere.
    node.on_ready(|| {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    });
    rt.block_on(node.serve(async {
        shutdown_signal().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }))?;
    Ok(())
}

/// Creates a node directory with a fresh key and a configuration with default limits.
pub fn init(
    dir: &std::path::Path,
    listen: SocketAddr,
    trusted: Vec<PublicKey>,
    slot: Option<CommitteeSlot>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if dir.join(config::CONFIG_FILE).exists() {
        anyhow::bail!("{} already holds a node configuration", dir.display());
    }
    let id = Identity::load_or_generate(&dir.join(config::KEY_FILE))?;
    let mut config = NodeConfig::new(listen, trusted);
    config.committee = slot;
    config.save(dir)?;
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
