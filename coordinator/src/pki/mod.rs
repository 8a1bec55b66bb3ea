//! The coordinator's small certificate authority: it creates, on first start, a CA and
//! a server certificate signed by it, and later signs each enrolling agent's public key
//! into a client certificate. Agents pin the CA by the SHA-256 of its DER (kubeadm's
//! `--discovery-token-ca-cert-hash` idea), so no secret is baked into VM images.
//! Revocation is not done with CRLs: the store keeps each agent certificate's
//! fingerprint, and the server refuses revoked or unknown fingerprints after the handshake.
//! Commands are signed by keys of their own (`command_keys`); the CA key is needed only
//! to enroll, and the coordinator runs without it (enrollment off) when an operator keeps
//! `ca.key` offline.

pub mod command_keys;
pub mod signing;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use ring::digest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use persona_shared::protocol::{ALPN, SERVER_NAME};

const CA_CN: &str = "Persona coordinator CA";
/// Agent certificates live a year; the agent re-enrolls (or a later release renews).
const AGENT_CERT_DAYS: i64 = 365;

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("agent public key rejected: {0}")]
    BadPublicKey(String),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error(
        "the CA key is offline ({} is absent), so the coordinator cannot {what}",
        path.display()
    )]
    CaOffline { path: PathBuf, what: &'static str },
    #[error("no command key {0} is loaded (was its file in command-keys/ deleted?)")]
    UnknownCommandKey(String),
    #[error(
        "{} has mode {mode:04o}: other users can read or change it, so the coordinator refuses to start. Fix: chmod {fix} {}",
        path.display(),
        path.display()
    )]
    Exposed {
        path: PathBuf,
        mode: u32,
        /// The mode to set (`600` for a file, `700` for a directory).
        fix: &'static str,
    },
}

/// Refuses a secret file (a key, the admin token) or the directory holding them when
/// anyone but its owner has any access to it (mode bits `0o077`).
pub fn check_private(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::Exposed {
            path: path.to_owned(),
            mode,
            fix: if meta.is_dir() { "700" } else { "600" },
        });
    }
    Ok(())
}

/// Checks that `point` is an uncompressed P-256 point on the curve (not only 65 bytes
/// starting with 0x04). ring has no "validate this public key" call, but its ECDH
/// validates the peer's point fully (coordinates below the field prime, the curve
/// equation) before it agrees on anything, so an agreement with a throwaway key is
/// exactly that check.
fn check_p256_point(point: &[u8]) -> Result<(), PkiError> {
    use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(PkiError::BadPublicKey(format!(
            "expected a 65-byte uncompressed P-256 point, got {} bytes",
            point.len()
        )));
    }
    let rng = ring::rand::SystemRandom::new();
    let mine = EphemeralPrivateKey::generate(&ECDH_P256, &rng)
        .map_err(|_| PkiError::BadPublicKey("system random unavailable".into()))?;
    agree_ephemeral(mine, &UnparsedPublicKey::new(&ECDH_P256, point), |_| ())
        .map_err(|_| PkiError::BadPublicKey("the point is not on the P-256 curve".into()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file readable only by its owner, atomically (temp file then rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, der).as_ref())
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Random bytes as hex, for tokens.
pub fn random_hex(n: usize) -> Result<String, PkiError> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PkiError::BadPublicKey("system random unavailable".into()))?;
    Ok(hex(&buf))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "Persona");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    p
}

/// An agent's raw public key as sent in EnrollRequest.
struct AgentKey(Vec<u8>);

impl PublicKeyData for AgentKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The loaded CA and server identity.
pub struct Pki {
    /// Absent when the operator keeps `ca.key` offline: enrollment is then refused.
    ca_key: Option<KeyPair>,
    ca_key_path: PathBuf,
    commands: command_keys::CommandKeys,
    ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key_der: Vec<u8>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_hash", &self.ca_hash())
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the CA from `dir`, creating the CA, the server certificate and the command
    /// key on first start. When `ca.key` is absent but `ca.pem` and the server
    /// certificate exist, the CA key is offline: the coordinator serves and signs
    /// commands for agents that pinned the command key, and refuses enrollment.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let ca_key_path = dir.join("ca.key");
        let ca_pem_path = dir.join("ca.pem");
        if !ca_key_path.exists() && !ca_pem_path.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_pem_path, cert.pem().as_bytes())?;
        }
        let ca_key = if ca_key_path.exists() {
            check_private(&ca_key_path)?;
            let pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
            Some(KeyPair::from_pem(&pem).map_err(|e| PkiError::Parse {
                path: ca_key_path.clone(),
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        let ca_pem = fs::read_to_string(&ca_pem_path).map_err(io_err(&ca_pem_path))?;
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| PkiError::Parse {
                path: ca_pem_path.clone(),
                reason: e.to_string(),
            })?;

        let srv_key_path = dir.join("server.key");
        let srv_pem_path = dir.join("server.pem");
        if !srv_key_path.exists() || !srv_pem_path.exists() {
            let key = KeyPair::generate()?;
            let mut p =
                CertificateParams::new(vec![SERVER_NAME.to_string(), "localhost".to_string()])?;
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, SERVER_NAME);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.use_authority_key_identifier_extension = true;
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(3650);
            let Some(ca_key) = &ca_key else {
                return Err(PkiError::CaOffline {
                    path: ca_key_path,
                    what: "issue its server certificate (server.pem or server.key is missing)",
                });
            };
            let cert = p.signed_by(&key, &Issuer::new(ca_params(), ca_key))?;
            write_private(&srv_key_path, key.serialize_pem().as_bytes())?;
            write_private(&srv_pem_path, cert.pem().as_bytes())?;
        }
        let srv_pem = fs::read(&srv_pem_path).map_err(io_err(&srv_pem_path))?;
        let srv_der = CertificateDer::from_pem_slice(&srv_pem).map_err(|e| PkiError::Parse {
            path: srv_pem_path.clone(),
            reason: e.to_string(),
        })?;
        check_private(&srv_key_path)?;
        let srv_key = fs::read(&srv_key_path).map_err(io_err(&srv_key_path))?;
        let srv_key_der = PrivateKeyDer::from_pem_slice(&srv_key).map_err(|e| PkiError::Parse {
            path: srv_key_path.clone(),
            reason: e.to_string(),
        })?;
        let commands = command_keys::CommandKeys::load_or_create(dir)?;
        Ok(Self {
            ca_key,
            ca_key_path,
            commands,
            server_chain: vec![srv_der, ca_der.clone()],
            ca_der,
            ca_pem,
            server_key_der: srv_key_der.secret_der().to_vec(),
        })
    }

    /// The pin agents check: `sha256:` and the hex SHA-256 of the CA certificate's DER.
    pub fn ca_hash(&self) -> String {
        format!("sha256:{}", fingerprint(&self.ca_der))
    }

    /// Signs an agent's public key into a client certificate whose CN is the agent id.
    /// Returns the PEM and the certificate's fingerprint.
    pub fn sign_agent(
        &self,
        agent_id: &str,
        public_key: &[u8],
    ) -> Result<(String, String), PkiError> {
        // An uncompressed P-256 point on the curve: 0x04 || X || Y. Anything else
        // cannot be our agent's key, and a certificate for it would be garbage signed by
        // our CA.
        check_p256_point(public_key)?;
        let ca_key = self.ca_key()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, agent_id);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(AGENT_CERT_DAYS);
        let cert = p.signed_by(
            &AgentKey(public_key.to_vec()),
            &Issuer::new(ca_params(), ca_key),
        )?;
        Ok((cert.pem(), fingerprint(cert.der())))
    }

    fn ca_key(&self) -> Result<&KeyPair, PkiError> {
        self.ca_key.as_ref().ok_or_else(|| PkiError::CaOffline {
            path: self.ca_key_path.clone(),
            what: "enroll agents",
        })
    }

    /// Whether agents can enroll (the CA key is here).
    pub fn can_enroll(&self) -> Result<(), PkiError> {
        self.ca_key().map(|_| ())
    }

    /// The command keys (current and retired).
    pub fn command_keys(&self) -> &command_keys::CommandKeys {
        &self.commands
    }

    /// The private key (PKCS#8 DER, see `signing`) to sign a command for an agent that
    /// pinned the command key `pinned`, or that pinned none yet (`None`: the CA key,
    /// which it trusts from enrollment).
    pub fn command_signer(&self, pinned: Option<&str>) -> Result<Vec<u8>, PkiError> {
        match pinned {
            Some(fp) => self
                .commands
                .pkcs8(fp)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| PkiError::UnknownCommandKey(fp.to_owned())),
            None => self
                .ca_key
                .as_ref()
                .map(KeyPair::serialize_der)
                .ok_or_else(|| PkiError::CaOffline {
                    path: self.ca_key_path.clone(),
                    what: "sign commands for an agent that has not pinned the command key",
                }),
        }
    }

    /// TLS 1.3 server configuration for QUIC: our chain, ALPN `persona/1`, and client
    /// certificates verified against our CA but optional, because enrolling agents have none.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Verifier(e.to_string()))?;
        let key = PrivateKeyDer::try_from(self.server_key_der.clone())
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_once_then_reloads_the_same_ca_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path()).unwrap();
        let b = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_hash(), b.ca_hash());
        assert!(a.ca_hash().starts_with("sha256:") && a.ca_hash().len() == 7 + 64);
        for f in [
            "ca.key",
            "ca.pem",
            "server.key",
            "server.pem",
            "command.key",
        ] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        a.server_config().unwrap();
    }

    #[test]
    fn signs_agent_keys_and_refuses_junk() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let (pem, fp) = pki.sign_agent("a-1", key.public_key_raw()).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&der), fp);
        // The certificate verifies as a client certificate against our CA.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        v.verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        assert!(pki.sign_agent("a-2", &[4; 10]).is_err());
        // An agent certificate past its validity is refused by the same verifier.
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "a-old");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(400);
        p.not_after = now - time::Duration::days(35);
        let old = p
            .signed_by(
                &key,
                &Issuer::new(ca_params(), pki.ca_key.as_ref().unwrap()),
            )
            .unwrap();
        let err = v
            .verify_client_cert(old.der(), &[], rustls::pki_types::UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
        assert!(pki.sign_agent("a-2", &[3; 65]).is_err());
    }

    #[test]
    fn an_off_curve_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        // Right length and prefix, but (1, 1) is not on P-256: y^2 = 1, x^3 - 3x + b != 1.
        let mut point = [0u8; 65];
        point[0] = 0x04;
        point[32] = 1;
        point[64] = 1;
        let e = pki.sign_agent("a-3", &point).unwrap_err().to_string();
        assert!(e.contains("not on the P-256 curve"), "{e}");
        // A real key with one bit of Y flipped is off the curve too.
        let key = KeyPair::generate().unwrap();
        let mut bent = key.public_key_raw().to_vec();
        bent[64] ^= 1;
        assert!(pki.sign_agent("a-4", &bent).is_err());
        // X at or above the field prime is refused, not reduced.
        let mut big = [0xffu8; 65];
        big[0] = 0x04;
        assert!(pki.sign_agent("a-5", &big).is_err());
        pki.sign_agent("a-6", key.public_key_raw()).unwrap();
    }

    #[test]
    fn a_world_readable_key_refuses_to_start_naming_file_mode_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path()).unwrap();
        for f in ["ca.key", "server.key"] {
            let path = dir.path().join(f);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let e = Pki::load_or_create(dir.path()).unwrap_err().to_string();
            assert!(
                e.contains(&path.display().to_string())
                    && e.contains("0644")
                    && e.contains(&format!("chmod 600 {}", path.display())),
                "{e}"
            );
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            assert!(
                Pki::load_or_create(dir.path()).is_err(),
                "group-readable {f}"
            );
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        Pki::load_or_create(dir.path()).unwrap();
    }
}
