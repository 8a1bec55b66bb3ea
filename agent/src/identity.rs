//! Who this agent is, as enrollment left it in the state dir: the agent id and the
//! coordinator's address (`identity.toml`), and the names of the key and certificate
//! files beside it. Files are 0600 in a 0700 directory and each is written atomically,
//! `identity.toml` last, so a state dir either holds a complete identity or is treated
//! as not enrolled. The link, the command runner and the daemon read it; only `enroll`
//! writes it. What this is not: the TLS set-up from those files (`tls`).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const KEY_FILE: &str = "key.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const CA_FILE: &str = "ca.pem";
pub const IDENTITY_FILE: &str = "identity.toml";
/// The command key pinned by the coordinator's `PinCommandKey` (hex SEC1 point); absent
/// until the first pin, while commands are checked against `ca.pem`.
pub const COMMAND_KEY_FILE: &str = "command-key.pub";
/// The key the last pin replaced.
pub const PREVIOUS_COMMAND_KEY_FILE: &str = "command-key.prev";

/// Who this agent is, as stored in `identity.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub agent_id: String,
    /// HOST:PORT used at enrollment, the default coordinator of `run`.
    pub coordinator: String,
}

/// Why the stored identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "not enrolled: {path} is missing; run `persona-agent enroll --coordinator HOST:PORT --token-file PATH --ca-hash sha256:HEX` first"
    )]
    NotEnrolled { path: PathBuf },
    #[error("invalid identity file {path}: {detail}")]
    BadIdentity { path: PathBuf, detail: String },
}

impl Identity {
    /// Reads `identity.toml` from a state dir.
    pub fn load(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NotEnrolled { path });
            }
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let id: Identity = toml::from_str(&text).map_err(|e| IdentityError::BadIdentity {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if id.agent_id.is_empty() {
            return Err(IdentityError::BadIdentity {
                path,
                detail: "empty agent_id".into(),
            });
        }
        Ok(id)
    }

    /// The TOML text of this identity. toml is built without its serializer, so this is
    /// written by hand; a JSON string literal is also a valid TOML basic string.
    pub(crate) fn to_toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        format!(
            "agent_id = {}\ncoordinator = {}\n",
            q(&self.agent_id),
            q(&self.coordinator)
        )
    }
}

/// Creates the state dir (0700) if it does not exist, and takes group and others'
/// access away from one that does (made by hand or by an older package with the umask's
/// 0755): it holds the agent's key, its outbox and its command log.
pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700))
            .map_err(io)?;
        tracing::warn!(
            dir = %dir.display(),
            "the state dir was open to group or others (mode {mode:o}); made it {:o}",
            mode & 0o7700
        );
    }
    Ok(())
}

/// Writes a 0600 file atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. A crash leaves either the old file or the new one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| IdentityError::Io { path: p, source }
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

    /// Issue 18: a state dir that exists with the umask's mode is made 0700.
    #[test]
    fn an_existing_open_state_dir_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

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
            Err(IdentityError::NotEnrolled { .. })
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
}
