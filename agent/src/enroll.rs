//! Enrollment (`persona-agent enroll`): turning a join token into a client certificate.
//!
//! The agent generates its P-256 key pair locally (the private key never leaves the VM),
//! connects without a client certificate, trusts the coordinator only if its CA matches
//! the pin given with `--ca-hash`, presents the token with its public key, and stores
//! what it gets back in the state dir as the agent's `identity` (`key.pem`, `cert.pem`,
//! `ca.pem`, then `identity.toml`). This module does not stream; the daemon
//! ([`crate::daemon`]) uses the stored identity.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use persona_shared::addr::looks_like_host_port;
use persona_shared::protocol::{
    AgentMsg, CoordMsg, DEFAULT_MAX_FRAME, EnrollRequest, EnrollResponse, RejectCode, SERVER_NAME,
};
use persona_shared::wire::{WireError, read_msg, write_msg};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::identity::{
    CA_FILE, CERT_FILE, IDENTITY_FILE, Identity, IdentityError, KEY_FILE, create_private_dir,
    write_private,
};
use crate::link::connect::{client_endpoint, resolve};
use crate::link::{self, LinkError};
use crate::tls::{self, TlsError};

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

/// Enrollment and identity errors.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("invalid --coordinator {given:?}: expected HOST:PORT")]
    BadCoordinator { given: String },
    #[error("empty join token")]
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
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the token file {path} is open to group or others (mode {mode:o}): `chmod 600` it (and keep it owned by the user who enrolls)"
    )]
    TokenFileMode { path: PathBuf, mode: u32 },
    #[error("cannot read the token from standard input: {0}")]
    TokenStdin(std::io::Error),
    #[error("the token from {from} is longer than {MAX_TOKEN} bytes")]
    TokenTooLong { from: String },
}

/// Longest token accepted from a file or stdin (a join token is about 40 characters).
pub const MAX_TOKEN: usize = 4096;

/// Where `enroll` gets the join token from. On the command line it is visible to every
/// user of the machine (`ps`, `/proc/PID/cmdline`); a file or stdin is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given on the command line.
    Value(String),
    /// A file readable by its owner only (`--token-file PATH`).
    File(PathBuf),
    /// Standard input (`--token -`).
    Stdin,
}

/// Reads the token from `source` (`stdin` for [`TokenSource::Stdin`]), without the
/// surrounding whitespace. A token file open to group or others is refused: the token
/// may already have been read by someone else.
pub fn read_token(source: &TokenSource, stdin: &mut dyn Read) -> Result<String, EnrollError> {
    let text = match source {
        TokenSource::Value(v) => return Ok(v.trim().to_owned()),
        TokenSource::File(path) => read_token_file(path)?,
        TokenSource::Stdin => read_limited(stdin, "standard input").map_err(|e| match e {
            Limited::Io(e) => EnrollError::TokenStdin(e),
            Limited::TooLong(from) => EnrollError::TokenTooLong { from },
        })?,
    };
    Ok(text.trim().to_owned())
}

fn read_token_file(path: &Path) -> Result<String, EnrollError> {
    let io = |source| EnrollError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    // The mode of what was opened, not of whatever the path names a moment later.
    let mode = f.metadata().map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(EnrollError::TokenFileMode {
            path: path.to_owned(),
            mode,
        });
    }
    read_limited(&mut f, &path.display().to_string()).map_err(|e| match e {
        Limited::Io(source) => EnrollError::TokenFile {
            path: path.to_owned(),
            source,
        },
        Limited::TooLong(from) => EnrollError::TokenTooLong { from },
    })
}

enum Limited {
    Io(std::io::Error),
    TooLong(String),
}

fn read_limited(r: &mut dyn Read, from: &str) -> Result<String, Limited> {
    let mut buf = Vec::new();
    r.take(MAX_TOKEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(Limited::Io)?;
    if buf.len() > MAX_TOKEN {
        return Err(Limited::TooLong(from.to_owned()));
    }
    String::from_utf8(buf).map_err(|e| {
        Limited::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.utf8_error(),
        ))
    })
}

fn reject_text(code: RejectCode, message: &str) -> String {
    match code {
        RejectCode::BadToken => format!("token rejected: {message}"),
        other => format!("enrollment refused ({other:?}): {message}"),
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
    let addr = resolve(&opts.coordinator).await?;
    let endpoint = client_endpoint(addr)?;
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
            .map_err(|e| wire("opening a stream")(WireError::Connection(e.into())))?;
        write_msg(&mut send, &AgentMsg::Enroll(request), DEFAULT_MAX_FRAME)
            .await
            .map_err(wire("sending the request"))?;
        send.finish()
            .map_err(|e| wire("sending the request")(WireError::Write(e.into())))?;
        let answer = read_msg::<CoordMsg, _>(&mut recv, DEFAULT_MAX_FRAME, "the enrollment")
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
                what: link::kind(&other).into(),
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Issue 18, item 17: the token comes from a private file or stdin, trimmed; a file
    /// open to group or others is refused.
    #[test]
    fn tokens_are_read_from_a_private_file_or_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "ab12.secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = TokenSource::File(f.clone());
        let e = read_token(&src, &mut std::io::empty()).unwrap_err();
        assert!(
            matches!(e, EnrollError::TokenFileMode { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_token(&src, &mut std::io::empty()),
            Err(EnrollError::TokenFileMode { .. })
        ));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_token(&src, &mut std::io::empty()).unwrap(),
            "ab12.secret"
        );
        let missing = TokenSource::File(dir.path().join("none"));
        assert!(matches!(
            read_token(&missing, &mut std::io::empty()),
            Err(EnrollError::TokenFile { .. })
        ));
        let mut stdin: &[u8] = b"  cd34.other \n";
        assert_eq!(
            read_token(&TokenSource::Stdin, &mut stdin).unwrap(),
            "cd34.other"
        );
        let long = vec![b'x'; MAX_TOKEN + 1];
        assert!(matches!(
            read_token(&TokenSource::Stdin, &mut long.as_slice()),
            Err(EnrollError::TokenTooLong { .. })
        ));
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
