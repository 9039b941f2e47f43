//! Storage node configuration: the `node.toml` in a node's directory, and the directory layout.
//!
//! ```text
//! D/node.toml   this configuration            D/node.key   the node's ed25519 key (0600)
//! D/node.pid    pid while the node runs       D/store/     the sliver store (see `store`)
//! D/node.lock   locked while a node serves D    D/roots/     archive root records (see `roots`)
//! D/scrub.toml  where the scrubber's pass is (format 1: started_secs, last blob checked)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;

/// Name of the configuration file inside a node directory.
pub const CONFIG_FILE: &str = "node.toml";
/// Name of the key file inside a node directory.
pub const KEY_FILE: &str = "node.key";
/// Name of the pid file a running node keeps in its directory.
pub const PID_FILE: &str = "node.pid";
/// Name of the lock file a running node holds (flock) in its directory.
pub const LOCK_FILE: &str = "node.lock";
/// Name of the sliver store directory inside a node directory.
pub const STORE_DIR: &str = "store";
/// Name of the root record directory inside a node directory.
pub const ROOTS_DIR: &str = "roots";

/// Errors loading a node configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("node config {path}: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("node config {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Parse error with position.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("node config: {0}")]
    Invalid(String),
}

/// Configuration of one storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Client keys allowed to store and delete. Anyone with a key may read: slivers are
    /// ciphertext fragments and reads are how a blob is recovered.
    #[serde(default)]
    pub trusted_clients: Vec<PublicKey>,
    /// Largest sliver accepted. A 256 MiB blob at k = 3 has ~86 MiB slivers.
    #[serde(default = "default_max_sliver_bytes")]
    pub max_sliver_bytes: u64,
    /// Sliver bytes the node holds in memory at once across all requests (stores being
    /// received plus slivers being served); requests beyond it wait, then fail as busy.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Concurrent client connections; further ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Concurrent requests (streams) per connection; QUIC flow control holds back the rest.
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: u32,
    /// Time a single request may take end to end before the node drops it.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Handshakes in progress at once from one IP address (addresses are validated with a
    /// QUIC Retry first, so a spoofed source cannot use another's share); also the most
    /// connections untrusted keys may hold from one address.
    #[serde(default = "default_per_source")]
    pub max_handshakes_per_source: u32,
    /// Handshakes in progress at once in all.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: u32,
    /// Seconds a handshake may take before its slot is freed.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Connections at once from one client key. (Untrusted keys together may hold at most
    /// half of `max_connections`.)
    #[serde(default = "default_per_key")]
    pub max_connections_per_key: u32,
    /// Free space (MiB) kept on the store's filesystem: a store that would leave less is
    /// refused, so a full disk cannot break the node or what else lives on that disk.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
    /// Read rate of the background scrubber, which hashes every stored sliver and moves
    /// damaged ones aside; 0 turns it off.
    #[serde(default = "default_scrub_mib_per_sec")]
    pub scrub_mib_per_sec: u64,
    /// Seconds from the start of one scrub pass over the store to the start of the next.
    #[serde(default = "default_scrub_interval_secs")]
    pub scrub_interval_secs: u64,
    /// Sliver MiB each trusted client may store on this node (counted over the blobs its
    /// stores created here); 0: no limit. `client_quota_mib` sets it per client.
    #[serde(default)]
    pub quota_mib: u64,
    /// Per-client quotas in MiB, overriding `quota_mib` (0: no limit for that client).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub client_quota_mib: std::collections::BTreeMap<PublicKey, u64>,
    /// This node's place in the committee (`index` of `n`, any `k` rebuild a blob): slivers
    /// for another index or another committee shape are refused. Absent in configurations
    /// written before it existed (then only the blob's own parameters are checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committee: Option<CommitteeSlot>,
    /// Injected misbehaviour (test builds only).
    #[cfg(feature = "faults")]
    #[serde(default, skip_serializing_if = "super::faults::FaultConfig::is_none")]
    pub faults: super::faults::FaultConfig,
}

fn default_max_sliver_bytes() -> u64 {
    1 << 30
}
fn default_max_inflight_bytes() -> u64 {
    1 << 30
}
fn default_max_connections() -> u32 {
    1024
}
fn default_max_streams() -> u32 {
    64
}
fn default_request_timeout_secs() -> u64 {
    300
}
fn default_per_source() -> u32 {
    16
}
fn default_max_handshakes() -> u32 {
    256
}
fn default_handshake_timeout_secs() -> u64 {
    10
}
fn default_per_key() -> u32 {
    64
}
fn default_min_free_mib() -> u64 {
    64
}
fn default_scrub_mib_per_sec() -> u64 {
    16
}
fn default_scrub_interval_secs() -> u64 {
    24 * 3600
}

/// A node's place in its committee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitteeSlot {
    /// The sliver index this node stores.
    pub index: u16,
    /// Nodes in the committee.
    pub n: u16,
    /// Slivers that rebuild a blob.
    pub k: u16,
}

impl NodeConfig {
    /// A configuration with default limits.
    pub fn new(listen: SocketAddr, trusted_clients: Vec<PublicKey>) -> Self {
        NodeConfig {
            listen,
            trusted_clients,
            max_sliver_bytes: default_max_sliver_bytes(),
            max_inflight_bytes: default_max_inflight_bytes(),
            max_connections: default_max_connections(),
            max_streams_per_connection: default_max_streams(),
            request_timeout_secs: default_request_timeout_secs(),
            max_handshakes_per_source: default_per_source(),
            max_handshakes: default_max_handshakes(),
            handshake_timeout_secs: default_handshake_timeout_secs(),
            max_connections_per_key: default_per_key(),
            min_free_mib: default_min_free_mib(),
            scrub_mib_per_sec: default_scrub_mib_per_sec(),
            scrub_interval_secs: default_scrub_interval_secs(),
            quota_mib: 0,
            client_quota_mib: Default::default(),
            committee: None,
            #[cfg(feature = "faults")]
            faults: Default::default(),
        }
    }

    /// Loads `D/node.toml`.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        let cfg: NodeConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes `D/node.toml`.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        std::fs::write(&path, text).map_err(|source| ConfigError::Io { path, source })
    }

    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_sliver_bytes == 0 || self.max_inflight_bytes < self.max_sliver_bytes {
            return Err(ConfigError::Invalid(
                "need 0 < max_sliver_bytes <= max_inflight_bytes".into(),
            ));
        }
        if self.max_connections < 2
            || self.max_streams_per_connection == 0
            || self.max_handshakes == 0
            || self.max_handshakes_per_source == 0
            || self.max_connections_per_key == 0
        {
            return Err(ConfigError::Invalid(
                "need max_connections >= 2 and positive max_streams_per_connection, max_handshakes, max_handshakes_per_source and max_connections_per_key".into(),
            ));
        }
        if let Some(c) = self.committee {
            if c.k == 0 || c.k > c.n || c.index >= c.n {
                return Err(ConfigError::Invalid(format!(
                    "committee slot: need 0 < k <= n and index < n, got index {} of n = {}, k = {}",
                    c.index, c.n, c.k
                )));
            }
        }
        Ok(())
    }

    /// [`NodeConfig::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    /// The quota of `client` in sliver bytes, if it has one.
    pub fn quota_bytes(&self, client: &PublicKey) -> Option<u64> {
        let mib = self
            .client_quota_mib
            .get(client)
            .copied()
            .unwrap_or(self.quota_mib);
        (mib > 0).then(|| mib.saturating_mul(1 << 20))
    }

    /// [`NodeConfig::handshake_timeout_secs`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs.max(1))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A `node.toml` as `walrusfs node --init` wrote it before admission limits, scrubbing,
    /// the free-space reserve and committee slots existed: it must keep loading, with defaults.
    const OLD: &str = r#"listen = "127.0.0.1:7100"
trusted_clients = []
max_sliver_bytes = 1073741824
max_inflight_bytes = 1073741824
max_connections = 1024
max_streams_per_connection = 64
request_timeout_secs = 300
"#;

    #[test]
    fn a_config_from_before_the_new_limits_loads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), OLD).unwrap();
        let cfg = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(cfg.max_handshakes_per_source, default_per_source());
        assert_eq!(cfg.max_connections_per_key, default_per_key());
        assert_eq!(cfg.min_free_mib, default_min_free_mib());
        assert_eq!(cfg.scrub_mib_per_sec, default_scrub_mib_per_sec());
        assert_eq!(cfg.committee, None);
        assert_eq!(cfg.quota_bytes(&PublicKey([1; 32])), None);
    }

    #[test]
    fn quotas_apply_per_client_with_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = PublicKey([1; 32]);
        let b = PublicKey([2; 32]);
        let text = format!("{OLD}quota_mib = 10\n[client_quota_mib]\n\"{a}\" = 3\n");
        std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
        let cfg = NodeConfig::load(dir.path()).unwrap();
        assert_eq!(cfg.quota_bytes(&a), Some(3 << 20));
        assert_eq!(cfg.quota_bytes(&b), Some(10 << 20));
        // Saved and loaded again, the table survives.
        cfg.save(dir.path()).unwrap();
        assert_eq!(NodeConfig::load(dir.path()).unwrap(), cfg);
    }

    #[test]
    fn configs_round_trip_and_bad_slots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::new("127.0.0.1:7100".parse().unwrap(), Vec::new());
        cfg.committee = Some(CommitteeSlot {
            index: 2,
            n: 7,
            k: 3,
        });
        cfg.save(dir.path()).unwrap();
        assert_eq!(NodeConfig::load(dir.path()).unwrap(), cfg);
        for (index, n, k) in [(7, 7, 3), (0, 7, 0), (0, 3, 4)] {
            cfg.committee = Some(CommitteeSlot { index, n, k });
            cfg.save(dir.path()).unwrap();
            assert!(
                matches!(NodeConfig::load(dir.path()), Err(ConfigError::Invalid(_))),
                "slot {index}/{n}/{k} accepted"
            );
        }
    }
}
