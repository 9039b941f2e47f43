//! The node's background work: the group committer, which makes slivers that arrived together
//! durable in one batch, and the scrubber, which re-verifies everything stored.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::requests::wire_error;
use super::State;
use crate::codec::{BlobId, SliverIndex};
use crate::wire::WireError;

/// A sliver waiting for the group committer.
pub(super) struct CommitJob {
    pub(super) blob_id: BlobId,
    pub(super) metadata: crate::codec::BlobMetadata,
    pub(super) index: SliverIndex,
    /// Returns to the node's buffer pool once the batch is stored.
    pub(super) body: crate::buffers::Pooled,
    /// The storing client (its quota is charged).
    pub(super) owner: Option<crate::identity::PublicKey>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<(), WireError>>,
}

/// Slivers stored per group commit at most.
pub(super) const MAX_BATCH: usize = 64;

/// The group committer: stores the slivers that arrived while the previous batch was being
/// made durable as one batch (two filesystem syncs for all of them, see
/// `SliverStore::put_batch`), then answers each.
pub(super) async fn committer(state: Arc<State>, mut jobs: tokio::sync::mpsc::Receiver<CommitJob>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let st = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            let items: Vec<crate::node::store::PutItem<'_>> = batch
                .iter()
                .map(|j| crate::node::store::PutItem {
                    blob_id: j.blob_id,
                    metadata: &j.metadata,
                    index: j.index,
                    data: &j.body,
                    owner: j.owner,
                })
                .collect();
            let results = st.store.put_batch(&items);
            drop(items);
            (batch, results)
        })
        .await;
        let Ok((batch, results)) = done else {
            warn!("group commit task failed");
            continue;
        };
        debug!(slivers = batch.len(), "group commit");
        for (job, r) in batch.into_iter().zip(results) {
            let _ = job.reply.send(r.map(|_| ()).map_err(wire_error));
        }
    }
}

/// Where a scrub pass is, kept in `D/scrub.toml` so a restarted node resumes its pass instead
/// of reading the start of its store again (at 16 MiB/s a TiB takes 18 hours: a node restarted
/// more often would never reach the end). Losing the file costs only repeated reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct ScrubState {
    /// [`SCRUB_STATE_FORMAT`].
    pub(super) format: u16,
    /// When the current (or last) pass started, seconds since the epoch.
    pub(super) started_secs: u64,
    /// The last blob checked in the current pass (blobs go in id order); `None` once the pass
    /// finished.
    pub(super) last: Option<String>,
}

/// Version of [`ScrubState`].
const SCRUB_STATE_FORMAT: u16 = 1;
/// Name of the scrub position file in the node directory.
pub(super) const SCRUB_STATE_FILE: &str = "scrub.toml";
/// The position is saved after at most this many blobs or this long.
const SCRUB_SAVE_EVERY: (u64, std::time::Duration) = (64, std::time::Duration::from_secs(2));

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ScrubState {
    fn load(path: &std::path::Path) -> Option<Self> {
        let s: ScrubState = toml::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        (s.format == SCRUB_STATE_FORMAT).then_some(s)
    }

    /// Writes the state (temp file and rename: never a torn file; not fsynced, see above).
    fn save(&self, path: &std::path::Path) {
        let tmp = path.with_extension("toml.tmp");
        let text = toml::to_string(self).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
            debug!("scrub: cannot save the position: {e}");
        }
    }
}

/// The background scrubber: pass after pass over the store at `scrub_mib_per_sec`, hashing
/// every sliver against its metadata; damaged ones are quarantined (see
/// [`SliverStore::scrub_blob`]), so the node stops serving them and a repair restores them.
/// Blobs are taken in id order and the position is saved ([`ScrubState`]), so a restart
/// resumes the pass, and the interval between passes counts across restarts.
pub(super) async fn scrubber(state: Arc<State>) {
    let rate = state.config.scrub_mib_per_sec << 20;
    if rate == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(state.config.scrub_interval_secs.max(1));
    let state_path = state
        .store_dir
        .parent()
        .unwrap_or(&state.store_dir)
        .join(SCRUB_STATE_FILE);
    let mut saved = ScrubState::load(&state_path);
    loop {
        // A finished pass: the next one starts `every` after it started.
        let resume_after = match &saved {
            Some(s) if s.last.is_none() => {
                let next = s.started_secs.saturating_add(every.as_secs());
                let wait = next.saturating_sub(now_secs());
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                None
            }
            Some(s) => s.last.as_deref().and_then(|l| l.parse::<BlobId>().ok()),
            None => None,
        };
        let mut pass = match (&saved, resume_after) {
            (Some(s), Some(_)) => s.clone(),
            _ => ScrubState {
                format: SCRUB_STATE_FORMAT,
                started_secs: now_secs(),
                last: None,
            },
        };
        let started = Instant::now();
        let st = state.clone();
        let ids = match tokio::task::spawn_blocking(move || st.store.blob_ids()).await {
            Ok(Ok(mut ids)) => {
                ids.sort_unstable();
                ids
            }
            Ok(Err(e)) => {
                warn!("scrub: cannot list the store: {e}");
                Vec::new()
            }
            Err(_) => return,
        };
        let ids: Vec<BlobId> = match resume_after {
            Some(last) => {
                let rest: Vec<BlobId> = ids.into_iter().filter(|id| *id > last).collect();
                info!(remaining = rest.len(), after = %last, "scrub: resuming the pass a restart interrupted");
                rest
            }
            None => ids,
        };
        let (mut blobs, mut bytes, mut bad) = (0u64, 0u64, 0u64);
        let (mut unsaved, mut saved_at) = (0u64, Instant::now());
        for id in ids {
            let st = state.clone();
            let report = match tokio::task::spawn_blocking(move || st.store.scrub_blob(&id)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    warn!(blob = %id, "scrub: {e}");
                    continue;
                }
                Err(_) => return,
            };
            blobs += 1;
            bytes += report.bytes;
            bad += report.quarantined.len() as u64 + u64::from(report.bad_metadata);
            metrics::counter!(crate::metrics::NODE_QUARANTINED)
                .increment(report.quarantined.len() as u64);
            pass.last = Some(id.to_string());
            unsaved += 1;
            if unsaved >= SCRUB_SAVE_EVERY.0 || saved_at.elapsed() >= SCRUB_SAVE_EVERY.1 {
                pass.save(&state_path);
                (unsaved, saved_at) = (0, Instant::now());
            }
            // Paced: the pass reads at most `rate` bytes per second on average.
            let due = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if bad > 0 {
            warn!(
                blobs,
                bytes,
                damaged = bad,
                "scrub pass found damage (quarantined; run walrusfs repair)"
            );
        } else {
            info!(blobs, bytes, elapsed = ?started.elapsed(), "scrub pass: everything intact");
        }
        pass.last = None;
        pass.save(&state_path);
        saved = Some(pass);
    }
}
