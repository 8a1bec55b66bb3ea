//! Checking a signed command before anything in it is trusted: the signature over the
//! exact body bytes, by the key the agent trusts ([`Trust`]: the command key it pinned,
//! or the coordinator's CA before the first pin), then the agent id, then the expiry.
//! The coordinator's tests use these same functions to prove its signatures verify.
//! What this is not: remembering ids (`log`) or running anything (`runner`).

use std::path::Path;

use persona_shared::command::{Command, MAX_ID_LEN, P256_POINT_LEN, SignedCommand, signed_message};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::identity::{self, COMMAND_KEY_FILE, IdentityError, PREVIOUS_COMMAND_KEY_FILE};

/// Why a command was refused before it could run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the signature does not verify against the key this agent trusts for commands")]
    BadSignature,
    #[error("the command is for agent {target}, not this one")]
    WrongAgent { target: String },
    #[error("the command expired at {expires_ms} (now {now_ms})")]
    Expired { expires_ms: i64, now_ms: i64 },
    #[error("malformed command body: {0}")]
    Malformed(String),
}

/// The DER of the first certificate in a PEM file (the agent's `ca.pem`).
pub fn ca_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    CertificateDer::from_pem_slice(pem)
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| e.to_string())
}

/// A key an agent trusts to sign its commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// The coordinator's CA certificate (DER), trusted from enrollment until the agent
    /// pins a command key.
    Ca(Vec<u8>),
    /// A pinned command key: an uncompressed P-256 point.
    Key(Vec<u8>),
}

impl Anchor {
    fn verifies(&self, msg: &[u8], signature: &[u8]) -> bool {
        match self {
            Anchor::Ca(der) => {
                let der = CertificateDer::from(der.as_slice());
                webpki::EndEntityCert::try_from(&der).is_ok_and(|ca| {
                    ca.verify_signature(webpki::ring::ECDSA_P256_SHA256, msg, signature)
                        .is_ok()
                })
            }
            Anchor::Key(point) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                point,
            )
            .verify(msg, signature)
            .is_ok(),
        }
    }
}

/// Why the trusted command key could not be read or pinned.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a P-256 public key in hex: {detail}")]
    BadKey {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("not a {P256_POINT_LEN}-byte uncompressed P-256 point ({len} bytes)")]
    BadPoint { len: usize },
    #[error(transparent)]
    Write(#[from] IdentityError),
}

/// What an agent trusts for commands: the current anchor, and the one it replaced (a
/// plan stored before a pin is resumed under it, and it may repeat the current pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub current: Anchor,
    pub previous: Option<Anchor>,
}

fn read_key(path: &Path) -> Result<Option<Vec<u8>>, TrustError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TrustError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let bad = |detail: String| TrustError::BadKey {
        path: path.to_owned(),
        detail,
    };
    let t = text.trim();
    if t.len() != 2 * P256_POINT_LEN || !t.is_ascii() {
        return Err(bad(format!("{} characters", t.len())));
    }
    let bytes = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Some(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:` and the hex SHA-256 of a command key, as the coordinator names it.
pub fn key_fingerprint(point: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, point);
    format!("sha256:{}", hex(d.as_ref()))
}

impl Trust {
    /// What the state dir says: the pinned key (`command-key.pub`) and the one before it
    /// (`command-key.prev`, or the CA when the first pin replaced it); the CA alone
    /// before any pin.
    pub fn load(state_dir: &Path, ca_der: &[u8]) -> Result<Trust, TrustError> {
        let ca = Anchor::Ca(ca_der.to_vec());
        match read_key(&state_dir.join(COMMAND_KEY_FILE))? {
            None => Ok(Trust {
                current: ca,
                previous: None,
            }),
            Some(k) => Ok(Trust {
                current: Anchor::Key(k),
                previous: Some(
                    read_key(&state_dir.join(PREVIOUS_COMMAND_KEY_FILE))?.map_or(ca, Anchor::Key),
                ),
            }),
        }
    }

    /// Pins `point` as the command key: the key pinned so far becomes the previous one.
    /// Each file is replaced atomically, the previous one first, so a crash leaves the
    /// old pin or the new one.
    pub fn pin(state_dir: &Path, point: &[u8]) -> Result<(), TrustError> {
        if point.len() != P256_POINT_LEN || point.first() != Some(&0x04) {
            return Err(TrustError::BadPoint { len: point.len() });
        }
        let cur = state_dir.join(COMMAND_KEY_FILE);
        if let Some(old) = read_key(&cur)? {
            identity::write_private(
                &state_dir.join(PREVIOUS_COMMAND_KEY_FILE),
                format!("{}\n", hex(&old)).as_bytes(),
            )?;
        }
        identity::write_private(&cur, format!("{}\n", hex(point)).as_bytes())?;
        Ok(())
    }
}

/// Checks a signed command against `anchor`, this agent's id and the clock, in that
/// order, and only then decodes it.
pub fn verify(
    anchor: &Anchor,
    signed: &SignedCommand,
    agent_id: &str,
    now_ms: i64,
) -> Result<Command, Refusal> {
    if !anchor.verifies(&signed_message(&signed.body), &signed.signature) {
        return Err(Refusal::BadSignature);
    }
    let cmd = Command::decode(&signed.body).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if cmd.id.is_empty() || cmd.id.len() > MAX_ID_LEN {
        return Err(Refusal::Malformed(format!(
            "command id of {} bytes",
            cmd.id.len()
        )));
    }
    if cmd.agent_id != agent_id {
        return Err(Refusal::WrongAgent {
            target: cmd.agent_id,
        });
    }
    if now_ms > cmd.expires_ms {
        return Err(Refusal::Expired {
            expires_ms: cmd.expires_ms,
            now_ms,
        });
    }
    Ok(cmd)
}

/// The id of an unverified body, only to say which command was refused (the body's
/// first field; nothing else in it is read). Sanitised and bounded.
pub(crate) fn claimed_id(body: &[u8]) -> Option<String> {
    let (id, ..): (
        String,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
        serde::de::IgnoredAny,
    ) = rmp_serde::from_slice(body).ok()?;
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    ok.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::command::Action;

    #[test]
    fn the_claimed_id_is_read_only_when_harmless() {
        let c = Command {
            id: "c-0123".into(),
            agent_id: "a".into(),
            issued_ms: 0,
            expires_ms: 0,
            action: Action::Cancel { id: "x".into() },
        };
        assert_eq!(claimed_id(&c.encode().unwrap()).as_deref(), Some("c-0123"));
        let mut bad = c.clone();
        bad.id = "c;rm -rf".into();
        assert_eq!(claimed_id(&bad.encode().unwrap()), None);
        assert_eq!(claimed_id(b"\xc1garbage"), None);
    }

    #[test]
    fn a_pin_replaces_the_ca_then_each_key_replaces_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let ca = b"ca-der".to_vec();
        let t = Trust::load(dir.path(), &ca).unwrap();
        assert_eq!(t.current, Anchor::Ca(ca.clone()));
        assert_eq!(t.previous, None);
        let k1 = [[4u8].as_slice(), &[1; 64]].concat();
        let k2 = [[4u8].as_slice(), &[2; 64]].concat();
        Trust::pin(dir.path(), &k1).unwrap();
        let t = Trust::load(dir.path(), &ca).unwrap();
        assert_eq!(t.current, Anchor::Key(k1.clone()));
        assert_eq!(t.previous, Some(Anchor::Ca(ca.clone())));
        Trust::pin(dir.path(), &k2).unwrap();
        let t = Trust::load(dir.path(), &ca).unwrap();
        assert_eq!(t.current, Anchor::Key(k2));
        assert_eq!(t.previous, Some(Anchor::Key(k1)));
        // Junk is refused, and a damaged pin file trusts nothing rather than the CA.
        assert!(matches!(
            Trust::pin(dir.path(), &[4; 10]),
            Err(TrustError::BadPoint { len: 10 })
        ));
        std::fs::write(dir.path().join(COMMAND_KEY_FILE), "zz\n").unwrap();
        assert!(matches!(
            Trust::load(dir.path(), &ca),
            Err(TrustError::BadKey { .. })
        ));
    }
}
