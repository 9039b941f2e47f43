//! Codec micro-benchmarks: RS encode and decode, sliver hashing and verification, on the
//! committee shape we run (n = 7, k = 3) and the chunk sizes the data path uses.
//!
//! Run with `cargo bench -p netcore --bench codec`. Encode and decode report throughput in
//! blob bytes; `sliver_hash` and `blob_id+verify` in sliver bytes hashed (`n / k` times more).
//! Encode and decode go through one long-lived [`Codec`], as a pipeline worker would;
//! `encode_fresh` shows the cost of the one-shot [`encode`], which allocates RS buffers per call.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use netcore::codec::{encode, sliver_hash, Codec, EncodedBlob, EncodingParams, VerifiedSliver};

/// Committee shape of a 7-node testnet: f = 2, k = n - 2f = 3.
const N: u16 = 7;
/// See [`N`].
const K: u16 = 3;
/// A typical chunk, and a large one that no longer fits any cache.
const SIZES: [(&str, usize); 2] = [("4MiB", 4 << 20), ("64MiB", 64 << 20)];

/// Non-constant data, so nothing can shortcut on zeros.
fn blob(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Every sliver of `enc`, verified.
fn verified(enc: &EncodedBlob) -> Vec<VerifiedSliver> {
    enc.clone().into_verified_slivers()
}

fn codec(c: &mut Criterion) {
    let params = EncodingParams::new(N, K).expect("valid benchmark parameters");
    let mut group = c.benchmark_group("codec_n7_k3");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    for (label, len) in SIZES {
        let data = blob(len);
        let enc = encode(params, &data).expect("encode");
        let slivers = verified(&enc);
        let sliver_bytes = (enc.slivers.len() * enc.slivers[0].len()) as u64;

        let mut codec = Codec::new();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| codec.encode(params, black_box(&data)).expect("encode"))
        });
        group.bench_function(BenchmarkId::new("encode_fresh", label), |b| {
            b.iter(|| encode(params, black_box(&data)).expect("encode"))
        });
        group.bench_function(BenchmarkId::new("decode_systematic", label), |b| {
            b.iter_batched(
                || slivers[..usize::from(K)].to_vec(),
                |s| {
                    codec
                        .decode(&enc.metadata, &enc.blob_id, s)
                        .expect("decode")
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_function(BenchmarkId::new("decode_f_missing", label), |b| {
            // Systematic slivers 0 and 1 lost: restore them from sliver 2 and recovery 3, 4.
            b.iter_batched(
                || slivers[2..5].to_vec(),
                |s| {
                    codec
                        .decode(&enc.metadata, &enc.blob_id, s)
                        .expect("decode")
                },
                BatchSize::LargeInput,
            )
        });

        group.throughput(Throughput::Bytes(sliver_bytes));
        group.bench_function(BenchmarkId::new("sliver_hash", label), |b| {
            b.iter(|| {
                for s in &enc.slivers {
                    black_box(sliver_hash(black_box(s)));
                }
            })
        });
        group.bench_function(BenchmarkId::new("blob_id+verify", label), |b| {
            // What a reader does per blob: derive the id, then `verify_sliver` every sliver.
            // `check_id` + `check_sliver` are its exact steps, minus taking ownership (which
            // would need a clone per iteration here).
            b.iter(|| {
                let id = enc.metadata.blob_id();
                for (index, s) in (0..).zip(&enc.slivers) {
                    enc.metadata.check_id(&id).expect("id");
                    enc.metadata.check_sliver(index, s).expect("verify");
                }
            })
        });
    }
    group.finish();
}

/// Holds the generated group runner, which carries no doc comment of its own.
mod group {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::codec);
}
criterion_main!(group::benches);
