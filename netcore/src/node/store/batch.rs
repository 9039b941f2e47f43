//! Group commit: a batch of slivers that arrived together made durable with two filesystem
//! syncs for the whole batch, instead of several fsyncs per sliver.
//!
//! Every file is still written to a temp file and renamed into place, and the order that makes
//! a crash safe is kept: all temp files of the batch are written, then one `syncfs` makes their
//! bytes (and any new directories) durable, then every rename is done, then a second `syncfs`
//! makes the renames durable. Only then does any put of the batch return, so a confirmation is
//! still signed only for a sliver that is durable (DESIGN invariant 3).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::{
    file_outcome, io_error, outboard_name, read_owner, sliver_name, FileOutcome, PutOutcome,
    SliverStore, StoreError, METADATA_FILE, OWNER_FILE, TMP_PREFIX, UNIQUE_SEQ,
};
use crate::codec::{BlobId, BlobMetadata, CodecError, SliverIndex};
use crate::identity::PublicKey;

/// One sliver of a batch.
pub struct PutItem<'a> {
    /// The blob.
    pub blob_id: BlobId,
    /// Its metadata.
    pub metadata: &'a BlobMetadata,
    /// Which sliver.
    pub index: SliverIndex,
    /// The sliver.
    pub data: &'a [u8],
    /// The client storing it: a blob it creates here counts against its quota.
    pub owner: Option<PublicKey>,
}

/// A verified item with its temp files written.
struct Staged {
    dir: PathBuf,
    /// (temp file, final name, outcome) per file to write.
    files: Vec<(PathBuf, String, FileOutcome, u64)>,
    meta_outcome: FileOutcome,
    sliver_outcome: FileOutcome,
    data_len: u64,
    /// Whose quota the sliver counts against: the blob's recorded owner, else the storer.
    charged_to: Option<PublicKey>,
}

impl SliverStore {
    /// Stores every item of the batch, each as [`SliverStore::put_sliver`] would, with two
    /// filesystem syncs in all. Results are in item order; a rejected item writes nothing and
    /// does not hold up the others.
    pub fn put_batch(&self, items: &[PutItem<'_>]) -> Vec<Result<PutOutcome, StoreError>> {
        let mut results: Vec<Option<Result<PutOutcome, StoreError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut staged: Vec<(usize, Staged)> = Vec::new();
        let mut seen: Vec<(BlobId, SliverIndex, usize)> = Vec::new();
        let mut duplicates: Vec<(usize, usize)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some((_, _, first)) = seen
                .iter()
                .find(|(b, x, _)| *b == item.blob_id && *x == item.index)
            {
                // The same sliver twice in one batch: it shares the first one's fate.
                duplicates.push((i, *first));
                continue;
            }
            seen.push((item.blob_id, item.index, i));
            match self.stage(item) {
                Ok(s) => staged.push((i, s)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // The temp files' bytes, and new directories, are durable before any rename.
        if let Err(e) = self.sync_fs() {
            return fail_all(items.len(), results, staged, e);
        }
        for (i, s) in &staged {
            if let Err(e) = self.finish(s, &items[*i].blob_id) {
                results[*i] = Some(Err(e));
            }
        }
        // INV: the renames are durable before any put of the batch returns.
        if let Err(e) = self.sync_fs() {
            return fail_all(items.len(), results, staged, e);
        }
        for (i, s) in staged {
            if results[i].is_none() {
                self.count(&s);
                results[i] = Some(Ok(match s.sliver_outcome {
                    FileOutcome::Unchanged => PutOutcome::AlreadyStored,
                    _ => PutOutcome::Stored,
                }));
            }
        }
        for (dup, first) in duplicates {
            results[dup] = Some(match &results[first] {
                Some(Ok(o)) => Ok(*o),
                _ => Err(StoreError::Invalid(CodecError::MalformedMetadata(format!(
                    "duplicate of batch item {first}, which failed"
                )))),
            });
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Invalid(CodecError::MalformedMetadata(
                        "not processed".into(),
                    )))
                })
            })
            .collect()
    }

    /// Verifies an item and writes its temp files (not synced).
    fn stage(&self, item: &PutItem<'_>) -> Result<Staged, StoreError> {
        // INV (DESIGN 5): verified before the disk is touched.
        item.metadata
            .check_id(&item.blob_id)
            .map_err(StoreError::Invalid)?;
        // Hashed granule by granule: the same pass checks the sliver and makes its outboard,
        // stored beside it so ranged reads never need to read the whole sliver.
        let outboard = crate::codec::Outboard::build(item.data);
        item.metadata
            .check_sliver_hashed(item.index, item.data.len(), outboard.root())
            .map_err(StoreError::Invalid)?;
        let outboard = outboard.to_bytes();
        let encoded = postcard::to_stdvec(item.metadata).map_err(|e| {
            StoreError::Invalid(CodecError::MalformedMetadata(format!(
                "cannot be encoded: {e}"
            )))
        })?;
        let _guard = self.lock(&item.blob_id);
        let (prefix_dir, dir) = self.blob_paths(&item.blob_id);
        for d in [&prefix_dir, &dir] {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(d)(e)),
            }
        }
        let sliver_file = sliver_name(item.index);
        let meta_outcome = file_outcome(&dir.join(METADATA_FILE), &encoded)?;
        let sliver_outcome = file_outcome(&dir.join(&sliver_file), item.data)?;
        let outboard_file = outboard_name(item.index);
        let outboard_outcome = if outboard.is_empty() {
            FileOutcome::Unchanged
        } else {
            file_outcome(&dir.join(&outboard_file), &outboard)?
        };
        let recorded = read_owner(&dir);
        let charged_to = recorded.or(item.owner);
        let owner_bytes = item.owner.map(|o| o.0);
        let owner_outcome = match (recorded, &owner_bytes) {
            (None, Some(_)) => FileOutcome::Created,
            _ => FileOutcome::Unchanged,
        };
        let mut files = Vec::new();
        for (name, data, outcome) in [
            (METADATA_FILE.to_string(), &encoded[..], meta_outcome),
            (
                OWNER_FILE.to_string(),
                owner_bytes.as_ref().map_or(&[][..], |b| &b[..]),
                owner_outcome,
            ),
            (sliver_file, item.data, sliver_outcome),
            (outboard_file, &outboard[..], outboard_outcome),
        ] {
            if matches!(outcome, FileOutcome::Unchanged) {
                continue;
            }
            let tmp = dir.join(format!(
                "{TMP_PREFIX}{name}.{}.{}",
                std::process::id(),
                UNIQUE_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            if let Err(e) = self.direct.write_new(&tmp, &[data]) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_error(&tmp)(e));
            }
            files.push((tmp, name, outcome, data.len() as u64));
        }
        Ok(Staged {
            dir,
            files,
            meta_outcome,
            sliver_outcome,
            data_len: item.data.len() as u64,
            charged_to,
        })
    }

    /// Renames an item's temp files into place.
    fn finish(&self, s: &Staged, blob_id: &BlobId) -> Result<(), StoreError> {
        let _guard = self.lock(blob_id);
        for (tmp, name, _, _) in &s.files {
            let target = s.dir.join(name);
            std::fs::rename(tmp, &target).map_err(io_error(&target))?;
        }
        Ok(())
    }

    fn count(&self, s: &Staged) {
        if let FileOutcome::Created = s.meta_outcome {
            self.update_stats(|st| st.blobs += 1);
        }
        match s.sliver_outcome {
            FileOutcome::Unchanged => {}
            FileOutcome::Created => {
                self.update_stats(|st| st.sliver_bytes += s.data_len);
                self.charge(s.charged_to, 0, s.data_len);
            }
            FileOutcome::Replaced { old_len } => {
                self.update_stats(|st| {
                    st.sliver_bytes = st.sliver_bytes.saturating_sub(old_len) + s.data_len;
                });
                self.charge(s.charged_to, old_len, s.data_len);
            }
        }
    }

    /// One `syncfs` of the filesystem holding the store: every write to it so far is durable.
    pub fn sync_fs(&self) -> Result<(), StoreError> {
        let dir = File::open(&self.blobs).map_err(io_error(&self.blobs))?;
        nix::unistd::syncfs(&dir)
            .map_err(|e| io_error(&self.blobs)(std::io::Error::from_raw_os_error(e as i32)))
    }
}

fn fail_all(
    len: usize,
    mut results: Vec<Option<Result<PutOutcome, StoreError>>>,
    staged: Vec<(usize, Staged)>,
    e: StoreError,
) -> Vec<Result<PutOutcome, StoreError>> {
    let msg = e.to_string();
    for (i, s) in staged {
        for (tmp, ..) in &s.files {
            let _ = std::fs::remove_file(tmp);
        }
        results[i] = Some(Err(StoreError::Io {
            path: s.dir.clone(),
            source: std::io::Error::other(msg.clone()),
        }));
    }
    (0..len)
        .map(|i| {
            results[i].take().unwrap_or_else(|| {
                Err(StoreError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other(msg.clone()),
                })
            })
        })
        .collect()
}
