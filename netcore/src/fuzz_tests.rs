//! Fuzz targets of what a node or a client reads from others: request and response frames,
//! root records, sliver metadata and slivers (from the network and from the node's disk). See
//! [`crate::fuzzing`].

use proptest::prelude::*;

use crate::codec::{encode, BlobId, BlobMetadata, EncodingParams};
use crate::fuzzing::{cases, corpus, mutate, write_corpus, Mutation};
use crate::identity::Identity;
use crate::root::{ArchiveSigner, RootRecord};
use crate::wire::{
    self, BlobStatus, HealthInfo, Request, RequestFrame, Response, StorageConfirmation, WireError,
    PROTOCOL_VERSION,
};

fn frame<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rt().block_on(async {
        let mut buf = Vec::new();
        wire::write_frame(&mut buf, value).await.unwrap();
        buf
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn sample_blob() -> crate::codec::EncodedBlob {
    encode(EncodingParams::new(7, 3).unwrap(), &[7u8; 1000]).unwrap()
}

fn sample_root() -> RootRecord {
    RootRecord::sign(
        &ArchiveSigner::from_seed(&[3; 32]),
        42,
        b"sealed body".to_vec(),
    )
    .unwrap()
}

fn request_seeds() -> Vec<Vec<u8>> {
    let mut seeds = builtin_request_seeds();
    seeds.extend(corpus("request"));
    seeds
}

fn response_seeds() -> Vec<Vec<u8>> {
    let mut seeds = builtin_response_seeds();
    seeds.extend(corpus("response"));
    seeds
}

fn builtin_request_seeds() -> Vec<Vec<u8>> {
    let b = sample_blob();
    let reqs = [
        Request::Health,
        Request::StoreSliver {
            blob_id: b.blob_id,
            metadata: b.metadata.clone(),
            index: 1,
            len: b.slivers[1].len() as u64,
        },
        Request::GetSliver {
            blob_id: b.blob_id,
            index: 4,
        },
        Request::GetRange {
            blob_id: b.blob_id,
            index: 2,
            start: 0,
            end: 16_384,
        },
        Request::GetMetadata { blob_id: b.blob_id },
        Request::Status { blob_id: b.blob_id },
        Request::Delete { blob_id: b.blob_id },
        Request::PutRoot {
            record: sample_root(),
        },
        Request::GetRoot {
            archive: sample_root().archive,
        },
    ];
    reqs.into_iter()
        .map(|request| {
            frame(&RequestFrame {
                version: PROTOCOL_VERSION,
                request,
            })
        })
        .collect()
}

fn builtin_response_seeds() -> Vec<Vec<u8>> {
    let b = sample_blob();
    let node = Identity::generate().unwrap();
    let resps = [
        Response::Health(HealthInfo {
            version: PROTOCOL_VERSION,
            public_key: node.public_key(),
            blobs: 3,
            sliver_bytes: 9000,
            uptime_secs: 5,
            client_trusted: true,
            free_bytes: 1 << 30,
            quota_left_bytes: Some(1 << 20),
        }),
        Response::Stored(StorageConfirmation::sign(&node, b.blob_id, 2)),
        Response::Sliver { len: 334 },
        Response::Range {
            len: 16_384,
            proof: vec![[3; 32]; 4],
        },
        Response::Metadata(b.metadata.clone()),
        Response::Status(BlobStatus {
            has_metadata: true,
            slivers: vec![0, 2, 6],
        }),
        Response::Deleted { existed: true },
        Response::RootStored { version: 9 },
        Response::Root(Some(sample_root())),
        Response::Error(WireError::TooLarge { limit: 1 << 20 }),
    ];
    resps.iter().map(frame).collect()
}

fn mutations() -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (
        any::<usize>(),
        proptest::collection::vec(any::<Mutation>(), 1..8),
    )
}

#[test]
fn write_the_seed_corpus() {
    // Only with WALRUSFS_WRITE_CORPUS=1: refreshes fuzz/corpus/ after a format change.
    write_corpus("request", &builtin_request_seeds());
    write_corpus("response", &builtin_response_seeds());
    write_corpus(
        "metadata",
        &[postcard::to_allocvec(&sample_blob().metadata).unwrap()],
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// What a node reads from anyone: a request frame.
    #[test]
    fn fuzz_request_frames((seed, ops) in mutations()) {
        let seeds = request_seeds();
        let bytes = mutate(&seeds[seed % seeds.len()], &ops);
        let _ = rt().block_on(wire::read_frame::<_, RequestFrame>(&mut bytes.as_slice()));
    }

    /// What a client reads from a node that may lie: a response frame, and the records in it
    /// checked the way the client checks them.
    #[test]
    fn fuzz_response_frames((seed, ops) in mutations()) {
        let seeds = response_seeds();
        let bytes = mutate(&seeds[seed % seeds.len()], &ops);
        let b = sample_blob();
        match rt().block_on(wire::read_frame::<_, Response>(&mut bytes.as_slice())) {
            Ok(Response::Metadata(m)) => {
                let _ = m.check_id(&b.blob_id);
                let _ = m.sliver_len();
                let _ = m.verify_sliver(b.blob_id, 1, b.slivers[1].clone());
            }
            Ok(Response::Root(Some(r))) => {
                let _ = r.verify_for(&sample_root().archive);
            }
            Ok(Response::Stored(c)) => {
                let _ = c.verify(&b.blob_id, 2, &c.node_key.clone());
            }
            _ => {}
        }
    }

    /// Metadata from a lying node or a damaged disk, then slivers checked and decoded under it.
    #[test]
    fn fuzz_metadata_and_decode((seed, ops) in mutations(), sliver_ops in proptest::collection::vec(any::<Mutation>(), 0..3)) {
        let b = sample_blob();
        let mut seeds = vec![postcard::to_allocvec(&b.metadata).unwrap()];
        seeds.extend(corpus("metadata"));
        let bytes = mutate(&seeds[seed % seeds.len()], &ops);
        if let Ok(m) = postcard::from_bytes::<BlobMetadata>(&bytes) {
            let id: BlobId = m.blob_id();
            let mut verified = Vec::new();
            for (i, s) in b.slivers.iter().enumerate() {
                let data = if i == 0 { mutate(s, &sliver_ops) } else { s.clone() };
                if let Ok(v) = m.verify_sliver(id, i as u16, data) {
                    verified.push(v);
                }
            }
            if let Ok(out) = crate::codec::decode(&m, &id, verified) {
                prop_assert_eq!(out.len() as u64, m.blob_len);
            }
        }
    }

    /// The node's own files after a crash or disk damage: a blob's metadata file and a root
    /// record file, read back through the stores.
    #[test]
    fn fuzz_node_files_on_disk((seed, ops) in mutations()) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::node::store::SliverStore::open(&dir.path().join("store")).unwrap();
        let b = sample_blob();
        store.put_sliver(&b.blob_id, &b.metadata, 0, &b.slivers[0]).unwrap();
        let hex = b.blob_id.to_string();
        let meta = dir.path().join("store/blobs").join(&hex[..2]).join(&hex).join("metadata");
        let good = std::fs::read(&meta).unwrap();
        std::fs::write(&meta, mutate(&good, &ops)).unwrap();
        let _ = store.get_metadata(&b.blob_id);
        let _ = store.get_sliver(&b.blob_id, 0);
        let _ = store.status(&b.blob_id);
        let _ = store.scrub_blob(&b.blob_id);

        let roots = crate::node::roots::RootStore::open(&dir.path().join("roots")).unwrap();
        let record = sample_root();
        roots.put(&record).unwrap();
        let file = std::fs::read_dir(dir.path().join("roots")).unwrap().flatten()
            .map(|e| e.path()).find(|p| p.is_file()).unwrap();
        let good = std::fs::read(&file).unwrap();
        std::fs::write(&file, mutate(&good, &ops[..ops.len().min(seed % 4 + 1)])).unwrap();
        if let Ok(Some(r)) = roots.get(&record.archive) {
            prop_assert!(r.verify_for(&record.archive).is_ok(), "a record served from disk verifies");
        }
    }
}
