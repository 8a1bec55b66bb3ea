//! The one error type of the guest actuator, shared by its readers, its writers and the
//! root helper that performs its privileged requests. Nothing else lives here, so every
//! part of the actuator can name it without importing the rest.

use std::path::PathBuf;

/// Why a guest resize failed.
#[derive(Debug, thiserror::Error)]
pub enum ActuateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("unexpected content in {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// The request crosses a safety bound (floor, cpu0).
    #[error("refused: {0}")]
    Refused(String),
    /// The guest cannot make this change (more CPUs than present, shrinking memory).
    #[error("not possible in the guest: {0}")]
    Unsupported(String),
    #[error("invalid resize request: {0}")]
    Invalid(String),
    /// The root helper could not be reached or said no.
    #[error("persona-actuator at {socket}: {detail}")]
    Helper { socket: PathBuf, detail: String },
}
