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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Done; `message` says what happened.
    Ok {
        /// Human-readable summary.
        message: String,
    },
    /// What the mount is.
    Status(Status),
    /// The operation failed.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

/// A mount's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The archive (public key, hex).
    pub archive: String,
    /// `writer`, `replica` or `snapshot`.
    pub role: String,
    /// Root version published or applied.
    pub version: u64,
    /// Index changes not yet published.
    pub unpublished_changes: u64,
    /// Bytes written but not yet stored on the network.
    pub dirty_bytes: u64,
    /// Blobs waiting to be deleted.
    pub gc_backlog: u64,
    /// Whether the mount refuses changes.
    pub read_only: bool,
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
