//! Feeds arbitrary bytes to the root helper's request decoder exactly as
//! `persona-actuator` applies it to a line read from its socket: size bound, UTF-8,
//! the allow-listed JSON requests, then the value bounds. It may refuse; it may not
//! panic. (`agent/src/helper/server.rs` runs the same decoder on random and mutated
//! input in CI without nightly.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use persona_agent::helper::protocol::decode_request;

fuzz_target!(|data: &[u8]| {
    let _ = decode_request(data);
});
