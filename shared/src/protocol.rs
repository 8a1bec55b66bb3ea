//! The wire protocol between agent and coordinator (spec: docs/protocol.md).
//!
//! Every message is one MessagePack document (rmp-serde, structs as arrays) inside a
//! frame: a 4-byte big-endian length, then the body. The length is checked against a
//! hard maximum before anything is allocated, so a hostile peer cannot make either side
//! reserve memory it did not send. Message enums are versioned by the ALPN
//! (`persona/1`) and by `Hello::protocol`; an unknown variant is a decode error that
//! closes only the stream it came on. This module defines messages and framing; it
//! does no I/O.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::command::{CommandUpdate, SignedCommand};
use crate::events::AgentEvent;
use crate::facts::HostFacts;

/// ALPN of protocol version 1; a peer offering anything else is refused in the handshake.
pub const ALPN: &[u8] = b"persona/1";
/// Version carried in Hello; bumped on any incompatible change of a message.
pub const PROTOCOL_VERSION: u16 = 1;
/// Default hard maximum of a frame body.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// The name the coordinator's certificate is issued for and agents verify. Agents reach
/// the coordinator by IP or by any DNS name, and trust comes from the pinned private CA,
/// so one fixed name avoids re-issuing certificates when addresses change.
pub const SERVER_NAME: &str = "persona-coordinator";

/// What the VM is for, as its owner declared it (cloud-init or the agent config).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Purpose {
    pub description: String,
    pub software: Vec<String>,
    pub data_gb: Option<f64>,
}

/// Sent on an unauthenticated connection by `persona-agent enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    /// The agent's P-256 public key as an uncompressed SEC1 point (65 bytes); the
    /// private key never leaves the VM.
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    pub hostname: String,
}

/// The coordinator's answer to a valid enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub agent_id: String,
    /// The agent's client certificate, signed by the coordinator's CA.
    pub cert_pem: String,
    pub ca_pem: String,
}

/// First message on the control stream of an authenticated connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u16,
    pub agent_version: String,
    pub facts: HostFacts,
    pub purpose: Option<Purpose>,
    /// Highest sequence number the agent has ever assigned (0 = none yet).
    pub last_seq: u64,
    /// Version of the mirror model the agent runs (None before it has one).
    pub model_version: Option<String>,
}

/// The coordinator's answer to Hello: who the agent is and how to sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub agent_id: String,
    pub sample_interval_ms: u32,
    pub batch_interval_s: u32,
    /// Highest sequence number already committed for this agent.
    pub committed_seq: u64,
    pub server_time_ms: i64,
}

/// A process among the busiest, quantised for the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireProc {
    pub comm: String,
    /// CPU in thousandths of one core over the last scan.
    pub cpu_milli: u32,
    pub rss_kib: u32,
}

/// One telemetry batch. Values are not decoded on ingest: `index` lists, for each series,
/// its metric id, instance (0 = host or total, i = `instances[i-1]`) and the length of its
/// block in `data`; the coordinator stores each block as received.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Per-agent, strictly increasing; the coordinator de-duplicates by (agent, seq).
    pub seq: u64,
    /// Codec timestamp block (milliseconds since the Unix epoch), one per point.
    #[serde(with = "serde_bytes")]
    pub timestamps: Vec<u8>,
    pub instances: Vec<String>,
    /// Varints: (metric id, instance, block length) per series.
    #[serde(with = "serde_bytes")]
    pub index: Vec<u8>,
    /// Codec value blocks, concatenated in index order.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Busiest processes at the end of the batch (union of top by CPU and by memory).
    pub procs: Vec<WireProc>,
    /// What the agent's mirror model made of the window ending with this batch.
    pub mirror: Option<MirrorReport>,
}

/// A persona and its probability, as the mirror model or the profiler gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonaProb {
    pub slug: String,
    pub probability: f32,
}

/// The mirror model's distribution over personas for the window ending at `window_end_ms`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MirrorReport {
    pub model_version: String,
    pub window_end_ms: i64,
    /// Sorted by descending probability.
    pub distribution: Vec<PersonaProb>,
}

/// A model pushed by the coordinator: its bytes in the model crate's format, a version
/// and the SHA-256 of the bytes, which the agent checks before it loads anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPush {
    /// Which model: "mirror".
    pub kind: String,
    pub version: String,
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The agent's answer to a [`ModelPush`]: the version it now runs, and whether the
/// pushed one was taken or refused (and why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub kind: String,
    pub offered: String,
    pub running: String,
    pub accepted: bool,
    pub message: Option<String>,
}

/// Why the coordinator refused something. Sent before it closes a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    BadMessage,
    BadToken,
    NotEnrolled,
    Revoked,
    BadTimestamps,
    TooLarge,
    Internal,
}

/// A refusal with a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
}

/// Messages from agent to coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMsg {
    Enroll(EnrollRequest),
    Hello(Hello),
    Batch(Batch),
    Facts(HostFacts),
    /// Sent on the control stream as soon as it is raised.
    Event(AgentEvent),
    ModelStatus(ModelStatus),
    CommandUpdate(CommandUpdate),
}

/// Messages from coordinator to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordMsg {
    Enrolled(EnrollResponse),
    Welcome(Welcome),
    /// The batch `seq` is committed (or was already: `duplicate`).
    Ack {
        seq: u64,
        duplicate: bool,
    },
    Reject(Reject),
    /// The event `id` is stored.
    EventAck {
        id: u64,
    },
    Model(ModelPush),
    Command(SignedCommand),
}

/// Framing and decoding errors. `Incomplete` is deliberately absent: a short buffer is
/// the normal `Ok(None)` of [`decode_frame`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("malformed message in a {len}-byte frame: {source}")]
    Decode {
        len: usize,
        source: rmp_serde::decode::Error,
    },
    #[error("{trailing} trailing bytes after the message in a {len}-byte frame")]
    Trailing { len: usize, trailing: usize },
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Appends `msg` as one frame to `out`.
pub fn encode_frame<M: Serialize>(
    msg: &M,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    rmp_serde::encode::write(out, msg)?;
    let len = out.len() - start - 4;
    if len > max {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[start..start + 4].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

/// Borrowing twin of [`AgentMsg`] with the same variants in the same order, so it
/// serialises to identical bytes; lets the agent frame a batch it keeps reusing.
#[derive(Serialize)]
enum AgentMsgRef<'a> {
    #[allow(dead_code)]
    Enroll(&'a EnrollRequest),
    #[allow(dead_code)]
    Hello(&'a Hello),
    Batch(&'a Batch),
}

/// Appends `AgentMsg::Batch(batch)` as one frame without taking ownership of the batch.
pub fn encode_batch_frame(batch: &Batch, out: &mut Vec<u8>, max: usize) -> Result<(), FrameError> {
    encode_frame(&AgentMsgRef::Batch(batch), out, max)
}

/// Reads a frame header: the body length, checked against `max`.
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Decodes one message body (without its length prefix). The whole body must be used.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, FrameError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
    let msg = M::deserialize(&mut de).map_err(|source| FrameError::Decode {
        len: body.len(),
        source,
    })?;
    let used = usize::try_from(de.get_ref().position()).unwrap_or(usize::MAX);
    let trailing = body.len().saturating_sub(used);
    if trailing != 0 {
        return Err(FrameError::Trailing {
            len: body.len(),
            trailing,
        });
    }
    Ok(msg)
}

/// Decodes the first frame in `buf`. `Ok(None)` means more bytes are needed; on success
/// returns the message and the bytes consumed.
pub fn decode_frame<M: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(M, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = frame_len(*header, max)?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> AgentMsg {
        AgentMsg::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            facts: HostFacts::default(),
            purpose: Some(Purpose {
                description: "x".into(),
                software: vec!["pytorch".into()],
                data_gb: Some(80.0),
            }),
            last_seq: 7,
            model_version: Some("m1".into()),
        })
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut buf = Vec::new();
        encode_frame(&hello(), &mut buf, DEFAULT_MAX_FRAME).unwrap();
        encode_frame(
            &CoordMsg::Ack {
                seq: 3,
                duplicate: false,
            },
            &mut buf,
            DEFAULT_MAX_FRAME,
        )
        .unwrap();
        let (m, n) = decode_frame::<AgentMsg>(&buf, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(m, hello());
        let (a, k) = decode_frame::<CoordMsg>(&buf[n..], DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(
            a,
            CoordMsg::Ack {
                seq: 3,
                duplicate: false
            }
        );
        assert_eq!(n + k, buf.len());
        for cut in 0..n {
            assert!(
                decode_frame::<AgentMsg>(&buf[..cut], DEFAULT_MAX_FRAME)
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn borrowed_batch_frames_match_owned_ones() {
        let b = Batch {
            seq: 9,
            timestamps: vec![1, 2],
            instances: vec!["vda".into()],
            index: vec![3],
            data: vec![4, 5],
            procs: vec![WireProc {
                comm: "x".into(),
                cpu_milli: 1,
                rss_kib: 2,
            }],
            mirror: Some(MirrorReport {
                model_version: "m1".into(),
                window_end_ms: 5,
                distribution: vec![PersonaProb {
                    slug: "web-server".into(),
                    probability: 0.9,
                }],
            }),
        };
        let (mut a, mut c) = (Vec::new(), Vec::new());
        encode_batch_frame(&b, &mut a, DEFAULT_MAX_FRAME).unwrap();
        encode_frame(&AgentMsg::Batch(b), &mut c, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn hostile_frames_are_errors() {
        assert!(matches!(
            decode_frame::<AgentMsg>(&[0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame::<AgentMsg>(&[0, 0, 0, 0], 64),
            Err(FrameError::Empty)
        ));
        let garbage = [0, 0, 0, 3, 0xc1, 0xc1, 0xc1];
        assert!(matches!(
            decode_frame::<AgentMsg>(&garbage, 64),
            Err(FrameError::Decode { .. })
        ));
        // A valid message of another type (unknown variant for this direction).
        let mut buf = Vec::new();
        encode_frame(
            &CoordMsg::Ack {
                seq: 1,
                duplicate: true,
            },
            &mut buf,
            64,
        )
        .unwrap();
        assert!(decode_frame::<AgentMsg>(&buf, 64).is_err());
        // Trailing bytes inside the frame.
        let mut body = Vec::new();
        rmp_serde::encode::write(&mut body, &hello()).unwrap();
        body.push(0);
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        assert!(matches!(
            decode_frame::<AgentMsg>(&framed, DEFAULT_MAX_FRAME),
            Err(FrameError::Trailing { .. })
        ));
        // Encoding refuses to produce an oversized frame.
        let mut out = Vec::new();
        assert!(matches!(
            encode_frame(&hello(), &mut out, 8),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }
}
