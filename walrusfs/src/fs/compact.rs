//! Pack compaction: a pack whose files were mostly overwritten or deleted still costs its full
//! size on every node. When its live chunks cover less than [`LIVE_PERCENT`] of it, their
//! sealed bytes (no re-encryption: a chunk's seal does not depend on where it is stored) are
//! copied into a new pack, the refs are switched to it in one transaction (only those still
//! pointing where they did), and the old pack, now unreferenced, goes to GC.
//!
//! Readers that looked a chunk up before the switch keep reading the old pack: GC deletes it
//! only after the switch is published and a grace period has passed.

use std::collections::{BTreeMap, BTreeSet};

use super::upload::PACK_BYTES;
use super::{Fs, FsError, FsResult};
use crate::data::store::BlobStore;
use crate::index::Move;

/// Packs whose live bytes fall below this share of their size are compacted.
pub(crate) const LIVE_PERCENT: u64 = 50;
/// Smaller blobs are not worth rewriting.
const MIN_PACK: u64 = 256 << 10;
/// Packs compacted per round.
const PER_ROUND: usize = 16;

impl<B: BlobStore> Fs<B> {
    /// One compaction round; returns how many chunk refs moved.
    pub(crate) async fn compact_round(&self) -> FsResult<usize> {
        let index = self.inner.index.clone();
        let candidates = tokio::task::spawn_blocking(move || {
            index.compaction_candidates(MIN_PACK, LIVE_PERCENT, PER_ROUND)
        })
        .await
        .map_err(|e| FsError::Network(format!("compaction task: {e}")))??;
        if candidates.is_empty() {
            return Ok(0);
        }
        let set: BTreeSet<_> = candidates.iter().map(|(b, _)| *b).collect();
        let index = self.inner.index.clone();
        let refs = tokio::task::spawn_blocking(move || index.refs_into(&set))
            .await
            .map_err(|e| FsError::Network(format!("compaction task: {e}")))??;
        let mut by_blob: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (ino, chunk, r) in refs {
            by_blob
                .entry(r.blob_id)
                .or_insert_with(Vec::new)
                .push((ino, chunk, r));
        }
        // The live chunks' sealed bytes, pack by pack.
        let segments = self.inner.index.segments();
        let mut live: Vec<(Move, Vec<u8>)> = Vec::new();
        for (blob, info) in &candidates {
            let Some(refs) = by_blob.remove(blob) else {
                continue;
            };
            let data = self
                .inner
                .store
                .get(*blob, info.metadata.clone())
                .await
                .map_err(|e| FsError::Network(e.message))?;
            for (ino, chunk, r) in refs {
                let from = r.offset as usize;
                let to = from + r.sealed_len(segments) as usize;
                let Some(sealed) = data.get(from..to) else {
                    tracing::warn!(blob = %blob, "a chunk ref lies beyond its pack; not compacted");
                    continue;
                };
                live.push((
                    Move {
                        ino,
                        chunk,
                        old: r,
                        offset: 0,
                    },
                    sealed.to_vec(),
                ));
            }
        }
        // New packs of up to PACK_BYTES.
        let mut moved = 0;
        let mut batch: Vec<Move> = Vec::new();
        let mut bytes: Vec<u8> = Vec::new();
        for (mut m, sealed) in live {
            if !batch.is_empty() && (bytes.len() + sealed.len()) as u64 > PACK_BYTES {
                moved += self
                    .store_moved(std::mem::take(&mut batch), std::mem::take(&mut bytes))
                    .await?;
            }
            m.offset = bytes.len() as u64;
            bytes.extend_from_slice(&sealed);
            batch.push(m);
        }
        if !batch.is_empty() {
            moved += self.store_moved(batch, bytes).await?;
        }
        tracing::info!(packs = candidates.len(), moved, "compacted packs");
        self.inner.gc_wake.notify_one();
        Ok(moved)
    }

    async fn store_moved(&self, moves: Vec<Move>, bytes: Vec<u8>) -> FsResult<usize> {
        // Held until the index commit (see `Inner::gc_gate`).
        let _gate = self.inner.gc_gate.read().await;
        let index = self.inner.index.clone();
        let stored = self
            .inner
            .store
            .put_announced(&bytes, |id| super::upload::intend(&index, id))
            .await
            .map_err(|e| FsError::Network(e.message))?;
        let index = self.inner.index.clone();
        tokio::task::spawn_blocking(move || {
            index.commit_moves(
                stored.blob_id,
                &stored.metadata,
                &stored.confirmations,
                &moves,
            )
        })
        .await
        .map_err(|e| FsError::Network(format!("compaction task: {e}")))?
        .map_err(FsError::from)
    }
}
