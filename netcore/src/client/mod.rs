//! The client: disperses blobs to the committee and gathers them back, trusting no node.
//!
//! - [`Client::put`] encodes a blob, sends sliver `i` to node `i` in parallel and returns once
//!   `n - f` nodes have returned valid signed confirmations (the blob's certificate); the
//!   remaining sends finish in the background ([`Client::finish_background`]).
//! - [`Client::get`] fetches metadata from any node and checks it against the blob id, then
//!   gathers slivers (systematic first), verifies each against the metadata, asks another node
//!   when one is slow, fails or lies, and decodes from `k` verified slivers.
//! - [`Client::get_range`] reads a byte range of a blob: the range of the systematic sliver
//!   that holds it, verified with a proof from the node, or rebuilt from the same range of `k`
//!   other slivers.
//!
//! One QUIC connection per node is kept and reused; a node that could not be reached is skipped
//! for a short back-off so a dead node does not cost every request a connect timeout.

mod conn;
mod error;
mod get;
mod put;
mod range;
mod repair;
mod root;

use std::sync::Arc;
use std::time::Duration;

pub use conn::NodeView;
pub use error::{ClientError, Failures, NodeError, NodeFailure};
pub use put::{cpu_bound, PutOutcome};
pub use repair::{Challenge, RepairReport};
pub use root::RootWrite;

use crate::codec::{BlobId, SliverIndex};
use crate::committee::Committee;
use crate::identity::Identity;
use crate::wire::{BlobStatus, HealthInfo, Request, Response};

/// How often [`Client::finish_background`] and [`Client::gather`] look whether only nodes
/// that look gone are left.
const GONE_POLL: Duration = Duration::from_millis(20);

/// How long [`Client::close`] waits at most for its connections to drain (see [`close_grace`]).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long [`Client::close`] waits for the endpoint to go idle, given each node's connection
/// round-trip time (`None`: no connection established). A closed connection sends its close
/// at once and drains for three probe timeouts, repeating the close to a peer that still
/// talks; waiting for that is a good-faith effort that nodes hear of it rather than keep the
/// connection until their idle timeout. When every node is connected, that is what the
/// endpoint waits for (at most [`CLOSE_GRACE`]). A connect still in progress or abandoned (a
/// node that is gone) drains for seconds with nobody to hear it: then the wait covers only
/// the established connections' drain, about `3 × (3 × rtt + max ack delay)`.
fn close_grace(rtts: &[Option<Duration>]) -> Duration {
    if rtts.iter().all(Option::is_some) {
        return CLOSE_GRACE;
    }
    let rtt = rtts.iter().flatten().max().copied().unwrap_or_default();
    // quinn's default max ack delay, and a margin for the endpoint's driver to run.
    let probe = 3 * rtt + Duration::from_millis(25);
    (3 * probe + Duration::from_millis(25)).min(CLOSE_GRACE)
}

/// Client tuning. Defaults suit a LAN or loopback committee.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time allowed to establish a connection to a node.
    pub connect_timeout: Duration,
    /// Time allowed for one request to one node, beyond the transfer allowance below.
    pub request_timeout: Duration,
    /// Slowest transfer rate tolerated before a request times out: a request carrying `b`
    /// bytes may take `request_timeout + b / min_throughput`.
    pub min_throughput_bytes_per_sec: u64,
    /// A sliver or metadata fetch not answered within this delay (plus the transfer time at
    /// [`ClientConfig::hedge_throughput_bytes_per_sec`]) makes the client ask one more node.
    pub hedge_delay: Duration,
    /// Expected transfer rate used to scale the hedge delay with sliver size.
    pub hedge_throughput_bytes_per_sec: u64,
    /// How long a node that could not be reached is skipped.
    pub backoff: Duration,
    /// Concurrent requests per node connection.
    pub max_streams_per_node: u32,
    /// Bytes of freed sliver buffers kept to encode the next blobs into (see
    /// [`crate::buffers`]); freed after [`IDLE_RELEASE`](crate::buffers::IDLE_RELEASE)
    /// without a store. A writer storing `b` bytes at once holds `b * n / k` of slivers.
    pub sliver_pool_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            min_throughput_bytes_per_sec: 1 << 20,
            hedge_delay: Duration::from_millis(300),
            hedge_throughput_bytes_per_sec: 50 << 20,
            backoff: Duration::from_secs(2),
            max_streams_per_node: 64,
            sliver_pool_bytes: 32 << 20,
        }
    }
}

impl ClientConfig {
    /// Deadline for a request moving `bytes` bytes.
    pub(crate) fn request_deadline(&self, bytes: u64) -> Duration {
        self.request_timeout
            + Duration::from_secs_f64(
                bytes as f64 / self.min_throughput_bytes_per_sec.max(1) as f64,
            )
    }

    /// Hedge delay for a request moving `bytes` bytes.
    pub(crate) fn hedge_after(&self, bytes: u64) -> Duration {
        self.hedge_delay
            + Duration::from_secs_f64(
                bytes as f64 / self.hedge_throughput_bytes_per_sec.max(1) as f64,
            )
    }
}

/// A handle on the storage network. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    endpoint: quinn::Endpoint,
    committee: Committee,
    config: ClientConfig,
    nodes: Vec<conn::NodeConn>,
    /// Sliver bytes moved, for progress bars.
    traffic: Arc<Traffic>,
    background: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Reusable Reed-Solomon work buffers: a fresh codec per call spends as long zeroing new
    /// memory as coding (4 MiB blob: 6.3 ms fresh vs 1.6 ms reused, see the codec benches).
    codecs: std::sync::Mutex<Vec<crate::codec::Codec>>,
    /// Buffers of slivers being stored, reused once QUIC lets go of them
    /// ([`ClientConfig::sliver_pool_bytes`] at most): fresh ones cost a page fault and a
    /// zeroed page per 4 KiB.
    pub(crate) sliver_buffers: std::sync::Arc<crate::buffers::BufferPool>,
    /// Blobs whose reads met a node without a valid sliver (missing, damaged, forged), for
    /// whoever repairs them in the background ([`Client::take_damaged`]).
    damaged: std::sync::Mutex<std::collections::BTreeSet<BlobId>>,
    /// Confirmations from nodes slower than a put's quorum, which came in after the put
    /// returned, for whoever keeps the blob's proofs ([`Client::take_late_confirmations`]).
    late: std::sync::Mutex<Vec<crate::wire::StorageConfirmation>>,
}

/// Sliver bytes a client has sent and received, counted as they move (a progress bar polls
/// them while one large blob travels).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Sliver bytes written to nodes' streams.
    pub sent: std::sync::atomic::AtomicU64,
    /// Sliver bytes read from nodes' streams.
    pub received: std::sync::atomic::AtomicU64,
}

/// Blobs remembered as damaged at most; more are dropped (a repair walk finds them anyway).
const MAX_DAMAGED: usize = 10_000;
/// Late confirmations kept at most until taken; more are dropped (they are evidence for
/// audits, not what makes a blob durable: its quorum of `n - f` was in hand before).
const MAX_LATE: usize = 10_000;

/// Codecs kept for reuse; beyond this many concurrent users, extra ones are dropped after use.
const MAX_POOLED_CODECS: usize = 4;
/// Blobs above this size are coded with a fresh codec that is then dropped: a pooled codec
/// keeps work buffers sized for the largest blob it saw, which must stay small.
const MAX_POOLED_BLOB: u64 = 16 << 20;

impl Inner {
    /// Remembers that a node answered a read of `blob_id` without a valid sliver.
    pub(crate) fn note_damaged(&self, blob_id: BlobId) {
        let mut d = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
        if d.len() < MAX_DAMAGED {
            d.insert(blob_id);
        }
    }

    /// Keeps a confirmation that came in after its put returned (see [`Client::put`]).
    pub(crate) fn note_late(&self, c: crate::wire::StorageConfirmation) {
        let mut late = self.late.lock().unwrap_or_else(|p| p.into_inner());
        if late.len() < MAX_LATE {
            late.push(c);
        }
    }

    /// Runs `f` with a pooled codec (for blobs of `blob_len` bytes).
    pub(crate) fn with_codec<T>(
        &self,
        blob_len: u64,
        f: impl FnOnce(&mut crate::codec::Codec) -> T,
    ) -> T {
        if blob_len > MAX_POOLED_BLOB {
            return f(&mut crate::codec::Codec::default());
        }
        let pooled = self.codecs.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut codec = pooled.unwrap_or_default();
        let out = f(&mut codec);
        if let Ok(mut pool) = self.codecs.lock() {
            if pool.len() < MAX_POOLED_CODECS {
                pool.push(codec);
            }
        }
        out
    }
}

impl Client {
    /// Creates a client for `committee`, authenticating as `identity`. Connections are made
    /// lazily. Must be called inside a tokio runtime.
    pub fn new(
        committee: Committee,
        identity: &Identity,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let sliver_buffers = crate::buffers::BufferPool::new(config.sliver_pool_bytes);
        sliver_buffers.release_when_idle(
            &tokio::runtime::Handle::current(),
            crate::buffers::IDLE_RELEASE,
        );
        let endpoint =
            crate::transport::endpoint(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), None)
                .map_err(ClientError::Endpoint)?;
        let transport = crate::transport::transport_config(config.max_streams_per_node);
        let traffic = Arc::new(Traffic::default());
        let nodes = committee
            .nodes
            .iter()
            .map(|node| {
                let tls = identity
                    .client_tls(node.public_key)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
                qc.transport_config(transport.clone());
                Ok(conn::NodeConn::new(
                    endpoint.clone(),
                    qc,
                    node.clone(),
                    traffic.clone(),
                ))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                committee,
                config,
                nodes,
                traffic,
                background: Default::default(),
                codecs: Default::default(),
                sliver_buffers,
                damaged: Default::default(),
                late: Default::default(),
            }),
        })
    }

    /// The committee this client talks to.
    pub fn committee(&self) -> &Committee {
        &self.inner.committee
    }

    /// Each node's health, in index order.
    pub async fn health(&self) -> Vec<(SliverIndex, Result<HealthInfo, NodeError>)> {
        self.each_node(|| Request::Health, pick_health, Wait::All)
            .await
    }

    /// [`Client::health`] that waits for every node only as long as a quorum read does:
    /// until every node answered, or `n - f` did and the rest had a hedge delay more, or only
    /// nodes that look gone are left (see [`conn::NodeConn::suspect`]). A node still
    /// unanswered then (one that is gone costs a connect timeout otherwise) is reported as
    /// [`NodeError::Timeout`].
    pub async fn health_quorum(&self) -> Vec<(SliverIndex, Result<HealthInfo, NodeError>)> {
        let quorum = usize::from(self.inner.committee.write_quorum());
        let wait = Wait::Quorum { enough: 0, quorum };
        self.each_node(|| Request::Health, pick_health, wait).await
    }

    /// Sliver bytes moved so far.
    pub fn traffic(&self) -> &Traffic {
        &self.inner.traffic
    }

    /// What this client has seen of each node (answers, failures, latency), in index order.
    pub fn node_views(&self) -> Vec<NodeView> {
        self.inner.nodes.iter().map(conn::NodeConn::view).collect()
    }

    /// The blobs reads found damaged on some node since the last call (see [`Inner`]).
    pub fn take_damaged(&self) -> Vec<BlobId> {
        let mut d = self.inner.damaged.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *d).into_iter().collect()
    }

    /// The verified confirmations of nodes that stored their sliver after the put had its
    /// quorum and returned, since the last call: a blob's proofs are only complete with
    /// them, and an audit can only hold a node to a sliver it has its signature for.
    pub fn take_late_confirmations(&self) -> Vec<crate::wire::StorageConfirmation> {
        std::mem::take(&mut *self.inner.late.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What each node holds of `blob_id`, in index order.
    pub async fn status(
        &self,
        blob_id: &BlobId,
    ) -> Vec<(SliverIndex, Result<BlobStatus, NodeError>)> {
        let blob_id = *blob_id;
        self.each_node(
            move || Request::Status { blob_id },
            |r| match r {
                Response::Status(s) => Ok(s),
                other => Err(other),
            },
            Wait::All,
        )
        .await
    }

    /// Asks every node to delete `blob_id`; returns each node's answer (whether it held any
    /// of the blob). Deletion is best effort per node: the caller retries failed nodes.
    pub async fn delete(&self, blob_id: &BlobId) -> Vec<(SliverIndex, Result<bool, NodeError>)> {
        self.delete_on(blob_id, None).await
    }

    /// [`Client::delete`] on the nodes `only` lists (all if `None`).
    pub async fn delete_on(
        &self,
        blob_id: &BlobId,
        only: Option<&[SliverIndex]>,
    ) -> Vec<(SliverIndex, Result<bool, NodeError>)> {
        let blob_id = *blob_id;
        let deadline = self.inner.config.request_deadline(0);
        let futs = self
            .inner
            .nodes
            .iter()
            .filter(|n| only.is_none_or(|o| o.contains(&n.info.index)))
            .map(|node| async move {
                let r = node
                    .request(
                        &self.inner.config,
                        Request::Delete { blob_id },
                        None,
                        deadline,
                    )
                    .await
                    .and_then(|(resp, _)| match resp {
                        Response::Deleted { existed } => Ok(existed),
                        other => Err(conn::unexpected(other)),
                    });
                (node.info.index, r)
            });
        futures::future::join_all(futs).await
    }

    /// Waits (at most `limit`) for sliver sends still running after `put` reached its quorum,
    /// so the remaining nodes get their slivers before the process exits.
    ///
    /// Sends to nodes that look gone (see [`Client::only_gone_nodes_busy`]) are not waited
    /// for: they would end only at the connect timeout, with nothing stored.
    pub async fn finish_background(&self, limit: Duration) {
        let mut set = self.inner.background.lock().await;
        let drain = async {
            // Seen twice in a row: a send between two requests has none under way for a moment.
            let mut seen_gone = 0;
            loop {
                tokio::select! {
                    next = set.join_next() => if next.is_none() { return true },
                    () = tokio::time::sleep(GONE_POLL) => {
                        seen_gone = if self.only_gone_nodes_busy() { seen_gone + 1 } else { 0 };
                        if seen_gone >= 2 {
                            return false;
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(limit, drain).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("abandoning background sends to nodes that look gone");
                set.abort_all();
            }
            Err(_) => {
                tracing::warn!("background sliver sends still running after {limit:?}; abandoning");
                set.abort_all();
            }
        }
    }

    /// Whether every node but those `answered` looks gone (see [`conn::NodeConn::suspect`]
    /// with a hedge delay): a quorum read then need not give them a hedge delay more.
    fn all_suspect_but(&self, answered: impl Iterator<Item = SliverIndex>) -> bool {
        let answered: Vec<SliverIndex> = answered.collect();
        let slow = self.inner.config.hedge_delay;
        self.inner
            .nodes
            .iter()
            .all(|n| answered.contains(&n.info.index) || n.suspect(slow))
    }

    /// Whether every node with a request under way looks gone: a connect to it has failed, or
    /// has been in progress for a hedge delay (a node that is up answers a handshake sooner).
    fn only_gone_nodes_busy(&self) -> bool {
        let slow = self.inner.config.hedge_delay;
        self.inner
            .nodes
            .iter()
            .all(|n| n.in_flight() == 0 || n.suspect(slow))
    }

    /// Finishes background sends (at most `limit`), then closes every connection gracefully
    /// so nodes release their per-connection state at once instead of at idle timeout.
    pub async fn close(&self, limit: Duration) {
        self.finish_background(limit).await;
        let rtts: Vec<Option<Duration>> = self
            .inner
            .nodes
            .iter()
            .map(|n| n.connected().map(|c| c.rtt()))
            .collect();
        self.inner.endpoint.close(0u32.into(), b"client done");
        let _ = tokio::time::timeout(close_grace(&rtts), self.inner.endpoint.wait_idle()).await;
    }

    /// Sends a request to every node, each answer picked by `pick`; see [`Client::gather`].
    async fn each_node<T, M, P>(
        &self,
        make: M,
        pick: P,
        wait: Wait,
    ) -> Vec<(SliverIndex, Result<T, NodeError>)>
    where
        M: Fn() -> Request,
        P: Fn(Response) -> Result<T, Response> + Copy,
    {
        let cfg = &self.inner.config;
        let deadline = cfg.request_deadline(0);
        self.gather(
            |node| {
                let req = make();
                async move {
                    let (resp, _) = node.request(cfg, req, None, deadline).await?;
                    pick(resp).map_err(|other| {
                        NodeError::Unexpected(format!("{other:?}").chars().take(200).collect())
                    })
                }
            },
            wait,
        )
        .await
    }

    /// Asks every node at once (`ask`) and gathers the answers, in index order. How long it
    /// waits is `wait`'s; a node not waited for is [`NodeError::Timeout`].
    pub(crate) async fn gather<'a, T, Fut>(
        &'a self,
        ask: impl Fn(&'a conn::NodeConn) -> Fut,
        wait: Wait,
    ) -> Vec<(SliverIndex, Result<T, NodeError>)>
    where
        Fut: std::future::Future<Output = Result<T, NodeError>> + 'a,
    {
        let mut running: futures::stream::FuturesUnordered<_> = self
            .inner
            .nodes
            .iter()
            .map(|node| {
                let answer = ask(node);
                async move { (node.info.index, answer.await) }
            })
            .collect();
        let (enough, quorum) = match wait {
            Wait::All => (usize::MAX, usize::MAX),
            Wait::Quorum { enough, quorum } => (enough, quorum),
        };
        let mut answers: Vec<(SliverIndex, Result<T, NodeError>)> = Vec::new();
        let grace = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(grace);
        let mut grace_armed = false;
        let mut good = 0;
        loop {
            tokio::select! {
                next = futures::StreamExt::next(&mut running) => match next {
                    Some(answer) => {
                        good += usize::from(answer.1.is_ok());
                        answers.push(answer);
                    }
                    None => break,
                },
                () = &mut grace, if grace_armed => break,
                // Only nodes that look gone left: waiting for them would end at their connect
                // timeout, with nothing.
                () = tokio::time::sleep(GONE_POLL), if !grace_armed && good >= enough => {
                    if self.all_suspect_but(answers.iter().map(|(i, _)| *i)) {
                        break;
                    }
                }
            }
            if !grace_armed && good >= quorum {
                if self.all_suspect_but(answers.iter().map(|(i, _)| *i)) {
                    break;
                }
                grace_armed = true;
                grace
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.inner.config.hedge_delay);
            }
        }
        for node in &self.inner.nodes {
            if !answers.iter().any(|(i, _)| *i == node.info.index) {
                answers.push((node.info.index, Err(NodeError::Timeout)));
            }
        }
        answers.sort_by_key(|(i, _)| *i);
        answers
    }
}

/// How long [`Client::gather`] waits for the nodes' answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// For every node.
    All,
    /// As a quorum read: until `quorum` nodes answered well and the rest had a hedge delay
    /// more; and once `enough` answered well (`quorum` or fewer), not at all for nodes that
    /// look gone (see [`conn::NodeConn::suspect`]).
    Quorum {
        /// Good answers after which nodes that look gone are not waited for.
        enough: usize,
        /// Good answers after which the rest get a hedge delay more.
        quorum: usize,
    },
}

fn pick_health(r: Response) -> Result<HealthInfo, Response> {
    match r {
        Response::Health(h) => Ok(h),
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::committee::NodeInfo;

    #[test]
    fn closing_waits_for_draining_only_when_every_node_is_connected() {
        let ms = Duration::from_millis;
        assert_eq!(close_grace(&[Some(ms(1)), Some(ms(2))]), CLOSE_GRACE);
        assert_eq!(close_grace(&[]), CLOSE_GRACE);
        // A node gone: the established connections' drain, 3 probe timeouts of 3 RTT + 25 ms.
        assert_eq!(close_grace(&[Some(ms(2)), None]), ms(3 * (6 + 25) + 25));
        assert_eq!(close_grace(&[None, None]), ms(3 * 25 + 25));
        // A far node: never more than the cap.
        assert_eq!(close_grace(&[Some(ms(400)), None]), CLOSE_GRACE);
    }

    /// UDP sockets that take every packet and answer none: nodes that are gone (a stopped
    /// node on loopback looks the same to QUIC, which ignores ICMP).
    fn black_holes(n: usize) -> Vec<std::net::UdpSocket> {
        (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect()
    }

    /// A client of a committee at `holes`, with a 60 s connect timeout (nothing may wait for
    /// it) and a 100 ms hedge delay.
    fn client_of(holes: &[std::net::UdpSocket]) -> Client {
        client_with_timeout(holes, Duration::from_secs(60))
    }

    /// [`client_of`] with another connect timeout.
    fn client_with_timeout(holes: &[std::net::UdpSocket], connect_timeout: Duration) -> Client {
        let config = ClientConfig {
            connect_timeout,
            hedge_delay: Duration::from_millis(100),
            ..ClientConfig::default()
        };
        let nodes = holes
            .iter()
            .enumerate()
            .map(|(i, s)| NodeInfo {
                index: i as SliverIndex,
                address: s.local_addr().unwrap(),
                public_key: Identity::generate().unwrap().public_key(),
            })
            .collect();
        let committee = Committee::new(2, nodes).unwrap();
        Client::new(committee, &Identity::generate().unwrap(), config).unwrap()
    }

    #[tokio::test]
    async fn a_node_still_connecting_after_a_hedge_delay_is_asked_last() {
        let holes = black_holes(4);
        let client = client_of(&holes);
        assert_eq!(client.read_order(true), vec![0, 1, 2, 3]);
        // Connects to nodes 0 and 1 start (and hang: nothing answers).
        let probing: Vec<_> = [0usize, 1]
            .into_iter()
            .map(|i| {
                let c = client.clone();
                tokio::spawn(async move {
                    let node = &c.inner.nodes[i];
                    let _ = node
                        .request(
                            &c.inner.config,
                            Request::Health,
                            None,
                            Duration::from_secs(60),
                        )
                        .await;
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Connecting for less than a hedge delay: not suspect yet.
        assert_eq!(client.read_order(true), vec![0, 1, 2, 3]);
        assert!(!client.only_gone_nodes_busy());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(client.read_order(true), vec![2, 3, 0, 1]);
        assert!(client.only_gone_nodes_busy());
        assert!(client.all_suspect_but([2, 3].into_iter()));
        assert!(!client.all_suspect_but([2].into_iter()));
        // A connect whose request was given up goes on, so the node still looks gone: the
        // next read does not ask it first and wait another hedge delay.
        for p in probing {
            p.abort();
            let _ = p.await;
        }
        assert_eq!(client.read_order(true), vec![2, 3, 0, 1]);
        assert!(client.only_gone_nodes_busy(), "no request is under way");
        client.close(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_connect_given_up_by_its_request_ends_as_a_failed_connect() {
        // A connect timeout of 300 ms: the request is dropped after 150 ms, and the attempt
        // goes on to fail, which marks the node as one whose last connect failed.
        let holes = black_holes(2);
        let client = client_with_timeout(&holes, Duration::from_millis(300));
        let node = &client.inner.nodes[0];
        let asked = tokio::time::timeout(
            Duration::from_millis(150),
            node.request(
                &client.inner.config,
                Request::Health,
                None,
                Duration::from_secs(60),
            ),
        )
        .await;
        assert!(asked.is_err(), "a black hole answered: {asked:?}");
        assert!(node.suspect(Duration::from_millis(100)), "connecting");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(node.backing_off(), "the attempt failed and was recorded");
        assert!(node.suspect(Duration::from_secs(60)));
        assert!(!client.inner.nodes[1].suspect(Duration::from_millis(100)));
        client.close(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_quorum_health_read_does_not_wait_for_nodes_that_look_gone() {
        // Every node gone, a 60 s connect timeout: the read ends once each has been connecting
        // for a hedge delay, each unanswered; the full read would wait out the timeout.
        let holes = black_holes(4);
        let client = client_of(&holes);
        let start = std::time::Instant::now();
        let answers = client.health_quorum().await;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(answers.len(), 4);
        assert!(answers
            .iter()
            .all(|(_, r)| matches!(r, Err(NodeError::Timeout))));
        // No request is left under way; the connects go on (until the connect timeout), so
        // every node still looks gone.
        assert!(client.only_gone_nodes_busy());
        assert!(client.all_suspect_but(std::iter::empty()));
        client.close(Duration::from_secs(1)).await;
    }
}
