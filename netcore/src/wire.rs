//! The wire protocol spoken over QUIC: one request per bidirectional stream.
//!
//! A stream carries, in each direction, one length-prefixed frame (`u32` big-endian length, then
//! a postcard-encoded message) optionally followed by a raw body whose length the frame
//! declares: a sliver being stored, or a sliver being served. Frames are small control messages
//! and capped at [`MAX_FRAME_LEN`]; sliver bodies are bounded separately by the node's
//! configured maximum sliver size, so no peer can make the other allocate more than it agreed
//! to. Every request carries [`PROTOCOL_VERSION`]; the TLS ALPN is [`ALPN`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{BlobId, BlobMetadata, SliverIndex};
use crate::identity::PublicKey;
use crate::root::RootRecord;

/// TLS application protocol name; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"walrusfs/1";

/// Version carried in every request; bumped on any incompatible message change.
///
/// History: 1, the first network; 2 added the root record requests ([`Request::PutRoot`],
/// [`Request::GetRoot`]); 3 added free space and the client's quota to [`HealthInfo`], and
/// the [`WireError::NoSpace`] and [`WireError::QuotaExceeded`] refusals; 4 added ranged reads
/// ([`Request::GetRange`], [`Response::Range`]).
pub const PROTOCOL_VERSION: u16 = 4;

/// Largest control frame either side accepts. Metadata of a 1024-node blob is ~33 KiB, the
/// largest legitimate frame; anything beyond 64 KiB is an attack or a bug.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Domain separator for storage confirmation signatures.
const CONFIRMATION_DOMAIN: &[u8] = b"walrusfs 2026-11 storage confirmation v1\0";

/// What a client sends at the start of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// The client's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The request itself.
    pub request: Request,
}

/// Requests a node serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness, identity and storage totals.
    Health,
    /// Store sliver `index` of a blob; followed by a raw body of `len` bytes. Trusted clients only.
    StoreSliver {
        /// The blob.
        blob_id: BlobId,
        /// The blob's metadata; the node checks it against `blob_id` and the sliver against it.
        metadata: BlobMetadata,
        /// Which sliver.
        index: SliverIndex,
        /// Length of the raw body that follows.
        len: u64,
    },
    /// Fetch sliver `index` of a blob.
    GetSliver {
        /// The blob.
        blob_id: BlobId,
        /// Which sliver.
        index: SliverIndex,
    },
    /// Fetch bytes `start..end` of sliver `index` of a blob, with the proof that ties them to
    /// the sliver's commitment. The range must be granule-aligned (see
    /// [`crate::codec::check_range`]).
    GetRange {
        /// The blob.
        blob_id: BlobId,
        /// Which sliver.
        index: SliverIndex,
        /// First byte.
        start: u64,
        /// End of the range (exclusive).
        end: u64,
    },
    /// Fetch a blob's metadata.
    GetMetadata {
        /// The blob.
        blob_id: BlobId,
    },
    /// What the node holds of a blob.
    Status {
        /// The blob.
        blob_id: BlobId,
    },
    /// Delete a blob's metadata and slivers. Trusted clients only.
    Delete {
        /// The blob.
        blob_id: BlobId,
    },
    /// Store an archive's root record if it verifies and is newer than the one held. Trusted
    /// clients only.
    PutRoot {
        /// The signed record.
        record: RootRecord,
    },
    /// Fetch the root record the node holds for an archive.
    GetRoot {
        /// The archive's public key.
        archive: PublicKey,
    },
}

/// A node's answer; `Sliver` is followed by a raw body of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Health`].
    Health(HealthInfo),
    /// The sliver is durably stored.
    Stored(StorageConfirmation),
    /// A sliver follows as a raw body.
    Sliver {
        /// Body length.
        len: u64,
    },
    /// A sliver range follows as a raw body of `len` bytes, with the chaining values that
    /// prove it (unverified: check both with [`BlobMetadata::verify_range`]).
    Range {
        /// Body length.
        len: u64,
        /// The proof (see [`crate::codec::prove_range`]).
        proof: Vec<[u8; 32]>,
    },
    /// A blob's metadata (unverified: check it against the blob id).
    Metadata(BlobMetadata),
    /// What the node holds of a blob.
    Status(BlobStatus),
    /// Answer to [`Request::Delete`].
    Deleted {
        /// Whether the node held anything of the blob.
        existed: bool,
    },
    /// The root record is durably stored; `version` is now the node's.
    RootStored {
        /// The stored version.
        version: u64,
    },
    /// The root record the node holds for the archive asked for, if any (unverified: check
    /// its signature and archive before trusting it).
    Root(Option<RootRecord>),
    /// The request failed.
    Error(WireError),
}

/// Node health and totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// The node's protocol version.
    pub version: u16,
    /// The node's key.
    pub public_key: PublicKey,
    /// Blobs of which the node holds anything.
    pub blobs: u64,
    /// Sliver bytes stored.
    pub sliver_bytes: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Whether the asking client may store and delete.
    pub client_trusted: bool,
    /// Sliver bytes the node still accepts: free disk beyond its reserve.
    pub free_bytes: u64,
    /// Sliver bytes the asking client may still store under its quota (`None`: no quota).
    pub quota_left_bytes: Option<u64>,
}

/// What a node holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStatus {
    /// Whether the node holds the blob's metadata.
    pub has_metadata: bool,
    /// Sliver indexes the node holds.
    pub slivers: Vec<SliverIndex>,
}

/// Errors a node reports to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The request's protocol version is not one the node speaks.
    #[error("protocol version mismatch: node speaks {supported}")]
    VersionMismatch {
        /// The version the node speaks.
        supported: u16,
    },
    /// The client's key is not trusted for this request.
    #[error("client not authorized for this request")]
    Unauthorized,
    /// The node holds no such blob or sliver.
    #[error("not found")]
    NotFound,
    /// The request is malformed or its data fails verification; nothing was stored.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A frame or body exceeds the node's limit.
    #[error("too large: limit is {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The node is at its concurrency or memory limit; retry later.
    #[error("node busy")]
    Busy,
    /// The node's stored copy is damaged; it will not serve it.
    #[error("stored data damaged on node: {0}")]
    Corrupt(String),
    /// The node failed internally (e.g. disk error).
    #[error("node internal error: {0}")]
    Internal(String),
    /// The node holds a root record at `held`, at least as new as the one offered; nothing was
    /// stored.
    #[error("node holds root version {held}, not older than the one offered")]
    StaleRoot {
        /// The version the node holds.
        held: u64,
    },
    /// Storing this would eat into the free space the node keeps in reserve.
    #[error("node disk nearly full: {free} bytes free, {reserve} kept in reserve")]
    NoSpace {
        /// Free bytes on the node's disk.
        free: u64,
        /// Bytes the node keeps free.
        reserve: u64,
    },
    /// Storing this would take the client past its quota on this node.
    #[error("storage quota exceeded on node: {used} of {quota} bytes used")]
    QuotaExceeded {
        /// The client's quota in sliver bytes.
        quota: u64,
        /// What the client stores on the node now.
        used: u64,
    },
}

impl WireError {
    /// A short, fixed name for the kind of error (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::VersionMismatch { .. } => "version_mismatch",
            WireError::Unauthorized => "unauthorized",
            WireError::NotFound => "not_found",
            WireError::InvalidRequest(_) => "invalid",
            WireError::TooLarge { .. } => "too_large",
            WireError::Busy => "busy",
            WireError::Corrupt(_) => "corrupt",
            WireError::Internal(_) => "internal",
            WireError::StaleRoot { .. } => "stale_root",
            WireError::NoSpace { .. } => "no_space",
            WireError::QuotaExceeded { .. } => "quota_exceeded",
        }
    }
}

impl Request {
    /// A short, fixed name for the request (a metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Health => "health",
            Request::StoreSliver { .. } => "store_sliver",
            Request::GetSliver { .. } => "get_sliver",
            Request::GetRange { .. } => "get_range",
            Request::GetMetadata { .. } => "get_metadata",
            Request::Status { .. } => "status",
            Request::Delete { .. } => "delete",
            Request::PutRoot { .. } => "put_root",
            Request::GetRoot { .. } => "get_root",
        }
    }
}

/// A node's signed statement that it durably stores sliver `index` of `blob_id`. `n - f` of
/// them from distinct committee members form a blob's storage certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfirmation {
    /// The blob.
    pub blob_id: BlobId,
    /// The sliver stored.
    pub index: SliverIndex,
    /// The signing node's key.
    pub node_key: PublicKey,
    /// ed25519 signature over [`StorageConfirmation::message`].
    pub signature: Vec<u8>,
}

impl StorageConfirmation {
    /// The exact bytes a node signs: domain, blob id, sliver index (u16 LE).
    pub fn message(blob_id: &BlobId, index: SliverIndex) -> Vec<u8> {
        let mut m = Vec::with_capacity(CONFIRMATION_DOMAIN.len() + 34);
        m.extend_from_slice(CONFIRMATION_DOMAIN);
        m.extend_from_slice(&blob_id.0);
        m.extend_from_slice(&index.to_le_bytes());
        m
    }

    /// Signs a confirmation with a node identity.
    pub fn sign(identity: &crate::identity::Identity, blob_id: BlobId, index: SliverIndex) -> Self {
        StorageConfirmation {
            blob_id,
            index,
            node_key: identity.public_key(),
            signature: identity.sign(&Self::message(&blob_id, index)),
        }
    }

    /// True if this is `expected_key`'s valid signature for exactly this blob and sliver.
    pub fn verify(&self, blob_id: &BlobId, index: SliverIndex, expected_key: &PublicKey) -> bool {
        self.blob_id == *blob_id
            && self.index == index
            && self.node_key == *expected_key
            && expected_key.verify(&Self::message(blob_id, index), &self.signature)
    }
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's declared length exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The frame's bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
            max: MAX_FRAME_LEN as u64,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    Ok(())
}

/// Reads one frame; the length is checked before anything is allocated.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN as u64,
        });
    }
    // The buffer grows as bytes arrive: a peer that announces a frame and sends nothing
    // costs a few bytes, not the frame limit.
    let mut body = Vec::with_capacity(len.min(FRAME_PREALLOC));
    let got = r.take(len as u64).read_to_end(&mut body).await?;
    if got < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(postcard::from_bytes(&body)?)
}

/// Bytes of a request frame allocated before they arrive.
const FRAME_PREALLOC: usize = 1024;

/// Reads a raw body of exactly `len` bytes; the caller has already checked `len` against its
/// limit.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::new();
    read_body_into(r, &mut body, len).await?;
    Ok(body)
}

/// Reads a raw body of exactly `len` bytes, appended to `buf`. The bytes are copied into
/// `buf`'s spare capacity as they arrive, without zeroing it first (a reused buffer is then
/// neither zeroed nor faulted in again).
pub async fn read_body_into<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<(), FrameError> {
    buf.reserve_exact(len);
    let end = buf.len() + len;
    let mut rest = AsyncReadExt::take(&mut *r, len as u64);
    while buf.len() < end {
        if rest.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn oversize_frame_is_rejected_before_allocation() {
        rt().block_on(async {
            let mut bytes: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
            let err = read_frame::<_, RequestFrame>(&mut bytes).await.unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        });
    }

    #[test]
    fn garbage_frame_is_malformed() {
        rt().block_on(async {
            let mut bytes: &[u8] = &[0, 0, 0, 3, 0xee, 0xee, 0xee];
            let err = read_frame::<_, RequestFrame>(&mut bytes).await.unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        });
    }

    #[test]
    fn truncated_frame_is_io_error() {
        rt().block_on(async {
            let mut bytes: &[u8] = &[0, 0, 0, 9, 1];
            let err = read_frame::<_, RequestFrame>(&mut bytes).await.unwrap_err();
            assert!(matches!(err, FrameError::Io(_)), "{err}");
        });
    }

    #[test]
    fn a_body_is_appended_exactly_and_the_rest_left_unread() {
        rt().block_on(async {
            let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
            let mut r: &[u8] = &data;
            let mut buf = vec![1, 2, 3];
            read_body_into(&mut r, &mut buf, 9_000).await.unwrap();
            assert_eq!(&buf[..3], &[1, 2, 3]);
            assert_eq!(&buf[3..], &data[..9_000]);
            assert_eq!(
                r,
                &data[9_000..],
                "bytes beyond the body stay in the stream"
            );
        });
    }

    #[test]
    fn a_short_body_is_an_error() {
        rt().block_on(async {
            let mut r: &[u8] = &[5; 100];
            let err = read_body(&mut r, 101).await.unwrap_err();
            assert!(
                matches!(&err, FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{err}"
            );
        });
    }

    #[test]
    fn confirmation_binds_blob_index_and_key() {
        let id = crate::identity::Identity::generate().unwrap();
        let other = crate::identity::Identity::generate().unwrap();
        let blob = BlobId([7; 32]);
        let c = StorageConfirmation::sign(&id, blob, 3);
        assert!(c.verify(&blob, 3, &id.public_key()));
        assert!(!c.verify(&blob, 4, &id.public_key()));
        assert!(!c.verify(&BlobId([8; 32]), 3, &id.public_key()));
        assert!(!c.verify(&blob, 3, &other.public_key()));
    }

    proptest! {
        #[test]
        fn frames_round_trip(id in any::<[u8; 32]>(), index in any::<u16>(), len in any::<u64>(),
                             hashes in proptest::collection::vec(any::<[u8; 32]>(), 0..20)) {
            let req = RequestFrame {
                version: PROTOCOL_VERSION,
                request: Request::StoreSliver {
                    blob_id: BlobId(id),
                    metadata: BlobMetadata {
                        params: crate::codec::EncodingParams { n: 7, k: 3 },
                        blob_len: len,
                        sliver_hashes: hashes,
                    },
                    index,
                    len,
                },
            };
            let back: RequestFrame = rt().block_on(async {
                let mut buf = Vec::new();
                write_frame(&mut buf, &req).await.unwrap();
                read_frame(&mut buf.as_slice()).await.unwrap()
            });
            prop_assert_eq!(back, req);
        }
    }
}
