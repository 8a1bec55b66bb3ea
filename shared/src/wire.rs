//! Frames on a byte stream: the 4-byte length prefix of `protocol`, read and written
//! over any tokio `AsyncRead`/`AsyncWrite` (a QUIC stream in the daemons, a pipe in
//! tests), with the length checked against the caller's bound before anything is
//! allocated.
//!
//! Both ends use these functions, so the agent and the coordinator enforce the bound and
//! tell a clean end of stream from a broken frame the same way. [`WireError`] keeps the
//! cases apart as variants, so a caller decides what to do by matching, never by reading
//! the message. What this is not: connection set-up, TLS or QUIC (the agent's `link` and
//! the coordinator's server own those), and nothing here decides what a message means.

use std::io;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::{FrameError, decode_body, encode_frame, frame_len};

/// How long a peer may take to answer a request before the exchange counts as dead.
/// The coordinator answers a batch only after its commit, which takes milliseconds.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a frame could not be read or written.
///
/// The messages of [`Ended`](WireError::Ended) and [`Truncated`](WireError::Truncated)
/// both say "finished early", and too large frames "exceeds the maximum": older
/// coordinators sorted errors by those words, and log searches still do.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer finished the stream where a frame could have begun: the normal end.
    #[error("stream finished early, before a frame began")]
    Ended,
    /// The peer finished the stream inside a frame (its header or its body).
    #[error("stream finished early: {got} of {want} bytes of a frame")]
    Truncated { got: usize, want: usize },
    /// The header announced more than the bound; nothing was allocated for it.
    #[error("bad frame: frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    /// Reading failed (stream reset, connection lost, stream closed locally).
    #[error("cannot receive: {0}")]
    Read(io::Error),
    /// Writing failed (stream stopped by the peer, connection lost).
    #[error("cannot send: {0}")]
    Write(io::Error),
    /// The connection under the stream failed (opening a stream, or it closed).
    #[error("connection lost: {0}")]
    Connection(io::Error),
    /// A frame that is not one: empty, or a message that cannot be encoded in the bound.
    #[error("bad frame: {0}")]
    Frame(FrameError),
    /// A complete frame whose body is not the expected message.
    #[error("bad frame in {what}: {source}")]
    Decode {
        what: &'static str,
        source: FrameError,
    },
    #[error("no answer within {secs} s to {what}")]
    Timeout { what: &'static str, secs: u64 },
}

impl WireError {
    /// Whether the other side simply went away (finished the stream, even mid-frame,
    /// or lost the connection) rather than sent something wrong. A server closes such
    /// a stream quietly; anything else deserves a rejection and a log line.
    pub fn is_disconnect(&self) -> bool {
        match self {
            WireError::Ended | WireError::Truncated { .. } | WireError::Connection(_) => true,
            WireError::Read(e) | WireError::Write(e) => e.kind() == io::ErrorKind::NotConnected,
            _ => false,
        }
    }
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { len, max } => WireError::TooLarge { len, max },
            other => WireError::Frame(other),
        }
    }
}

/// Fills `buf`; `Ok(n < buf.len())` means the stream ended after `n` bytes.
async fn fill<R: AsyncRead + Unpin>(recv: &mut R, buf: &mut [u8]) -> Result<usize, WireError> {
    let mut got = 0;
    while got < buf.len() {
        match recv.read(&mut buf[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Read(e)),
        }
    }
    Ok(got)
}

/// Reads one frame body, checking its length against `max` before allocating.
pub async fn read_frame<R: AsyncRead + Unpin>(
    recv: &mut R,
    max: usize,
) -> Result<Vec<u8>, WireError> {
    let len = read_header(recv, max).await?;
    read_body(recv, len).await
}

/// Reads a frame's length header and checks it against `max`; nothing is allocated.
/// A server that must account for the memory of a frame before it arrives (a budget,
/// a deadline for the body) reads the header with this and the body with
/// [`read_body`].
pub async fn read_header<R: AsyncRead + Unpin>(
    recv: &mut R,
    max: usize,
) -> Result<usize, WireError> {
    let mut header = [0u8; 4];
    match fill(recv, &mut header).await? {
        0 => return Err(WireError::Ended),
        4 => {}
        got => return Err(WireError::Truncated { got, want: 4 }),
    }
    Ok(frame_len(header, max)?)
}

/// Reads the `len` bytes of a frame body announced by [`read_header`].
pub async fn read_body<R: AsyncRead + Unpin>(
    recv: &mut R,
    len: usize,
) -> Result<Vec<u8>, WireError> {
    let mut body = vec![0u8; len];
    let got = fill(recv, &mut body).await?;
    if got < len {
        return Err(WireError::Truncated {
            got: got + 4,
            want: len + 4,
        });
    }
    Ok(body)
}

/// Reads and decodes one message, within [`ANSWER_TIMEOUT`]; `what` names the exchange
/// in errors.
pub async fn read_msg<M: DeserializeOwned, R: AsyncRead + Unpin>(
    recv: &mut R,
    max: usize,
    what: &'static str,
) -> Result<M, WireError> {
    let body = tokio::time::timeout(ANSWER_TIMEOUT, read_frame(recv, max))
        .await
        .map_err(|_| WireError::Timeout {
            what,
            secs: ANSWER_TIMEOUT.as_secs(),
        })??;
    decode_body(&body).map_err(|source| WireError::Decode { what, source })
}

/// Encodes `msg` as one frame of at most `max` bytes and writes it.
pub async fn write_msg<M: Serialize, W: AsyncWrite + Unpin>(
    send: &mut W,
    msg: &M,
    max: usize,
) -> Result<(), WireError> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf, max)?;
    send.write_all(&buf).await.map_err(WireError::Write)
}

/// Writes an already encoded message body as one frame. The agent keeps batches encoded
/// in its outbox and sends the stored bytes; they were bounded when they were encoded,
/// and the receiver checks its own bound, so only the header's limit is checked here.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    send: &mut W,
    body: &[u8],
) -> Result<(), WireError> {
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(WireError::Write)?;
    send.write_all(body).await.map_err(WireError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AgentMsg, EnrollRequest};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_message_round_trips() {
        rt().block_on(async {
            let msg = AgentMsg::Facts(Default::default());
            let mut buf = Vec::new();
            write_msg(&mut buf, &msg, 1 << 16).await.unwrap();
            let got: AgentMsg = read_msg(&mut buf.as_slice(), 1 << 16, "test")
                .await
                .unwrap();
            assert_eq!(format!("{got:?}"), format!("{msg:?}"));
        });
    }

    #[test]
    fn each_way_of_ending_has_its_variant() {
        rt().block_on(async {
            let mut empty: &[u8] = &[];
            let e = read_frame(&mut empty, 64).await.unwrap_err();
            assert!(matches!(e, WireError::Ended) && e.is_disconnect(), "{e}");

            let mut half_header: &[u8] = &[0, 0];
            let e = read_frame(&mut half_header, 64).await.unwrap_err();
            assert!(matches!(e, WireError::Truncated { got: 2, want: 4 }), "{e}");

            let mut half_body: &[u8] = &[0, 0, 0, 8, 1, 2, 3];
            let e = read_frame(&mut half_body, 64).await.unwrap_err();
            assert!(
                matches!(e, WireError::Truncated { got: 7, want: 12 }),
                "{e}"
            );
            assert!(e.is_disconnect());

            let mut big: &[u8] = &[0, 0, 1, 0];
            let e = read_frame(&mut big, 64).await.unwrap_err();
            assert!(
                matches!(e, WireError::TooLarge { len: 256, max: 64 }),
                "{e}"
            );
            assert!(!e.is_disconnect());
            assert!(e.to_string().contains("exceeds the maximum"), "{e}");

            let mut zero: &[u8] = &[0, 0, 0, 0];
            let e = read_frame(&mut zero, 64).await.unwrap_err();
            assert!(matches!(e, WireError::Frame(FrameError::Empty)), "{e}");

            let mut garbage: &[u8] = &[0, 0, 0, 2, 0xc1, 0xc1];
            let e = read_msg::<AgentMsg, _>(&mut garbage, 64, "a batch")
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    WireError::Decode {
                        what: "a batch",
                        ..
                    }
                ),
                "{e}"
            );
        });
    }

    #[test]
    fn nothing_oversized_is_encoded() {
        rt().block_on(async {
            let mut out = Vec::new();
            let big = AgentMsg::Enroll(EnrollRequest {
                token: "x".repeat(200),
                public_key: Vec::new(),
                hostname: String::new(),
            });
            assert!(write_msg(&mut out, &big, 64).await.is_err());
            assert!(out.is_empty());
            write_frame(&mut out, &[7; 3]).await.unwrap();
            assert_eq!(out, [0, 0, 0, 3, 7, 7, 7]);
        });
    }

    #[test]
    fn a_lost_connection_is_a_disconnect_and_a_reset_is_not() {
        let lost = WireError::Read(io::Error::new(io::ErrorKind::NotConnected, "lost"));
        assert!(lost.is_disconnect());
        let reset = WireError::Read(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
        assert!(!reset.is_disconnect());
    }
}
