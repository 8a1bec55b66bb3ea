//! Why a link session ended, as one error type for the session and for enrollment's
//! connection, and the names of message kinds for those errors. What this is not: the
//! framing errors themselves (`persona_shared::wire::WireError`, wrapped here).

use std::net::SocketAddr;

use persona_shared::protocol::{CoordMsg, RejectCode};
use persona_shared::wire::WireError;

use crate::outbox::OutboxError;
use crate::tls::TlsError;

/// Why a connection ended or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} resolves to no address")]
    NoAddress { addr: String },
    #[error("cannot open a UDP socket: {0}")]
    Endpoint(std::io::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("{context}: {source}")]
    Wire {
        context: &'static str,
        source: WireError,
    },
    #[error("coordinator refused {what} ({code:?}): {message}")]
    Rejected {
        what: &'static str,
        code: RejectCode,
        message: String,
    },
    #[error("unexpected {got} in answer to {what}")]
    Unexpected {
        what: &'static str,
        got: &'static str,
    },
    #[error("answer for batch {got} on the stream of batch {sent}")]
    WrongAck { sent: u64, got: u64 },
    #[error("{0}")]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("internal task failed: {0}")]
    Task(String),
}

pub(crate) fn wire(context: &'static str) -> impl FnOnce(WireError) -> LinkError {
    move |source| LinkError::Wire { context, source }
}

/// Name of a message kind, for errors (never the content, which may be large).
pub fn kind(m: &CoordMsg) -> &'static str {
    match m {
        CoordMsg::Enrolled(_) => "Enrolled",
        CoordMsg::Welcome(_) => "Welcome",
        CoordMsg::Ack { .. } => "Ack",
        CoordMsg::Reject(_) => "Reject",
        CoordMsg::EventAck { .. } => "EventAck",
        CoordMsg::Model(_) => "Model",
        CoordMsg::Command(_) => "Command",
    }
}
