//! Chunk encryption: ChaCha20-Poly1305 under keys derived from the mount's master key.
//!
//! Every seal derives a fresh key from the master key, the file's inode number, the chunk
//! index, the chunk version and a random 128-bit salt, so no key ever encrypts two messages
//! and the (fixed) nonce can never repeat under a key — even if a crash makes a version number
//! be handed out twice. The associated data binds inode, chunk index and version: a chunk
//! cannot be moved to another file or position, nor an old version replayed in place of a new
//! one, without failing authentication.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// Bytes of authentication tag appended to each sealed chunk.
pub const TAG_LEN: usize = 16;

const KEY_CONTEXT: &str = "walrusfs 2026-11 chunk key v1";
const AAD_DOMAIN: &[u8] = b"walrusfs chunk v1\0";

/// Errors of key handling and sealing.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file could not be read or created.
    #[error("master key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file has the wrong size or is readable by others.
    #[error("master key {path}: {reason}")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A sealed chunk failed authentication: it was altered, or belongs elsewhere.
    #[error("chunk failed authentication (altered, misplaced or replayed)")]
    Authentication,
}

/// Where a chunk belongs; bound into its key and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    /// File inode number.
    pub ino: u64,
    /// Chunk index within the file.
    pub index: u64,
    /// Version of this chunk's content.
    pub version: u64,
    /// Random salt chosen at sealing.
    pub salt: [u8; 16],
}

/// The mount's 256-bit master key.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Loads the key at `path`, creating a random one (mode 0600, fsynced) if absent. Refuses
    /// a key file that other users can read.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(CryptoError::BadKeyFile {
                        path: path.to_owned(),
                        reason: format!(
                            "mode {:o} lets other users read it; chmod 600",
                            mode & 0o777
                        ),
                    });
                }
                let key: [u8; 32] =
                    bytes
                        .try_into()
                        .map_err(|b: Vec<u8>| CryptoError::BadKeyFile {
                            path: path.to_owned(),
                            reason: format!("{} bytes, expected 32", b.len()),
                        })?;
                Ok(MasterKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io)?;
                }
                Ok(MasterKey(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    fn cipher(&self, place: &ChunkPlace) -> ChaCha20Poly1305 {
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        h.update(&self.0);
        h.update(&place.ino.to_le_bytes());
        h.update(&place.index.to_le_bytes());
        h.update(&place.version.to_le_bytes());
        h.update(&place.salt);
        ChaCha20Poly1305::new(Key::from_slice(h.finalize().as_bytes()))
    }

    /// Encrypts `plaintext` for `place`; returns ciphertext followed by the tag.
    pub fn seal(&self, place: &ChunkPlace, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        // INV: the key is unique to this seal (random salt), so the zero nonce never repeats
        // under a key.
        let tag = self
            .cipher(place)
            .encrypt_in_place_detached(&Nonce::default(), &aad(place), &mut buf)
            .unwrap_or_default();
        buf.extend_from_slice(&tag);
        buf
    }

    /// Decrypts a sealed chunk for `place`, failing if it was altered or belongs elsewhere.
    pub fn open(&self, place: &ChunkPlace, mut sealed: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        let tag_at = sealed.len() - TAG_LEN;
        let tag = Tag::clone_from_slice(&sealed[tag_at..]);
        sealed.truncate(tag_at);
        self.cipher(place)
            .decrypt_in_place_detached(&Nonce::default(), &aad(place), &mut sealed, &tag)
            .map_err(|_| CryptoError::Authentication)?;
        Ok(sealed)
    }
}

fn aad(place: &ChunkPlace) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_DOMAIN.len() + 24);
    a.extend_from_slice(AAD_DOMAIN);
    a.extend_from_slice(&place.ino.to_le_bytes());
    a.extend_from_slice(&place.index.to_le_bytes());
    a.extend_from_slice(&place.version.to_le_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn place(ino: u64, index: u64, version: u64) -> ChunkPlace {
        ChunkPlace {
            ino,
            index,
            version,
            salt: [9; 16],
        }
    }

    #[test]
    fn tampering_moving_or_replaying_fails() {
        let key = MasterKey::from_bytes([1; 32]);
        let p = place(5, 2, 7);
        let sealed = key.seal(&p, b"secret data");
        assert_ne!(
            &sealed[..11],
            b"secret data",
            "ciphertext must not be plaintext"
        );
        assert_eq!(key.open(&p, sealed.clone()).unwrap(), b"secret data");
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert!(key.open(&p, flipped).is_err());
        assert!(
            key.open(&place(6, 2, 7), sealed.clone()).is_err(),
            "other file"
        );
        assert!(
            key.open(&place(5, 3, 7), sealed.clone()).is_err(),
            "other position"
        );
        assert!(
            key.open(&place(5, 2, 8), sealed.clone()).is_err(),
            "other version"
        );
        assert!(key
            .open(&ChunkPlace { salt: [8; 16], ..p }, sealed.clone())
            .is_err());
        assert!(
            MasterKey::from_bytes([2; 32]).open(&p, sealed).is_err(),
            "other key"
        );
        assert!(key.open(&p, vec![0; 5]).is_err(), "shorter than a tag");
    }

    #[test]
    fn same_place_different_salt_gives_different_ciphertext() {
        let key = MasterKey::from_bytes([1; 32]);
        let a = key.seal(
            &ChunkPlace {
                salt: [1; 16],
                ..place(1, 0, 0)
            },
            b"same",
        );
        let b = key.seal(
            &ChunkPlace {
                salt: [2; 16],
                ..place(1, 0, 0)
            },
            b"same",
        );
        assert_ne!(a, b);
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let p = place(1, 1, 1);
        let sealed = MasterKey::load_or_create(&path).unwrap().seal(&p, b"x");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            MasterKey::load_or_create(&path)
                .unwrap()
                .open(&p, sealed)
                .unwrap(),
            b"x"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load_or_create(&path),
            Err(CryptoError::BadKeyFile { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            MasterKey::load_or_create(&path),
            Err(CryptoError::BadKeyFile { .. })
        ));
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000),
                                ino in any::<u64>(), index in any::<u64>(), version in any::<u64>(),
                                salt in any::<[u8; 16]>()) {
            let key = MasterKey::from_bytes([3; 32]);
            let p = ChunkPlace { ino, index, version, salt };
            let sealed = key.seal(&p, &data);
            prop_assert_eq!(sealed.len(), data.len() + TAG_LEN);
            prop_assert_eq!(key.open(&p, sealed).unwrap(), data);
        }
    }
}
