//! Checking a signed command before anything in it is trusted: the CA signature over
//! the exact body bytes, then the agent id, then the expiry. The coordinator's tests use
//! these same functions to prove its signatures verify. What this is not: remembering
//! ids (`log`) or running anything (`runner`).

use persona_shared::command::{Command, MAX_ID_LEN, SignedCommand, signed_message};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a command was refused before it could run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the signature does not verify against the pinned coordinator CA")]
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

/// Checks a signed command against the CA certificate `ca_der`, this agent's id and the
/// clock, in that order, and only then decodes it.
pub fn verify(
    ca_der: &[u8],
    signed: &SignedCommand,
    agent_id: &str,
    now_ms: i64,
) -> Result<Command, Refusal> {
    let der = CertificateDer::from(ca_der);
    let ca = webpki::EndEntityCert::try_from(&der).map_err(|_| Refusal::BadSignature)?;
    ca.verify_signature(
        webpki::ring::ECDSA_P256_SHA256,
        &signed_message(&signed.body),
        &signed.signature,
    )
    .map_err(|_| Refusal::BadSignature)?;
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
}
