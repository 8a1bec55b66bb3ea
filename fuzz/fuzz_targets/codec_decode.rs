//! Feeds arbitrary bytes to the codec's decoders, which take blocks straight from the
//! network. `shared/tests/codec_props.rs` runs the same body under proptest; keep the two
//! in step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persona_shared::codec::{decode_timestamps, decode_values, encode_timestamps};

fuzz_target!(|data: &[u8]| {
    if let Some((&first, rest)) = data.split_first() {
        let scale = (first as i8) % 10;
        let _ = decode_values(rest, scale, 100_000);
    }
    // Any timestamp series the decoder accepts must survive a re-encode unchanged.
    if let Ok(ts) = decode_timestamps(data, 100_000) {
        let mut again = Vec::new();
        encode_timestamps(&ts, &mut again);
        assert_eq!(decode_timestamps(&again, 100_000), Ok(ts));
    }
});
