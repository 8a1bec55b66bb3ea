//! The command-signing keys. Commands are signed by a P-256 key of their own,
//! `command.key`, not by the TLS CA: the CA key is then needed only to enroll agents, so
//! an operator can take `ca.key` off the machine between enrollments, and a stolen CA key
//! (which can impersonate the coordinator over TLS) cannot send a command an agent runs.
//!
//! Each agent pins the current key with a `PinCommandKey` command signed by what it
//! trusted before (the CA on first contact, then the previous command key), so every key
//! is vouched for by the one it replaces. A rotation (`persona-coordinator
//! rotate-command-key`) moves `command.key` to `command-keys/<fingerprint>.key` and makes
//! a new one; retired keys stay loaded so that an agent still pinned to one is re-pinned
//! by it the next time it connects. An operator deletes a retired key once no agent pins
//! it (`personactl agents list` shows each agent's `command_key`).
//!
//! What it is not: signing (`signing`) or choosing which key an agent gets (`commands`).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use ring::digest;

use super::{PkiError, check_private, hex, io_err, write_private};

/// The current command key in the data directory.
pub const COMMAND_KEY_FILE: &str = "command.key";
/// Where retired command keys go, one `<hex fingerprint>.key` each.
pub const RETIRED_DIR: &str = "command-keys";

/// The name of a command key: `sha256:` and the hex SHA-256 of its SEC1 point. The store
/// records it per agent and both CLIs print it.
pub fn fingerprint(public_key: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(digest::digest(&digest::SHA256, public_key).as_ref())
    )
}

/// One loaded key.
struct Held {
    fingerprint: String,
    public: Vec<u8>,
    pkcs8: Vec<u8>,
}

impl Held {
    fn load(path: &Path) -> Result<Held, PkiError> {
        check_private(path)?;
        let pem = fs::read_to_string(path).map_err(io_err(path))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(PkiError::Parse {
                path: path.to_owned(),
                reason: "not an ECDSA P-256 key".into(),
            });
        }
        let public = key.public_key_raw().to_vec();
        Ok(Held {
            fingerprint: fingerprint(&public),
            public,
            pkcs8: key.serialize_der(),
        })
    }
}

/// The current command key and the retired ones still loaded.
pub struct CommandKeys {
    current: Held,
    retired: Vec<Held>,
}

impl CommandKeys {
    /// Loads `command.key` and `command-keys/*.key` from `dir`, creating `command.key` on
    /// first start (and on the first start after an upgrade from a release that signed
    /// with the CA).
    pub fn load_or_create(dir: &Path) -> Result<CommandKeys, PkiError> {
        let path = dir.join(COMMAND_KEY_FILE);
        if !path.exists() {
            let key = KeyPair::generate()?;
            write_private(&path, key.serialize_pem().as_bytes())?;
        }
        let current = Held::load(&path)?;
        let mut retired = Vec::new();
        let rdir = dir.join(RETIRED_DIR);
        if rdir.exists() {
            check_private(&rdir)?;
            let mut paths: Vec<PathBuf> = fs::read_dir(&rdir)
                .map_err(io_err(&rdir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect();
            paths.sort();
            for p in paths {
                let h = Held::load(&p)?;
                if h.fingerprint != current.fingerprint {
                    retired.push(h);
                }
            }
        }
        Ok(CommandKeys { current, retired })
    }

    /// The fingerprint of the key new commands are signed with once pinned.
    pub fn current_fingerprint(&self) -> &str {
        &self.current.fingerprint
    }

    /// The current key's SEC1 point, as `PinCommandKey` carries it.
    pub fn current_public(&self) -> &[u8] {
        &self.current.public
    }

    /// The PKCS#8 of the key named `fp`, current or retired.
    pub fn pkcs8(&self, fp: &str) -> Option<&[u8]> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|h| h.fingerprint == fp)
            .map(|h| h.pkcs8.as_slice())
    }

    /// Fingerprints of the retired keys still loaded.
    pub fn retired(&self) -> Vec<String> {
        self.retired.iter().map(|h| h.fingerprint.clone()).collect()
    }
}

/// Retires `command.key` into `command-keys/` and makes a new one; returns the old and
/// the new fingerprint. A running coordinator picks the new key up when restarted.
pub fn rotate(dir: &Path) -> Result<(String, String), PkiError> {
    let path = dir.join(COMMAND_KEY_FILE);
    let old = Held::load(&path)?;
    let rdir = dir.join(RETIRED_DIR);
    if !rdir.exists() {
        fs::create_dir(&rdir).map_err(io_err(&rdir))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&rdir, fs::Permissions::from_mode(0o700)).map_err(io_err(&rdir))?;
    }
    check_private(&rdir)?;
    let hexname = old.fingerprint.trim_start_matches("sha256:");
    let kept = rdir.join(format!("{hexname}.key"));
    // Copy first, then replace: a crash between the two leaves both keys on disk.
    let pem = fs::read(&path).map_err(io_err(&path))?;
    write_private(&kept, &pem)?;
    let key = KeyPair::generate()?;
    write_private(&path, key.serialize_pem().as_bytes())?;
    let new = fingerprint(key.public_key_raw());
    Ok((old.fingerprint, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_keeps_the_old_key_loaded_and_makes_a_new_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = CommandKeys::load_or_create(dir.path()).unwrap();
        let first = a.current_fingerprint().to_owned();
        assert_eq!(a.current_public().len(), 65);
        assert_eq!(fingerprint(a.current_public()), first);
        assert!(a.retired().is_empty());
        // Reloading gives the same key.
        let b = CommandKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(b.current_fingerprint(), first);

        let (old, new) = rotate(dir.path()).unwrap();
        assert_eq!(old, first);
        assert_ne!(new, first);
        let c = CommandKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(c.current_fingerprint(), new);
        assert_eq!(c.retired(), vec![first.clone()]);
        assert!(c.pkcs8(&first).is_some() && c.pkcs8(&new).is_some());
        assert!(c.pkcs8("sha256:00").is_none());
    }

    #[test]
    fn a_readable_retired_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        CommandKeys::load_or_create(dir.path()).unwrap();
        rotate(dir.path()).unwrap();
        let rdir = dir.path().join(RETIRED_DIR);
        let f = fs::read_dir(&rdir).unwrap().next().unwrap().unwrap().path();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let e = CommandKeys::load_or_create(dir.path()).err().unwrap();
        assert!(matches!(e, PkiError::Exposed { .. }), "{e}");
    }
}
