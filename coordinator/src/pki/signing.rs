//! Command signatures: the coordinator signs every command body with the key the agent
//! trusts (its pinned command key, or the CA key before the first pin; ECDSA P-256 with
//! SHA-256, ASN.1 DER signature, via ring) over
//! `persona_shared::command::signed_message(body)`. The body carries the agent id and the
//! expiry, so the signature binds both: a command lifted from one agent's session is
//! useless on another agent, and a replay after its expiry does nothing. Agents verify
//! with `persona_agent::commands::verify`.
//!
//! What it is not: key storage (`pki`, which hands out the key) or delivery (`commands`).

use persona_shared::command::{Command, SignedCommand, signed_message};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

/// Why a command could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the key is not an ECDSA P-256 key usable for signing commands: {0}")]
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

/// Encodes and signs a command body with `key` (PKCS#8 DER, `Pki::command_signer`).
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
    use persona_agent::commands::{Anchor, Refusal, verify};
    use persona_shared::command::{Action, ConfigUpdate};

    fn cmd() -> Command {
        Command {
            id: "c-1".into(),
            agent_id: "a-1".into(),
            issued_ms: 1,
            expires_ms: i64::MAX,
            action: Action::ConfigUpdate(ConfigUpdate::default()),
        }
    }

    #[test]
    fn signatures_verify_against_the_ca_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let cmd = cmd();
        let signed = sign_command(&pki.command_signer(None).unwrap(), &cmd).unwrap();
        let ca =
            Anchor::Ca(persona_agent::commands::ca_der_from_pem(pki.ca_pem.as_bytes()).unwrap());
        let got = verify(&ca, &signed, "a-1", 0).unwrap();
        assert_eq!(got, cmd);
        // Another CA's signature over the same body is refused.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Pki::load_or_create(other_dir.path()).unwrap();
        let forged = sign_body(&other.command_signer(None).unwrap(), signed.body.clone()).unwrap();
        assert_eq!(verify(&ca, &forged, "a-1", 0), Err(Refusal::BadSignature));
        // One changed byte of the body breaks the signature.
        let mut tampered = signed.clone();
        if let Some(b) = tampered.body.last_mut() {
            *b ^= 1;
        }
        assert_eq!(verify(&ca, &tampered, "a-1", 0), Err(Refusal::BadSignature));
        // Genuine, but for another agent, or past its expiry.
        assert!(matches!(
            verify(&ca, &signed, "a-2", 0),
            Err(Refusal::WrongAgent { .. })
        ));
        let mut short = cmd.clone();
        short.expires_ms = 1000;
        let s = sign_command(&pki.command_signer(None).unwrap(), &short).unwrap();
        assert!(matches!(
            verify(&ca, &s, "a-1", 1001),
            Err(Refusal::Expired { .. })
        ));
        verify(&ca, &s, "a-1", 1000).unwrap();
    }

    /// Issue 18 item 17: once an agent pins the command key, the CA key signs nothing it
    /// runs, and the command key is not a CA.
    #[test]
    fn the_command_key_and_the_ca_are_separate_anchors() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let keys = pki.command_keys();
        let fp = keys.current_fingerprint().to_owned();
        let pinned = Anchor::Key(keys.current_public().to_vec());
        let ca =
            Anchor::Ca(persona_agent::commands::ca_der_from_pem(pki.ca_pem.as_bytes()).unwrap());
        let by_key = sign_command(&pki.command_signer(Some(&fp)).unwrap(), &cmd()).unwrap();
        let by_ca = sign_command(&pki.command_signer(None).unwrap(), &cmd()).unwrap();
        assert_eq!(verify(&pinned, &by_key, "a-1", 0).unwrap(), cmd());
        assert_eq!(
            verify(&pinned, &by_ca, "a-1", 0),
            Err(Refusal::BadSignature)
        );
        assert_eq!(verify(&ca, &by_key, "a-1", 0), Err(Refusal::BadSignature));
        assert_eq!(
            persona_agent::commands::key_fingerprint(keys.current_public()),
            fp
        );
        // A key nobody loaded cannot sign.
        assert!(pki.command_signer(Some("sha256:00")).is_err());
    }

    /// The CA key can be kept offline: without ca.key the coordinator loads, refuses to
    /// enroll and to sign for an agent that trusts only the CA, and still signs with the
    /// command key.
    #[test]
    fn without_the_ca_key_commands_are_still_signed_and_enrollment_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path()).unwrap();
        let fp = first.command_keys().current_fingerprint().to_owned();
        std::fs::rename(dir.path().join("ca.key"), dir.path().join("ca.key.offline")).unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(pki.ca_hash(), first.ca_hash());
        assert!(!dir.path().join("ca.key").exists(), "not recreated");
        let e = pki.can_enroll().unwrap_err().to_string();
        assert!(e.contains("ca.key") && e.contains("enroll"), "{e}");
        assert!(pki.command_signer(None).is_err());
        let signed = sign_command(&pki.command_signer(Some(&fp)).unwrap(), &cmd()).unwrap();
        let pinned = Anchor::Key(pki.command_keys().current_public().to_vec());
        verify(&pinned, &signed, "a-1", 0).unwrap();
        pki.server_config().unwrap();
        // Without the server certificate too, it cannot start: it would need the CA.
        std::fs::remove_file(dir.path().join("server.pem")).unwrap();
        let e = Pki::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("offline"), "{e}");
    }
}
