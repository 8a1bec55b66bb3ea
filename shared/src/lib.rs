//! Code that the agent and the coordinator must agree on byte for byte: the metric
//! registry, the time-series codec, the wire protocol and its framing, and the batch
//! layout. Nothing here does I/O; both sides wrap these types in their own transport
//! and storage.

pub mod batch;
pub mod clock;
pub mod codec;
pub mod command;
pub mod events;
pub mod facts;
pub mod metrics;
pub mod protocol;
pub mod resize;
pub mod sample;
pub mod varint;
pub mod window;
