//! Test-only fault injection in the node (the `faults` cargo feature): a node told, in the
//! `[faults]` table of its `node.toml`, to misbehave the ways a faulty or malicious node would,
//! so end-to-end tests can show the client does not trust it. Compiled out of real builds.

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::root::{ArchiveSigner, RootRecord};

/// How a node misbehaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Answer every root read with a forged record: a version far ahead of any real one,
    /// claiming the archive asked for but signed by another key.
    #[serde(default)]
    pub forge_roots: bool,
    /// Wait this long before answering each request: latency, or with seconds, a stall.
    #[serde(default)]
    pub delay_ms: u64,
    /// Refuse every store (as a full or failing disk would).
    #[serde(default)]
    pub refuse_stores: bool,
    /// Serve slivers with a flipped byte.
    #[serde(default)]
    pub corrupt_slivers: bool,
    /// Serve slivers cut to half their length.
    #[serde(default)]
    pub truncate_slivers: bool,
    /// Serve another blob's sliver (of the same length where there is one) as the one asked for.
    #[serde(default)]
    pub wrong_slivers: bool,
    /// Announce a sliver's or range's full length, send only the first half of it, and end
    /// the stream (a node that crashes or cheats mid-answer).
    #[serde(default)]
    pub short_bodies: bool,
    /// Close the connection instead of answering every this-many-th request (0: never).
    #[serde(default)]
    pub drop_every: u32,
}

impl FaultConfig {
    /// Whether no fault is configured (then the table is left out of `node.toml`).
    pub fn is_none(&self) -> bool {
        *self == FaultConfig::default()
    }
}

/// A forged root record for `archive`, as a lying node would serve it.
pub fn forged_root(archive: PublicKey) -> RootRecord {
    let liar = ArchiveSigner::from_seed(&[0x66; 32]);
    let mut record = RootRecord::sign(&liar, u64::MAX / 2, b"forged".to_vec())
        .unwrap_or_else(|_| unreachable!("a 6-byte body is within the limit"));
    record.archive = archive;
    record
}

/// A sliver as a faulty node would serve it; `other` is another blob's sliver, if any.
pub fn damage_sliver(config: &FaultConfig, mut data: Vec<u8>, other: Option<Vec<u8>>) -> Vec<u8> {
    if config.wrong_slivers {
        if let Some(o) = other {
            return o;
        }
    }
    if config.truncate_slivers {
        data.truncate(data.len() / 2);
    }
    if config.corrupt_slivers {
        if let Some(b) = data.get_mut(0) {
            *b ^= 0x5a;
        }
    }
    data
}
