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
