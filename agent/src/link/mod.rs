//! The link to the coordinator: one QUIC connection with mutual TLS that delivers the
//! outbox and keeps the control stream open.
//!
//! On each connection the agent opens the control stream, says Hello (version, host
//! facts, declared purpose, last sequence number) and waits for Welcome, whose sampling
//! settings it passes to the sampling thread. Then every sealed outbox batch, in sequence
//! order, goes on its own bidirectional stream (one frame out, one frame back), with up
//! to [`MAX_IN_FLIGHT`] at once so a backlog drains quickly. An Ack deletes the batch
//! from the outbox; a permanent refusal deletes and counts it (a batch refused for
//! timestamps in the coordinator's future is not permanent: see `skew`); anything else drops the
//! connection, and everything unacknowledged is resent on the next one (the coordinator
//! de-duplicates by sequence number). Connections are retried with capped exponential
//! backoff and full jitter so a fleet does not stampede a restarted coordinator.
//!
//! Detected events (`crate::detect`) go on the control stream as soon as the sampling
//! thread queues them, and every unacknowledged one again on each new connection; an
//! `EventAck` deletes one from the queue.
//!
//! The link never decodes batches and never blocks on disk for long: the outbox calls
//! are short and the sampling runs on its own thread. Frames from the network are
//! length-checked before any allocation and never unwrapped.
//!
//! The coordinator's clock is compared with the agent's at every Welcome (`skew`): the
//! skew is a metric and, beyond a few seconds, a warning, and a batch the coordinator
//! refuses as dated in its future is kept and offered again later, never deleted.
//!
//! Layout: `session` (the [`Link`] and its loop), `backoff`, `skew`, `connect`
//! (resolution and the QUIC endpoint, shared with enrollment) and `error`. Framing is
//! `persona_shared::wire`, the same code the coordinator reads frames with.

mod backoff;
pub(crate) mod connect;
mod error;
mod session;
mod skew;

pub use backoff::Backoff;
pub use error::{LinkError, kind};
pub use session::{DRAIN_TIMEOUT, Link, LinkConfig, LinkContext, LinkStats, MAX_IN_FLIGHT};
pub use skew::SKEW_WARN_MS;
