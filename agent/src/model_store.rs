//! The agent's mirror model: which one runs, where it is kept, and how a pushed one is
//! taken or refused.
//!
//! What it is for: the daemon starts with the model persisted in `<state_dir>/models/`
//! (`current.bin`, falling back to `previous.bin`, then to the model built into the
//! binary), the sampling thread reads the running model through a [`ModelHandle`], and
//! the link hands every `CoordMsg::Model` to [`ModelHandle::offer`]. A pushed model is
//! taken only if its SHA-256 matches the push, it loads (kind, format, checksum, weights,
//! a probe inference) and its version is the one the push names; then it is written to
//! disk (the old `current.bin` becomes `previous.bin`) and swapped in atomically: the
//! sampling thread sees either the old model or the new one, never a mix. Anything else is
//! refused, the running model stays, and the answer says why. Every offer is answered
//! with a `ModelStatus` that the link sends on the control stream.
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
        let st = h.install(&p);
        assert!(!st.accepted && st.message.as_deref().unwrap_or("").contains("SHA-256"));
        // Matching checksum over corrupt bytes: the load refuses it.
        let mut p = good.clone();
        p.version = "mirror-000000000000".into();
        let at = p.bytes.len() - 50;
        p.bytes[at] ^= 0xff;
        p.sha256 = file_sha256(&p.bytes).to_vec();
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
