//! What a running mount or node tells its operator: the Prometheus endpoint (`--metrics
//! ADDR`), the mount's view of the network's free space (for `statfs`), its gauges, and the
//! answer to `walrusfs status`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use netcore::client::Client;
use netcore::metrics as m;
use walrusfs::control::{CacheStatus, NodeStatus, Pending, RecentError};
use walrusfs::data::store::NetworkStore;
use walrusfs::fs::Fs;

/// How often the mount asks every node for its free space.
pub const SPACE_INTERVAL: Duration = Duration::from_secs(30);
/// How often gauges are brought up to date.
const GAUGE_INTERVAL: Duration = Duration::from_secs(2);
/// Journal positions remembered to date the oldest waiting chunk (one per gauge tick: an hour).
const CLOCK_SAMPLES: usize = 1800;
/// Journal queue entries walked at most to count the files waiting.
pub const MAX_WALK: usize = 100_000;

/// Serves the Prometheus text format on `addr` (`GET /metrics`, any path answers) from this
/// process's metrics. Call inside the tokio runtime that is to run the listener.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    let mut builder =
        metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(addr);
    for name in [
        m::CLIENT_PUT_SECONDS,
        m::CLIENT_GET_SECONDS,
        m::CLIENT_GET_RANGE_SECONDS,
        m::CLIENT_NODE_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(name.into()),
                m::LATENCY_BUCKETS,
            )
            .context("bad histogram buckets")?;
    }
    builder
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    m::describe();
    tracing::info!(%addr, "serving metrics");
    Ok(())
}

/// What each node last said about its free space, and what that makes for the archive.
#[derive(Default)]
pub struct NetSpace {
    /// Per node (index order): sliver bytes it accepts from this client, if it answered.
    nodes: Mutex<Vec<Option<u64>>>,
}

impl NetSpace {
    /// Asks every node (health request) and records the answers; returns the file bytes the
    /// network can take (see [`headroom`]). Waits as long as a quorum read does, not for a
    /// node that is gone (the mount asks before it serves); a node that did not answer in
    /// that time keeps what it said last.
    pub async fn poll(&self, client: &Client) -> u64 {
        let answers = client.health_quorum().await;
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let before = std::mem::take(&mut *nodes);
        *nodes = answers
            .iter()
            .enumerate()
            .map(|(i, (_, r))| match r {
                Ok(h) => Some(h.free_bytes.min(h.quota_left_bytes.unwrap_or(u64::MAX))),
                Err(netcore::client::NodeError::Timeout) => before.get(i).copied().flatten(),
                Err(_) => None,
            })
            .collect();
        let c = client.committee();
        headroom(&nodes, c.params().n, c.params().k, c.write_quorum())
    }

    /// What node `i` accepts, as of the last poll.
    fn node(&self, i: usize) -> Option<u64> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(i)
            .copied()
            .flatten()
    }
}

/// File bytes a network whose nodes accept `nodes` sliver bytes each (`None`: no answer)
/// can take: what its `n - f` roomiest nodes can still take together, scaled by `k / n`. A
/// write must reach `n - f` nodes, so they count only as far as the tightest of them: with
/// equal room `r` on every node this is `(n - f) * r * k / n`, and it is 0 as soon as fewer
/// than `n - f` nodes have room.
pub fn headroom(nodes: &[Option<u64>], n: u16, k: u16, quorum: u16) -> u64 {
    let mut room: Vec<u64> = nodes.iter().map(|r| r.unwrap_or(0)).collect();
    room.sort_unstable_by(|a, b| b.cmp(a));
    let Some(&tightest) = room.get(usize::from(quorum).saturating_sub(1)) else {
        return 0;
    };
    let total = u128::from(tightest) * u128::from(quorum) * u128::from(k) / u128::from(n.max(1));
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Dates journal records: remembers, every gauge tick, which sequence number the journal had
/// reached, so the oldest waiting record's age is known to within a tick.
pub struct Clock {
    started: Instant,
    samples: Mutex<VecDeque<(u64, Instant)>>,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Records that records before `next_seq` exist now.
    fn sample(&self, next_seq: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.back().is_some_and(|(seq, _)| *seq == next_seq) {
            return;
        }
        if s.len() == CLOCK_SAMPLES {
            s.pop_front();
        }
        s.push_back((next_seq, Instant::now()));
    }

    /// Seconds record `seq` has existed, at least.
    fn age(&self, seq: u64) -> u64 {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        // The first sample taken after the record was appended.
        let since = s
            .iter()
            .find(|(next, _)| *next > seq)
            .map_or(self.started, |(_, t)| *t);
        since.elapsed().as_secs()
    }
}

/// What waits to be stored, for status and gauges.
pub fn pending(fs: &Fs<NetworkStore>, clock: &Clock, walk: usize) -> Pending {
    match fs.backlog(walk) {
        Ok(b) => {
            clock.sample(b.next_seq);
            Pending {
                journal_bytes: b.journal_bytes + b.memory_bytes,
                chunks: b.chunks,
                files: b.files,
                files_exact: b.files_exact,
                oldest_secs: b.oldest_seq.map(|s| clock.age(s)),
                uploads_in_flight: b.uploads_in_flight,
            }
        }
        Err(e) => {
            tracing::warn!("cannot read the upload backlog: {e}");
            Pending::default()
        }
    }
}

/// Cache counters, for status and gauges.
pub fn caches(fs: &Fs<NetworkStore>) -> Vec<CacheStatus> {
    let status = |name: &str, s: cache::CacheStats| CacheStatus {
        name: name.into(),
        hits: s.hits,
        misses: s.misses,
        bytes: s.bytes,
    };
    let mut out = vec![
        status("memory", fs.cache_stats()),
        status("pack", fs.pack_cache_stats()),
    ];
    out.extend(fs.disk_cache_stats().map(|s| status("disk", s)));
    out
}

/// Each node as the client has seen it.
pub fn nodes(client: &Client, space: &NetSpace) -> Vec<NodeStatus> {
    client
        .node_views()
        .into_iter()
        .map(|v| {
            let failing_now = match (&v.last_failure, v.last_answer_secs_ago) {
                (Some((_, failed_ago)), Some(answer_ago)) => *failed_ago < answer_ago,
                (Some(_), None) => true,
                _ => false,
            };
            let state = if v.backing_off {
                "backing off"
            } else if failing_now {
                "failing"
            } else if v.answered == 0 {
                "unknown"
            } else {
                "ok"
            };
            NodeStatus {
                index: v.index,
                address: v.address.to_string(),
                state: state.into(),
                latency_ms: v.latency_ms,
                answered: v.answered,
                failed: v.failed,
                free_bytes: space.node(usize::from(v.index)),
                last_error: v.last_failure,
            }
        })
        .collect()
}

/// The errors the mount remembers.
pub fn recent_errors() -> Vec<RecentError> {
    walrusfs::fs::recent_errors()
        .into_iter()
        .map(|(at, message)| RecentError { at, message })
        .collect()
}

/// Keeps the mount's gauges current and its view of the network's free space fresh, until
/// `stop` changes.
pub async fn mount_gauges(
    fs: Fs<NetworkStore>,
    client: Client,
    space: Arc<NetSpace>,
    clock: Arc<Clock>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_space = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GAUGE_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if last_space.elapsed() >= SPACE_INTERVAL {
            last_space = Instant::now();
            let free = space.poll(&client).await;
            fs.set_network_free(free);
        }
        let f = fs.clone();
        let c = clock.clone();
        let Ok(p) = tokio::task::spawn_blocking(move || pending(&f, &c, 10_000)).await else {
            continue;
        };
        metrics::gauge!(m::PENDING_BYTES).set(p.journal_bytes as f64);
        metrics::gauge!(m::PENDING_FILES).set(p.files as f64);
        metrics::gauge!(m::PENDING_OLDEST_SECONDS).set(p.oldest_secs.unwrap_or(0) as f64);
        metrics::gauge!(m::UPLOADS_IN_FLIGHT).set(p.uploads_in_flight as f64);
        for c in caches(&fs) {
            metrics::counter!(m::CACHE_HITS, m::LABEL_CACHE => c.name.clone()).absolute(c.hits);
            metrics::counter!(m::CACHE_MISSES, m::LABEL_CACHE => c.name).absolute(c.misses);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_takes_the_roomiest_quorum_scaled_by_k_over_n() {
        // n = 7, k = 3, quorum 5: the five roomiest nodes, as far as the tightest, times 3/7.
        let nodes = [
            Some(700),
            Some(900),
            None,
            Some(700),
            Some(0),
            Some(700),
            Some(700),
        ];
        assert_eq!(headroom(&nodes, 7, 3, 5), 5 * 700 * 3 / 7);
        // Fewer than a quorum with room: nothing can be stored.
        let nodes = [Some(70), Some(70), Some(70), Some(70), None, None, None];
        assert_eq!(headroom(&nodes, 7, 3, 5), 0);
        assert_eq!(headroom(&[None; 7], 7, 3, 5), 0);
        assert_eq!(headroom(&[Some(u64::MAX); 7], 7, 3, 5), u64::MAX);
    }

    #[test]
    fn the_clock_dates_a_record_by_the_first_sample_after_it() {
        let c = Clock::new();
        c.sample(10);
        assert_eq!(c.age(5), 0);
        assert_eq!(c.age(50), 0);
        let s = c.samples.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(s.len(), 1);
    }
}
