//! The agent's mirror model: which one runs, where it is kept, and how a pushed one is
//! taken or refused.
//!
//! What it is for: the daemon starts with the model persisted in `<state_dir>/models/`
//! (`current.bin`, falling back to `previous.bin`, then to the model built into the
//! binary), the sampling thread reads the running model through a [`ModelHandle`], and
//! the link hands every `CoordMsg::Model` to [`ModelHandle::offer`]. A pushed model is
//! taken only if a signed `ModelUpdate` command granted exactly its (kind, version,
//! SHA-256) first, its SHA-256 matches the push, it loads (kind, format, checksum, weights,
//! a probe inference) and its version is the one the push names; then it is written to
//! disk (the old `current.bin` becomes `previous.bin`) and swapped in atomically: the
//! sampling thread sees either the old model or the new one, never a mix. Anything else is
//! refused, the running model stays, and the answer says why. Every offer is answered
//! with a `ModelStatus` that the link sends on the control stream.
//!
//! Why the grant: the push itself is only protected by the TLS session, so a stolen
//! session could otherwise replace the model. The grant is written by the command runner
//! (`commands`) into `<state_dir>/commands.db` after it verified the command's CA
//! signature, agent id and expiry and the local policy allowed `actions.model_update`.
//! The coordinator sends the bytes only after that command succeeded, so a push that
//! finds no grant is refused outright (not kept pending): it is either an attack or a
//! coordinator that skipped the command, and in both cases the running model stays.
//!
//! What it is not: inference scheduling (`mirror`) or the protocol (`link`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use persona_models::Mirror;
use persona_models::mirror::{file_sha256, hex};
use persona_shared::protocol::{ModelPush, ModelStatus};
use tokio::sync::mpsc;

/// Directory under the state dir that holds the models.
pub const MODELS_DIR: &str = "models";
const CURRENT: &str = "current.bin";
const PREVIOUS: &str = "previous.bin";
/// The only model kind the agent runs.
pub const KIND_MIRROR: &str = "mirror";
/// Answers queued for the link while it is disconnected.
const STATUS_QUEUE: usize = 16;

/// Why a model could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    #[error("model kind {kind:?} is not one this agent runs (only \"mirror\")")]
    Kind { kind: String },
    #[error("SHA-256 mismatch: the push says {expected}, the bytes hash to {actual}")]
    Checksum { expected: String, actual: String },
    #[error("the model does not load: {0}")]
    Load(#[from] persona_models::ModelError),
    #[error("the push names version {offered} but the model is {actual}")]
    Version { offered: String, actual: String },
    #[error("cannot persist the model in {path}: {source}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the built-in model does not load: {0}")]
    Shipped(persona_models::ModelError),
    #[error(
        "model {kind} {version} (SHA-256 {sha256}) is not granted by a signed model_update command"
    )]
    NotGranted {
        kind: String,
        version: String,
        sha256: String,
    },
    #[error("cannot read the model grants: {0}")]
    Grants(#[from] crate::commands::log::CommandError),
}

/// The running model and where it came from.
#[derive(Debug, Clone)]
pub struct Active {
    pub mirror: Arc<Mirror>,
    /// "pushed", "previous" (rolled back at start) or "shipped".
    pub source: &'static str,
}

/// Shared access to the running model (cheap to clone).
#[derive(Debug, Clone)]
pub struct ModelHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: Option<PathBuf>,
    /// The state dir whose command log holds the grants (None: nothing is ever granted).
    grants: Option<PathBuf>,
    active: Mutex<Active>,
    /// Serialises offers (two pushes never interleave their file renames).
    offers: Mutex<()>,
    status_tx: mpsc::Sender<ModelStatus>,
    /// The link takes this for the length of a session.
    pub(crate) status_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<ModelStatus>>>,
}

fn load_file(path: &Path) -> Option<Mirror> {
    let bytes = std::fs::read(path).ok()?;
    match Mirror::from_bytes(&bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(path = %path.display(), "stored mirror model refused: {e}");
            None
        }
    }
}

impl ModelHandle {
    /// Opens the store in `<state_dir>/models` (None: memory only, e.g. `observe`) and
    /// picks the model to run: current, else previous (a rollback), else the shipped one.
    pub fn open(state_dir: Option<&Path>) -> Result<ModelHandle, ModelStoreError> {
        let dir = state_dir.map(|d| d.join(MODELS_DIR));
        let stored = dir.as_ref().and_then(|d| {
            load_file(&d.join(CURRENT))
                .map(|m| (m, "pushed"))
                .or_else(|| {
                    let m = load_file(&d.join(PREVIOUS))?;
                    tracing::warn!(
                        version = m.version(),
                        "the current mirror model does not load; rolled back to the previous one"
                    );
                    Some((m, "previous"))
                })
        });
        let (mirror, source) = match stored {
            Some(s) => s,
            None => (
                Mirror::shipped().map_err(ModelStoreError::Shipped)?,
                "shipped",
            ),
        };
        tracing::info!(version = mirror.version(), source, "mirror model loaded");
        let (status_tx, status_rx) = mpsc::channel(STATUS_QUEUE);
        Ok(ModelHandle {
            inner: Arc::new(Inner {
                dir,
                grants: state_dir.map(Path::to_path_buf),
                active: Mutex::new(Active {
                    mirror: Arc::new(mirror),
                    source,
                }),
                offers: Mutex::new(()),
                status_tx,
                status_rx: Arc::new(tokio::sync::Mutex::new(status_rx)),
            }),
        })
    }

    /// The running model (an `Arc` clone: no copy, no allocation).
    pub fn current(&self) -> Active {
        self.inner
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Version of the running model, for Hello and reports.
    pub fn version(&self) -> String {
        self.current().mirror.version().to_owned()
    }

    /// Checks, persists and swaps in a pushed model; returns the answer for the
    /// coordinator (also on refusal). Blocking (file writes, a model load).
    pub fn install(&self, push: &ModelPush) -> ModelStatus {
        let _one = self
            .inner
            .offers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = self.version();
        let outcome = if push.version == before {
            Ok(false)
        } else {
            self.try_install(push).map(|()| true)
        };
        let running = self.version();
        match outcome {
            Ok(changed) => {
                if changed {
                    tracing::info!(from = %before, to = %running, "mirror model updated");
                }
                ModelStatus {
                    kind: push.kind.clone(),
                    offered: push.version.clone(),
                    running,
                    accepted: true,
                    message: (!changed).then(|| "already running this version".to_owned()),
                }
            }
            Err(e) => {
                tracing::warn!(offered = %push.version, %running, "mirror model refused: {e}");
                ModelStatus {
                    kind: push.kind.clone(),
                    offered: push.version.clone(),
                    running,
                    accepted: false,
                    message: Some(e.to_string()),
                }
            }
        }
    }

    fn try_install(&self, push: &ModelPush) -> Result<(), ModelStoreError> {
        if push.kind != KIND_MIRROR {
            return Err(ModelStoreError::Kind {
                kind: push.kind.clone(),
            });
        }
        self.check_grant(push)?;
        let actual = file_sha256(&push.bytes);
        if push.sha256.as_slice() != actual.as_slice() {
            return Err(ModelStoreError::Checksum {
                expected: hex(&push.sha256),
                actual: hex(&actual),
            });
        }
        let mirror = Mirror::from_bytes(&push.bytes)?;
        if mirror.version() != push.version {
            return Err(ModelStoreError::Version {
                offered: push.version.clone(),
                actual: mirror.version().to_owned(),
            });
        }
        if let Some(dir) = &self.inner.dir {
            persist(dir, &push.bytes)?;
        }
        *self
            .inner
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Active {
            mirror: Arc::new(mirror),
            source: "pushed",
        };
        Ok(())
    }

    /// Refuses a push unless a verified command granted exactly its kind, version and
    /// checksum (the bytes are then checked against that checksum).
    fn check_grant(&self, push: &ModelPush) -> Result<(), ModelStoreError> {
        let not_granted = || ModelStoreError::NotGranted {
            kind: push.kind.clone(),
            version: push.version.clone(),
            sha256: hex(&push.sha256),
        };
        let Some(state_dir) = &self.inner.grants else {
            return Err(not_granted());
        };
        // No command log yet: no command ever ran, so nothing was granted.
        if !state_dir.join(crate::commands::log::COMMANDS_FILE).exists() {
            return Err(not_granted());
        }
        if crate::commands::log::model_granted_in(
            state_dir,
            &push.kind,
            &push.version,
            &push.sha256,
        )? {
            Ok(())
        } else {
            Err(not_granted())
        }
    }

    /// Handles a push from the link: installs it on a blocking thread and queues the
    /// answer for the control stream.
    pub fn offer(&self, push: ModelPush) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let status = me.install(&push);
            if me.inner.status_tx.try_send(status).is_err() {
                tracing::warn!("model status queue full; an answer was dropped");
            }
        });
    }

    /// The queue of answers, taken by the link for a session.
    pub fn statuses(&self) -> Arc<tokio::sync::Mutex<mpsc::Receiver<ModelStatus>>> {
        self.inner.status_rx.clone()
    }
}

/// The next answer to send, or never when model updates are off (for the link's select).
pub async fn next_status(
    statuses: &mut Option<tokio::sync::OwnedMutexGuard<mpsc::Receiver<ModelStatus>>>,
) -> Option<ModelStatus> {
    match statuses {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes `bytes` as the current model, keeping the old current as previous. Each step
/// is a rename, and the new file is synced before it replaces anything.
fn persist(dir: &Path, bytes: &[u8]) -> Result<(), ModelStoreError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ModelStoreError::Persist { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let tmp = dir.join("incoming.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(bytes).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
    }
    let current = dir.join(CURRENT);
    if current.exists() {
        std::fs::rename(&current, dir.join(PREVIOUS)).map_err(err(&current))?;
    }
    std::fs::rename(&tmp, &current).map_err(err(&current))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_of(bytes: &[u8]) -> ModelPush {
        let m = Mirror::from_bytes(bytes).expect("valid model");
        ModelPush {
            kind: KIND_MIRROR.into(),
            version: m.version().to_owned(),
            sha256: file_sha256(bytes).to_vec(),
            bytes: bytes.to_vec(),
        }
    }

    /// Grants a model the way the command runner does after a verified command.
    fn grant(state_dir: &Path, p: &ModelPush) {
        crate::commands::log::CommandLog::open(
            &state_dir.join(crate::commands::log::COMMANDS_FILE),
        )
        .expect("command log")
        .grant_model(&p.kind, &p.version, &p.sha256)
        .expect("grant");
    }

    /// A real model of another version than the shipped one: the shipped file with its
    /// training time (`created_ms`, 0 in the shipped build) set to 1 and the envelope's
    /// checksum recomputed. The weights are the real ones; the version (a hash of the
    /// payload) differs. Patched in place because the agent has no training code.
    fn another_model() -> Vec<u8> {
        fn find(hay: &[u8], needle: &[u8]) -> usize {
            hay.windows(needle.len())
                .position(|w| w == needle)
                .expect("marker in the model file")
        }
        let mut b = Mirror::shipped_bytes().to_vec();
        // Envelope: ... "sha256" bin8(32) ... "payload" bin32(len) payload.
        let sha_at = find(&b, b"\xa6sha256\xc4\x20") + 9;
        let pay_key = find(&b, b"\xa7payload\xc6") + 9;
        let len = u32::from_be_bytes(b[pay_key..pay_key + 4].try_into().expect("len"));
        let (start, end) = (pay_key + 4, pay_key + 4 + len as usize);
        let at = start + find(&b[start..end], b"\xaacreated_ms") + 11;
        assert_eq!(b[at], 0, "the shipped model's created_ms is 0");
        b[at] = 1;
        let sum = file_sha256(&b[start..end]);
        b[sha_at..sha_at + 32].copy_from_slice(&sum);
        b
    }

    #[test]
    fn a_granted_model_is_installed_and_an_ungranted_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = ModelHandle::open(Some(dir.path())).expect("open");
        let shipped = h.version();
        let bytes = another_model();
        let p = push_of(&bytes);
        assert_ne!(p.version, shipped);

        // No command log at all: refused, nothing written.
        let st = h.install(&p);
        assert!(!st.accepted, "{st:?}");
        assert!(
            st.message
                .as_deref()
                .unwrap_or("")
                .contains("not granted by a signed model_update command"),
            "{st:?}"
        );
        assert_eq!(st.running, shipped);
        // A grant for another version, and one for the right version with another
        // checksum: still refused.
        let mut other = p.clone();
        other.version = "mirror-0123456789ab".into();
        grant(dir.path(), &other);
        let mut wrong_sha = p.clone();
        wrong_sha.sha256 = vec![7; 32];
        grant(dir.path(), &wrong_sha);
        // (INSERT OR REPLACE by (kind, version): the last grant for this version is the
        // wrong checksum.)
        let st = h.install(&p);
        assert!(!st.accepted && st.message.as_deref().unwrap_or("").contains("not granted"));
        assert_eq!(h.version(), shipped);
        assert!(!dir.path().join(MODELS_DIR).join(CURRENT).exists());
        // The bytes of another model under a granted checksum: the checksum check refuses.
        let mut swapped = wrong_sha.clone();
        swapped.bytes = Mirror::shipped_bytes().to_vec();
        let st = h.install(&swapped);
        assert!(!st.accepted && st.message.as_deref().unwrap_or("").contains("SHA-256"));

        // Granted exactly: installed and persisted.
        grant(dir.path(), &p);
        let st = h.install(&p);
        assert!(st.accepted, "{st:?}");
        assert_eq!(st.running, p.version);
        assert_eq!(h.current().source, "pushed");
        assert_eq!(
            std::fs::read(dir.path().join(MODELS_DIR).join(CURRENT)).expect("current"),
            bytes
        );
    }

    #[test]
    fn without_a_state_dir_nothing_is_granted() {
        let h = ModelHandle::open(None).expect("open");
        let st = h.install(&push_of(&another_model()));
        assert!(!st.accepted && st.message.as_deref().unwrap_or("").contains("not granted"));
    }

    #[test]
    fn starts_with_the_shipped_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = ModelHandle::open(Some(dir.path())).expect("open");
        assert_eq!(h.current().source, "shipped");
        assert_eq!(h.version(), Mirror::shipped().expect("shipped").version());
    }

    #[test]
    fn bad_pushes_are_refused_and_the_running_model_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = ModelHandle::open(Some(dir.path())).expect("open");
        let running = h.version();
        let good = push_of(Mirror::shipped_bytes());
        // Wrong checksum.
        let mut p = good.clone();
        p.version = "mirror-000000000000".into();
        p.sha256[0] ^= 1;
        grant(dir.path(), &p);
        let st = h.install(&p);
        assert!(!st.accepted && st.message.as_deref().unwrap_or("").contains("SHA-256"));
        // Matching checksum over corrupt bytes: the load refuses it.
        let mut p = good.clone();
        p.version = "mirror-000000000000".into();
        let at = p.bytes.len() - 50;
        p.bytes[at] ^= 0xff;
        p.sha256 = file_sha256(&p.bytes).to_vec();
        grant(dir.path(), &p);
        let st = h.install(&p);
        assert!(!st.accepted, "{st:?}");
        assert!(
            st.message
                .as_deref()
                .unwrap_or("")
                .contains("does not load")
        );
        // A version that is not the model's.
        let mut p = good.clone();
        p.version = "mirror-ffffffffffff".into();
        grant(dir.path(), &p);
        let st = h.install(&p);
        assert!(!st.accepted && st.message.as_deref().unwrap_or("").contains("version"));
        // Another kind.
        let mut p = good;
        p.kind = "profiler".into();
        p.version = "x".into();
        assert!(!h.install(&p).accepted);
        assert_eq!(h.version(), running);
        assert!(!dir.path().join(MODELS_DIR).join(CURRENT).exists());
    }

    /// Installing, restarting, and rolling back when the current file is damaged.
    #[test]
    fn installs_persist_and_a_damaged_current_rolls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = ModelHandle::open(Some(dir.path())).expect("open");
        let shipped = Mirror::shipped_bytes();
        // Same version as running: accepted, nothing written.
        let st = h.install(&push_of(shipped));
        assert!(st.accepted && st.message.is_some());
        // Write the shipped model as "current" and a damaged one over it later: that is
        // what a disk error after an update looks like.
        persist(&dir.path().join(MODELS_DIR), shipped).expect("persist");
        persist(&dir.path().join(MODELS_DIR), b"garbage").expect("persist");
        let h2 = ModelHandle::open(Some(dir.path())).expect("open");
        assert_eq!(h2.current().source, "previous");
        assert_eq!(h2.version(), Mirror::shipped().expect("shipped").version());
    }
}
