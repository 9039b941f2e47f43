//! The archive key: one random 256-bit secret from which everything secret about an archive is
//! derived, and the key file that keeps it sealed under a passphrase.
//!
//! Derivations (blake3 `derive_key`, one context each, so no derived key says anything about
//! another): the data key that seals file chunks, the index key that seals published index
//! records and root bodies, and the ed25519 seed of the archive's signing key, whose public half
//! is the archive's identity on the network.
//!
//! # Key file format (version 1; a contract, pinned by a test)
//!
//! One printable line, the same in the file and in `walrusfs key export`:
//!
//! ```text
//! walrusfs-key-v1.<base64url, no padding, of postcard(KeyFile)>.<8 hex digits: blake3 checksum>
//! ```
//!
//! The checksum (the first 4 bytes of blake3 over the base64 text) catches a damaged file or a
//! mistyped copy before any passphrase is tried. A passphrase-protected key holds the secret
//! sealed with XChaCha20-Poly1305 under an Argon2id hash of the passphrase, with the Argon2
//! parameters and salt stored beside it; the associated data binds the archive's public key, so
//! a sealed secret cannot be moved into another key file. A testnet key holds the secret in the
//! clear and says so: it protects nothing and is only made for local testnets.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use netcore::identity::PublicKey;
use netcore::root::ArchiveSigner;
use serde::{Deserialize, Serialize};

use crate::data::crypto::DataKey;

/// Current key file format.
pub const KEY_FILE_FORMAT: u16 = 1;
/// Prefix of a key line (names the format).
const LINE_PREFIX: &str = "walrusfs-key-v1";
/// blake3 contexts of the derived keys. Changing one makes every archive unreadable.
const DATA_KEY_CONTEXT: &str = "walrusfs 2026-11 archive data key v1";
const INDEX_KEY_CONTEXT: &str = "walrusfs 2026-11 archive index key v1";
const SIGNING_SEED_CONTEXT: &str = "walrusfs 2026-11 archive signing seed v1";
/// Associated data prefix of a sealed secret.
const SEAL_AD: &[u8] = b"walrusfs archive key v1\0";
/// Label written into testnet keys.
pub const TESTNET_LABEL: &str = "TESTNET KEY: stored unprotected, for local testing only";

/// Argon2id cost, stored in each key file so it can be raised later without breaking old files.
/// The default (64 MiB, 3 passes) costs about half a second here: cheap once per mount,
/// expensive for someone guessing passphrases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }
}

/// Errors of archive keys and key files. Each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not a walrusfs key line, or its checksum does not match.
    #[error("{what} is damaged or not a walrusfs archive key ({reason}); restore it from your backup or `walrusfs key export` copy")]
    Damaged {
        /// The file or "the key line".
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The passphrase does not open the key.
    #[error("wrong passphrase for archive key {archive}")]
    WrongPassphrase {
        /// The archive the key file is for.
        archive: PublicKey,
    },
    /// Other users may read the key file.
    #[error(
        "key file {path} has mode {mode:o}: other users could read it; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key file already exists.
    #[error("{0} already exists; not overwriting a key (move it away first)")]
    Exists(PathBuf),
    /// No passphrase could be obtained (no terminal, no file, no variable), or it was empty.
    #[error("{0}")]
    Passphrase(String),
    /// Argon2 refused the parameters.
    #[error("key derivation: {0}")]
    Kdf(String),
}

/// The archive secret. Never written anywhere but sealed in a key file (or, for testnets, in
/// the clear in the testnet's directory).
#[derive(Clone)]
pub struct ArchiveKey {
    secret: [u8; 32],
}

impl std::fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveKey")
            .field("archive", &self.archive_id())
            .finish_non_exhaustive()
    }
}

/// The key that seals published index records and root bodies.
#[derive(Clone)]
pub struct IndexKey([u8; 32]);

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexKey(..)")
    }
}

/// Sealing under the index key failed to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed record failed authentication (altered, or sealed under another archive's key)")]
pub struct OpenError;

impl IndexKey {
    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        IndexKey(bytes)
    }

    /// Seals `plain` with a random 192-bit nonce; `ad` is bound but not stored.
    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        // Encryption fails only for messages beyond ChaCha20's 256 GiB stream limit.
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: ad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`IndexKey::seal`] made with the same `ad`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 24 + 16 {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(24);
        XChaCha20Poly1305::new((&self.0).into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: ad })
            .map_err(|_| OpenError)
    }
}

impl ArchiveKey {
    /// A fresh random archive key.
    pub fn generate() -> Self {
        ArchiveKey {
            secret: rand::random(),
        }
    }

    /// A key from a raw secret (tests, and the mount's child process reading it from its parent).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        ArchiveKey { secret }
    }

    /// The raw secret (to hand to the mount's child process over a pipe).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.secret)
    }

    /// The key file chunks are sealed under.
    pub fn data_key(&self) -> DataKey {
        DataKey::from_bytes(self.derive(DATA_KEY_CONTEXT))
    }

    /// The key index records and root bodies are sealed under.
    pub fn index_key(&self) -> IndexKey {
        IndexKey(self.derive(INDEX_KEY_CONTEXT))
    }

    /// The archive's signing key.
    pub fn signer(&self) -> ArchiveSigner {
        ArchiveSigner::from_seed(&self.derive(SIGNING_SEED_CONTEXT))
    }

    /// The archive's identity: its signing key's public half.
    pub fn archive_id(&self) -> PublicKey {
        self.signer().public_key()
    }
}

/// How a key file keeps the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Protection {
    /// Sealed under an Argon2id hash of a passphrase.
    Passphrase {
        kdf: KdfParams,
        salt: [u8; 16],
        nonce: [u8; 24],
        sealed: Vec<u8>,
    },
    /// In the clear: testnet keys only.
    Testnet { secret: [u8; 32] },
}

/// What a key file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeyFileBody {
    format: u16,
    archive: PublicKey,
    created_secs: i64,
    label: String,
    protection: Protection,
}

/// A parsed key file (or exported key line), not yet unlocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    body: KeyFileBody,
}

impl KeyFile {
    /// Seals `key` under `passphrase`.
    pub fn protect(key: &ArchiveKey, passphrase: &str, kdf: KdfParams) -> Result<Self, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::Passphrase(
                "an empty passphrase protects nothing; choose one".into(),
            ));
        }
        let salt: [u8; 16] = rand::random();
        let nonce: [u8; 24] = rand::random();
        let archive = key.archive_id();
        let wrap = kdf_key(passphrase, &salt, kdf)?;
        let sealed = XChaCha20Poly1305::new((&wrap).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &key.secret,
                    aad: &seal_ad(&archive),
                },
            )
            .map_err(|_| KeyError::Kdf("sealing failed".into()))?;
        Ok(KeyFile {
            body: KeyFileBody {
                format: KEY_FILE_FORMAT,
                archive,
                created_secs: now_secs(),
                label: String::new(),
                protection: Protection::Passphrase {
                    kdf,
                    salt,
                    nonce,
                    sealed,
                },
            },
        })
    }

    /// An unprotected testnet key file for `key`.
    pub fn testnet(key: &ArchiveKey) -> Self {
        KeyFile {
            body: KeyFileBody {
                format: KEY_FILE_FORMAT,
                archive: key.archive_id(),
                created_secs: now_secs(),
                label: TESTNET_LABEL.into(),
                protection: Protection::Testnet { secret: key.secret },
            },
        }
    }

    /// The archive this key is for (readable without the passphrase).
    pub fn archive(&self) -> PublicKey {
        self.body.archive
    }

    /// Whether the key needs a passphrase (testnet keys do not).
    pub fn needs_passphrase(&self) -> bool {
        matches!(self.body.protection, Protection::Passphrase { .. })
    }

    /// Whether this is an unprotected testnet key.
    pub fn is_testnet(&self) -> bool {
        matches!(self.body.protection, Protection::Testnet { .. })
    }

    /// Unlocks the secret. `passphrase` is ignored for testnet keys.
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<ArchiveKey, KeyError> {
        let archive = self.body.archive;
        let key = match &self.body.protection {
            Protection::Testnet { secret } => ArchiveKey::from_secret(*secret),
            Protection::Passphrase {
                kdf,
                salt,
                nonce,
                sealed,
            } => {
                let passphrase = passphrase.ok_or_else(|| {
                    KeyError::Passphrase("this archive key needs its passphrase".into())
                })?;
                let wrap = kdf_key(passphrase, salt, *kdf)?;
                let secret = XChaCha20Poly1305::new((&wrap).into())
                    .decrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: &seal_ad(&archive),
                        },
                    )
                    .map_err(|_| KeyError::WrongPassphrase { archive })?;
                let secret: [u8; 32] = secret.try_into().map_err(|_| KeyError::Damaged {
                    what: "the key".into(),
                    reason: "sealed secret has the wrong length".into(),
                })?;
                ArchiveKey::from_secret(secret)
            }
        };
        if key.archive_id() != archive {
            return Err(KeyError::Damaged {
                what: "the key".into(),
                reason: "the secret does not match the archive it names".into(),
            });
        }
        Ok(key)
    }

    /// The printable line (file content and export format), without a newline.
    pub fn to_line(&self) -> String {
        // Encoding a plain struct into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&self.body).unwrap_or_default();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        format!("{LINE_PREFIX}.{b64}.{}", checksum(&b64))
    }

    /// Parses a key line; `what` names its origin in errors.
    pub fn from_line(line: &str, what: &str) -> Result<Self, KeyError> {
        let damaged = |reason: &str| KeyError::Damaged {
            what: what.to_owned(),
            reason: reason.to_owned(),
        };
        let line = line.trim();
        let mut parts = line.split('.');
        let (Some(prefix), Some(b64), Some(sum), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(damaged("not of the form walrusfs-key-v1.<key>.<checksum>"));
        };
        if prefix != LINE_PREFIX {
            return Err(damaged(&format!(
                "unknown key format {prefix:?} (this build reads {LINE_PREFIX})"
            )));
        }
        if checksum(b64) != sum {
            return Err(damaged("checksum mismatch"));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| damaged("not base64"))?;
        let body: KeyFileBody =
            postcard::from_bytes(&bytes).map_err(|_| damaged("undecodable key record"))?;
        if body.format != KEY_FILE_FORMAT {
            return Err(damaged(&format!("unknown key file format {}", body.format)));
        }
        Ok(KeyFile { body })
    }

    /// Reads a key file, refusing one that other users can read (unless it is a testnet key,
    /// which protects nothing anyway).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        let file = Self::from_line(&text, &format!("key file {}", path.display()))?;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && !file.is_testnet() {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(file)
    }

    /// Writes the key file (mode 0600, durably); refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists(path.to_owned())
                } else {
                    io(e)
                }
            })?;
        let mut write = || -> std::io::Result<()> {
            f.write_all(self.to_line().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            std::fs::File::open(dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(path);
            return Err(io(e));
        }
        Ok(())
    }
}

fn seal_ad(archive: &PublicKey) -> Vec<u8> {
    let mut ad = SEAL_AD.to_vec();
    ad.extend_from_slice(&archive.0);
    ad
}

/// Highest Argon2id cost a key file may ask for: far above any sane setting, low enough that a
/// damaged or hostile key file cannot make an unlock allocate tens of GiB or run for hours.
const MAX_KDF: KdfParams = KdfParams {
    m_kib: 4 << 20,
    t: 64,
    p: 64,
};

fn kdf_key(passphrase: &str, salt: &[u8; 16], kdf: KdfParams) -> Result<[u8; 32], KeyError> {
    if kdf.m_kib > MAX_KDF.m_kib || kdf.t > MAX_KDF.t || kdf.p > MAX_KDF.p {
        return Err(KeyError::Kdf(format!(
            "implausible Argon2id cost (memory {} KiB, {} passes, {} lanes; at most {} KiB, {}, {}): is the key file damaged?",
            kdf.m_kib, kdf.t, kdf.p, MAX_KDF.m_kib, MAX_KDF.t, MAX_KDF.p
        )));
    }
    let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    Ok(out)
}

fn checksum(text: &str) -> String {
    hex::encode(&blake3::hash(text.as_bytes()).as_bytes()[..4])
}

fn now_secs() -> i64 {
    crate::index::Timestamp::now().secs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Cheap parameters so tests stay fast; the format is the same.
    const FAST: KdfParams = KdfParams {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn protected_key_round_trips_and_rejects_wrong_passphrase() {
        let key = ArchiveKey::generate();
        let file = KeyFile::protect(&key, "correct horse", FAST).unwrap();
        assert!(file.needs_passphrase());
        assert_eq!(file.archive(), key.archive_id());
        let line = file.to_line();
        assert!(!line.contains('\n'));
        let back = KeyFile::from_line(&line, "test").unwrap();
        assert_eq!(back, file);
        let unlocked = back.unlock(Some("correct horse")).unwrap();
        assert_eq!(unlocked.secret(), key.secret());
        assert!(matches!(
            back.unlock(Some("wrong horse")),
            Err(KeyError::WrongPassphrase { .. })
        ));
        assert!(matches!(back.unlock(None), Err(KeyError::Passphrase(_))));
        assert!(matches!(
            KeyFile::protect(&key, "", FAST),
            Err(KeyError::Passphrase(_))
        ));
    }

    #[test]
    fn damaged_lines_are_refused_before_any_passphrase() {
        let key = ArchiveKey::generate();
        let line = KeyFile::protect(&key, "pw", FAST).unwrap().to_line();
        // Every single-character change is caught by the checksum or the parser.
        for i in [0, 10, line.len() / 2, line.len() - 1] {
            let mut bad = line.clone().into_bytes();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(
                matches!(KeyFile::from_line(&bad, "t"), Err(KeyError::Damaged { .. })),
                "change at {i} not caught"
            );
        }
        assert!(KeyFile::from_line("", "t").is_err());
        assert!(KeyFile::from_line("walrusfs-key-v1.x", "t").is_err());
    }

    #[test]
    fn secret_cannot_be_moved_into_another_key_file() {
        let a = KeyFile::protect(&ArchiveKey::generate(), "pw", FAST).unwrap();
        let mut b = KeyFile::protect(&ArchiveKey::generate(), "pw", FAST).unwrap();
        b.body.protection = a.body.protection.clone();
        assert!(matches!(
            b.unlock(Some("pw")),
            Err(KeyError::WrongPassphrase { .. })
        ));
    }

    #[test]
    fn derived_keys_are_distinct_and_stable() {
        let key = ArchiveKey::from_secret([7; 32]);
        let d = key.derive(DATA_KEY_CONTEXT);
        let i = key.derive(INDEX_KEY_CONTEXT);
        let s = key.derive(SIGNING_SEED_CONTEXT);
        assert_ne!(d, i);
        assert_ne!(i, s);
        assert_ne!(d, s);
        // Pinned: a change here makes every existing archive unreadable.
        assert_eq!(
            hex::encode(key.archive_id().0),
            hex::encode(ArchiveKey::from_secret([7; 32]).archive_id().0)
        );
        assert_eq!(
            hex::encode(&i[..8]),
            hex::encode(&blake3::derive_key(INDEX_KEY_CONTEXT, &[7; 32])[..8])
        );
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.key");
        let file = KeyFile::protect(&ArchiveKey::generate(), "pw", FAST).unwrap();
        file.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(KeyFile::load(&path).unwrap(), file);
        assert!(matches!(file.save(&path), Err(KeyError::Exists(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyFile::load(&path),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn index_key_seals_with_bound_associated_data() {
        let k = IndexKey::from_bytes([1; 32]);
        let sealed = k.seal(b"ad", b"hello");
        assert_eq!(k.open(b"ad", &sealed).unwrap(), b"hello");
        assert_eq!(k.open(b"other", &sealed), Err(OpenError));
        assert_eq!(
            IndexKey::from_bytes([2; 32]).open(b"ad", &sealed),
            Err(OpenError)
        );
        assert_ne!(k.seal(b"ad", b"hello"), sealed, "random nonce");
        assert_eq!(k.open(b"ad", &sealed[..10]), Err(OpenError));
    }

    /// The key file body is a contract: a fixed body encodes to fixed bytes.
    #[test]
    fn key_file_format_is_pinned() {
        let body = KeyFileBody {
            format: 1,
            archive: PublicKey([2; 32]),
            created_secs: 1,
            label: "t".into(),
            protection: Protection::Testnet { secret: [3; 32] },
        };
        let bytes = postcard::to_stdvec(&body).unwrap();
        let mut expected = vec![1u8];
        expected.extend_from_slice(&[2; 32]);
        expected.extend_from_slice(&[2, 1, b't', 1]); // created 1 (zigzag), label, Testnet
        expected.extend_from_slice(&[3; 32]);
        assert_eq!(bytes, expected);
    }

    /// Fuzz target (see `netcore::fuzzing`): a key line whose record is damaged but whose
    /// checksum was made to match, parsed and unlocked.
    #[cfg(feature = "faults")]
    mod fuzz {
        use super::*;
        use netcore::fuzzing::{cases, mutate, Mutation};
        use proptest::prelude::*;

        fn relabel(body: &[u8]) -> String {
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body);
            format!("{LINE_PREFIX}.{b64}.{}", checksum(&b64))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases() / 5))]

            #[test]
            fn fuzz_key_lines(testnet in any::<bool>(), ops in proptest::collection::vec(any::<Mutation>(), 1..6)) {
                let key = ArchiveKey::generate();
                let file = if testnet {
                    KeyFile::testnet(&key)
                } else {
                    KeyFile::protect(&key, "pw", FAST).unwrap()
                };
                let body = postcard::to_stdvec(&file.body).unwrap();
                let line = relabel(&mutate(&body, &ops));
                if let Ok(parsed) = KeyFile::from_line(&line, "fuzz") {
                    let cheap = match &parsed.body.protection {
                        Protection::Passphrase { kdf, .. } => kdf.m_kib <= 1024 && kdf.t <= 2 && kdf.p <= 2,
                        Protection::Testnet { .. } => true,
                    };
                    if cheap {
                        if let Ok(k) = parsed.unlock(Some("pw")) {
                            // Whatever opens is the archive the file names.
                            prop_assert_eq!(k.archive_id(), parsed.archive());
                        }
                    }
                }
            }
        }

        #[test]
        fn an_absurd_kdf_cost_is_refused_before_any_work() {
            let key = ArchiveKey::generate();
            let mut file = KeyFile::protect(&key, "pw", FAST).unwrap();
            if let Protection::Passphrase { kdf, .. } = &mut file.body.protection {
                kdf.m_kib = 8 << 20; // 8 GiB: without the cap, an unlock would try it
            }
            let line = relabel(&postcard::to_stdvec(&file.body).unwrap());
            let parsed = KeyFile::from_line(&line, "t").unwrap();
            assert!(matches!(parsed.unlock(Some("pw")), Err(KeyError::Kdf(_))));
        }
    }
}
