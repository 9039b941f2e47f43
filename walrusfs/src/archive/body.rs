//! The root body: what an archive's root record says, sealed under the index key so nodes learn
//! nothing from it but its length.
//!
//! # Format (version 1; a contract, pinned by a test)
//!
//! The record body is `nonce (24) ++ XChaCha20-Poly1305(postcard(RootBody))`, with associated
//! data `"walrusfs root body v1\0" ++ archive key (32) ++ version (u64 LE)`: a body cannot be
//! replayed under another version or archive even by someone holding a valid signature.

use netcore::codec::BlobId;
use netcore::identity::PublicKey;
use netcore::root::RootRecord;
use serde::{Deserialize, Serialize};

use super::key::{ArchiveKey, IndexKey};
use super::ArchiveError;

/// Current root body format.
pub const ROOT_BODY_FORMAT: u16 = 1;
const BODY_AD: &[u8] = b"walrusfs root body v1\0";

/// One published index record: the blobs holding its parts, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// The blobs of the record's parts, in order.
    pub parts: Vec<BlobId>,
    /// The record holds the published trees as of this change sequence number.
    pub upto_seq: u64,
    /// A full record (every key) rather than the changes since the previous one.
    pub full: bool,
    /// Sealed bytes of all parts together (to decide when to compact).
    pub bytes: u64,
}

/// The published index: a full record, then the records of later changes, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexChain {
    /// The filesystem id the index was created with (bound into each record).
    pub fs_id: [u8; 16],
    /// `records[0]` is full; the others are changes, oldest first.
    pub records: Vec<RecordRef>,
}

impl IndexChain {
    /// The sequence number the whole chain is current at.
    pub fn upto_seq(&self) -> u64 {
        self.records.last().map_or(0, |r| r.upto_seq)
    }

    /// Every blob of every record.
    pub fn blobs(&self) -> impl Iterator<Item = BlobId> + '_ {
        self.records.iter().flat_map(|r| r.parts.iter().copied())
    }

    /// Whether `self` is `other` followed by zero or more records.
    pub fn extends(&self, other: &IndexChain) -> bool {
        self.fs_id == other.fs_id
            && self.records.len() >= other.records.len()
            && self.records[..other.records.len()] == other.records[..]
    }
}

/// The writer's lease: who may change the archive, and until when without renewing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder's id: random per state directory, so a restarted mount on the same machine
    /// and state recognises its own lease.
    pub holder: [u8; 16],
    /// The holder's host name (for messages).
    pub host: String,
    /// The holder's process id (for messages).
    pub pid: u32,
    /// When the lease ends unless renewed, in milliseconds since the Unix epoch.
    pub expires_ms: i64,
}

/// A named, immutable version of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The name users give it.
    pub name: String,
    /// When it was made, in seconds since the Unix epoch.
    pub created_secs: i64,
    /// The root version at which it was made (unique per snapshot).
    pub version: u64,
    /// The index as of then: a single full record.
    pub index: IndexChain,
}

/// What a root record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootBody {
    /// [`ROOT_BODY_FORMAT`].
    pub format: u16,
    /// When the archive was made, in seconds since the Unix epoch.
    pub created_secs: i64,
    /// Chunk size for the archive's index when it is first created.
    pub chunk_size: u32,
    /// The published index; `None` until the first writer publishes one.
    pub index: Option<IndexChain>,
    /// The holder id of whoever published `index` (kept after the lease is released, so a
    /// writer coming back knows whether the published index is its own).
    pub last_writer: Option<[u8; 16]>,
    /// The writer's lease, if one is held.
    pub lease: Option<Lease>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
}

impl RootBody {
    /// The body of a new archive.
    pub fn new(chunk_size: u32) -> Self {
        RootBody {
            format: ROOT_BODY_FORMAT,
            created_secs: crate::index::Timestamp::now().secs,
            chunk_size,
            index: None,
            last_writer: None,
            lease: None,
            snapshots: Vec::new(),
        }
    }

    /// A snapshot by name.
    pub fn snapshot(&self, name: &str) -> Option<&Snapshot> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// Every index record blob the root refers to (the index and every snapshot's).
    pub fn index_blobs(&self) -> Vec<BlobId> {
        let mut out: Vec<BlobId> = self.index.iter().flat_map(|c| c.blobs()).collect();
        for s in &self.snapshots {
            out.extend(s.index.blobs());
        }
        out.sort();
        out.dedup();
        out
    }
}

fn body_ad(archive: &PublicKey, version: u64) -> Vec<u8> {
    let mut ad = BODY_AD.to_vec();
    ad.extend_from_slice(&archive.0);
    ad.extend_from_slice(&version.to_le_bytes());
    ad
}

/// Seals and signs `body` as version `version` of the archive's root.
pub fn seal(key: &ArchiveKey, version: u64, body: &RootBody) -> Result<RootRecord, ArchiveError> {
    let signer = key.signer();
    let plain = postcard::to_stdvec(body).map_err(|e| ArchiveError::Internal(e.to_string()))?;
    let sealed = key
        .index_key()
        .seal(&body_ad(&signer.public_key(), version), &plain);
    RootRecord::sign(&signer, version, sealed).map_err(|e| ArchiveError::RootTooLarge {
        reason: e.to_string(),
    })
}

/// Opens a verified record's body.
pub fn open(index_key: &IndexKey, record: &RootRecord) -> Result<RootBody, ArchiveError> {
    let plain = index_key
        .open(&body_ad(&record.archive, record.version), &record.body)
        .map_err(|_| ArchiveError::RootUnreadable {
            version: record.version,
            reason: "does not open under this key".into(),
        })?;
    let body: RootBody =
        postcard::from_bytes(&plain).map_err(|e| ArchiveError::RootUnreadable {
            version: record.version,
            reason: format!("undecodable body: {e}"),
        })?;
    if body.format != ROOT_BODY_FORMAT {
        return Err(ArchiveError::RootUnreadable {
            version: record.version,
            reason: format!(
                "body format {}, this build reads {ROOT_BODY_FORMAT}",
                body.format
            ),
        });
    }
    Ok(body)
}

/// Among records of equal (highest) version, the one that counts: the lowest lease holder id
/// wins (records without a lease rank last), then the most copies. Two writers racing for one
/// version both see the same winner, so at most one of them goes on believing it holds the
/// lease.
pub fn pick<'a>(
    index_key: &IndexKey,
    candidates: &[(&'a RootRecord, usize)],
) -> Option<(&'a RootRecord, RootBody)> {
    let mut best: Option<(&RootRecord, RootBody, usize)> = None;
    for (record, copies) in candidates {
        let Ok(body) = open(index_key, record) else {
            tracing::warn!(
                version = record.version,
                "a signed root body does not open; ignored"
            );
            continue;
        };
        let rank = |b: &RootBody| b.lease.as_ref().map(|l| l.holder);
        let better = match &best {
            None => true,
            Some((_, b, c)) => match (rank(&body), rank(b)) {
                (Some(x), Some(y)) if x != y => x < y,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                _ => *copies > *c,
            },
        };
        if better {
            best = Some((record, body, *copies));
        }
    }
    best.map(|(r, b, _)| (r, b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lease(holder: u8) -> Lease {
        Lease {
            holder: [holder; 16],
            host: "h".into(),
            pid: 1,
            expires_ms: 10,
        }
    }

    #[test]
    fn body_round_trips_and_is_bound_to_its_version() {
        let key = ArchiveKey::from_secret([1; 32]);
        let mut body = RootBody::new(4 << 20);
        body.lease = Some(lease(3));
        let record = seal(&key, 5, &body).unwrap();
        record.verify_for(&key.archive_id()).unwrap();
        assert_eq!(open(&key.index_key(), &record).unwrap(), body);
        // The same sealed body under another version (re-signed by the key holder) fails.
        let moved = RootRecord::sign(&key.signer(), 6, record.body.clone()).unwrap();
        assert!(open(&key.index_key(), &moved).is_err());
        let other = ArchiveKey::from_secret([2; 32]);
        assert!(open(&other.index_key(), &record).is_err());
    }

    #[test]
    fn ties_go_to_the_lowest_holder() {
        let key = ArchiveKey::from_secret([1; 32]);
        let ik = key.index_key();
        let mut a = RootBody::new(1);
        a.lease = Some(lease(9));
        let mut b = RootBody::new(1);
        b.lease = Some(lease(2));
        let c = RootBody::new(1);
        let ra = seal(&key, 4, &a).unwrap();
        let rb = seal(&key, 4, &b).unwrap();
        let rc = seal(&key, 4, &c).unwrap();
        let (won, body) = pick(&ik, &[(&ra, 5), (&rb, 1), (&rc, 9)]).unwrap();
        assert_eq!(won, &rb);
        assert_eq!(body.lease.unwrap().holder, [2; 16]);
        let (won, _) = pick(&ik, &[(&rc, 1), (&ra, 1)]).unwrap();
        assert_eq!(won, &ra, "a lease outranks no lease");
        assert!(pick(&ik, &[]).is_none());
    }

    #[test]
    fn chains_extend_only_their_own_prefix() {
        let r = |s| RecordRef {
            parts: vec![BlobId([s as u8; 32])],
            upto_seq: s,
            full: s == 1,
            bytes: 1,
        };
        let base = IndexChain {
            fs_id: [1; 16],
            records: vec![r(1), r(2)],
        };
        let longer = IndexChain {
            records: vec![r(1), r(2), r(3)],
            ..base.clone()
        };
        assert!(longer.extends(&base));
        assert!(base.extends(&base));
        assert!(!base.extends(&longer));
        let other = IndexChain {
            fs_id: [2; 16],
            ..longer.clone()
        };
        assert!(!other.extends(&base));
        assert_eq!(longer.upto_seq(), 3);
    }

    /// The body format is a contract: a fixed body encodes to fixed bytes.
    #[test]
    fn body_format_is_pinned() {
        let body = RootBody {
            format: 1,
            created_secs: 2,
            chunk_size: 3,
            index: Some(IndexChain {
                fs_id: [4; 16],
                records: vec![RecordRef {
                    parts: vec![BlobId([5; 32])],
                    upto_seq: 6,
                    full: true,
                    bytes: 7,
                }],
            }),
            last_writer: None,
            lease: None,
            snapshots: vec![],
        };
        let bytes = postcard::to_stdvec(&body).unwrap();
        let mut expected = vec![1u8, 4, 3, 1];
        expected.extend_from_slice(&[4; 16]);
        expected.push(1); // one record
        expected.push(1); // one part
        expected.extend_from_slice(&[5; 32]);
        expected.extend_from_slice(&[6, 1, 7]);
        expected.extend_from_slice(&[0, 0, 0]); // no last writer, no lease, no snapshots
        assert_eq!(bytes, expected);
    }
}
