//! The mount's control socket: how `walrusfs sync`, `walrusfs snapshot` and `walrusfs status`
//! talk to a running mount.
//!
//! The socket is `STATE/control.sock`, mode 0600 (only the mount's owner, and root, may use
//! it). Each connection carries one request and one response, each one line of JSON
//! ([`Request`], [`Response`]); the format is versioned by [`CONTROL_VERSION`] in every request.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Name of the socket in the state directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Version of the control protocol, carried in every request.
pub const CONTROL_VERSION: u16 = 1;
/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// A request to the mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// [`CONTROL_VERSION`].
    pub version: u16,
    /// What to do.
    pub op: Op,
}

/// Operations a mount serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Store everything written so far on the network, commit it, and publish the index.
    Sync,
    /// What the mount is (archive, role, version).
    Status,
    /// Make a snapshot.
    SnapshotCreate {
        /// Its name.
        name: String,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// Its name.
        name: String,
    },
}

/// The mount's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done; `message` says what happened.
    Ok {
        /// Human-readable summary.
        message: String,
    },
    /// What the mount is.
    Status(Box<Status>),
    /// The operation failed.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

/// A mount's status (`walrusfs status`). Fields added after the first version default when
/// absent, so a newer `walrusfs status` still reads an older mount's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The archive (public key, hex).
    pub archive: String,
    /// `writer`, `replica` or `snapshot`.
    pub role: String,
    /// Root version published or applied.
    pub version: u64,
    /// Index changes not yet published.
    pub unpublished_changes: u64,
    /// Bytes written but not yet sealed into the journal (memory).
    pub dirty_bytes: u64,
    /// Blobs waiting to be deleted.
    pub gc_backlog: u64,
    /// Whether the mount refuses changes.
    pub read_only: bool,
    /// Milliseconds left of the writer lease (negative: expired; absent: no lease held).
    #[serde(default)]
    pub lease_left_ms: Option<i64>,
    /// What waits to be stored on the network.
    #[serde(default)]
    pub pending: Pending,
    /// Cache hit counts.
    #[serde(default)]
    pub caches: Vec<CacheStatus>,
    /// Each storage node as this mount sees it.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// What the network can still take, in file bytes (see `statfs`), if known.
    #[serde(default)]
    pub network_free_bytes: Option<u64>,
    /// The latest errors, oldest first.
    #[serde(default)]
    pub recent_errors: Vec<RecentError>,
}

/// What waits to be stored on the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Bytes waiting: sealed in the journal, or written and still in memory.
    pub journal_bytes: u64,
    /// Chunks waiting in the journal.
    pub chunks: u64,
    /// Files with chunks waiting.
    pub files: u64,
    /// Whether `files` is exact (else a lower bound: the queue was too long to walk).
    pub files_exact: bool,
    /// Seconds the oldest waiting chunk has waited, at least (counted from when this mount
    /// saw it appended, or from the mount's start for chunks replayed from an earlier run).
    pub oldest_secs: Option<u64>,
    /// Blob uploads running now.
    pub uploads_in_flight: u64,
}

/// One cache's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// `memory` (plaintext chunks) or `disk` (sealed chunks).
    pub name: String,
    /// Lookups served.
    pub hits: u64,
    /// Lookups not served.
    pub misses: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// A storage node as the mount sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Index in the committee.
    pub index: u16,
    /// Its address.
    pub address: String,
    /// `ok`, `failing` (its last request failed), `backing off` (skipped after a failed
    /// connect) or `unknown` (not asked yet).
    pub state: String,
    /// Moving average of its answer time, milliseconds.
    pub latency_ms: Option<f64>,
    /// Requests answered.
    pub answered: u64,
    /// Requests that got no answer.
    pub failed: u64,
    /// Sliver bytes it still accepts (free disk beyond its reserve, within this client's
    /// quota), as of the last health check.
    pub free_bytes: Option<u64>,
    /// Its last failure and how many seconds ago.
    pub last_error: Option<(String, u64)>,
}

/// An error the mount met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentError {
    /// When, seconds since the epoch.
    pub at: u64,
    /// What happened.
    pub message: String,
}

/// Serves one request per connection on `listener` with `handle` until the listener fails.
pub async fn serve<F, Fut>(listener: tokio::net::UnixListener, handle: F)
where
    F: Fn(Op) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Response> + Send,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                return;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(MAX_LINE as u64);
            let response = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) if req.version == CONTROL_VERSION => handle(req.op).await,
                    Ok(req) => Response::Error {
                        message: format!(
                            "control protocol version {} not supported (this mount speaks {CONTROL_VERSION}); use the walrusfs binary the mount runs",
                            req.version
                        ),
                    },
                    Err(e) => Response::Error {
                        message: format!("malformed request: {e}"),
                    },
                },
                Err(e) => Response::Error {
                    message: format!("reading the request: {e}"),
                },
            };
            let mut out = serde_json::to_string(&response).unwrap_or_default();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

/// Binds the socket in `state` (replacing a stale one), mode 0600.
pub fn bind(state: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = state.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Sends `op` to the mount whose state directory is `state` and waits for the answer.
pub async fn call(state: &Path, op: Op) -> std::io::Result<Response> {
    let path = state.join(SOCKET_FILE);
    let stream = tokio::net::UnixStream::connect(&path).await?;
    let (read, mut write) = stream.into_split();
    let mut req = serde_json::to_string(&Request {
        version: CONTROL_VERSION,
        op,
    })?;
    req.push('\n');
    write.write_all(req.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_pinned_json() {
        let r = Request {
            version: 1,
            op: Op::SnapshotCreate { name: "n".into() },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"op":{"op":"snapshot_create","name":"n"}}"#
        );
        let s = serde_json::to_string(&Response::Ok {
            message: "m".into(),
        })
        .unwrap();
        assert_eq!(s, r#"{"result":"ok","message":"m"}"#);
    }

    #[tokio::test]
    async fn a_request_gets_its_answer_and_garbage_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        tokio::spawn(serve(listener, |op| async move {
            Response::Ok {
                message: format!("{op:?}"),
            }
        }));
        let r = call(dir.path(), Op::Sync).await.unwrap();
        assert_eq!(
            r,
            Response::Ok {
                message: "Sync".into()
            }
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(SOCKET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Garbage gets an error line, not a hang.
        let stream = tokio::net::UnixStream::connect(dir.path().join(SOCKET_FILE))
            .await
            .unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(b"not json\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        assert!(line.contains("malformed"), "{line}");
    }
}
