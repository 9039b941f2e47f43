//! Property tests: random shapes, data, erasures and corruption always decode to the original,
//! and no corrupted sliver ever passes verification.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// (n, k) with 1 <= k <= n <= 12.
fn shape() -> impl Strategy<Value = (u16, u16)> {
    (1u16..=12).prop_flat_map(|n| (Just(n), 1..=n))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Erase up to n - k slivers, corrupt some of the others (each corruption must be caught),
    /// and decode whatever verifies: always the original bytes.
    #[test]
    fn decode_survives_erasures_and_corruption(
        (n, k) in shape(),
        data in prop::collection::vec(any::<u8>(), 0..=64 * 1024),
        order_seed in any::<u64>(),
        fates in prop::collection::vec((0u8..4, any::<usize>(), 1u8..=255), 12),
    ) {
        let enc = encode(EncodingParams::new(n, k).unwrap(), &data).unwrap();
        let (n, k) = (usize::from(n), usize::from(k));
        let mut budget = n - k; // slivers we may lose (erased or corrupted) and still decode
        let mut kept = Vec::new();
        for (i, sliver) in enc.slivers.iter().enumerate() {
            let (fate, pos, mask) = fates[i];
            let mut bytes = sliver.clone();
            match fate {
                0 if budget > 0 => {
                    budget -= 1;
                    continue; // erased
                }
                1 if budget > 0 => {
                    budget -= 1;
                    let pos = pos % bytes.len();
                    bytes[pos] ^= mask;
                    let res = enc.metadata.verify_sliver(enc.blob_id, i as SliverIndex, bytes);
                    prop_assert_eq!(
                        res,
                        Err(CodecError::SliverHashMismatch { index: i as SliverIndex })
                    );
                    continue;
                }
                2 if budget > 0 => {
                    budget -= 1;
                    bytes.truncate(pos % bytes.len());
                    let res = enc.metadata.verify_sliver(enc.blob_id, i as SliverIndex, bytes);
                    let is_length_error = matches!(res, Err(CodecError::SliverLength { .. }));
                    prop_assert!(is_length_error);
                    continue;
                }
                _ => {}
            }
            kept.push(enc.metadata.verify_sliver(enc.blob_id, i as SliverIndex, bytes).unwrap());
        }
        prop_assert!(kept.len() >= k);
        // Order must not matter.
        let rot = (order_seed as usize) % kept.len();
        kept.rotate_left(rot);
        let out = decode(&enc.metadata, &enc.blob_id, kept).unwrap();
        prop_assert_eq!(out, data);
    }

    /// Any single flipped bit in any sliver is rejected.
    #[test]
    fn single_bit_flip_is_rejected(
        (n, k) in shape(),
        data in prop::collection::vec(any::<u8>(), 0..=16 * 1024),
        which in any::<usize>(),
        bit in any::<usize>(),
    ) {
        let enc = encode(EncodingParams::new(n, k).unwrap(), &data).unwrap();
        let index = which % enc.slivers.len();
        let mut bytes = enc.slivers[index].clone();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let index = index as SliverIndex;
        prop_assert_eq!(
            enc.metadata.check_sliver(index, &bytes),
            Err(CodecError::SliverHashMismatch { index })
        );
        prop_assert_eq!(
            enc.metadata.verify_sliver(enc.blob_id, index, bytes),
            Err(CodecError::SliverHashMismatch { index })
        );
    }
}
