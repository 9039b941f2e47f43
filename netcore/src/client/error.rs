//! Client errors: what went wrong with one node, and what went wrong with a whole operation.

use std::fmt;

use crate::codec::{BlobId, CodecError, SliverIndex};
use crate::wire::{FrameError, WireError};

/// Why one node could not serve one request. Collected per node so an operation that fails
/// can say exactly which nodes failed and how.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No connection could be made (node down, wrong address, handshake refused — e.g. the
    /// node's key is not the one the committee pins).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The node was recently unreachable and is being skipped until its back-off expires.
    #[error("skipped: unreachable recently")]
    BackingOff,
    /// The node did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The connection or stream failed mid-request.
    #[error("transport: {0}")]
    Transport(String),
    /// The node's answer was not a valid frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The node answered with an error.
    #[error("node refused: {0}")]
    Remote(#[from] WireError),
    /// The node sent data that failed verification: corrupt or lying.
    #[error("verification failed: {0}")]
    Verification(#[from] CodecError),
    /// The node's storage confirmation is not its valid signature for this sliver.
    #[error("invalid storage confirmation")]
    BadConfirmation,
    /// The node answered with a message that does not fit the request.
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// One node's failure within an operation.
#[derive(Debug)]
pub struct NodeFailure {
    /// The node (= sliver index).
    pub node: SliverIndex,
    /// What went wrong.
    pub error: NodeError,
}

/// A list of node failures, displayed as `node 3: timed out; node 5: ...`.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<NodeFailure>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no node failed");
        }
        for (i, nf) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "node {}: {}", nf.node, nf.error)?;
        }
        Ok(())
    }
}

/// Errors of client operations.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Encoding or decoding failed locally.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The caller's announcement of a put failed (see `Client::put_announced`); nothing was
    /// sent.
    #[error("put not started: {0}")]
    Announce(String),
    /// Fewer than `n - f` nodes confirmed a write: the blob is not durably stored.
    #[error(
        "blob {blob_id} not stored: {confirmed} of {needed} required confirmations ({failures})"
    )]
    NotEnoughConfirmations {
        /// The blob.
        blob_id: BlobId,
        /// Required confirmations (`n - f`).
        needed: u16,
        /// Valid confirmations received.
        confirmed: u16,
        /// Why the other nodes failed.
        failures: Failures,
    },
    /// No node returned metadata matching the blob id.
    #[error("blob {blob_id}: no node returned valid metadata ({failures})")]
    MetadataUnavailable {
        /// The blob.
        blob_id: BlobId,
        /// Why each node failed.
        failures: Failures,
    },
    /// Fewer than `k` slivers that verify could be gathered; nothing is returned.
    #[error("blob {blob_id}: only {verified} of {needed} needed slivers verified ({failures})")]
    NotEnoughSlivers {
        /// The blob.
        blob_id: BlobId,
        /// `k`.
        needed: u16,
        /// Verified slivers gathered.
        verified: u16,
        /// Why each other node failed.
        failures: Failures,
    },
    /// Fewer nodes than needed (`n - f`, or what [`Client::get_root_from`] was given) answered
    /// a root read: the latest version cannot be known.
    ///
    /// [`Client::get_root_from`]: super::Client::get_root_from
    #[error("archive root: only {answered} nodes answered, {needed} needed ({failures})")]
    RootUnavailable {
        /// Nodes that answered.
        answered: u16,
        /// Answers needed.
        needed: u16,
        /// Why the other nodes failed.
        failures: Failures,
    },
    /// Fewer than `n - f` nodes stored a root record.
    #[error(
        "archive root version {version} stored on {stored} nodes, {needed} needed ({failures})"
    )]
    RootNotStored {
        /// The version offered.
        version: u64,
        /// Nodes that stored it.
        stored: u16,
        /// Acceptances needed (`n - f`).
        needed: u16,
        /// Nodes that hold this version or a newer one (another writer got there first), and
        /// the version each holds.
        stale: Vec<(SliverIndex, u64)>,
        /// Why each other node failed.
        failures: Failures,
    },
    /// The local QUIC endpoint could not be created.
    #[error("cannot create QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
}
