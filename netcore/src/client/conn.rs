//! One node's connection: lazily connected, reused, re-established after failure, and skipped
//! for a back-off period after the node could not be reached.

use std::time::{Duration, Instant};

use super::{ClientConfig, NodeError};
use crate::committee::NodeInfo;
use crate::identity::CERT_SUBJECT;
use crate::wire::{self, RequestFrame, Response, WireError, PROTOCOL_VERSION};

pub(crate) struct NodeConn {
    pub(crate) info: NodeInfo,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    /// Shared with a connect attempt's task, which outlives the request that started it.
    state: std::sync::Arc<tokio::sync::Mutex<ConnState>>,
    reach: std::sync::Arc<std::sync::Mutex<Reachability>>,
    /// What this client has seen of the node (for `walrusfs status`).
    seen: std::sync::Mutex<Seen>,
    /// The node's index as a metrics label.
    label: String,
    /// The client's byte counters.
    traffic: std::sync::Arc<super::Traffic>,
    /// Requests to the node under way.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Bytes written or read per step of a sliver body, so progress is counted as it happens.
const BODY_STEP: usize = 1 << 20;

/// What a client has seen of one node: request outcomes and latency.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node's index in the committee.
    pub index: crate::codec::SliverIndex,
    /// Its address.
    pub address: std::net::SocketAddr,
    /// Requests that got an answer (errors the node reported included).
    pub answered: u64,
    /// Requests that got none (unreachable, timed out, connection lost).
    pub failed: u64,
    /// Moving average of the time to an answer, in milliseconds (requests carrying a sliver
    /// included), if any answer was seen.
    pub latency_ms: Option<f64>,
    /// Seconds since the last answer, if any.
    pub last_answer_secs_ago: Option<u64>,
    /// The last failure and how long ago, in seconds.
    pub last_failure: Option<(String, u64)>,
    /// Whether the client is skipping the node after a failed connect.
    pub backing_off: bool,
}

#[derive(Default)]
struct Seen {
    answered: u64,
    failed: u64,
    latency_ms: Option<f64>,
    last_answer: Option<Instant>,
    last_failure: Option<(String, Instant)>,
}

/// Weight of the newest sample in the latency moving average.
const LATENCY_WEIGHT: f64 = 0.2;

/// The connection, behind an async mutex held across a connect attempt (so concurrent
/// requests share one attempt).
#[derive(Default)]
struct ConnState {
    conn: Option<quinn::Connection>,
}

/// What the last connect attempts said, behind a plain mutex that is never held across an
/// await: choosing which nodes to ask must not wait for a connect in progress (up to the
/// connect timeout on a node that is gone).
#[derive(Default, Clone, Copy)]
struct Reachability {
    /// Skip the node until then (after a failed connect).
    down_until: Option<Instant>,
    /// Whether the last connect failed (until one succeeds): reads ask such a node last even
    /// after its back-off, so a node that is gone does not make reads wait for a connect
    /// timeout each time its back-off runs out (writes still try it then; a health check or
    /// a write that connects clears this).
    last_connect_failed: bool,
    /// When the connect attempt in progress started, if one is: a node that has not finished
    /// its handshake within a hedge delay is asked last too (see [`NodeConn::suspect`]).
    connecting_since: Option<Instant>,
}

/// Clears [`Reachability::connecting_since`] when a connect attempt's task ends, also if it is
/// dropped before it records an outcome (its runtime shutting down).
struct ConnectInProgress(std::sync::Arc<std::sync::Mutex<Reachability>>);

impl Drop for ConnectInProgress {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connecting_since = None;
    }
}

/// Counts one request under way in a node's [`NodeConn::in_flight`] while it lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn count(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl NodeConn {
    pub(crate) fn new(
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        info: NodeInfo,
        traffic: std::sync::Arc<super::Traffic>,
    ) -> Self {
        NodeConn {
            traffic,
            label: info.index.to_string(),
            info,
            endpoint,
            config,
            state: Default::default(),
            reach: Default::default(),
            seen: Default::default(),
            in_flight: Default::default(),
        }
    }

    /// Requests to the node under way.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What this client has seen of the node.
    pub(crate) fn view(&self) -> NodeView {
        let backing_off = self.backing_off();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        NodeView {
            index: self.info.index,
            address: self.info.address,
            answered: seen.answered,
            failed: seen.failed,
            latency_ms: seen.latency_ms,
            last_answer_secs_ago: seen.last_answer.map(|t| t.elapsed().as_secs()),
            last_failure: seen
                .last_failure
                .as_ref()
                .map(|(e, t)| (e.clone(), t.elapsed().as_secs())),
            backing_off,
        }
    }

    /// Records the outcome of one request that took `took`.
    fn record(&self, outcome: &Result<(Response, Option<Vec<u8>>), NodeError>, took: Duration) {
        use crate::metrics as m;
        let answered = matches!(outcome, Ok(_) | Err(NodeError::Remote(_)));
        let result = match outcome {
            Ok(_) => "ok",
            Err(NodeError::Remote(e)) => e.kind(),
            Err(NodeError::Timeout) => "timeout",
            Err(NodeError::Connect(_) | NodeError::BackingOff) => "unreachable",
            Err(NodeError::Verification(_)) => "bad_sliver",
            Err(_) => "transport",
        };
        metrics::counter!(m::CLIENT_NODE_REQUESTS, m::LABEL_NODE => self.label.clone(), m::LABEL_RESULT => result)
            .increment(1);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if answered {
            let ms = took.as_secs_f64() * 1000.0;
            metrics::histogram!(m::CLIENT_NODE_SECONDS, m::LABEL_NODE => self.label.clone())
                .record(took.as_secs_f64());
            seen.answered += 1;
            seen.last_answer = Some(Instant::now());
            seen.latency_ms = Some(match seen.latency_ms {
                Some(avg) => avg + LATENCY_WEIGHT * (ms - avg),
                None => ms,
            });
        } else if !matches!(outcome, Err(NodeError::BackingOff)) {
            seen.failed += 1;
        }
        if let Err(e) = outcome {
            if !matches!(
                e,
                NodeError::BackingOff | NodeError::Remote(WireError::NotFound)
            ) {
                seen.last_failure = Some((e.to_string(), Instant::now()));
            }
        }
    }

    fn reach(&self) -> Reachability {
        *self.reach.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the node is currently being skipped after a failed connect.
    pub(crate) fn backing_off(&self) -> bool {
        self.reach().down_until.is_some_and(|t| Instant::now() < t)
    }

    /// Whether reads should ask this node last: it is backing off, its last connect failed
    /// and none has succeeded since, or a connect has been in progress for `slow` or longer.
    /// The last is what a node that is gone looks like to a client that just started: its
    /// packets go unanswered until the connect timeout, and until then a read asking it first
    /// would wait a hedge delay per chunk.
    pub(crate) fn suspect(&self, slow: Duration) -> bool {
        let r = self.reach();
        let now = Instant::now();
        r.last_connect_failed
            || r.down_until.is_some_and(|t| now < t)
            || r.connecting_since
                .is_some_and(|t| now.saturating_duration_since(t) >= slow)
    }

    /// Whether a connection to the node is established and open.
    pub(crate) fn connected(&self) -> Option<quinn::Connection> {
        let st = self.state.try_lock().ok()?;
        st.conn
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    async fn connection(&self, cfg: &ClientConfig) -> Result<quinn::Connection, NodeError> {
        // Holding the lock across the connect makes concurrent requests share one attempt.
        let mut st = self.state.clone().lock_owned().await;
        if let Some(c) = &st.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        {
            let mut reach = self.reach.lock().unwrap_or_else(|p| p.into_inner());
            if reach.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(NodeError::BackingOff);
            }
            reach.connecting_since = Some(Instant::now());
        }
        // The attempt runs as a task of its own, holding the lock, and records its outcome
        // whether or not the request that started it still waits: a hedged read that got its
        // answer elsewhere drops its request, and a node that is gone must then go on looking
        // gone (connecting, then failed) instead of being tried afresh, for another hedge
        // delay, by the next read.
        let endpoint = self.endpoint.clone();
        let config = self.config.clone();
        let address = self.info.address;
        let (timeout, backoff) = (cfg.connect_timeout, cfg.backoff);
        let reach = self.reach.clone();
        let attempt = tokio::spawn(async move {
            let in_progress = ConnectInProgress(reach);
            let connect = async {
                endpoint
                    .connect_with(config, address, CERT_SUBJECT)
                    .map_err(|e| NodeError::Connect(e.to_string()))?
                    .await
                    .map_err(|e| NodeError::Connect(e.to_string()))
            };
            let result = match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r,
                Err(_) => Err(NodeError::Connect(format!(
                    "no handshake within {timeout:?}"
                ))),
            };
            st.conn = result.as_ref().ok().cloned();
            *in_progress.0.lock().unwrap_or_else(|p| p.into_inner()) = match &result {
                Ok(_) => Reachability::default(),
                Err(_) => Reachability {
                    down_until: Some(Instant::now() + backoff),
                    last_connect_failed: true,
                    connecting_since: None,
                },
            };
            // The outcome is recorded (the guard finds nothing left to clear), and only then may
            // a request waiting for the lock look at it.
            drop(in_progress);
            drop(st);
            result
        });
        attempt
            .await
            .map_err(|e| NodeError::Connect(format!("connect attempt failed: {e}")))?
    }

    /// Forgets the connection after a transport failure so the next request reconnects.
    async fn reset(&self, failed: &quinn::Connection) {
        let mut st = self.state.lock().await;
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == failed.stable_id())
        {
            st.conn = None;
        }
    }

    /// Sends one request (with an optional raw body) and reads the response; a `Sliver`
    /// response's body is read too, if it is exactly `expect_body` bytes long (the caller knows
    /// the sliver length from verified metadata, so a node cannot make it allocate more), into
    /// a buffer with room for `room` bytes if more (a caller that appends to it next).
    pub(crate) async fn request(
        &self,
        cfg: &ClientConfig,
        request: wire::Request,
        body: Option<bytes::Bytes>,
        deadline: Duration,
    ) -> Result<(Response, Option<Vec<u8>>), NodeError> {
        self.request_expecting(cfg, request, body, None, 0, deadline)
            .await
    }

    pub(crate) async fn request_expecting(
        &self,
        cfg: &ClientConfig,
        request: wire::Request,
        body: Option<bytes::Bytes>,
        expect_body: Option<u64>,
        room: usize,
        deadline: Duration,
    ) -> Result<(Response, Option<Vec<u8>>), NodeError> {
        let start = Instant::now();
        let _counted = InFlight::count(&self.in_flight);
        let outcome = self
            .exchange(cfg, request, body, expect_body, room, deadline)
            .await;
        self.record(&outcome, start.elapsed());
        outcome
    }

    async fn exchange(
        &self,
        cfg: &ClientConfig,
        request: wire::Request,
        body: Option<bytes::Bytes>,
        expect_body: Option<u64>,
        room: usize,
        deadline: Duration,
    ) -> Result<(Response, Option<Vec<u8>>), NodeError> {
        let conn = self.connection(cfg).await?;
        let exchange = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| NodeError::Transport(e.to_string()))?;
            let frame = RequestFrame {
                version: PROTOCOL_VERSION,
                request,
            };
            wire::write_frame(&mut send, &frame).await?;
            if let Some(body) = body {
                // A node refusing the request stops the stream; its error frame still arrives,
                // so a failed body write is not the final word: read the response below.
                let mut at = 0;
                while at < body.len() {
                    let step = body.slice(at..(at + BODY_STEP).min(body.len()));
                    let n = step.len();
                    if send.write_chunk(step).await.is_err() {
                        break;
                    }
                    at += n;
                    self.traffic
                        .sent
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!(crate::metrics::CLIENT_SENT_BYTES).increment(n as u64);
                }
            }
            let _ = send.finish();
            let resp: Response = wire::read_frame(&mut recv).await?;
            let data = match (&resp, expect_body) {
                (Response::Sliver { len } | Response::Range { len, .. }, Some(expected))
                    if *len == expected =>
                {
                    // Appended from quinn's own buffers: no zeroed buffer to read into first
                    // (that memset was 3% of the mount's CPU in a cold read).
                    let expected = expected as usize;
                    let mut data = Vec::with_capacity(expected.max(room));
                    while data.len() < expected {
                        let want = (expected - data.len()).min(BODY_STEP);
                        let chunk = recv
                            .read_chunk(want, true)
                            .await
                            .map_err(|e| wire::FrameError::Io(e.into()))?
                            .ok_or_else(|| {
                                wire::FrameError::Io(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    format!("body ended at {} of {expected} bytes", data.len()),
                                ))
                            })?;
                        data.extend_from_slice(&chunk.bytes);
                        let n = chunk.bytes.len() as u64;
                        self.traffic
                            .received
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        metrics::counter!(crate::metrics::CLIENT_RECEIVED_BYTES).increment(n);
                    }
                    Some(data)
                }
                (Response::Sliver { len } | Response::Range { len, .. }, Some(expected)) => {
                    let e = crate::codec::CodecError::SliverLength {
                        index: self.info.index,
                        expected: expected as usize,
                        got: *len as usize,
                    };
                    // As loud as a hash mismatch: either way the node served a wrong sliver.
                    tracing::warn!(node = self.info.index, "sliver failed verification: {e}");
                    return Err(NodeError::Verification(e));
                }
                (Response::Sliver { .. } | Response::Range { .. }, None) => {
                    return Err(NodeError::Unexpected("unrequested sliver body".into()))
                }
                _ => None,
            };
            Ok((resp, data))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(Ok((Response::Error(e), _))) => Err(NodeError::Remote(e)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                if matches!(e, NodeError::Transport(_) | NodeError::Frame(_)) {
                    self.reset(&conn).await;
                }
                Err(e)
            }
            Err(_) => {
                // A connection to a node that died would swallow every request until the
                // idle timeout: start over with a fresh one. (A node that restarted resets
                // its former connections itself: see `Identity::endpoint_keys`.)
                self.reset(&conn).await;
                Err(NodeError::Timeout)
            }
        }
    }
}

/// Maps a node's refusal to an error, for callers matching on one expected response.
pub(crate) fn unexpected(resp: Response) -> NodeError {
    match resp {
        Response::Error(e) => NodeError::Remote(e),
        other => NodeError::Unexpected(format!("{other:?}").chars().take(200).collect()),
    }
}
