//! The committee: which storage nodes make up the network, where they listen, which key each
//! one holds, and the encoding parameters `n` and `k`. Loaded from a TOML file; it plays the role
//! the Sui chain plays for Walrus. Fault tolerance `f` and the write quorum `n - f` derive from
//! `n` and `k` here and nowhere else.
//!
//! ```toml
//! n = 7
//! k = 3
//! [[nodes]]
//! index = 0
//! address = "127.0.0.1:7100"
//! public_key = "<64 hex digits>"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{EncodingParams, SliverIndex};
use crate::identity::PublicKey;

/// Errors loading a committee file.
#[derive(Debug, thiserror::Error)]
pub enum CommitteeError {
    /// The file could not be read or written.
    #[error("committee file {path}: {source}")]
    Io {
        /// The committee file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the committee's shape.
    #[error("committee file {path}: {source}")]
    Parse {
        /// The committee file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: toml::de::Error,
    },
    /// The file parses but describes an impossible committee.
    #[error("invalid committee: {0}")]
    Invalid(String),
}

/// One storage node as the committee knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Sliver index this node stores (`0..n`).
    pub index: SliverIndex,
    /// UDP address the node's QUIC endpoint listens on.
    pub address: SocketAddr,
    /// The node's ed25519 key, pinned: a connection to any other key is refused.
    pub public_key: PublicKey,
}

/// The storage network: encoding parameters and the nodes, ordered by index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committee {
    /// Number of nodes and slivers.
    pub n: u16,
    /// Slivers needed to rebuild a blob.
    pub k: u16,
    /// The nodes; after [`Committee::validate`], `nodes[i].index == i`.
    pub nodes: Vec<NodeInfo>,
}

impl Committee {
    /// Builds and validates a committee.
    pub fn new(k: u16, mut nodes: Vec<NodeInfo>) -> Result<Self, CommitteeError> {
        nodes.sort_by_key(|n| n.index);
        let n = u16::try_from(nodes.len())
            .map_err(|_| CommitteeError::Invalid(format!("too many nodes: {}", nodes.len())))?;
        let c = Committee { n, k, nodes };
        c.validate()?;
        Ok(c)
    }

    /// Reads and validates a committee file.
    pub fn load(path: &Path) -> Result<Self, CommitteeError> {
        let text = std::fs::read_to_string(path).map_err(|source| CommitteeError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut c: Committee = toml::from_str(&text).map_err(|source| CommitteeError::Parse {
            path: path.to_owned(),
            source,
        })?;
        c.nodes.sort_by_key(|n| n.index);
        c.validate()?;
        Ok(c)
    }

    /// Writes the committee as TOML (atomically: temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), CommitteeError> {
        let io = |source| CommitteeError::Io {
            path: path.to_owned(),
            source,
        };
        let text = toml::to_string_pretty(self)
            .map_err(|e| CommitteeError::Invalid(format!("cannot serialize: {e}")))?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Checks `1 <= k <= n`, that there are `n` nodes indexed `0..n` exactly once, and that no
    /// two nodes share a key (one machine must not count as two towards a quorum).
    pub fn validate(&self) -> Result<(), CommitteeError> {
        EncodingParams::new(self.n, self.k).map_err(|e| CommitteeError::Invalid(e.to_string()))?;
        if self.nodes.len() != usize::from(self.n) {
            return Err(CommitteeError::Invalid(format!(
                "n = {} but {} nodes are listed",
                self.n,
                self.nodes.len()
            )));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if usize::from(node.index) != i {
                return Err(CommitteeError::Invalid(format!(
                    "node indexes must be 0..{} each exactly once (found {} at position {i})",
                    self.n, node.index
                )));
            }
        }
        let mut keys: Vec<_> = self.nodes.iter().map(|n| n.public_key).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != self.nodes.len() {
            return Err(CommitteeError::Invalid(
                "two nodes share a public key".into(),
            ));
        }
        Ok(())
    }

    /// The encoding parameters blobs are written with.
    pub fn params(&self) -> EncodingParams {
        EncodingParams {
            n: self.n,
            k: self.k,
        }
    }

    /// How many nodes may be down or lying: `f = floor((n - k) / 2)`, so `k = n - 2f` when the
    /// committee follows the usual `n = 3f + 1` shape.
    pub fn max_faulty(&self) -> u16 {
        (self.n - self.k) / 2
    }

    /// Confirmations a write needs before it counts as stored: `n - f`.
    pub fn write_quorum(&self) -> u16 {
        self.n - self.max_faulty()
    }

    /// The usual `k` for `n` nodes: `n - 2f` with `f = floor((n - 1) / 3)`.
    pub fn default_k(n: u16) -> u16 {
        let f = n.saturating_sub(1) / 3;
        n - 2 * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: u16) -> Vec<NodeInfo> {
        (0..count)
            .map(|i| NodeInfo {
                index: i,
                address: SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
                public_key: PublicKey([i as u8; 32]),
            })
            .collect()
    }

    #[test]
    fn seven_nodes_tolerate_two() {
        let c = Committee::new(Committee::default_k(7), nodes(7)).unwrap();
        assert_eq!((c.n, c.k, c.max_faulty(), c.write_quorum()), (7, 3, 2, 5));
        assert_eq!(Committee::default_k(4), 2);
        assert_eq!(Committee::default_k(1), 1);
    }

    #[test]
    fn round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("committee.toml");
        let c = Committee::new(3, nodes(7)).unwrap();
        c.save(&path).unwrap();
        assert_eq!(Committee::load(&path).unwrap(), c);
    }

    #[test]
    fn rejects_bad_committees() {
        let mut dup = nodes(4);
        dup[3].index = 2;
        assert!(Committee::new(2, dup).is_err());
        let mut same_key = nodes(4);
        same_key[3].public_key = same_key[0].public_key;
        assert!(Committee::new(2, same_key).is_err());
        assert!(Committee::new(5, nodes(4)).is_err());
        assert!(Committee::new(0, nodes(4)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "n = 7\nk = \"three\"\n").unwrap();
        let err = Committee::load(&path).unwrap_err();
        assert!(matches!(err, CommitteeError::Parse { .. }), "{err}");
    }
}
