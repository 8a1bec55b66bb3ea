//! TLS and QUIC client configuration for the agent's two kinds of connection.
//!
//! * Enrollment: the agent has no certificate yet and knows the coordinator only by the
//!   SHA-256 pin of its CA (`--ca-hash sha256:HEX`, printed by `personactl token create`).
//!   [`PinnedCaVerifier`] finds the pinned CA among the certificates the server sends and
//!   then verifies the server certificate normally against that single root.
//! * Streaming: mutual TLS with the client certificate from enrollment and the CA stored
//!   next to it as the only trust root.
//!
//! Both use ring as the one crypto provider (see STACK.md: two providers compiled in make
//! rustls panic at run time), TLS 1.3 only, ALPN `persona/1` and the fixed server name
//! `persona_shared::protocol::SERVER_NAME`. This module builds configurations; it opens no connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use persona_shared::protocol::ALPN;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The message shown when the coordinator's CA is not the pinned one.
pub const CA_MISMATCH: &str = "coordinator CA does not match --ca-hash";

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid CA hash {given:?}: expected sha256: followed by 64 hex digits")]
    BadCaHash { given: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}: {detail}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the QUIC configuration: {0}")]
    Quic(String),
}

/// The one crypto provider used everywhere in the agent.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses `sha256:HEX` (case-insensitive hex, 64 digits).
pub fn parse_ca_hash(s: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadCaHash {
        given: s.to_owned(),
    };
    let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// `sha256:HEX` of a DER certificate, the form `--ca-hash` takes.
pub fn ca_hash(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Verifies a server whose CA is known only by the SHA-256 of its DER encoding.
///
/// The pin selects the trust root from what the server sends (the coordinator sends
/// `[server cert, CA cert]`); the end entity must then chain to that root and carry the
/// expected name, exactly as with a configured root. Signature checks use the same
/// provider algorithms as rustls' WebPKI verifier.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// Set when no certificate matched the pin, so the caller can tell this apart from
    /// other handshake failures (quinn reports both as a generic transport error).
    mismatch: AtomicBool,
}

impl PinnedCaVerifier {
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin,
            provider,
            mismatch: AtomicBool::new(false),
        }
    }

    /// Whether a handshake failed because no certificate matched the pin.
    pub fn mismatched(&self) -> bool {
        self.mismatch.load(Ordering::Relaxed)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref() == self.pin);
        let Some(root) = pinned else {
            self.mismatch.store(true, Ordering::Relaxed);
            return Err(rustls::Error::General(CA_MISMATCH.into()));
        };
        let mut roots = RootCertStore::empty();
        roots.add(root.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| {
                    rustls::Error::General(format!("pinned CA is not usable as a root: {e}"))
                })?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Transport settings shared by both connection kinds: keep-alives well inside the idle
/// timeout so a quiet but healthy link is not dropped, and a dead peer noticed in 30 s.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

fn quic(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(q));
    c.transport_config(transport());
    Ok(c)
}

/// Client configuration for enrollment: no client certificate, server checked against the
/// pin. Keep the returned verifier to ask [`PinnedCaVerifier::mismatched`] after a failure.
pub fn enroll_client_config(
    pin: [u8; 32],
) -> Result<(quinn::ClientConfig, Arc<PinnedCaVerifier>), TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier::new(pin, provider.clone()));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((quic(tls)?, verifier))
}

/// Client configuration for streaming: mutual TLS from the files enrollment stored.
pub fn mtls_client_config(
    cert_pem: &Path,
    key_pem: &Path,
    ca_pem: &Path,
) -> Result<quinn::ClientConfig, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    mtls_from_pem(
        (&read(cert_pem)?, cert_pem),
        (&read(key_pem)?, key_pem),
        (&read(ca_pem)?, ca_pem),
    )
}

/// Mutual TLS from PEM bytes held in memory (the load generator keeps thousands of
/// identities that way); each part comes with the path that errors should name.
pub fn mtls_from_pem(
    cert_pem: (&[u8], &Path),
    key_pem: (&[u8], &Path),
    ca_pem: (&[u8], &Path),
) -> Result<quinn::ClientConfig, TlsError> {
    let pem_err = |path: &Path, what, detail: String| TlsError::Pem {
        path: path.to_owned(),
        what,
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem.0)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_pem.1, "certificate", e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(
            cert_pem.1,
            "certificate",
            "no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.0)
        .map_err(|e| pem_err(key_pem.1, "private key", e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.0) {
        let ca = ca.map_err(|e| pem_err(ca_pem.1, "CA certificate", e.to_string()))?;
        roots
            .add(ca)
            .map_err(|e| pem_err(ca_pem.1, "CA certificate", e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_err(
            ca_pem.1,
            "CA certificate",
            "no CERTIFICATE block".into(),
        ));
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    quic(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::protocol::SERVER_NAME;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    struct Pki {
        ca_der: CertificateDer<'static>,
        leaf_der: CertificateDer<'static>,
    }

    fn pki(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
            .unwrap();
        Pki {
            ca_der: ca.der().clone(),
            leaf_der: leaf.der().clone(),
        }
    }

    fn verify(
        v: &PinnedCaVerifier,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        v.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn ca_hash_round_trips() {
        let h = ca_hash(b"abc");
        assert_eq!(
            h,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let pin = parse_ca_hash(&h.to_uppercase().replace("SHA256:", "sha256:")).unwrap();
        assert_eq!(pin[0], 0xba);
        for bad in [
            "",
            "sha256:",
            "sha1:ba78",
            "ba7816bf",
            &format!("{h}00"),
            &h.replace('b', "g"),
        ] {
            assert!(parse_ca_hash(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_ca_in_the_chain_is_accepted() {
        let p = pki(SERVER_NAME);
        let pin = parse_ca_hash(&ca_hash(&p.ca_der)).unwrap();
        let v = PinnedCaVerifier::new(pin, provider());
        verify(&v, &p.leaf_der, std::slice::from_ref(&p.ca_der)).unwrap();
        assert!(!v.mismatched());
    }

    #[test]
    fn another_ca_is_refused_as_a_mismatch() {
        let p = pki(SERVER_NAME);
        let other = pki(SERVER_NAME);
        let pin = parse_ca_hash(&ca_hash(&other.ca_der)).unwrap();
        let v = PinnedCaVerifier::new(pin, provider());
        let e = verify(&v, &p.leaf_der, std::slice::from_ref(&p.ca_der)).unwrap_err();
        assert!(e.to_string().contains(CA_MISMATCH), "{e}");
        assert!(v.mismatched());
        // Nothing sent but the leaf: also a mismatch.
        assert!(verify(&v, &p.leaf_der, &[]).is_err());
    }

    #[test]
    fn pinned_ca_must_really_sign_the_leaf_and_the_name_must_match() {
        // An attacker sends the genuine (public) CA certificate next to its own leaf.
        let genuine = pki(SERVER_NAME);
        let attacker = pki(SERVER_NAME);
        let pin = parse_ca_hash(&ca_hash(&genuine.ca_der)).unwrap();
        let v = PinnedCaVerifier::new(pin, provider());
        assert!(
            verify(
                &v,
                &attacker.leaf_der,
                std::slice::from_ref(&genuine.ca_der)
            )
            .is_err()
        );
        assert!(!v.mismatched());
        // Right CA, wrong name.
        let wrong_name = pki("someone-else");
        let pin = parse_ca_hash(&ca_hash(&wrong_name.ca_der)).unwrap();
        let v = PinnedCaVerifier::new(pin, provider());
        assert!(
            verify(
                &v,
                &wrong_name.leaf_der,
                std::slice::from_ref(&wrong_name.ca_der)
            )
            .is_err()
        );
    }

    #[test]
    fn configs_build() {
        let (_c, v) = enroll_client_config([0; 32]).unwrap();
        assert!(!v.mismatched());
        let dir = tempfile::tempdir().unwrap();
        let e = mtls_client_config(
            &dir.path().join("c"),
            &dir.path().join("k"),
            &dir.path().join("a"),
        )
        .unwrap_err();
        assert!(matches!(e, TlsError::Io { .. }));
    }
}
