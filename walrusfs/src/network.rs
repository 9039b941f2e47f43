//! How a command finds the storage network: a local testnet directory, or a committee file
//! plus a client key (the network identity, `--client-key`; the archive key is `--key`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use netcore::client::{Client, ClientConfig};
use netcore::committee::Committee;
use netcore::identity::Identity;

/// Name of the committee file in a testnet directory.
pub const COMMITTEE_FILE: &str = "committee.toml";
/// Name of the trusted client key in a testnet directory.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// Options selecting a network, shared by every command that talks to one.
#[derive(clap::Args, Debug, Clone)]
#[group(skip)]
#[command(group = clap::ArgGroup::new("network").required(true).args(["testnet", "committee"]))]
pub struct NetworkArgs {
    /// A local testnet directory (made by `walrusfs testnet up`).
    #[arg(long, conflicts_with_all = ["committee", "client_key"])]
    pub testnet: Option<PathBuf>,
    /// A committee file describing the network.
    #[arg(long, requires = "client_key")]
    pub committee: Option<PathBuf>,
    /// The client key to authenticate to the nodes with (see `walrusfs keygen`).
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// Seconds to wait for a node's handshake before taking it for unreachable (it is then
    /// skipped for a while). A node slower than a hedge delay to connect is already asked
    /// last, and waited for no longer than a quorum's answers are.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout_secs: u64,
}

/// Default of `--connect-timeout-secs`.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 3;

impl NetworkArgs {
    /// The committee file and client key paths these options select.
    pub fn paths(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        match (&self.testnet, &self.committee, &self.client_key) {
            (Some(dir), _, _) => Ok((dir.join(COMMITTEE_FILE), dir.join(CLIENT_KEY_FILE))),
            (None, Some(c), Some(k)) => Ok((c.clone(), k.clone())),
            _ => anyhow::bail!("give --testnet DIR, or --committee FILE with --client-key FILE"),
        }
    }

    /// Loads the committee and key and builds a client. Call inside a tokio runtime.
    pub fn client(&self) -> anyhow::Result<Client> {
        let (committee, key) = self.paths()?;
        connect_with(&committee, &key, self.client_config())
    }

    /// The client configuration these options ask for.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout_secs),
            ..ClientConfig::default()
        }
    }
}

/// Builds a client from a committee file and a key file.
pub fn connect(committee: &Path, key: &Path) -> anyhow::Result<Client> {
    connect_with(committee, key, ClientConfig::default())
}

/// [`connect`] with a client configuration of the caller's.
pub fn connect_with(committee: &Path, key: &Path, config: ClientConfig) -> anyhow::Result<Client> {
    let committee = Committee::load(committee)?;
    let identity = Identity::load(key).context("cannot load the client key")?;
    Ok(Client::new(committee, &identity, config)?)
}

/// A multi-threaded runtime for a command's network work.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start async runtime")
}
