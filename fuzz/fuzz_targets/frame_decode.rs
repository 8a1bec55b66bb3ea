//! Feeds arbitrary bytes to the frame and message decoders exactly as the coordinator
//! and agent apply them to network input: frame header bound, MessagePack body, then the
//! batch structure checks and the value blocks. None of it may panic or allocate
//! beyond the frame bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use persona_shared::codec::decode_values;
use persona_shared::protocol::{AgentMsg, CoordMsg, decode_frame};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((AgentMsg::Batch(b), _))) = decode_frame::<AgentMsg>(data, MAX) {
        let _ = b.check_timestamps(36_000, i64::MIN, i64::MAX);
        for s in b.series().flatten() {
            let _ = decode_values(s.block, 0, 36_000);
        }
    }
    let _ = decode_frame::<CoordMsg>(data, MAX);
});
