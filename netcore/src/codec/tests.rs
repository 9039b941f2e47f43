//! Unit tests across the codec: encode/decode round trips for many shapes and sizes, and every
//! error a reader or storage node can hit.
#![allow(clippy::unwrap_used)]

use super::*;

/// Deterministic, non-repeating test bytes (xorshift), so a misplaced block cannot look right.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn params(n: u16, k: u16) -> EncodingParams {
    EncodingParams::new(n, k).unwrap()
}

fn verify_all(enc: &EncodedBlob) -> Vec<VerifiedSliver> {
    enc.slivers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            enc.metadata
                .verify_sliver(enc.blob_id, i as SliverIndex, s.clone())
                .unwrap()
        })
        .collect()
}

/// Every `k`-subset of `0..n`, as index lists.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn rec(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            rec(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(0, n, k, &mut Vec::new(), &mut out);
    out
}

const SHAPES: [(u16, u16); 7] = [(1, 1), (2, 1), (3, 3), (4, 2), (7, 3), (10, 4), (5, 4)];
const SIZES: [usize; 12] = [0, 1, 2, 3, 4, 5, 7, 11, 64, 101, 1001, 4097];

#[test]
fn round_trip_every_shape_size_and_subset() {
    for (n, k) in SHAPES {
        for len in SIZES {
            let data = pattern(len, len as u64 + u64::from(n));
            let enc = encode(params(n, k), &data).unwrap();
            assert_eq!(enc.slivers.len(), usize::from(n));
            assert_eq!(enc.metadata.blob_len, len as u64);
            assert_eq!(enc.blob_id, enc.metadata.blob_id());
            let verified = verify_all(&enc);
            for subset in subsets(usize::from(n), usize::from(k)) {
                let chosen = subset.iter().map(|&i| verified[i].clone()).collect();
                let out = decode(&enc.metadata, &enc.blob_id, chosen).unwrap();
                assert_eq!(out, data, "n={n} k={k} len={len} subset={subset:?}");
            }
        }
    }
}

#[test]
fn systematic_slivers_are_the_padded_data() {
    let data = pattern(1001, 1);
    let enc = encode(params(7, 3), &data).unwrap();
    let sliver_len = enc.metadata.sliver_len().unwrap();
    assert_eq!(sliver_len, 334);
    let joined: Vec<u8> = enc.slivers[..3].concat();
    assert_eq!(&joined[..1001], &data[..]);
    assert!(joined[1001..].iter().all(|&b| b == 0));
    assert!(enc.slivers.iter().all(|s| s.len() == sliver_len));
}

#[test]
fn empty_and_tiny_blobs_get_two_byte_slivers() {
    for len in [0, 1, 2, 3] {
        let enc = encode(params(4, 2), &pattern(len, 9)).unwrap();
        assert!(enc.slivers.iter().all(|s| s.len() == 2), "len={len}");
    }
}

#[test]
fn n_equals_k_has_no_recovery_slivers() {
    let data = pattern(10, 3);
    let enc = encode(params(3, 3), &data).unwrap();
    assert_eq!(enc.slivers.len(), 3);
    assert_eq!(enc.slivers.concat()[..10], data[..]);
    let out = decode(&enc.metadata, &enc.blob_id, verify_all(&enc)).unwrap();
    assert_eq!(out, data);
}

#[test]
fn k_one_any_single_sliver_decodes() {
    let data = pattern(777, 4);
    let enc = encode(params(5, 1), &data).unwrap();
    for sliver in verify_all(&enc) {
        assert_eq!(
            decode(&enc.metadata, &enc.blob_id, vec![sliver]).unwrap(),
            data
        );
    }
}

#[test]
fn extra_and_duplicate_slivers_are_fine() {
    let data = pattern(5000, 5);
    let enc = encode(params(7, 3), &data).unwrap();
    let v = verify_all(&enc);
    // All n, shuffled, with duplicates.
    let many = vec![
        v[6].clone(),
        v[3].clone(),
        v[3].clone(),
        v[0].clone(),
        v[5].clone(),
        v[6].clone(),
        v[1].clone(),
        v[2].clone(),
        v[4].clone(),
    ];
    assert_eq!(decode(&enc.metadata, &enc.blob_id, many).unwrap(), data);
    // Duplicates do not count twice.
    let dups = vec![v[4].clone(), v[4].clone(), v[5].clone(), v[5].clone()];
    assert_eq!(
        decode(&enc.metadata, &enc.blob_id, dups),
        Err(CodecError::NotEnoughSlivers { needed: 3, have: 2 })
    );
}

#[test]
fn too_few_slivers() {
    let enc = encode(params(10, 4), &pattern(100, 6)).unwrap();
    let v = verify_all(&enc);
    assert_eq!(
        decode(&enc.metadata, &enc.blob_id, v[..3].to_vec()),
        Err(CodecError::NotEnoughSlivers { needed: 4, have: 3 })
    );
    assert_eq!(
        decode(&enc.metadata, &enc.blob_id, Vec::new()),
        Err(CodecError::NotEnoughSlivers { needed: 4, have: 0 })
    );
}

#[test]
fn sliver_of_another_blob_is_refused() {
    let a = encode(params(4, 2), &pattern(100, 7)).unwrap();
    let b = encode(params(4, 2), &pattern(100, 8)).unwrap();
    let mut slivers = verify_all(&a);
    slivers.truncate(1);
    slivers.push(verify_all(&b).swap_remove(1));
    assert_eq!(
        decode(&a.metadata, &a.blob_id, slivers),
        Err(CodecError::WrongBlob {
            expected: a.blob_id,
            got: b.blob_id
        })
    );
}

#[test]
fn decode_refuses_metadata_of_another_blob() {
    let a = encode(params(4, 2), &pattern(100, 7)).unwrap();
    let b = encode(params(4, 2), &pattern(100, 8)).unwrap();
    assert_eq!(
        decode(&b.metadata, &a.blob_id, verify_all(&a)),
        Err(CodecError::BlobIdMismatch {
            expected: a.blob_id
        })
    );
}

#[test]
fn verify_sliver_rejects_every_kind_of_bad_sliver() {
    let enc = encode(params(7, 3), &pattern(1000, 10)).unwrap();
    let (m, id) = (&enc.metadata, enc.blob_id);
    let good = enc.slivers[2].clone();

    // Wrong index: the bytes of sliver 2 claimed as sliver 3; an index past n.
    assert_eq!(
        m.verify_sliver(id, 3, good.clone()),
        Err(CodecError::SliverHashMismatch { index: 3 })
    );
    assert_eq!(
        m.verify_sliver(id, 7, good.clone()),
        Err(CodecError::IndexOutOfRange { index: 7, n: 7 })
    );
    // Truncated and extended.
    let len = good.len();
    assert_eq!(
        m.verify_sliver(id, 2, good[..len - 1].to_vec()),
        Err(CodecError::SliverLength {
            index: 2,
            expected: len,
            got: len - 1
        })
    );
    assert_eq!(
        m.verify_sliver(id, 2, [good.as_slice(), &[0]].concat()),
        Err(CodecError::SliverLength {
            index: 2,
            expected: len,
            got: len + 1
        })
    );
    // Flipped byte.
    let mut flipped = good.clone();
    flipped[len / 2] ^= 0x40;
    assert_eq!(
        m.verify_sliver(id, 2, flipped),
        Err(CodecError::SliverHashMismatch { index: 2 })
    );
    // Right sliver, wrong blob id.
    let other = BlobId([1; 32]);
    assert_eq!(
        m.verify_sliver(other, 2, good.clone()),
        Err(CodecError::BlobIdMismatch { expected: other })
    );
    // Forged metadata: the sliver hash list edited to match a forged sliver.
    let mut forged = m.clone();
    forged.sliver_hashes[2] = sliver_hash(&[0; 334]);
    assert_eq!(
        forged.verify_sliver(id, 2, vec![0; 334]),
        Err(CodecError::BlobIdMismatch { expected: id })
    );
    // Metadata with the wrong number of hashes.
    let mut short = m.clone();
    short.sliver_hashes.pop();
    assert!(matches!(
        short.verify_sliver(id, 2, good.clone()),
        Err(CodecError::MalformedMetadata(_))
    ));

    let ok = m.verify_sliver(id, 2, good.clone()).unwrap();
    assert_eq!(
        (ok.index(), ok.blob_id(), ok.data()),
        (2, id, good.as_slice())
    );
    assert_eq!(m.check_sliver(2, &good), Ok(()));
    assert_eq!(ok.into_data(), good);
}

#[test]
fn encode_rejects_invalid_params() {
    assert_eq!(
        encode(EncodingParams { n: 3, k: 4 }, b"x"),
        Err(CodecError::InvalidParams { n: 3, k: 4 })
    );
    assert_eq!(
        encode(EncodingParams { n: 3, k: 0 }, b"x"),
        Err(CodecError::InvalidParams { n: 3, k: 0 })
    );
}

#[test]
fn into_verified_slivers_matches_verification() {
    let enc = encode(params(7, 3), &pattern(3000, 11)).unwrap();
    let verified = verify_all(&enc);
    assert_eq!(enc.into_verified_slivers(), verified);
}

#[test]
fn verified_sliver_debug_omits_bytes() {
    let enc = encode(params(2, 1), &[0xAB; 64]).unwrap();
    let s = format!("{:?}", verify_all(&enc)[0]);
    assert!(s.contains("len: 64") && !s.contains("171"), "{s}");
}

#[test]
fn round_trip_64_mib() {
    let data = pattern(64 << 20, 12);
    let enc = encode(params(7, 3), &data).unwrap();
    let v = verify_all(&enc);
    drop(enc.slivers);
    let systematic = v[..3].to_vec();
    assert_eq!(
        decode(&enc.metadata, &enc.blob_id, systematic).unwrap(),
        data
    );
    // Two systematic slivers lost: a real Reed-Solomon decode.
    let degraded = vec![v[1].clone(), v[5].clone(), v[6].clone()];
    assert_eq!(decode(&enc.metadata, &enc.blob_id, degraded).unwrap(), data);
}

#[test]
fn one_codec_reused_across_shapes_and_sizes() {
    // The RS work buffers are reset between blobs of different shapes: nothing may leak over.
    let mut codec = Codec::new();
    for round in 0..2 {
        for (n, k) in SHAPES {
            for len in SIZES {
                let data = pattern(len, (round * 1000 + len) as u64);
                let enc = codec.encode(params(n, k), &data).unwrap();
                assert_eq!(enc, encode(params(n, k), &data).unwrap());
                let v = verify_all(&enc);
                // The last k slivers: as many recovery slivers as possible.
                let tail = v[v.len() - usize::from(k)..].to_vec();
                assert_eq!(
                    codec.decode(&enc.metadata, &enc.blob_id, tail).unwrap(),
                    data
                );
            }
        }
    }
}

#[test]
fn slivers_encoded_into_reused_buffers_are_the_same_bytes() {
    // Buffers that held other bytes, some too small, some larger than a sliver: what they
    // held never shows through, and the commitments are those of a fresh encode.
    let mut codec = Codec::new();
    let mut dirty = |len: usize| {
        let mut v = vec![0xa5u8; (len / 2).max(1) + len % 3];
        v.reserve(len % 7);
        v
    };
    for (n, k) in SHAPES {
        for len in SIZES {
            let data = pattern(len, len as u64 + 7);
            let reused = codec.encode_with(params(n, k), &data, &mut dirty).unwrap();
            assert_eq!(reused, encode(params(n, k), &data).unwrap());
        }
    }
}

#[test]
fn more_originals_than_a_block_holds_symbols_decode_through_the_library() {
    // k = 33 has no combination coefficients (a 64-byte block holds 32 symbols): the missing
    // systematic slivers are restored by the RS library's decode.
    let (n, k) = (36u16, 33u16);
    for len in [1, 4097, 100_001] {
        let data = pattern(len, len as u64);
        let enc = encode(params(n, k), &data).unwrap();
        let v = verify_all(&enc);
        let chosen: Vec<_> = v[3..].to_vec();
        assert_eq!(
            decode(&enc.metadata, &enc.blob_id, chosen).unwrap(),
            data,
            "len {len}"
        );
    }
}
