//! Chunk sealing micro-benchmark: ChaCha20-Poly1305 over a 4 MiB chunk in the segment sizes
//! archives use (4 KiB since index format 4; 64 KiB before), sealing and opening.
//!
//! Run with `cargo bench -p walrusfs --bench seal`. Throughput is in plaintext bytes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use walrusfs::data::crypto::{ChunkPlace, DataKey, Segments};

/// A default-size chunk.
const CHUNK: usize = 4 << 20;

fn seal(c: &mut Criterion) {
    let key = DataKey::from_bytes([3; 32]);
    let place = ChunkPlace {
        ino: 7,
        index: 1,
        version: 2,
        salt: [5; 16],
    };
    let plain: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut group = c.benchmark_group("chunk");
    group
        .throughput(Throughput::Bytes(CHUNK as u64))
        .measurement_time(Duration::from_secs(3));
    for (label, segments) in [("4KiB", Segments::DEFAULT), ("64KiB", Segments::LEGACY)] {
        group.bench_function(BenchmarkId::new("seal", label), |b| {
            b.iter(|| black_box(key.seal(segments, &place, black_box(&plain))))
        });
        let sealed = key.seal(segments, &place, &plain);
        group.bench_function(BenchmarkId::new("open", label), |b| {
            b.iter_batched(
                || sealed.clone(),
                |s| black_box(key.open(segments, &place, CHUNK, s)),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    seal(&mut c);
}

criterion_main!(benches);
