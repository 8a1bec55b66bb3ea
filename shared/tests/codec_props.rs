//! Property tests of the time-series codec: round trips for arbitrary input, and decoders
//! that survive arbitrary bytes (the same body as the `fuzz/` target, so CI covers it even
//! where cargo-fuzz cannot run).

use persona_shared::codec::{
    decode_timestamps, decode_timestamps_into, decode_values, decode_values_into,
    encode_timestamps, encode_values, quantise,
};
use proptest::prelude::*;

/// Mirror of `fuzz/fuzz_targets/codec_decode.rs`; keep the two in step.
fn fuzz_one(data: &[u8]) {
    if let Some((&first, rest)) = data.split_first() {
        let scale = (first as i8) % 10;
        let _ = decode_values(rest, scale, 100_000);
    }
    if let Ok(ts) = decode_timestamps(data, 100_000) {
        let mut again = Vec::new();
        encode_timestamps(&ts, &mut again);
        assert_eq!(decode_timestamps(&again, 100_000), Ok(ts));
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        // Every class: NaN, ±inf, ±0, subnormals, huge.
        any::<f64>(),
        -1e6..1e6f64,
        0.0..1.0f64,
        (-1000i32..1000).prop_map(f64::from),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
    ]
}

fn timestamps() -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        prop::collection::vec(any::<i64>(), 0..64),
        (
            any::<i64>(),
            prop::collection::vec(-50i64..50, 0..200),
            prop::sample::select(vec![1000i64, 10, 60_000])
        )
            .prop_map(|(start, jitter, step)| {
                let mut t = start;
                jitter
                    .into_iter()
                    .map(|j| {
                        t = t.wrapping_add(step + j);
                        t
                    })
                    .collect()
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn values_round_trip(values in prop::collection::vec(value(), 0..100), scale in -9i8..=9) {
        let mut block = Vec::new();
        encode_values(&values, scale, &mut block);
        let back = decode_values(&block, scale, values.len()).unwrap();
        prop_assert_eq!(back.len(), values.len());
        let step = 10f64.powi(i32::from(scale));
        for (&v, &b) in values.iter().zip(&back) {
            let q = quantise(v, scale);
            if v.is_nan() {
                prop_assert!(b.is_nan());
                continue;
            }
            prop_assert_eq!(b.to_bits(), q.to_bits(), "{} at scale {}", v, scale);
            if v.is_infinite() {
                prop_assert_eq!(b, v);
            } else if b != v {
                let tolerance = step / 2.0 * (1.0 + 1e-12) + 4.0 * f64::EPSILON * v.abs();
                prop_assert!((b - v).abs() <= tolerance, "{} -> {} at scale {}", v, b, scale);
            }
        }
    }

    #[test]
    fn quantise_is_idempotent_below_2_pow_51_quanta(f in -1e15..1e15f64, scale in -9i8..=9) {
        let q = quantise(f * 10f64.powi(i32::from(scale)), scale);
        prop_assert_eq!(quantise(q, scale), q);
    }

    #[test]
    fn timestamps_round_trip(ts in timestamps()) {
        let mut block = Vec::new();
        encode_timestamps(&ts, &mut block);
        prop_assert_eq!(decode_timestamps(&block, ts.len()), Ok(ts));
    }

    #[test]
    fn concatenated_blocks_round_trip(
        blocks in prop::collection::vec(
            (prop::collection::vec(value(), 0..20), timestamps()), 0..8),
        scale in -9i8..=9,
    ) {
        let mut vbuf = Vec::new();
        let mut tbuf = Vec::new();
        for (values, ts) in &blocks {
            encode_values(values, scale, &mut vbuf);
            encode_timestamps(ts, &mut tbuf);
        }
        let (mut vat, mut tat) = (0, 0);
        for (values, ts) in &blocks {
            let mut vout = Vec::new();
            vat += decode_values_into(&vbuf[vat..], scale, 100, &mut vout).unwrap();
            prop_assert_eq!(vout.len(), values.len());
            let mut tout = Vec::new();
            tat += decode_timestamps_into(&tbuf[tat..], 1000, &mut tout).unwrap();
            prop_assert_eq!(&tout, ts);
        }
        prop_assert_eq!(vat, vbuf.len());
        prop_assert_eq!(tat, tbuf.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzz_one(&data);
        for max in [0, 1, 7, usize::MAX] {
            let _ = decode_values(&data, 0, max);
            let _ = decode_timestamps(&data, max);
        }
    }

    #[test]
    fn corrupted_blocks_never_panic(
        values in prop::collection::vec(value(), 1..50),
        ts in timestamps(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut block in [
            { let mut b = Vec::new(); encode_values(&values, -3, &mut b); b },
            { let mut b = Vec::new(); encode_timestamps(&ts, &mut b); b },
        ] {
            for (at, bit) in &flips {
                let i = at.index(block.len());
                block[i] ^= 1 << bit;
            }
            block.truncate(cut.index(block.len() + 1));
            let mut scaled = vec![0xfd];
            scaled.extend_from_slice(&block);
            fuzz_one(&scaled);
            fuzz_one(&block);
        }
    }
}
