//! The Usage Profiler: from what a user says about a VM to a probability for every persona.
//!
//! What it is for: [`Profiler::predict`] on the coordinator for `personactl profile` and the
//! HTTP API, and [`train`] (cargo feature `train`) for `personactl model train`. The model is
//! a small burn MLP over hashed features ([`crate::features`]): features -> hidden (ReLU) ->
//! one logit per persona -> softmax.
//!
//! What it is not: sizing or spec extraction (the coordinator turns the distribution into a
//! size), and not a judge of bad input beyond what the model itself needs (the caller refuses
//! absurd data sizes, unknown software is simply an unseen feature here).
//!
//! The model file ([`Profiler::from_bytes`]) is this crate's own MessagePack envelope:
//! ```text
//! Envelope { kind: "persona-profiler", format_version, sha256(payload), payload }
//! payload = MessagePack Body { slugs, features: FeatureConfig, hidden, meta, module }
//! module  = burn 0.22 burnpack bytes (ModuleRecord::into_bytes / from_bytes: in memory, no
//!           temp file)
//! ```
//! so a damaged file (checksum), another kind of file (kind) or a newer format (version) is
//! refused with a clear error before burn sees any of it.

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::envelope::{self, FileKind, hex};
use crate::features::{FeatureConfig, Featurizer, MAX_INPUT_BYTES, MAX_SOFTWARE};
use crate::mlp::{Mlp, check_shape, inference_device, renormalize};

pub use crate::corpus::{Example, shipped_corpus};

/// The `kind` string of a profiler model file.
pub const MODEL_KIND: &str = "persona-profiler";
/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest model file accepted, so a hostile file cannot make us allocate without bound.
pub const MAX_MODEL_BYTES: usize = 64 * 1024 * 1024;

const FILE: FileKind = FileKind {
    kind: MODEL_KIND,
    format_version: FORMAT_VERSION,
    max_bytes: MAX_MODEL_BYTES,
    what: "model file",
};
/// Largest hidden layer accepted from a model file.
const MAX_HIDDEN: usize = 4096;

/// The model that ships inside the binary; produced by
/// `cargo run --release -p persona-models --features train --example train_profiler -- --out models/assets/profiler.bin --seed 42`.
static SHIPPED_MODEL: &[u8] = include_bytes!("../assets/profiler.bin");

/// One request to profile.
#[derive(Debug, Clone, Copy)]
pub struct ProfileInput<'a> {
    /// Free text, e.g. "fine-tuning a 7B model with LoRA".
    pub description: &'a str,
    /// Software names as typed (versions and registry paths are stripped).
    pub software: &'a [String],
    /// Data size in GB, if known.
    pub data_gb: Option<f64>,
}

/// A summary of how the model was trained, stored in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Held-out top-1 accuracy at training time.
    pub top1: f64,
    /// Held-out top-2 accuracy at training time.
    pub top2: f64,
    /// Training examples.
    pub n_train: usize,
    /// Held-out examples.
    pub n_test: usize,
    /// Seed of the run.
    pub seed: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    slugs: Vec<String>,
    features: FeatureConfig,
    hidden: usize,
    meta: ModelMeta,
    #[serde(with = "serde_bytes")]
    module: Vec<u8>,
}

/// A loaded profiler model, ready to predict. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Profiler {
    slugs: Vec<String>,
    featurizer: Featurizer,
    model: Mlp,
    device: Device,
    meta: ModelMeta,
    sha256: [u8; 32],
}

impl Profiler {
    /// The model built into the binary; works offline.
    pub fn shipped() -> Result<Profiler, ModelError> {
        Self::from_bytes(SHIPPED_MODEL)
    }

    /// Loads a model file, checking kind, format version and checksum first.
    pub fn from_bytes(bytes: &[u8]) -> Result<Profiler, ModelError> {
        let (body, actual): (Body, _) = envelope::open(bytes, FILE)?;
        let invalid = |reason: String| ModelError::Invalid { reason };
        body.features.validate().map_err(invalid)?;
        check_shape(&body.slugs, body.hidden, MAX_HIDDEN)?;
        let device = inference_device();
        let dims = [body.features.dims(), body.hidden, body.slugs.len()];
        let model = Mlp::load(dims, body.module, &device)?;
        Ok(Profiler {
            slugs: body.slugs,
            featurizer: Featurizer::new(body.features),
            model,
            device,
            meta: body.meta,
            sha256: actual,
        })
    }

    /// Persona slugs, in the order of [`Profiler::predict`]'s output.
    pub fn slugs(&self) -> &[String] {
        &self.slugs
    }

    /// Training summary stored in the model file.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Hex SHA-256 of the model payload: a stable identity for "which model answered".
    pub fn model_id(&self) -> String {
        hex(&self.sha256)
    }

    /// The feature settings of this model.
    pub fn feature_config(&self) -> &FeatureConfig {
        self.featurizer.config()
    }

    /// Probabilities for every persona (sum 1, order = [`Profiler::slugs`]).
    ///
    /// Refuses input with nothing in it, descriptions over 64 KiB and more than 256 software
    /// entries, rather than silently truncating what a user sent.
    pub fn predict(&self, input: &ProfileInput) -> Result<Vec<f32>, ModelError> {
        if input.description.len() > MAX_INPUT_BYTES {
            return Err(ModelError::InputTooLarge {
                what: "description",
                size: input.description.len(),
                max: MAX_INPUT_BYTES,
            });
        }
        if input.software.len() > MAX_SOFTWARE {
            return Err(ModelError::InputTooLarge {
                what: "software list",
                size: input.software.len(),
                max: MAX_SOFTWARE,
            });
        }
        if input.description.trim().is_empty() && input.software.iter().all(|s| s.trim().is_empty())
        {
            return Err(ModelError::EmptyInput);
        }
        let x = self
            .featurizer
            .features(input.description, input.software, input.data_gb);
        let mut out = self.predict_batch(&x, 1)?;
        // Guard the invariant callers rely on even if the weights were pathological.
        renormalize(&mut out);
        Ok(out)
    }

    /// Probabilities for `n` feature rows laid out one after the other (used by evaluation).
    pub(crate) fn predict_batch(&self, x: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let d = self.featurizer.config().dims();
        self.model.probabilities(x, n, d, &self.device)
    }

    pub(crate) fn featurizer(&self) -> &Featurizer {
        &self.featurizer
    }
}

/// The top probability below which the answer is "nothing stands out".
pub const LOW_CONFIDENCE_TOP: f32 = 0.45;
/// The lead over the runner-up below which the answer is "nothing stands out".
pub const LOW_CONFIDENCE_MARGIN: f32 = 0.15;

/// The low-confidence rule: `true` when the best persona has less than
/// [`LOW_CONFIDENCE_TOP`] (0.45) or leads the second by less than [`LOW_CONFIDENCE_MARGIN`]
/// (0.15). A mixed request ("I stream games and also train models") is therefore flagged;
/// the caller then sizes on the whole distribution rather than trusting the top persona.
pub fn low_confidence(probs: &[f32]) -> bool {
    let mut top = 0.0f32;
    let mut second = 0.0f32;
    for &p in probs {
        if p > top {
            second = top;
            top = p;
        } else if p > second {
            second = p;
        }
    }
    top < LOW_CONFIDENCE_TOP || top - second < LOW_CONFIDENCE_MARGIN
}

/// Writes a model file (the envelope around burn's bytes).
#[cfg(feature = "train")]
pub(crate) fn encode_model(
    slugs: &[String],
    features: &FeatureConfig,
    hidden: usize,
    meta: ModelMeta,
    model: Mlp,
) -> Result<Vec<u8>, ModelError> {
    let body = Body {
        slugs: slugs.to_vec(),
        features: features.clone(),
        hidden,
        meta,
        module: model.into_module_bytes()?,
    };
    envelope::seal(&body, FILE)
}

#[cfg(feature = "train")]
pub use crate::train::{TrainConfig, TrainReport, train, train_with};
