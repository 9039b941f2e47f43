//! Request handling: each decoded request checked, run against the sliver and root stores off
//! the async workers, and answered; sliver bodies in either direction hold a share of the
//! node's byte budget (see the server's module docs).

use std::sync::Arc;

use tracing::{debug, info, info_span, warn, Instrument};

use super::{State, BUDGET_UNIT};
use crate::codec::{BlobId, Outboard, SliverIndex};
use crate::identity::PublicKey;
use crate::node::roots::RootStoreError;
use crate::node::store::{SliverStore, StoreError};
use crate::wire::{
    self, HealthInfo, Request, Response, StorageConfirmation, WireError, PROTOCOL_VERSION,
};

use super::background::CommitJob;

/// A sliver being served, with the budget it holds.
pub(super) struct Body<'a> {
    /// Whole slivers come from the node's buffer pool and go back to it once sent.
    pub(super) data: crate::buffers::Pooled,
    _budget: Budget<'a>,
}

/// A share of the in-flight byte budget.
struct Budget<'a> {
    _all: tokio::sync::SemaphorePermit<'a>,
    _untrusted: Option<tokio::sync::SemaphorePermit<'a>>,
}

/// Handles one decoded request; returns the response and, for a sliver read, its body.
pub(super) async fn handle<'a>(
    state: &'a State,
    peer: Option<PublicKey>,
    request: Request,
    recv: &mut quinn::RecvStream,
) -> (Response, Option<Body<'a>>) {
    let trusted = peer.is_some_and(|k| state.trusted.contains(&k));
    let op = request.name();
    let result = match request {
        Request::Health => {
            let stats = state.store.stats();
            Ok((
                Response::Health(HealthInfo {
                    version: PROTOCOL_VERSION,
                    public_key: state.identity.public_key(),
                    blobs: stats.blobs,
                    sliver_bytes: stats.sliver_bytes,
                    uptime_secs: state.started.elapsed().as_secs(),
                    client_trusted: trusted,
                    free_bytes: free_bytes(state),
                    quota_left_bytes: peer.filter(|_| trusted).and_then(|p| {
                        Some(
                            state
                                .config
                                .quota_bytes(&p)?
                                .saturating_sub(state.store.usage(&p)),
                        )
                    }),
                }),
                None,
            ))
        }
        Request::StoreSliver {
            blob_id,
            metadata,
            index,
            len,
        } => {
            let span = info_span!("store", blob = %blob_id, index);
            store_sliver(state, peer, trusted, blob_id, metadata, index, len, recv)
                .instrument(span)
                .await
                .map(|c| (Response::Stored(c), None))
        }
        Request::GetSliver { blob_id, index } => {
            let span = info_span!("get_sliver", blob = %blob_id, index);
            get_sliver(state, trusted, blob_id, index)
                .instrument(span)
                .await
                .map(|body| {
                    (
                        Response::Sliver {
                            len: body.data.len() as u64,
                        },
                        Some(body),
                    )
                })
        }
        Request::GetRange {
            blob_id,
            index,
            start,
            end,
        } => {
            let span = info_span!("get_range", blob = %blob_id, index, start, end);
            get_range(state, trusted, blob_id, index, start, end)
                .instrument(span)
                .await
                .map(|(body, proof)| {
                    (
                        Response::Range {
                            len: body.data.len() as u64,
                            proof,
                        },
                        Some(body),
                    )
                })
        }
        Request::GetMetadata { blob_id } => blocking(state, |s| s.get_metadata(&blob_id))
            .await
            .map(|m| (Response::Metadata(m), None)),
        Request::Status { blob_id } => blocking(state, |s| s.status(&blob_id)).await.map(|st| {
            (
                Response::Status(wire::BlobStatus {
                    has_metadata: st.has_metadata,
                    slivers: st.slivers,
                }),
                None,
            )
        }),
        Request::Delete { blob_id } => {
            if !trusted {
                warn!(blob = %blob_id, "delete from untrusted client refused");
                Err(WireError::Unauthorized)
            } else {
                info!(blob = %blob_id, "delete");
                blocking(state, |s| s.delete(&blob_id))
                    .await
                    .map(|existed| (Response::Deleted { existed }, None))
            }
        }
        Request::PutRoot { record } => {
            let span = info_span!("put_root", archive = %record.archive, version = record.version);
            put_root(state, trusted, record)
                .instrument(span)
                .await
                .map(|version| (Response::RootStored { version }, None))
        }
        #[cfg(feature = "faults")]
        Request::GetRoot { archive } if state.config.faults.forge_roots => {
            warn!("fault injection: serving a forged root record");
            Ok((
                Response::Root(Some(crate::node::faults::forged_root(archive))),
                None,
            ))
        }
        Request::GetRoot { archive } => roots_blocking(|| state.roots.get(&archive))
            .await
            .map(|r| (Response::Root(r), None)),
    };
    let result_label = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    metrics::counter!(crate::metrics::NODE_REQUESTS,
        crate::metrics::LABEL_OP => op, crate::metrics::LABEL_RESULT => result_label)
    .increment(1);
    result.unwrap_or_else(|e| (Response::Error(e), None))
}

async fn put_root(
    state: &State,
    trusted: bool,
    record: crate::root::RootRecord,
) -> Result<u64, WireError> {
    if !trusted {
        warn!("root write from untrusted client refused");
        return Err(WireError::Unauthorized);
    }
    let version = record.version;
    roots_blocking(|| state.roots.put(&record)).await?;
    // INV: acknowledged only once the record is durable (RootStore::put fsyncs).
    debug!("root stored");
    Ok(version)
}

/// Runs a root store operation off the async workers and maps its error to the wire.
async fn roots_blocking<T>(f: impl FnOnce() -> Result<T, RootStoreError>) -> Result<T, WireError> {
    tokio::task::block_in_place(f).map_err(|e| match e {
        RootStoreError::Invalid(e) => WireError::InvalidRequest(e.to_string()),
        RootStoreError::Stale { held } => WireError::StaleRoot { held },
        RootStoreError::Corrupt { path, reason } => {
            warn!(path = %path.display(), "damaged root file: {reason}");
            WireError::Corrupt(reason)
        }
        RootStoreError::Io { path, source } => {
            warn!(path = %path.display(), "disk error: {source}");
            WireError::Internal(format!("disk error: {source}"))
        }
    })
}

#[allow(clippy::too_many_arguments)] // one request's fields, checked in order
async fn store_sliver(
    state: &State,
    peer: Option<PublicKey>,
    trusted: bool,
    blob_id: BlobId,
    metadata: crate::codec::BlobMetadata,
    index: SliverIndex,
    len: u64,
    recv: &mut quinn::RecvStream,
) -> Result<StorageConfirmation, WireError> {
    if !trusted {
        warn!("store from untrusted client refused");
        return Err(WireError::Unauthorized);
    }
    #[cfg(feature = "faults")]
    if state.config.faults.refuse_stores {
        warn!("fault injection: refusing a store");
        return Err(WireError::Internal("fault injection: store refused".into()));
    }
    // Check everything that can be checked before accepting a single body byte.
    metadata
        .check_id(&blob_id)
        .map_err(|e| WireError::InvalidRequest(e.to_string()))?;
    let expected = metadata
        .sliver_len()
        .map_err(|e| WireError::InvalidRequest(e.to_string()))? as u64;
    if len != expected {
        return Err(WireError::InvalidRequest(format!(
            "sliver length {len} does not match the metadata's {expected}"
        )));
    }
    if index >= metadata.params.n {
        return Err(WireError::InvalidRequest(format!(
            "sliver index {index} out of range"
        )));
    }
    if let Some(slot) = state.config.committee {
        if index != slot.index {
            return Err(WireError::InvalidRequest(format!(
                "this node stores sliver {}, not {index}",
                slot.index
            )));
        }
        if metadata.params.n != slot.n || metadata.params.k != slot.k {
            return Err(WireError::InvalidRequest(format!(
                "blob encoded for n = {}, k = {}; this committee has n = {}, k = {}",
                metadata.params.n, metadata.params.k, slot.n, slot.k
            )));
        }
    }
    if len > state.config.max_sliver_bytes {
        return Err(WireError::TooLarge {
            limit: state.config.max_sliver_bytes,
        });
    }
    check_free_space(state, len)?;
    if let Some(client) = peer {
        check_quota(state, client, blob_id, index, len).await?;
    }
    // INV: memory held for sliver bodies never exceeds max_inflight_bytes.
    let _permit = acquire_budget(state, len, true).await?;
    // Aligned, so the store writes it to its file straight from here (`cache::direct`).
    let mut body = state
        .buffers
        .take_aligned(len as usize, cache::direct::ALIGN);
    wire::read_body_into(recv, body.vec_mut(), len as usize)
        .await
        .map_err(|e| WireError::InvalidRequest(format!("sliver body: {e}")))?;
    metrics::counter!(crate::metrics::NODE_RECEIVED_BYTES).increment(len);
    let (reply, done) = tokio::sync::oneshot::channel();
    state
        .commits
        .send(CommitJob {
            blob_id,
            metadata,
            index,
            body,
            owner: peer,
            reply,
        })
        .await
        .map_err(|_| WireError::Busy)?;
    done.await.map_err(|_| WireError::Busy)??;
    // INV: the confirmation is signed only after put_sliver returned, i.e. after fsync.
    debug!("stored");
    Ok(StorageConfirmation::sign(&state.identity, blob_id, index))
}

/// Ranges up to this size are read on the runtime thread itself: [`blocking`] first hands the
/// thread's other tasks to another thread, a wake-up that cost a ranged request about a tenth
/// of its time here (the client's mean for a 4 KiB read, three alternating pairs each: 0.212-
/// 0.219 -> 0.174-0.199 ms with the nodes' page cache warm, 0.414-0.458 -> 0.373-0.401 ms
/// cold). A read from disk then holds this thread for one disk access; the runtime's other
/// threads go on (a node runs one per core unless `--threads` says otherwise).
const READ_INLINE: u64 = 256 << 10;

/// Bytes `start..end` of a sliver and their proof. The proof comes from the sliver's outboard
/// (its granules' hashes): cached in memory, else loaded by [`load_outboard`]. A cached
/// outboard was checked against verified metadata, so with one the read touches only the
/// sliver file.
async fn get_range(
    state: &State,
    trusted: bool,
    blob_id: BlobId,
    index: SliverIndex,
    start: u64,
    end: u64,
) -> Result<(Body<'_>, Vec<[u8; 32]>), WireError> {
    let (outboard, whole) = match state.outboards.get(&(blob_id, index)) {
        Some(outboard) => (outboard, None),
        None => load_outboard(state, trusted, blob_id, index, start, end).await?,
    };
    let sliver_len = outboard.sliver_len();
    crate::codec::check_range(sliver_len, start, end)
        .map_err(|e| WireError::InvalidRequest(e.to_string()))?;
    let (data, budget) = match whole {
        // INV: check_range accepted start..end, so it lies within the sliver.
        Some((sliver, budget)) => (sliver[start as usize..end as usize].to_vec(), budget),
        None => {
            let budget = acquire_budget(state, end - start, trusted).await?;
            let read =
                |s: &SliverStore| s.read_sliver_range(&blob_id, index, sliver_len, start, end);
            let data = if end - start <= READ_INLINE {
                read(&state.store).map_err(wire_error)?
            } else {
                blocking(state, read).await?
            };
            (data, budget)
        }
    };
    let proof = outboard
        .prove(start, end)
        .map_err(|e| WireError::InvalidRequest(e.to_string()))?;
    #[cfg(feature = "faults")]
    let data = {
        // A wrong-slivers node serves the same range of another blob's sliver, if it has one.
        let other = if state.config.faults.wrong_slivers {
            blocking(state, |s| {
                Ok(s.blob_ids()?.into_iter().find_map(|other| {
                    let r = s.get_sliver_range(&other, index, start, end);
                    (other != blob_id).then_some(r.ok()?.0)
                }))
            })
            .await?
        } else {
            None
        };
        crate::node::faults::damage_sliver(&state.config.faults, data, other)
    };
    metrics::counter!(crate::metrics::NODE_SERVED_BYTES).increment(data.len() as u64);
    Ok((
        Body {
            data: crate::buffers::Pooled::unpooled(data),
            _budget: budget,
        },
        proof,
    ))
}

/// A sliver read whole, with the budget that holds it.
type WholeSliver<'a> = (Vec<u8>, Budget<'a>);

/// The outboard of a sliver not in memory, once its metadata is checked (and the range against
/// it, before anything is read): the one stored beside the sliver, or one built by reading and
/// hashing the whole sliver (returned too, so the range is cut from it) and then stored.
/// Either way its root must be the committed sliver hash, so a node never proves a sliver it
/// knows is damaged; it is cached.
async fn load_outboard(
    state: &State,
    trusted: bool,
    blob_id: BlobId,
    index: SliverIndex,
    start: u64,
    end: u64,
) -> Result<(Arc<Outboard>, Option<WholeSliver<'_>>), WireError> {
    let metadata = blocking(state, |s| s.get_metadata(&blob_id)).await?;
    let committed = *metadata
        .sliver_hashes
        .get(usize::from(index))
        .ok_or_else(|| WireError::InvalidRequest(format!("sliver index {index} out of range")))?;
    let sliver_len = metadata
        .sliver_len()
        .map_err(|e| WireError::Corrupt(e.to_string()))? as u64;
    crate::codec::check_range(sliver_len, start, end)
        .map_err(|e| WireError::InvalidRequest(e.to_string()))?;
    let stored = tokio::task::block_in_place(|| {
        let o = state.store.get_outboard(&blob_id, index, sliver_len)?;
        (o.root() == committed).then(|| Arc::new(o))
    });
    let (outboard, whole) = match stored {
        Some(outboard) => (outboard, None),
        None => {
            let budget = acquire_budget(state, sliver_len, trusted).await?;
            let sliver = blocking(state, |s| s.get_sliver(&blob_id, index)).await?;
            let outboard = tokio::task::block_in_place(|| Outboard::build(&sliver));
            if outboard.root() != committed {
                warn!(blob = %blob_id, index, "stored sliver does not match its commitment");
                return Err(WireError::Corrupt(
                    "sliver does not match its commitment".into(),
                ));
            }
            let outboard = Arc::new(outboard);
            tokio::task::block_in_place(|| state.store.put_outboard(&blob_id, index, &outboard));
            (outboard, Some((sliver, budget)))
        }
    };
    state.outboards.insert((blob_id, index), outboard.clone());
    Ok((outboard, whole))
}

async fn get_sliver(
    state: &State,
    trusted: bool,
    blob_id: BlobId,
    index: SliverIndex,
) -> Result<Body<'_>, WireError> {
    let metadata = blocking(state, |s| s.get_metadata(&blob_id)).await?;
    let len = metadata
        .sliver_len()
        .map_err(|e| WireError::Corrupt(e.to_string()))? as u64;
    let budget = acquire_budget(state, len, trusted).await?;
    let mut data = state.buffers.take(len as usize);
    blocking(state, |s| {
        s.get_sliver_into(&blob_id, index, data.vec_mut())
    })
    .await?;
    #[cfg(feature = "faults")]
    let data = {
        let f = &state.config.faults;
        let other = if f.wrong_slivers {
            blocking(state, |s| {
                for other in s.blob_ids()? {
                    if other == blob_id {
                        continue;
                    }
                    if let Ok(d) = s.get_sliver(&other, index) {
                        return Ok(Some(d));
                    }
                }
                Ok(None)
            })
            .await?
        } else {
            None
        };
        if f.is_none() {
            data
        } else {
            crate::buffers::Pooled::unpooled(crate::node::faults::damage_sliver(
                f,
                data.to_vec(),
                other,
            ))
        }
    };
    metrics::counter!(crate::metrics::NODE_SERVED_BYTES).increment(data.len() as u64);
    Ok(Body {
        data,
        _budget: budget,
    })
}

/// Free bytes on the store's filesystem (for unprivileged users), if it can be told.
fn disk_free(state: &State) -> Option<u64> {
    let fs = nix::sys::statvfs::statvfs(&state.store_dir).ok()?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(fs.blocks_available()).saturating_mul(u64::from(fs.fragment_size())))
}

/// Bytes of slivers the node still accepts: free disk beyond the reserve (`u64::MAX` when the
/// disk cannot be asked: then nothing is refused for space either).
pub(super) fn free_bytes(state: &State) -> u64 {
    let reserve = state.config.min_free_mib.saturating_mul(1 << 20);
    disk_free(state).map_or(u64::MAX, |free| free.saturating_sub(reserve))
}

/// Refuses a store of `len` bytes that would leave less than the configured reserve free on
/// the store's filesystem.
fn check_free_space(state: &State, len: u64) -> Result<(), WireError> {
    let reserve = state.config.min_free_mib.saturating_mul(1 << 20);
    let Some(free) = disk_free(state) else {
        return Ok(()); // cannot tell: the write itself reports a full disk
    };
    if free < len.saturating_add(reserve) {
        warn!(free, reserve, len, "store refused: disk nearly full");
        return Err(WireError::NoSpace { free, reserve });
    }
    Ok(())
}

/// Refuses a store of `len` bytes that would take `client` past its quota. (Stores running at
/// once are checked against the same usage, so a client may overshoot by what it has in
/// flight, at most the node's in-flight budget.) Storing a sliver the node already holds adds
/// nothing and is let through.
async fn check_quota(
    state: &State,
    client: PublicKey,
    blob_id: BlobId,
    index: SliverIndex,
    len: u64,
) -> Result<(), WireError> {
    let Some(quota) = state.config.quota_bytes(&client) else {
        return Ok(());
    };
    let used = state.store.usage(&client);
    if used.saturating_add(len) <= quota {
        return Ok(());
    }
    let held = blocking(state, |s| s.status(&blob_id))
        .await
        .is_ok_and(|st| st.slivers.contains(&index));
    if held {
        return Ok(());
    }
    warn!(%client, used, quota, len, "store refused: quota exceeded");
    Err(WireError::QuotaExceeded { quota, used })
}

/// Waits (up to half the request deadline) for `len` bytes of the in-flight budget; an
/// untrusted reader also needs them from its half.
async fn acquire_budget(state: &State, len: u64, trusted: bool) -> Result<Budget<'_>, WireError> {
    let units = u32::try_from(len.div_ceil(BUDGET_UNIT)).map_err(|_| WireError::TooLarge {
        limit: state.config.max_sliver_bytes,
    })?;
    let acquire = async {
        let untrusted = if trusted {
            None
        } else {
            Some(state.untrusted_budget.acquire_many(units).await?)
        };
        let all = state.budget.acquire_many(units).await?;
        Ok::<_, tokio::sync::AcquireError>(Budget {
            _all: all,
            _untrusted: untrusted,
        })
    };
    match tokio::time::timeout(state.config.request_timeout() / 2, acquire).await {
        Ok(Ok(b)) => Ok(b),
        _ => Err(WireError::Busy),
    }
}

/// Runs a (disk-bound, fsyncing) store operation and maps its error to the wire.
/// `block_in_place` hands this worker's other tasks to another thread meanwhile, so a slow
/// disk delays only this request. Needs the multi-threaded runtime the node runs on.
async fn blocking<T, F>(state: &State, f: F) -> Result<T, WireError>
where
    F: FnOnce(&SliverStore) -> Result<T, StoreError>,
{
    tokio::task::block_in_place(|| f(&state.store)).map_err(wire_error)
}

/// A store error as the client sees it.
pub(super) fn wire_error(e: StoreError) -> WireError {
    match e {
        StoreError::NotFound { .. } => WireError::NotFound,
        StoreError::Invalid(e) => WireError::InvalidRequest(e.to_string()),
        StoreError::Corrupt { path, reason } => {
            warn!(path = %path.display(), "damaged data on disk: {reason}");
            WireError::Corrupt(reason)
        }
        StoreError::Io { path, source } => {
            warn!(path = %path.display(), "disk error: {source}");
            WireError::Internal(format!("disk error: {source}"))
        }
    }
}
