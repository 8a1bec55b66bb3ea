//! The behavioural-mirroring model: from a window of what a machine did (the
//! [`persona_shared::window`] feature vector) to a probability for every persona.
//!
//! What it is for: the agent runs [`Mirror::predict`] every window step, starting with the
//! model built into the binary ([`Mirror::shipped`]) and later whatever the coordinator
//! pushes ([`Mirror::from_bytes`] refuses anything damaged before burn sees it). The
//! coordinator trains new ones (`mirror_train`, cargo feature `train`). The network is
//! the one the profiler uses too ([`crate::mlp`]: features -> hidden, ReLU -> one logit per
//! persona -> softmax).
//!
//! What it is not: feature extraction (shared, so both sides agree), storage of the model
//! on the agent (agent `model_store`) or the decision what to do with the distribution.
//!
//! Model file: this crate's MessagePack envelope, kind `persona-mirror`:
//! ```text
//! Envelope { kind: "persona-mirror", format_version, sha256(payload), payload }
//! payload = MessagePack Body { slugs, feature_dim, hidden, meta, module }
//! ```
//! The model's **version** is `mirror-` and the first 12 hex digits of the payload's
//! SHA-256: it names the weights, so two coordinators that train the same model agree on
//! its version, and a model cannot claim another's version.

use burn::prelude::Device;
use persona_shared::window::FEATURE_DIM;
use serde::{Deserialize, Serialize};

use crate::ModelError;
/// Lower-case hex, as model checksums are shown.
pub use crate::envelope::hex;
use crate::envelope::{self, FileKind, sha256};
use crate::mlp::{Mlp, check_shape, inference_device, renormalize};

/// The `kind` string of a mirror model file.
pub const MODEL_KIND: &str = "persona-mirror";
/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest model file accepted (a real one is a few tens of kB).
pub const MAX_MODEL_BYTES: usize = 16 * 1024 * 1024;

const FILE: FileKind = FileKind {
    kind: MODEL_KIND,
    format_version: FORMAT_VERSION,
    max_bytes: MAX_MODEL_BYTES,
    what: "mirror model file",
};
const MAX_HIDDEN: usize = 1024;

/// The model that ships inside the binary; produced by
/// `cargo run --release -p persona-models --features train --example train_mirror -- --out models/assets/mirror.bin`.
static SHIPPED_MODEL: &[u8] = include_bytes!("../assets/mirror.bin");

/// How the model was trained, stored in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorMeta {
    /// Top-1 accuracy on held-out generated windows.
    pub top1: f64,
    /// Top-2 accuracy on the same.
    pub top2: f64,
    /// Windows trained on: generated and from feedback.
    pub n_generated: usize,
    pub n_feedback: usize,
    pub seed: u64,
    /// When it was trained (ms since the epoch; 0 for the reproducible shipped build).
    pub created_ms: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    slugs: Vec<String>,
    feature_dim: usize,
    hidden: usize,
    meta: MirrorMeta,
    #[serde(with = "serde_bytes")]
    module: Vec<u8>,
}

/// A loaded mirror model.
#[derive(Debug)]
pub struct Mirror {
    slugs: Vec<String>,
    model: Mlp,
    device: Device,
    meta: MirrorMeta,
    version: String,
    file_sha256: [u8; 32],
}

/// SHA-256 of a whole model file, as sent in a model push.
pub fn file_sha256(bytes: &[u8]) -> [u8; 32] {
    sha256(bytes)
}

impl Mirror {
    /// The model built into the binary; works before any coordinator is reachable.
    pub fn shipped() -> Result<Mirror, ModelError> {
        Self::from_bytes(SHIPPED_MODEL)
    }

    /// The shipped model file's bytes (the coordinator serves it until it trains one).
    pub fn shipped_bytes() -> &'static [u8] {
        SHIPPED_MODEL
    }

    /// Loads a model file: size, kind, format version, checksum, then the contents and
    /// the weights. A feature size other than this build's is refused: the model was made
    /// for another window definition.
    pub fn from_bytes(bytes: &[u8]) -> Result<Mirror, ModelError> {
        let (body, actual): (Body, _) = envelope::open(bytes, FILE)?;
        let invalid = |reason: String| ModelError::Invalid { reason };
        if body.feature_dim != FEATURE_DIM {
            return Err(invalid(format!(
                "model takes {} window features, this build computes {FEATURE_DIM}",
                body.feature_dim
            )));
        }
        check_shape(&body.slugs, body.hidden, MAX_HIDDEN)?;
        let device = inference_device();
        let dims = [FEATURE_DIM, body.hidden, body.slugs.len()];
        let model = Mlp::load(dims, body.module, &device)?;
        let mirror = Mirror {
            slugs: body.slugs,
            model,
            device,
            meta: body.meta,
            version: format!("mirror-{}", &hex(&actual)[..12]),
            file_sha256: sha256(bytes),
        };
        // A model that loads but cannot answer is refused here, not at the first window.
        let probe = mirror.predict(&[0.0; FEATURE_DIM])?;
        if probe.iter().any(|p| !p.is_finite()) {
            return Err(invalid("the model gives non-finite probabilities".into()));
        }
        Ok(mirror)
    }

    /// Persona slugs in output order.
    pub fn slugs(&self) -> &[String] {
        &self.slugs
    }

    pub fn meta(&self) -> &MirrorMeta {
        &self.meta
    }

    /// `mirror-<12 hex digits>`: see the module documentation.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the whole model file this was loaded from.
    pub fn file_sha256(&self) -> [u8; 32] {
        self.file_sha256
    }

    /// Probabilities for every persona (order = [`Mirror::slugs`], sum 1).
    pub fn predict(&self, features: &[f32; FEATURE_DIM]) -> Result<Vec<f32>, ModelError> {
        let mut out = self.predict_rows(features, 1)?;
        renormalize(&mut out);
        Ok(out)
    }

    /// Probabilities for `n` feature rows laid out one after the other.
    pub fn predict_rows(&self, x: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        self.model.probabilities(x, n, FEATURE_DIM, &self.device)
    }
}

/// Writes a model file around trained weights.
#[cfg(feature = "train")]
pub(crate) fn encode(
    slugs: &[String],
    hidden: usize,
    meta: MirrorMeta,
    model: Mlp,
) -> Result<Vec<u8>, ModelError> {
    let body = Body {
        slugs: slugs.to_vec(),
        feature_dim: FEATURE_DIM,
        hidden,
        meta,
        module: model.into_module_bytes()?,
    };
    envelope::seal(&body, FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_model_loads_and_answers() {
        let m = Mirror::shipped().expect("shipped mirror model");
        assert_eq!(m.slugs().len(), 10);
        assert!(m.version().starts_with("mirror-") && m.version().len() == 19);
        let p = m.predict(&[0.1; FEATURE_DIM]).expect("predict");
        assert_eq!(p.len(), 10);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(m.file_sha256(), file_sha256(Mirror::shipped_bytes()));
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let good = Mirror::shipped_bytes().to_vec();
        // A flipped byte in the weights: the checksum catches it.
        let mut bad = good.clone();
        let at = bad.len() - 100;
        bad[at] ^= 0x55;
        assert!(matches!(
            Mirror::from_bytes(&bad),
            Err(ModelError::ChecksumMismatch { .. } | ModelError::Corrupt { .. })
        ));
        assert!(matches!(
            Mirror::from_bytes(&good[..good.len() / 2]),
            Err(ModelError::Corrupt { .. })
        ));
        assert!(matches!(
            Mirror::from_bytes(b"not a model"),
            Err(ModelError::Corrupt { .. })
        ));
        // The profiler's model is a Persona model file, but not a mirror.
        let profiler = include_bytes!("../assets/profiler.bin");
        assert!(matches!(
            Mirror::from_bytes(profiler),
            Err(ModelError::Foreign { .. })
        ));
    }
}
