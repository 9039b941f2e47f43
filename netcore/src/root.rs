//! Root records: the one small, signed, versioned record per archive that the nodes keep, and
//! from which everything else of an archive is found.
//!
//! A record names its archive by the archive's ed25519 public key, carries a version and an
//! opaque body (sealed by the archive owner: nodes learn nothing from it but its length), and is
//! signed by the archive's signing key. A node stores a record only if the signature verifies,
//! the client is trusted, and the version is higher than the one it holds
//! ([`accepts`](RootRecord::accepts)). Writers send a record to every node and need `n - f`
//! acceptances; readers ask every node and take the highest valid version among at least
//! `n - f` answers ([`RootAnswers::latest`]). Any two sets of `n - f` nodes share at least
//! `f + 1`, so at least one honest node of every read quorum holds the latest version: up to
//! `f` nodes can neither forge a record (no signing key) nor roll the archive back (a lower
//! version loses).
//!
//! Byte layout of the signed message (a contract, pinned by a test):
//! `ROOT_DOMAIN ++ archive key (32) ++ version (u64 LE) ++ blake3(body) (32)`.

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;

/// Largest root body a node accepts. The body holds the latest index record ids, the writer's
/// lease and the snapshot list: a few KiB in practice; the cap keeps a request within one
/// frame ([`crate::wire::MAX_FRAME_LEN`]) with room to spare.
pub const MAX_ROOT_BODY: usize = 48 * 1024;

/// Domain separator of root record signatures.
const ROOT_DOMAIN: &[u8] = b"walrusfs 2026-11 root record v1\0";

/// A signed, versioned root record of one archive.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    /// The archive's public signing key: the archive's identity.
    pub archive: PublicKey,
    /// Version; every write of the archive's root bumps it. A node keeps only the highest.
    pub version: u64,
    /// Opaque to nodes (the owner seals it), at most [`MAX_ROOT_BODY`] bytes.
    pub body: Vec<u8>,
    /// ed25519 signature by `archive` over [`RootRecord::message`].
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for RootRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootRecord")
            .field("archive", &self.archive)
            .field("version", &self.version)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Why a root record is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    /// The body exceeds [`MAX_ROOT_BODY`].
    #[error("root record body of {0} bytes exceeds the {MAX_ROOT_BODY}-byte limit")]
    TooLarge(usize),
    /// The signature is not the archive key's signature over this record.
    #[error("root record signature does not verify")]
    BadSignature,
    /// The record names another archive than the one asked for.
    #[error("root record of another archive")]
    WrongArchive,
}

/// An archive's signing key (ed25519), derived by the archive owner from its secret.
pub struct ArchiveSigner {
    pair: ring::signature::Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for ArchiveSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSigner")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl ArchiveSigner {
    /// The signing key with this 32-byte ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        use ring::signature::KeyPair;
        // `from_seed_unchecked` only fails on a seed of the wrong length, which the type rules out.
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .unwrap_or_else(|_| unreachable!("a 32-byte seed is always a valid ed25519 seed"));
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        ArchiveSigner {
            pair,
            public: PublicKey(public),
        }
    }

    /// The archive's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs `message` (64-byte ed25519 signature).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

impl RootRecord {
    /// The exact bytes signed for a record (see the module doc).
    pub fn message(archive: &PublicKey, version: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(ROOT_DOMAIN.len() + 72);
        m.extend_from_slice(ROOT_DOMAIN);
        m.extend_from_slice(&archive.0);
        m.extend_from_slice(&version.to_le_bytes());
        m.extend_from_slice(blake3::hash(body).as_bytes());
        m
    }

    /// A record signed by `signer`.
    pub fn sign(signer: &ArchiveSigner, version: u64, body: Vec<u8>) -> Result<Self, RootError> {
        if body.len() > MAX_ROOT_BODY {
            return Err(RootError::TooLarge(body.len()));
        }
        let archive = signer.public_key();
        let signature = signer.sign(&Self::message(&archive, version, &body));
        Ok(RootRecord {
            archive,
            version,
            body,
            signature,
        })
    }

    /// Checks the size limit and the signature.
    pub fn verify(&self) -> Result<(), RootError> {
        if self.body.len() > MAX_ROOT_BODY {
            return Err(RootError::TooLarge(self.body.len()));
        }
        let msg = Self::message(&self.archive, self.version, &self.body);
        if self.archive.verify(&msg, &self.signature) {
            Ok(())
        } else {
            Err(RootError::BadSignature)
        }
    }

    /// [`RootRecord::verify`], and that the record belongs to `archive`.
    pub fn verify_for(&self, archive: &PublicKey) -> Result<(), RootError> {
        if self.archive != *archive {
            return Err(RootError::WrongArchive);
        }
        self.verify()
    }

    /// Whether a node holding `held` (its current version, if any) must store this record: only
    /// strictly newer versions replace older ones, so a version is never written twice with
    /// different contents on one node and a node never moves backwards.
    pub fn accepts(&self, held: Option<u64>) -> bool {
        held.is_none_or(|h| self.version > h)
    }
}

/// The answers of a root read: one entry per node that answered, `None` if it holds no record
/// for the archive. Only verified records are ever put here.
#[derive(Debug, Clone, Default)]
pub struct RootAnswers {
    /// Per answering node: its verified record, if any.
    pub answers: Vec<(u16, Option<RootRecord>)>,
}

impl RootAnswers {
    /// Number of nodes that answered (with or without a record).
    pub fn answered(&self) -> usize {
        self.answers.len()
    }

    /// The highest version any answer holds.
    pub fn latest_version(&self) -> Option<u64> {
        self.answers
            .iter()
            .filter_map(|(_, r)| r.as_ref().map(|r| r.version))
            .max()
    }

    /// The distinct records at the highest version (usually one; two writers racing for the
    /// same version can leave two, and the caller breaks the tie on what the bodies say). Each
    /// comes with the number of nodes that returned it.
    pub fn latest(&self) -> Vec<(&RootRecord, usize)> {
        let Some(v) = self.latest_version() else {
            return Vec::new();
        };
        let mut out: Vec<(&RootRecord, usize)> = Vec::new();
        for r in self.answers.iter().filter_map(|(_, r)| r.as_ref()) {
            if r.version != v {
                continue;
            }
            match out.iter_mut().find(|(seen, _)| *seen == r) {
                Some((_, count)) => *count += 1,
                None => out.push((r, 1)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> ArchiveSigner {
        ArchiveSigner::from_seed(&[seed; 32])
    }

    #[test]
    fn signed_records_verify_and_tampering_fails() {
        let s = signer(1);
        let r = RootRecord::sign(&s, 7, b"body".to_vec()).unwrap();
        assert_eq!(r.verify(), Ok(()));
        assert_eq!(r.verify_for(&s.public_key()), Ok(()));
        assert_eq!(
            r.verify_for(&signer(2).public_key()),
            Err(RootError::WrongArchive)
        );
        let mut v = r.clone();
        v.version = 8;
        assert_eq!(v.verify(), Err(RootError::BadSignature), "version bumped");
        let mut b = r.clone();
        b.body[0] ^= 1;
        assert_eq!(b.verify(), Err(RootError::BadSignature), "body changed");
        // A record signed by another key but claiming this archive.
        let mut forged = RootRecord::sign(&signer(2), 9, b"body".to_vec()).unwrap();
        forged.archive = s.public_key();
        assert_eq!(forged.verify(), Err(RootError::BadSignature));
        assert_eq!(
            RootRecord::sign(&s, 1, vec![0; MAX_ROOT_BODY + 1]).unwrap_err(),
            RootError::TooLarge(MAX_ROOT_BODY + 1)
        );
    }

    #[test]
    fn nodes_accept_only_newer_versions() {
        let r = RootRecord::sign(&signer(1), 5, Vec::new()).unwrap();
        assert!(r.accepts(None));
        assert!(r.accepts(Some(4)));
        assert!(!r.accepts(Some(5)));
        assert!(!r.accepts(Some(6)));
    }

    #[test]
    fn latest_takes_the_highest_version_and_counts_copies() {
        let s = signer(1);
        let v3 = RootRecord::sign(&s, 3, b"a".to_vec()).unwrap();
        let v4a = RootRecord::sign(&s, 4, b"a".to_vec()).unwrap();
        let v4b = RootRecord::sign(&s, 4, b"b".to_vec()).unwrap();
        let answers = RootAnswers {
            answers: vec![
                (0, Some(v3.clone())),
                (1, Some(v4a.clone())),
                (2, None),
                (3, Some(v4a.clone())),
                (4, Some(v4b.clone())),
            ],
        };
        assert_eq!(answers.answered(), 5);
        assert_eq!(answers.latest_version(), Some(4));
        let latest = answers.latest();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[0], (&v4a, 2));
        assert_eq!(latest[1], (&v4b, 1));
        assert!(RootAnswers::default().latest().is_empty());
    }

    /// The signed message is a contract: a change must bump the domain's version.
    #[test]
    fn signed_message_layout_is_pinned() {
        let m = RootRecord::message(&PublicKey([0xab; 32]), 0x0102, b"");
        assert_eq!(&m[..ROOT_DOMAIN.len()], ROOT_DOMAIN);
        let rest = &m[ROOT_DOMAIN.len()..];
        assert_eq!(&rest[..32], &[0xab; 32]);
        assert_eq!(&rest[32..40], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            hex::encode(&rest[40..]),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
