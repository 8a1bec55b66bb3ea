//! Container images: `docker pull` or `podman pull`, with the first engine the policy
//! allows that is installed. An image already in the engine's store is reported as
//! present. References were checked against the OCI grammar and qualified before they
//! get here; they are passed after `--`, with no shell.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::packages::{ExecError, INSTALL_TIMEOUT, find_program, run};

/// The engine to use: the first of `allowed` that is installed.
pub fn engine(allowed: &[String]) -> Option<(String, PathBuf)> {
    allowed
        .iter()
        .find_map(|e| find_program(e).ok().map(|p| (e.clone(), p)))
}

/// Whether the engine already has the image.
pub fn present(engine: &std::path::Path, reference: &str, cancel: &AtomicBool) -> bool {
    run(
        engine,
        &["image", "inspect", "--format", "{{.Id}}", "--", reference],
        &[],
        Duration::from_secs(60),
        cancel,
    )
    .is_ok()
}

/// Pulls the image.
pub fn pull(
    engine: &std::path::Path,
    reference: &str,
    cancel: &AtomicBool,
) -> Result<(), ExecError> {
    run(
        engine,
        &["pull", "--quiet", "--", reference],
        &[],
        INSTALL_TIMEOUT,
        cancel,
    )
    .map(|_| ())
}
