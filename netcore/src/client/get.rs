//! Verified read: metadata checked against the blob id, slivers checked against the metadata,
//! hedged requests, decode from `k`.

use std::future::Future;
use std::pin::Pin;

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, info_span, warn, Instrument};

use super::put::cpu_bound;
use super::{Client, ClientError, Failures, NodeError, NodeFailure};
use crate::codec::{BlobId, BlobMetadata, SliverIndex, VerifiedSliver};
use crate::wire::{Request, Response};

pub(super) type Attempt<'a, T> =
    Pin<Box<dyn Future<Output = (SliverIndex, Result<T, NodeError>)> + Send + 'a>>;

impl Client {
    /// Reads a blob. Every returned byte was verified: the metadata against `blob_id`, each
    /// sliver against the metadata.
    pub async fn get(&self, blob_id: &BlobId) -> Result<Vec<u8>, ClientError> {
        let span = info_span!("get", blob = %blob_id);
        async {
            let metadata = self.get_metadata(blob_id).await?;
            self.get_with_metadata(blob_id, &metadata).await
        }
        .instrument(span)
        .await
    }

    /// Reads a blob whose metadata the caller already holds (e.g. from [`PutOutcome`]
    /// or its own index); the metadata is checked against `blob_id` first.
    ///
    /// [`PutOutcome`]: super::PutOutcome
    pub async fn get_with_metadata(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
    ) -> Result<Vec<u8>, ClientError> {
        crate::metrics::timed(
            crate::metrics::CLIENT_GET_SECONDS,
            self.get_verified(blob_id, metadata),
        )
        .await
    }

    async fn get_verified(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
    ) -> Result<Vec<u8>, ClientError> {
        metadata.check_id(blob_id)?;
        let slivers = self.gather_slivers(blob_id, metadata).await?;
        // INV: decode sees only VerifiedSliver values, which exist only after verification.
        Ok(cpu_bound(
            usize::try_from(metadata.blob_len).unwrap_or(usize::MAX),
            || {
                self.inner
                    .with_codec(metadata.blob_len, |c| c.decode(metadata, blob_id, slivers))
            },
        )?)
    }

    /// Fetches a blob's metadata from the first node whose answer matches `blob_id`.
    pub async fn get_metadata(&self, blob_id: &BlobId) -> Result<BlobMetadata, ClientError> {
        let order = self.read_order(false);
        let cfg = &self.inner.config;
        let deadline = cfg.request_deadline(0);
        let hedge = cfg.hedge_after(0);
        // Metadata is small: two nodes are asked at once, so one stalled node costs nothing.
        let (mut got, failures) = hedged(order, 1, 1, hedge, |index| {
            let node = &self.inner.nodes[usize::from(index)];
            Box::pin(async move {
                let r = async {
                    let (resp, _) = node
                        .request(
                            cfg,
                            Request::GetMetadata { blob_id: *blob_id },
                            None,
                            deadline,
                        )
                        .await?;
                    match resp {
                        Response::Metadata(m) => {
                            m.check_id(blob_id)?;
                            Ok(m)
                        }
                        other => Err(super::conn::unexpected(other)),
                    }
                }
                .await;
                (index, r)
            })
        })
        .await;
        got.pop().ok_or(ClientError::MetadataUnavailable {
            blob_id: *blob_id,
            failures,
        })
    }

    async fn gather_slivers(
        &self,
        blob_id: &BlobId,
        metadata: &BlobMetadata,
    ) -> Result<Vec<VerifiedSliver>, ClientError> {
        let k = metadata.params.k;
        let sliver_len = metadata.sliver_len()? as u64;
        let cfg = &self.inner.config;
        let deadline = cfg.request_deadline(sliver_len);
        let hedge = cfg.hedge_after(sliver_len);
        let blob_room = usize::try_from(metadata.blob_len).unwrap_or(0);
        let order = self.read_order(true);
        let (slivers, failures) = hedged(order, usize::from(k), 0, hedge, |index| {
            let node = &self.inner.nodes[usize::from(index)];
            Box::pin(async move {
                let r = async {
                    let req = Request::GetSliver {
                        blob_id: *blob_id,
                        index,
                    };
                    // Sliver 0 becomes the blob's buffer, the others appended to it
                    // (`decode`): room for all of them, so it is not moved as it grows.
                    let room = if index == 0 { blob_room } else { 0 };
                    let (resp, body) = node
                        .request_expecting(cfg, req, None, Some(sliver_len), room, deadline)
                        .await?;
                    match (resp, body) {
                        (Response::Sliver { .. }, Some(data)) => {
                            // INV: a sliver is kept only if it matches its commitment.
                            let v = cpu_bound(data.len(), || {
                                metadata.verify_sliver(*blob_id, index, data)
                            });
                            v.map_err(|e| {
                                warn!(node = index, "sliver failed verification: {e}");
                                NodeError::Verification(e)
                            })
                        }
                        (other, _) => Err(super::conn::unexpected(other)),
                    }
                }
                .await;
                (index, r)
            })
        })
        .await;
        self.note_damage(blob_id, &failures.0);
        if slivers.len() < usize::from(k) {
            return Err(ClientError::NotEnoughSlivers {
                blob_id: *blob_id,
                needed: k,
                verified: slivers.len() as u16,
                failures,
            });
        }
        Ok(slivers)
    }

    /// Notes `blob_id` for repair if a node answered a read of it without valid bytes (see
    /// `Client::take_damaged`); a node that did not answer is not damaged, only away.
    pub(super) fn note_damage(&self, blob_id: &BlobId, failures: &[NodeFailure]) {
        if failures.iter().any(|f| {
            matches!(
                f.error,
                NodeError::Verification(_)
                    | NodeError::Remote(crate::wire::WireError::NotFound)
                    | NodeError::Remote(crate::wire::WireError::Corrupt(_))
            )
        }) {
            self.inner.note_damaged(*blob_id);
        }
    }

    /// Nodes in the order to ask them: reachable before suspect (backing off, or failing to
    /// connect), and with `systematic`, the `k` systematic slivers first (they decode without
    /// Reed-Solomon work).
    pub(super) fn read_order(&self, systematic: bool) -> Vec<SliverIndex> {
        let k = self.inner.committee.k;
        let mut order = Vec::with_capacity(self.inner.nodes.len());
        for node in &self.inner.nodes {
            let down = node.suspect(self.inner.config.hedge_delay);
            let rank = (down, systematic && node.info.index >= k);
            order.push((rank, node.info.index));
        }
        order.sort();
        order.into_iter().map(|(_, i)| i).collect()
    }
}

/// The shortest adaptive hedge delay (see [`hedged`]).
const MIN_HEDGE: std::time::Duration = std::time::Duration::from_millis(20);

/// Whether `e` is a lost connection (not an answer): the node may well answer a retry.
fn is_transient(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::Transport(_) | NodeError::Frame(crate::wire::FrameError::Io(_))
    )
}

/// Asks nodes in `order` until `want` answers succeed: `want + extra` requests start at once;
/// each failure starts the next node, and so does each `hedge` period without an answer, so
/// one slow node costs at most a hedge delay. Once the first answer is in, after `t`, the
/// rest get as long again (at least [`MIN_HEDGE`]); then every answer still missing is asked
/// of another node at once, and again every `t` after that: stalled or dead nodes among fast
/// ones (two of the `k` systematic ones, say) cost about one fast answer each round, not a
/// fixed hedge delay per missing sliver. Returns the successes and every failure.
pub(super) async fn hedged<'a, T>(
    order: Vec<SliverIndex>,
    want: usize,
    extra: usize,
    hedge: std::time::Duration,
    launch: impl Fn(SliverIndex) -> Attempt<'a, T>,
) -> (Vec<T>, Failures) {
    let started = tokio::time::Instant::now();
    let mut pending: std::collections::VecDeque<SliverIndex> = order.into();
    let mut retried = Vec::new();
    let mut running = FuturesUnordered::new();
    for _ in 0..want + extra {
        let Some(index) = pending.pop_front() else {
            break;
        };
        running.push(launch(index));
    }
    let mut done = Vec::with_capacity(want);
    let mut failures = Vec::new();
    let timer = tokio::time::sleep(hedge);
    tokio::pin!(timer);
    // Time to the first answer, once there is one: the pace of the adaptive hedges.
    let mut first: Option<std::time::Duration> = None;
    while done.len() < want && !running.is_empty() {
        tokio::select! {
            Some((node, result)) = running.next() => match result {
                Ok(v) => {
                    done.push(v);
                    if done.len() == 1 && want > 1 {
                        let now = tokio::time::Instant::now();
                        let pace = (now - started).max(MIN_HEDGE);
                        first = Some(pace);
                        let sooner = now + pace;
                        if sooner < timer.deadline() {
                            timer.as_mut().reset(sooner);
                        }
                    }
                }
                Err(error) => {
                    debug!(node, "request failed: {error}");
                    // A connection lost mid-request is worth one more try, after every other
                    // node (the next request reconnects).
                    if is_transient(&error) && !retried.contains(&node) {
                        retried.push(node);
                        pending.push_back(node);
                    }
                    failures.push(NodeFailure { node, error });
                    if let Some(next) = pending.pop_front() {
                        running.push(launch(next));
                    }
                }
            },
            () = &mut timer => {
                // Before any answer, one more node per hedge period; after one, a node for
                // every answer still missing, at the pace of the first answer.
                let (more, pace) = match first {
                    Some(pace) => (want - done.len(), pace),
                    None => (1, hedge),
                };
                for _ in 0..more {
                    if let Some(next) = pending.pop_front() {
                        debug!(node = next, "hedging a slow request");
                        running.push(launch(next));
                    }
                }
                timer.as_mut().reset(tokio::time::Instant::now() + pace);
            }
        }
    }
    (done, Failures(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes that answer after `ms` (virtual) milliseconds, or never (`None`).
    fn launcher(
        delays: &'static [Option<u64>],
    ) -> impl Fn(SliverIndex) -> Attempt<'static, SliverIndex> {
        move |index| {
            Box::pin(async move {
                match delays[usize::from(index)] {
                    Some(ms) => {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        (index, Ok(index))
                    }
                    None => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_dead_systematic_nodes_cost_one_fast_answer_not_a_hedge_delay_each() {
        // Nodes 0 and 1 never answer; the rest in 10 ms. Three slivers are needed.
        static DELAYS: [Option<u64>; 7] =
            [None, None, Some(10), Some(10), Some(10), Some(10), Some(10)];
        let hedge = std::time::Duration::from_millis(300);
        let start = tokio::time::Instant::now();
        let (got, _) = hedged((0..7).collect(), 3, 0, hedge, launcher(&DELAYS)).await;
        let took = start.elapsed();
        assert_eq!(got.len(), 3);
        // Node 2 answers at 10 ms; at 20 ms both missing slivers are asked of nodes 3 and 4,
        // which answer at 30 ms (one at a time, with a hedge delay between, took 330 ms).
        assert!(
            took <= std::time::Duration::from_millis(40),
            "took {took:?}"
        );
        assert!(got.contains(&3) && got.contains(&4), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn before_any_answer_one_more_node_per_hedge_period() {
        static DELAYS: [Option<u64>; 4] = [None, Some(1000), Some(1000), Some(1000)];
        let hedge = std::time::Duration::from_millis(300);
        let start = tokio::time::Instant::now();
        let (got, _) = hedged((0..4).collect(), 1, 0, hedge, launcher(&DELAYS)).await;
        // Node 0 never answers: node 1 is asked at 300 ms and answers at 1300 ms.
        assert_eq!(got, vec![1]);
        assert_eq!(start.elapsed(), std::time::Duration::from_millis(1300));
    }
}
