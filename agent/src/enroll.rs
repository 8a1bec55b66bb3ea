//! Enrollment (`persona-agent enroll`): turning a join token into a client certificate.
//!
//! The agent generates its P-256 key pair locally (the private key never leaves the VM),
//! connects without a client certificate, trusts the coordinator only if its CA matches
//! the pin given with `--ca-hash`, presents the token with its public key, and stores
//! what it gets back in the state dir: `key.pem`, `cert.pem`, `ca.pem` and
//! `identity.toml` (agent id and coordinator address). Files are 0600 in a 0700
//! directory and each is written atomically, `identity.toml` last, so a state dir either
//! holds a complete identity or is treated as not enrolled. This module does not stream;
//! the daemon ([`crate::daemon`]) uses the stored identity.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use persona_shared::protocol::{
    AgentMsg, CoordMsg, DEFAULT_MAX_FRAME, EnrollRequest, EnrollResponse, RejectCode, SERVER_NAME,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::config::looks_like_host_port;
use crate::link::{self, LinkError, WireError};
use crate::tls::{self, TlsError};

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const CA_FILE: &str = "ca.pem";
pub const IDENTITY_FILE: &str = "identity.toml";

/// The whole enrollment, handshake included, must finish within this.
const ENROLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// HOST:PORT of the coordinator's QUIC listener.
    pub coordinator: String,
    pub token: String,
    /// `sha256:HEX` of the coordinator's CA certificate (DER).
    pub ca_hash: String,
    pub state_dir: PathBuf,
}

/// Who this agent is, as stored in `identity.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub agent_id: String,
    /// HOST:PORT used at enrollment, the default coordinator of `run`.
    pub coordinator: String,
}

/// Enrollment and identity errors.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("invalid --coordinator {given:?}: expected HOST:PORT")]
    BadCoordinator { given: String },
    #[error("empty --token")]
    EmptyToken,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot generate the agent key: {0}")]
    KeyGen(rcgen::Error),
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("{}: the CA of {addr} is not the pinned one", tls::CA_MISMATCH)]
    CaMismatch { addr: String },
    #[error("enrollment with {addr} failed: {context}: {source}")]
    Wire {
        addr: String,
        context: &'static str,
        source: WireError,
    },
    #[error("enrollment with {addr} timed out after {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("{}", reject_text(*code, message))]
    Rejected { code: RejectCode, message: String },
    #[error("unexpected answer from the coordinator: {what}")]
    BadResponse { what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "not enrolled: {path} is missing; run `persona-agent enroll --coordinator HOST:PORT --token TOKEN --ca-hash sha256:HEX` first"
    )]
    NotEnrolled { path: PathBuf },
    #[error("invalid identity file {path}: {detail}")]
    BadIdentity { path: PathBuf, detail: String },
}

fn reject_text(code: RejectCode, message: &str) -> String {
    match code {
        RejectCode::BadToken => format!("token rejected: {message}"),
        other => format!("enrollment refused ({other:?}): {message}"),
    }
}

impl Identity {
    /// Reads `identity.toml` from a state dir.
    pub fn load(state_dir: &Path) -> Result<Identity, EnrollError> {
        let path = state_dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EnrollError::NotEnrolled { path });
            }
            Err(source) => return Err(EnrollError::Io { path, source }),
        };
        let id: Identity = toml::from_str(&text).map_err(|e| EnrollError::BadIdentity {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if id.agent_id.is_empty() {
            return Err(EnrollError::BadIdentity {
                path,
                detail: "empty agent_id".into(),
            });
        }
        Ok(id)
    }

    /// The TOML text of this identity. toml is built without its serializer, so this is
    /// written by hand; a JSON string literal is also a valid TOML basic string.
    fn to_toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        format!(
            "agent_id = {}\ncoordinator = {}\n",
            q(&self.agent_id),
            q(&self.coordinator)
        )
    }
}

/// Enrolls this machine with a coordinator and stores the identity in `opts.state_dir`.
pub async fn enroll(opts: EnrollOptions) -> Result<Identity, EnrollError> {
    if !looks_like_host_port(&opts.coordinator) {
        return Err(EnrollError::BadCoordinator {
            given: opts.coordinator,
        });
    }
    if opts.token.trim().is_empty() {
        return Err(EnrollError::EmptyToken);
    }
    let pin = tls::parse_ca_hash(&opts.ca_hash)?;
    // Fail on an unusable state dir before bothering the coordinator (and using the token).
    create_private_dir(&opts.state_dir)?;

    let key = rcgen::KeyPair::generate().map_err(EnrollError::KeyGen)?;
    let request = EnrollRequest {
        token: opts.token.clone(),
        public_key: key.public_key_raw().to_vec(),
        hostname: hostname(),
    };

    let (client, verifier) = tls::enroll_client_config(pin)?;
    let addr = link::resolve(&opts.coordinator).await?;
    let endpoint = link::client_endpoint(addr)?;
    let coordinator = opts.coordinator.as_str();
    let wire = |context: &'static str| {
        move |source| EnrollError::Wire {
            addr: coordinator.to_owned(),
            context,
            source,
        }
    };
    let exchange = async {
        let connecting = endpoint
            .connect_with(client, addr, SERVER_NAME)
            .map_err(|source| LinkError::Connect { addr, source })?;
        let conn = connecting
            .await
            .map_err(|source| LinkError::Handshake { addr, source })?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| wire("opening a stream")(e.into()))?;
        link::write_msg(&mut send, &AgentMsg::Enroll(request), DEFAULT_MAX_FRAME)
            .await
            .map_err(wire("sending the request"))?;
        send.finish()
            .map_err(|e| wire("sending the request")(e.into()))?;
        let answer = link::read_msg(&mut recv, DEFAULT_MAX_FRAME, "the enrollment")
            .await
            .map_err(wire("reading the answer"))?;
        conn.close(0u32.into(), b"enrolled");
        Ok::<_, EnrollError>(answer)
    };
    let answer = tokio::time::timeout(ENROLL_TIMEOUT, exchange).await;
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), endpoint.wait_idle()).await;
    let answer = match answer {
        Err(_) => {
            return Err(EnrollError::Timeout {
                addr: opts.coordinator.clone(),
                secs: ENROLL_TIMEOUT.as_secs(),
            });
        }
        // Quinn reports a refused certificate as a generic TLS alert; the verifier knows why.
        Ok(Err(_)) if verifier.mismatched() => {
            return Err(EnrollError::CaMismatch {
                addr: opts.coordinator.clone(),
            });
        }
        Ok(r) => r?,
    };
    let response = match answer {
        CoordMsg::Enrolled(r) => r,
        CoordMsg::Reject(r) => {
            return Err(EnrollError::Rejected {
                code: r.code,
                message: r.message,
            });
        }
        other => {
            return Err(EnrollError::BadResponse {
                what: crate::link::kind(&other).into(),
            });
        }
    };
    check_response(&response, &pin, key.public_key_raw())?;

    let identity = Identity {
        agent_id: response.agent_id.clone(),
        coordinator: opts.coordinator.clone(),
    };
    let dir = &opts.state_dir;
    write_private(&dir.join(KEY_FILE), key.serialize_pem().as_bytes())?;
    write_private(&dir.join(CERT_FILE), response.cert_pem.as_bytes())?;
    write_private(&dir.join(CA_FILE), response.ca_pem.as_bytes())?;
    // Last: its presence means the identity is complete.
    write_private(&dir.join(IDENTITY_FILE), identity.to_toml().as_bytes())?;
    tracing::info!(agent_id = %identity.agent_id, state_dir = %dir.display(), "enrolled");
    Ok(identity)
}

/// The coordinator's answer must be usable: the CA it returns is the pinned one, and
/// the certificate it issued carries our public key.
fn check_response(
    r: &EnrollResponse,
    pin: &[u8; 32],
    public_key: &[u8],
) -> Result<(), EnrollError> {
    let bad = |what: &str| EnrollError::BadResponse {
        what: what.to_owned(),
    };
    if r.agent_id.is_empty() || r.agent_id.len() > 128 || r.agent_id.chars().any(char::is_control) {
        return Err(bad("an invalid agent id"));
    }
    let ca = CertificateDer::pem_slice_iter(r.ca_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| bad("no CA certificate"))?;
    if ring::digest::digest(&ring::digest::SHA256, ca.as_ref()).as_ref() != pin {
        return Err(bad("a CA certificate other than the pinned one"));
    }
    let cert = CertificateDer::pem_slice_iter(r.cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| bad("no client certificate"))?;
    // The SEC1 point is stored verbatim in the certificate's SubjectPublicKeyInfo; a
    // certificate for another key would make every later connection fail obscurely.
    if !cert
        .as_ref()
        .windows(public_key.len())
        .any(|w| w == public_key)
    {
        return Err(bad("a certificate for a different key"));
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Creates the state dir (0700) if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), EnrollError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| EnrollError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Writes a 0600 file atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves either the old file or the new one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), EnrollError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| EnrollError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_round_trips_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_private_dir(&state).unwrap();
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(matches!(
            Identity::load(&state),
            Err(EnrollError::NotEnrolled { .. })
        ));
        let id = Identity {
            agent_id: "a-\"1\"\\x".into(),
            coordinator: "[::1]:7443".into(),
        };
        write_private(&state.join(IDENTITY_FILE), id.to_toml().as_bytes()).unwrap();
        assert_eq!(Identity::load(&state).unwrap(), id);
        let mode = std::fs::metadata(state.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(state.join(IDENTITY_FILE), "agent_id = 3\n").unwrap();
        let e = Identity::load(&state).unwrap_err().to_string();
        assert!(e.contains("identity.toml"), "{e}");
    }

    #[test]
    fn responses_are_checked() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let agent_key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["agent-1".to_owned()])
            .unwrap()
            .signed_by(&agent_key, &issuer)
            .unwrap();
        let pin = tls::parse_ca_hash(&tls::ca_hash(ca.der())).unwrap();
        let good = EnrollResponse {
            agent_id: "agent-1".into(),
            cert_pem: cert.pem(),
            ca_pem: ca.pem(),
        };
        check_response(&good, &pin, agent_key.public_key_raw()).unwrap();
        let other_key = KeyPair::generate().unwrap();
        assert!(check_response(&good, &pin, other_key.public_key_raw()).is_err());
        assert!(check_response(&good, &[0; 32], agent_key.public_key_raw()).is_err());
        let bad_id = EnrollResponse {
            agent_id: String::new(),
            ..good.clone()
        };
        assert!(check_response(&bad_id, &pin, agent_key.public_key_raw()).is_err());
    }

    #[test]
    fn reject_reasons_are_named() {
        let e = EnrollError::Rejected {
            code: RejectCode::BadToken,
            message: "expired".into(),
        };
        assert_eq!(e.to_string(), "token rejected: expired");
    }

    #[tokio::test]
    async fn bad_options_fail_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EnrollOptions {
            coordinator: "127.0.0.1:9".into(),
            token: "t".into(),
            ca_hash: "sha256:00".into(),
            state_dir: dir.path().to_owned(),
        };
        assert!(matches!(
            enroll(opts.clone()).await,
            Err(EnrollError::Tls(TlsError::BadCaHash { .. }))
        ));
        let o = EnrollOptions {
            coordinator: "nohost".into(),
            ..opts.clone()
        };
        assert!(matches!(
            enroll(o).await,
            Err(EnrollError::BadCoordinator { .. })
        ));
        let o = EnrollOptions {
            token: " ".into(),
            ..opts
        };
        assert!(matches!(enroll(o).await, Err(EnrollError::EmptyToken)));
    }
}
