//! Identities: ed25519 keys, self-signed TLS certificates and pinned-key verification.
//!
//! A node's identity *is* its ed25519 public key: the committee file pins it, the node's TLS
//! certificate carries it, and the node signs storage confirmations with it. Clients hold a key
//! too and present it as a TLS client certificate (mutual TLS); nodes decide per key whether to
//! accept writes. Certificates are self-signed and never chain to a CA: the only thing checked is
//! that the certificate's key is the pinned one and that the peer proved possession of it in the
//! TLS handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};

/// Name every certificate is issued for; peers are identified by key, never by name.
pub const CERT_SUBJECT: &str = "walrusfs";

/// Errors loading or creating identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold a PKCS#8 ed25519 key.
    #[error("key file {path} is not a PKCS#8 ed25519 key: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// A TLS configuration could not be built from the identity.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// An ed25519 public key: a node's or a client's identity. Printed and parsed as 64 hex digits;
/// stored that way in TOML files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &hex::encode(&self.0[..6]))
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid public key {0:?}: expected 64 hex digits")]
pub struct ParseKeyError(String);

impl FromStr for PublicKey {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| ParseKeyError(s.to_owned()))?;
        Ok(PublicKey(out))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(PublicKey(<[u8; 32]>::deserialize(d)?))
        }
    }
}

impl PublicKey {
    /// Checks an ed25519 `signature` by this key over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }

    /// Extracts the ed25519 key a certificate carries; `None` for any other kind of certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let spki = parsed.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
            return None;
        }
        let raw: [u8; 32] = spki.subject_public_key.data.as_ref().try_into().ok()?;
        Some(PublicKey(raw))
    }
}

/// A private ed25519 key with its self-signed certificate: what a node or client presents.
pub struct Identity {
    pkcs8: Vec<u8>,
    pem: String,
    signer: ring::signature::Ed25519KeyPair,
    public: PublicKey,
    cert: CertificateDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Creates a fresh random identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_rcgen(key, Path::new("<generated>"))
    }

    /// Loads a PEM PKCS#8 ed25519 key from `path`.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let pem = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.to_owned(),
            source,
        })?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_rcgen(key, path)
    }

    /// Loads the key at `path`, or creates one there (mode 0600) if the file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, IdentityError> {
        if path.exists() {
            return Self::load(path);
        }
        let id = Self::generate()?;
        id.save(path)?;
        Ok(id)
    }

    /// Writes the private key as PEM to `path`, readable only by its owner, durably.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(self.pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    fn from_rcgen(key: rcgen::KeyPair, path: &Path) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::BadKey {
            path: path.to_owned(),
            reason,
        };
        if key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(bad("not an ed25519 key".into()));
        }
        let pkcs8 = key.serialize_der();
        let signer = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|e| bad(e.to_string()))?;
        let public = PublicKey(
            key.public_key_raw()
                .try_into()
                .map_err(|_| bad("public key is not 32 bytes".into()))?,
        );
        let params = rcgen::CertificateParams::new(vec![CERT_SUBJECT.to_owned()])?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Identity {
            pem: key.serialize_pem(),
            pkcs8,
            signer,
            public,
            cert,
        })
    }

    /// The keys a node's QUIC endpoint derives its stateless resets and its connection ids
    /// from: secret (derived from the private key) and the same across restarts. A node that
    /// restarts then recognizes the connection ids of its former process as its own and
    /// answers a packet on one with a reset the client can verify (the token it was given at
    /// the handshake), so the client connects again at once instead of waiting for requests
    /// on the dead connection to time out. Returns (reset key, connection id key).
    pub fn endpoint_keys(&self) -> ([u8; 32], u64) {
        let reset = blake3::derive_key(
            "walrusfs 2026-11 node QUIC stateless reset key",
            &self.pkcs8,
        );
        let cid = blake3::derive_key("walrusfs 2026-11 node QUIC connection id key", &self.pkcs8);
        let mut first = [0u8; 8];
        first.copy_from_slice(&cid[..8]);
        (reset, u64::from_le_bytes(first))
    }

    /// This identity's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs `message` with this identity's key (64-byte ed25519 signature).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer.sign(message).as_ref().to_vec()
    }

    fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }

    /// A rustls client configuration presenting this identity and accepting only a server
    /// whose certificate carries `server_key`. ALPN is the walrusfs protocol.
    pub fn client_tls(&self, server_key: PublicKey) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedKeyVerifier {
                pinned: Some(server_key),
                provider,
            }))
            .with_client_auth_cert(self.cert_chain(), self.private_key())?;
        cfg.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
        Ok(cfg)
    }

    /// A rustls server configuration presenting this identity and requiring every client to
    /// present an ed25519 certificate (whose key the node then authorizes per request).
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PinnedKeyVerifier {
                pinned: None,
                provider,
            }))
            .with_single_cert(self.cert_chain(), self.private_key())?;
        cfg.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
        Ok(cfg)
    }
}

/// Certificate verifier for both directions. With `pinned = Some(key)` (client side) only that
/// key is accepted; with `None` (node side) any ed25519 certificate is accepted and the key is
/// authorized later, per request. Either way the handshake signature is checked, which proves
/// the peer holds the private key.
#[derive(Debug)]
struct PinnedKeyVerifier {
    pinned: Option<PublicKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedKeyVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = PublicKey::from_certificate(cert).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        match self.pinned {
            Some(pinned) if pinned != key => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(()),
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl rustls::server::danger::ClientCertVerifier for PinnedKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The key a connected QUIC peer proved it holds, from its TLS certificate.
pub fn peer_key(conn: &quinn::Connection) -> Option<PublicKey> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(PublicKey::from_certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_through_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let a = Identity::load_or_generate(&path).unwrap();
        let b = Identity::load_or_generate(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn certificate_carries_the_key_and_signatures_verify() {
        let id = Identity::generate().unwrap();
        assert_eq!(PublicKey::from_certificate(&id.cert), Some(id.public_key()));
        let sig = id.sign(b"hello");
        assert!(id.public_key().verify(b"hello", &sig));
        assert!(!id.public_key().verify(b"hellp", &sig));
        let other = Identity::generate().unwrap();
        assert!(!other.public_key().verify(b"hello", &sig));
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "not a key").unwrap();
        let err = Identity::load(&path).unwrap_err();
        assert!(matches!(err, IdentityError::BadKey { .. }), "{err}");
    }

    #[test]
    fn public_key_parses_its_display() {
        let k = Identity::generate().unwrap().public_key();
        assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
        assert!("zz".parse::<PublicKey>().is_err());
    }
}
