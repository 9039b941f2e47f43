//! The storage node daemon: a QUIC endpoint serving the [`crate::wire`] protocol over a
//! [`SliverStore`].
//!
//! Each connection is a client that proved its key in the TLS handshake; each bidirectional
//! stream is one request. Stores and deletes are accepted only from trusted keys; anyone may
//! read.
//!
//! Memory is bounded whoever connects: sliver bodies, received or being sent, hold a share of
//! a byte budget until the peer has them (reads by untrusted keys may take only half of it);
//! request frames grow only as their bytes arrive; a connection's QUIC receive window is small
//! until its peer proves a trusted key. Admission: a handshake needs a validated address
//! (QUIC Retry), a slot among `max_handshakes` and among its address's share, and a deadline;
//! an established connection needs a slot under its key's cap, and untrusted keys together
//! hold at most half of `max_connections` (and a per-address share), so a flood of strangers
//! never locks out a trusted client. Every request has a deadline. A malformed or oversize
//! request gets an error on its own stream and never disturbs others.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, warn, Instrument};

mod admission;
mod background;
mod outboards;
mod requests;

use admission::admit_handshake;
use background::{committer, scrubber, CommitJob, MAX_BATCH};
use requests::handle;

use super::config::{NodeConfig, KEY_FILE, LOCK_FILE, PID_FILE, ROOTS_DIR, STORE_DIR};
use super::limits::Limiter;
use super::roots::{RootStore, RootStoreError};
use super::store::{SliverStore, StoreError};
use crate::identity::{peer_key, Identity, PublicKey};
use crate::wire::{self, FrameError, RequestFrame, Response, WireError, PROTOCOL_VERSION};

/// Granularity of the in-flight byte budget (semaphore permits are KiB).
const BUDGET_UNIT: u64 = 1024;
/// QUIC receive window of a connection until its peer proves a trusted key: requests from
/// anyone are small frames, so this bounds what a stranger can make the node buffer.
const UNTRUSTED_WINDOW: u32 = 256 << 10;
/// Receive window of a trusted client's connection (it sends sliver bodies).
const TRUSTED_WINDOW: u32 = 64 << 20;

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad or missing configuration.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// Bad or missing key.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The sliver store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The root record store could not be opened.
    #[error(transparent)]
    Roots(#[from] RootStoreError),
    /// The QUIC endpoint could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Another process serves this directory (its lock file is held).
    #[error("{path} is locked: another node is serving this directory")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Writing the pid or lock file failed.
    #[error("pid file {path}: {source}")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

struct State {
    identity: Identity,
    store: SliverStore,
    /// Where the store lives (its filesystem's free space is checked before each store).
    store_dir: PathBuf,
    roots: RootStore,
    trusted: HashSet<PublicKey>,
    config: NodeConfig,
    budget: Semaphore,
    /// The share of `budget` reads by untrusted keys may hold (half of it).
    untrusted_budget: Semaphore,
    /// Established connections (all keys).
    connections: Arc<Semaphore>,
    /// Established connections of untrusted keys (half of `connections`).
    untrusted_connections: Arc<Semaphore>,
    /// Connections per client key.
    per_key: Arc<Limiter<PublicKey>>,
    /// Untrusted connections per IP address.
    untrusted_per_source: Arc<Limiter<IpAddr>>,
    /// Handshakes in progress.
    handshakes: Arc<Semaphore>,
    /// Handshakes in progress per IP address.
    handshakes_per_source: Arc<Limiter<IpAddr>>,
    started: Instant,
    /// Requests received.
    requests: std::sync::atomic::AtomicU64,
    /// Slivers for the group committer.
    commits: tokio::sync::mpsc::Sender<CommitJob>,
    /// Granule hashes of recently read slivers, for ranged reads.
    outboards: outboards::Outboards,
    /// Buffers of sliver bodies, stored and served, reused ([`POOL_BYTES`] at most).
    buffers: Arc<crate::buffers::BufferPool>,
}

/// Freed sliver buffers a node keeps for reuse at most: enough for the slivers of a few
/// dozen 4 MiB chunks in flight, and at most a quarter of the in-flight budget (the memory a
/// node may hold beyond its budget stays small when the budget is).
const POOL_BYTES: u64 = 64 << 20;

/// A storage node ready to serve.
pub struct Node {
    dir: PathBuf,
    /// Held for the node's lifetime: two processes serving one store would corrupt it.
    _lock: std::fs::File,
    state: Arc<State>,
    /// The group committer's queue, until `serve` starts it.
    commit_queue: tokio::sync::mpsc::Receiver<CommitJob>,
    /// Called once the node listens (e.g. to tell systemd it is ready).
    on_ready: Option<Box<dyn FnOnce() + Send>>,
}

impl Node {
    /// Opens the node in `dir`: reads `node.toml`, the key (created if missing) and the store.
    pub fn open(dir: &Path) -> Result<Self, NodeError> {
        let config = NodeConfig::load(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| NodeError::PidFile {
                path: lock_path.clone(),
                source,
            })?;
        lock.try_lock()
            .map_err(|_| NodeError::Locked { path: lock_path })?;
        let identity = Identity::load_or_generate(&dir.join(KEY_FILE))?;
        let store = SliverStore::open(&dir.join(STORE_DIR))?;
        let roots = RootStore::open(&dir.join(ROOTS_DIR))?;
        let budget_units = usize::try_from(config.max_inflight_bytes / BUDGET_UNIT)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let (commits, commit_queue) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        let pool_bytes =
            usize::try_from(POOL_BYTES.min(config.max_inflight_bytes / 4)).unwrap_or(usize::MAX);
        Ok(Node {
            on_ready: None,
            dir: dir.to_owned(),
            _lock: lock,
            commit_queue,
            state: Arc::new(State {
                commits,
                trusted: config.trusted_clients.iter().copied().collect(),
                budget: Semaphore::new(budget_units),
                untrusted_budget: Semaphore::new(budget_units / 2),
                connections: Arc::new(Semaphore::new(config.max_connections as usize)),
                untrusted_connections: Arc::new(Semaphore::new(
                    config.max_connections as usize / 2,
                )),
                per_key: Limiter::new(config.max_connections_per_key),
                untrusted_per_source: Limiter::new(config.max_handshakes_per_source),
                handshakes: Arc::new(Semaphore::new(config.max_handshakes as usize)),
                handshakes_per_source: Limiter::new(config.max_handshakes_per_source),
                identity,
                store,
                store_dir: dir.join(STORE_DIR),
                roots,
                config,
                started: Instant::now(),
                requests: std::sync::atomic::AtomicU64::new(0),
                outboards: outboards::Outboards::new(),
                buffers: crate::buffers::BufferPool::new(pool_bytes),
            }),
        })
    }

    /// Calls `f` once the node listens and serves.
    pub fn on_ready(&mut self, f: impl FnOnce() + Send + 'static) {
        self.on_ready = Some(Box::new(f));
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.state.identity.public_key()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets running requests finish
    /// (bounded by the request timeout) and closes the endpoint. Writes `node.pid` while
    /// serving and removes it on the way out.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
        let state = self.state;
        let committer = tokio::spawn(committer(state.clone(), self.commit_queue));
        state.buffers.release_when_idle(
            &tokio::runtime::Handle::current(),
            crate::buffers::IDLE_RELEASE,
        );
        let scrubber = tokio::spawn(scrubber(state.clone()));
        let gauges = tokio::spawn(update_gauges(state.clone()));
        let tls = state
            .identity
            .server_tls()
            .map_err(|e| NodeError::Tls(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| NodeError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(crate::transport::server_transport_config(
            state.config.max_streams_per_connection,
            UNTRUSTED_WINDOW,
        ));
        let addr = state.config.listen;
        let keys = state.identity.endpoint_keys();
        let endpoint = crate::transport::endpoint(addr, Some((server_config, keys)))
            .map_err(|source| NodeError::Listen { addr, source })?;

        let pid_path = self.dir.join(PID_FILE);
        std::fs::write(&pid_path, format!("{}\n", std::process::id())).map_err(|source| {
            NodeError::PidFile {
                path: pid_path.clone(),
                source,
            }
        })?;
        let stats = state.store.stats();
        info!(%addr, key = %state.identity.public_key(), blobs = stats.blobs,
              bytes = stats.sliver_bytes, "storage node serving");
        if let Some(ready) = self.on_ready {
            ready();
        }

        // Tells connections to stop taking new requests; the ones they hold run to completion.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Some(handshake) = admit_handshake(&state, incoming) else { continue };
                    let state = state.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(async move {
                        let Some((conn, slots)) = handshake.finish(&state).await else { return };
                        let _slots = slots;
                        serve_connection(state, conn, stop).await;
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }

        info!("shutting down: refusing new connections, draining requests");
        endpoint.set_server_config(None);
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(state.config.request_timeout(), drain)
            .await
            .is_err()
        {
            warn!("requests still running at shutdown deadline; aborting them");
        }
        endpoint.close(0u32.into(), b"node shutting down");
        endpoint.wait_idle().await;
        committer.abort();
        scrubber.abort();
        gauges.abort();
        let _ = std::fs::remove_file(&pid_path);
        info!("storage node stopped");
        Ok(())
    }
}

/// Keeps the store's gauges (blobs, bytes, free space) current for metrics scrapes.
async fn update_gauges(state: Arc<State>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        let stats = state.store.stats();
        let free = requests::free_bytes(&state); // one statvfs: quick
        metrics::gauge!(crate::metrics::NODE_BLOBS).set(stats.blobs as f64);
        metrics::gauge!(crate::metrics::NODE_SLIVER_BYTES).set(stats.sliver_bytes as f64);
        metrics::gauge!(crate::metrics::NODE_FREE_BYTES).set(free as f64);
    }
}

async fn serve_connection(
    state: Arc<State>,
    conn: quinn::Connection,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let peer = peer_key(&conn);
    let remote = conn.remote_address();
    let span = info_span!("conn", %remote, peer = ?peer);
    async move {
        debug!("connected");
        let connections = metrics::gauge!(crate::metrics::NODE_CONNECTIONS);
        connections.increment(1.0);
        let mut streams = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        let state = state.clone();
                        let conn = conn.clone();
                        streams.spawn(
                            async move {
                                let deadline = state.config.request_timeout();
                                if tokio::time::timeout(deadline, serve_stream(&state, &conn, peer, send, recv))
                                    .await
                                    .is_err()
                                {
                                    warn!("request exceeded {deadline:?}; dropped");
                                }
                            }
                            .in_current_span(),
                        );
                    }
                    Err(e) => {
                        debug!("connection ended: {e}");
                        break;
                    }
                },
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
                _ = stop.wait_for(|stopping| *stopping) => break,
            }
        }
        // Let requests already received finish (the shutdown path bounds this).
        while streams.join_next().await.is_some() {}
        connections.decrement(1.0);
    }
    .instrument(span)
    .await
}

async fn serve_stream(
    state: &State,
    #[cfg_attr(not(feature = "faults"), allow(unused_variables))] conn: &quinn::Connection,
    peer: Option<PublicKey>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    #[cfg(feature = "faults")]
    {
        let f = &state.config.faults;
        if f.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(f.delay_ms)).await;
        }
        if f.drop_every > 0
            && state
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
                .is_multiple_of(u64::from(f.drop_every))
        {
            warn!("fault injection: dropping the connection");
            conn.close(2u32.into(), b"fault injection");
            return;
        }
    }
    let (response, mut body) = match wire::read_frame::<_, RequestFrame>(&mut recv).await {
        Ok(frame) if frame.version != PROTOCOL_VERSION => (
            Response::Error(WireError::VersionMismatch {
                supported: PROTOCOL_VERSION,
            }),
            None,
        ),
        Ok(frame) => handle(state, peer, frame.request, &mut recv).await,
        Err(FrameError::TooLarge { max, .. }) => {
            warn!("oversize request frame");
            (Response::Error(WireError::TooLarge { limit: max }), None)
        }
        Err(e) => {
            warn!("bad request frame: {e}");
            (
                Response::Error(WireError::InvalidRequest(e.to_string())),
                None,
            )
        }
    };
    if let Response::Error(e) = &response {
        debug!("request failed: {e}");
        // Whatever the client still sends on this stream is unwanted; tell it to stop.
        let _ = recv.stop(0u32.into());
    }
    let sent = async {
        wire::write_frame(&mut send, &response).await?;
        if let Some(body) = &mut body {
            // Handed to QUIC without a copy: the one buffer is what the budget counts.
            // The pooled buffer goes back to the pool when QUIC drops its last slice of it.
            let data = bytes::Bytes::from_owner(body.data.take());
            #[cfg(feature = "faults")]
            let data = if state.config.faults.short_bodies {
                data.slice(..data.len() / 2)
            } else {
                data
            };
            send.write_chunk(data)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        send.finish()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // Wait until the peer has the response before dropping the stream.
        let _ = send.stopped().await;
        // INV: a sliver being sent holds its budget until the peer has acknowledged it (QUIC
        // keeps a copy of unacknowledged bytes).
        drop(body);
        Ok::<_, FrameError>(())
    };
    if let Err(e) = sent.await {
        debug!("could not send response: {e}");
    }
}
