//! Command signatures: the coordinator signs every command body with its CA key
//! (ECDSA P-256 with SHA-256, ASN.1 DER signature, via ring) over
//! `persona_shared::command::signed_message(body)`. The body carries the agent id and the
//! expiry, so the signature binds both: a command lifted from one agent's session is
//! useless on another agent, and a replay after its expiry does nothing. Agents verify
//! against the CA they pinned at enrollment (`persona_agent::commands::verify`).
//!
//! What it is not: key storage (`pki`, which hands out the key) or delivery (`commands`).

use persona_shared::command::{Command, SignedCommand, signed_message};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

/// Why a command could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the CA key is not an ECDSA P-256 key usable for signing commands: {0}")]
    Key(String),
    #[error("signing failed (system random source unavailable?)")]
    Sign,
    #[error("cannot encode command {id}: {source}")]
    Encode {
        id: String,
        source: rmp_serde::encode::Error,
    },
}

/// Signs `msg` with a PKCS#8 ECDSA P-256 private key.
pub fn sign_pkcs8(pkcs8: &[u8], msg: &[u8]) -> Result<Vec<u8>, SigningError> {
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
        .map_err(|e| SigningError::Key(e.to_string()))?;
    key.sign(&rng, msg)
        .map(|s| s.as_ref().to_vec())
        .map_err(|_| SigningError::Sign)
}

/// Encodes and signs a command body with `key` (PKCS#8 DER, `Pki::command_key`).
pub fn sign_command(key: &[u8], cmd: &Command) -> Result<SignedCommand, SigningError> {
    let body = cmd.encode().map_err(|source| SigningError::Encode {
        id: cmd.id.clone(),
        source,
    })?;
    sign_body(key, body)
}

/// Signs an already encoded body (the store keeps the body as it was first encoded, so
/// a resend carries the same bytes).
pub fn sign_body(key: &[u8], body: Vec<u8>) -> Result<SignedCommand, SigningError> {
    let signature = sign_pkcs8(key, &signed_message(&body))?;
    Ok(SignedCommand { body, signature })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Pki;
    use persona_agent::commands::Refusal;
    use persona_shared::command::{Action, ConfigUpdate};

    #[test]
    fn signatures_verify_against_the_ca_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let cmd = Command {
            id: "c-1".into(),
            agent_id: "a-1".into(),
            issued_ms: 1,
            expires_ms: i64::MAX,
            action: Action::ConfigUpdate(ConfigUpdate::default()),
        };
        let signed = sign_command(&pki.command_key(), &cmd).unwrap();
        let ca = persona_agent::commands::ca_der_from_pem(pki.ca_pem.as_bytes()).unwrap();
        let got = persona_agent::commands::verify(&ca, &signed, "a-1", 0).unwrap();
        assert_eq!(got, cmd);
        // Another CA's signature over the same body is refused.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Pki::load_or_create(other_dir.path()).unwrap();
        let forged = sign_body(&other.command_key(), signed.body.clone()).unwrap();
        assert_eq!(
            persona_agent::commands::verify(&ca, &forged, "a-1", 0),
            Err(Refusal::BadSignature)
        );
        // One changed byte of the body breaks the signature.
        let mut tampered = signed.clone();
        if let Some(b) = tampered.body.last_mut() {
            *b ^= 1;
        }
        assert_eq!(
            persona_agent::commands::verify(&ca, &tampered, "a-1", 0),
            Err(Refusal::BadSignature)
        );
        // Genuine, but for another agent, or past its expiry.
        assert!(matches!(
            persona_agent::commands::verify(&ca, &signed, "a-2", 0),
            Err(Refusal::WrongAgent { .. })
        ));
        let mut short = cmd.clone();
        short.expires_ms = 1000;
        let s = sign_command(&pki.command_key(), &short).unwrap();
        assert!(matches!(
            persona_agent::commands::verify(&ca, &s, "a-1", 1001),
            Err(Refusal::Expired { .. })
        ));
        persona_agent::commands::verify(&ca, &s, "a-1", 1000).unwrap();
    }
}
