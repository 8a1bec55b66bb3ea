//! The Usage Profiler end to end: a request (description, software, data size) in, the
//! profile document out (persona distribution, low-confidence flag, explicit specs,
//! recommended size and instance, preload plan, suggestions, warnings).
//!
//! What it is for: one code path for `personactl profile --offline` (built-in personas,
//! built-in catalogue, the model shipped in the binary) and `POST /v1/profile` (personas
//! from the database, the operator's catalogue, the most recently trained model in the data
//! directory). Also the training entry point shared by `personactl model train --offline`
//! and `POST /v1/model/train`.
//!
//! Bad input is refused here with a clear reason: empty text, more than
//! [`MAX_DESCRIPTION_BYTES`] (64 KiB), non-UTF-8 bytes, a negative, non-finite or absurd
//! (> [`MAX_DATA_GB`], 10 PB) data size, too many or too long software names. An unknown
//! software name is *not* an error: it is planned as declared and listed in
//! `unknown_software` so the caller can warn.
//!
//! What it is not: the model (persona-models), sizing rules (`recommend`), spec scanning
//! (`specs`) or storage (`persona_db`).

pub mod belief;
pub mod catalogue;
pub mod persona_db;
pub mod personas;
pub mod sizing;
pub mod specs;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use persona_models::ModelError;
use persona_models::profiler::{ProfileInput, Profiler};

use crate::profile::catalogue::{Catalogue, CatalogueError};
use crate::profile::persona_db::{PersonaDb, PersonaDbError};
use crate::profile::personas::Persona;
use crate::profile::sizing::{PlanItem, Recommended, Suggestion, Weighted};
use crate::profile::specs::ExplicitSpecs;
use crate::store::Store;

/// Longest description accepted (bytes of UTF-8).
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// Largest data size accepted: 10 PB, in GB.
pub const MAX_DATA_GB: f64 = 10_000_000.0;
/// Most software names in one request, and the longest one.
pub const MAX_SOFTWARE: usize = 256;
pub const MAX_SOFTWARE_NAME: usize = 200;
/// File name of a trained model in the coordinator's data directory.
pub const MODEL_FILE: &str = "profiler.bin";

/// Why a request could not be profiled or a model not trained.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("the description is empty: say what the VM is for")]
    EmptyDescription,
    #[error("the description is {size} bytes; at most {max} bytes (64 KiB) are accepted")]
    DescriptionTooLong { size: usize, max: usize },
    #[error("the description is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("data size {value} GB is not accepted: {reason}")]
    DataSize { value: f64, reason: &'static str },
    #[error("software list: {0}")]
    Software(String),
    #[error("profiler model: {0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Catalogue(#[from] CatalogueError),
    #[error("{0}")]
    Db(#[from] PersonaDbError),
    #[error("built-in personas: {0}")]
    Personas(#[from] personas::PersonaError),
    #[error("there are no personas to profile against")]
    NoPersonas,
    #[error("cannot write the model file {path}: {source}")]
    WriteModel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a model is already being trained; try again when it finishes")]
    Busy,
    #[error("a lock was poisoned by a panic")]
    Poisoned,
}

/// A profile request (the JSON body of `POST /v1/profile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    pub description: String,
    #[serde(default)]
    pub software: Vec<String>,
    #[serde(default)]
    pub data_gb: Option<f64>,
}

/// Turns raw bytes (a file, stdin) into a description, refusing invalid UTF-8 with the
/// offset of the first bad byte.
pub fn description_from_bytes(bytes: Vec<u8>) -> Result<String, ProfileError> {
    if bytes.len() > MAX_DESCRIPTION_BYTES {
        return Err(ProfileError::DescriptionTooLong {
            size: bytes.len(),
            max: MAX_DESCRIPTION_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|e| ProfileError::NotUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Splits a comma-separated `--software` value ("pytorch, cuda,jupyter").
pub fn parse_software_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ProfileRequest {
    /// Checks every field; see the module docs for the limits.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if self.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(ProfileError::DescriptionTooLong {
                size: self.description.len(),
                max: MAX_DESCRIPTION_BYTES,
            });
        }
        if self.description.trim().is_empty() {
            return Err(ProfileError::EmptyDescription);
        }
        if let Some(g) = self.data_gb {
            if !g.is_finite() {
                return Err(ProfileError::DataSize {
                    value: g,
                    reason: "not a finite number",
                });
            }
            if g < 0.0 {
                return Err(ProfileError::DataSize {
                    value: g,
                    reason: "it is negative",
                });
            }
            if g > MAX_DATA_GB {
                return Err(ProfileError::DataSize {
                    value: g,
                    reason: "more than 10 PB (10,000,000 GB) for one VM is not plausible",
                });
            }
        }
        if self.software.len() > MAX_SOFTWARE {
            return Err(ProfileError::Software(format!(
                "{} names; at most {MAX_SOFTWARE} are accepted",
                self.software.len()
            )));
        }
        for s in &self.software {
            if s.trim().is_empty() || s.len() > MAX_SOFTWARE_NAME {
                return Err(ProfileError::Software(format!(
                    "{:?} is empty or longer than {MAX_SOFTWARE_NAME} bytes",
                    s.chars().take(40).collect::<String>()
                )));
            }
            if s.chars().any(char::is_control) {
                return Err(ProfileError::Software(
                    "names may not contain control characters".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Which model answered.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    /// "shipped" (built into the binary) or "trained" (data directory).
    pub source: String,
}

/// The profile document (`personactl profile --json`).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileDoc {
    /// Every persona, sorted by descending probability; the probabilities sum to 1.
    pub personas: Vec<Weighted>,
    pub low_confidence: bool,
    pub explicit: ExplicitSpecs,
    pub recommended: Recommended,
    pub preload: Vec<PlanItem>,
    pub suggestions: Vec<Suggestion>,
    /// Declared software no persona knows (planned as declared anyway).
    pub unknown_software: Vec<String>,
    pub notes: Vec<String>,
    pub model: ModelInfo,
}

/// The low-confidence rule, shared with the model crate so that both agree: the top
/// persona has less than 0.45, or leads the runner-up by less than 0.15.
pub fn low_confidence(probs: &[f64]) -> bool {
    let p: Vec<f32> = probs.iter().map(|x| *x as f32).collect();
    persona_models::profiler::low_confidence(&p)
}

/// Maps the model's output onto the personas in `personas`: a persona the model has no
/// output for gets 0 (and a note); model outputs for personas that no longer exist are
/// dropped; the rest is renormalised so the distribution sums to 1.
pub fn distribution(
    model_slugs: &[String],
    probs: &[f32],
    personas: &[Persona],
    notes: &mut Vec<String>,
) -> Vec<f64> {
    let mut d: Vec<f64> = personas
        .iter()
        .map(|p| {
            model_slugs
                .iter()
                .position(|s| *s == p.slug)
                .and_then(|i| probs.get(i))
                .map_or(0.0, |x| f64::from(*x).max(0.0))
        })
        .collect();
    let missing: Vec<&str> = personas
        .iter()
        .filter(|p| !model_slugs.contains(&p.slug))
        .map(|p| p.slug.as_str())
        .collect();
    if !missing.is_empty() {
        notes.push(format!(
            "the model has no output for {} (probability 0); add feedback examples and run `personactl model train`",
            missing.join(", ")
        ));
    }
    let total: f64 = d.iter().sum();
    if total > 0.0 && total.is_finite() {
        d.iter_mut().for_each(|x| *x /= total);
    } else if !d.is_empty() {
        notes.push(
            "the model gave no probability to any known persona; using a uniform distribution"
                .into(),
        );
        let u = 1.0 / d.len() as f64;
        d.iter_mut().for_each(|x| *x = u);
    }
    d
}

fn is_known(name: &str, known: &std::collections::BTreeSet<String>) -> bool {
    // Exact, or one contains the other ("pytorch" ~ "torch", "postgresql" ~
    // "postgresql-16"), with at least 3 characters on the contained side.
    known.contains(name)
        || known.iter().any(|k| {
            (k.len() >= 3 && name.contains(k.as_str())) || (name.len() >= 3 && k.contains(name))
        })
}

/// Profiles one request against `personas` with `profiler` and `catalogue`.
pub fn profile(
    req: &ProfileRequest,
    personas: &[Persona],
    profiler: &Profiler,
    model: ModelInfo,
    catalogue: &Catalogue,
) -> Result<ProfileDoc, ProfileError> {
    req.validate()?;
    if personas.is_empty() {
        return Err(ProfileError::NoPersonas);
    }
    let probs = profiler.predict(&ProfileInput {
        description: &req.description,
        software: &req.software,
        data_gb: req.data_gb,
    })?;
    let mut notes = Vec::new();
    let dist = distribution(profiler.slugs(), &probs, personas, &mut notes);
    let explicit = specs::extract(&req.description);
    if req.data_gb.is_none()
        && let Some(g) = explicit.data_gb
    {
        notes.push(format!(
            "no --data-gb given; storage sized for the {g} GB of data the description mentions"
        ));
    }
    let recommended = sizing::size(
        &dist,
        personas,
        &explicit,
        req.data_gb,
        catalogue,
        &mut notes,
    );
    let preload = sizing::preload(&dist, personas, &req.software);
    let suggestions = sizing::suggestions(&dist, personas, &preload);
    let known = personas::known_software(personas);
    let unknown_software: Vec<String> = req
        .software
        .iter()
        .map(|s| sizing::split_version(s).0)
        .filter(|n| !is_known(n, &known))
        .collect();
    let mut weighted: Vec<Weighted> = personas
        .iter()
        .zip(&dist)
        .map(|(p, x)| Weighted {
            slug: p.slug.clone(),
            probability: *x,
        })
        .collect();
    weighted.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.slug.cmp(&b.slug))
    });
    Ok(ProfileDoc {
        low_confidence: low_confidence(&dist),
        personas: weighted,
        explicit,
        recommended,
        preload,
        suggestions,
        unknown_software,
        notes,
        model,
    })
}

/// Profiles with no coordinator: built-in personas, the given or built-in catalogue, and
/// the model shipped in the binary.
pub fn profile_offline(
    req: &ProfileRequest,
    catalogue: Option<&Path>,
) -> Result<ProfileDoc, ProfileError> {
    let personas = personas::builtin()?;
    let catalogue = Catalogue::load_or_builtin(catalogue)?;
    let profiler = Profiler::shipped()?;
    let info = ModelInfo {
        id: profiler.model_id(),
        source: "shipped".into(),
    };
    profile(req, &personas, &profiler, info, &catalogue)
}

/// What a training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub report: persona_models::TrainReport,
    /// Shipped corpus examples and feedback examples used.
    pub corpus_examples: usize,
    pub feedback_examples: usize,
    /// Feedback examples skipped because their persona no longer exists.
    pub skipped_examples: usize,
    pub model_id: String,
    /// Where the model was written.
    pub path: String,
}

fn to_example(f: &crate::profile::persona_db::Feedback) -> persona_models::corpus::Example {
    persona_models::corpus::Example {
        description: f.description.clone(),
        software: f.software.clone(),
        data_gb: f.data_gb,
        slug: f.slug.clone(),
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename), so a crash never leaves a
/// half-written model for the next start to load.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProfileError> {
    let err = |source| ProfileError::WriteModel {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("bin.tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Trains from the shipped corpus only (offline) and writes the model to `out`.
pub fn train_offline(out: &Path, seed: u64) -> Result<TrainOutcome, ProfileError> {
    let corpus = persona_models::corpus::shipped_corpus();
    let slugs = persona_models::corpus::shipped_slugs();
    let (bytes, report) = persona_models::train(&corpus, &slugs, seed)?;
    let model = Profiler::from_bytes(&bytes)?;
    write_atomic(out, &bytes)?;
    Ok(TrainOutcome {
        report,
        corpus_examples: corpus.len(),
        feedback_examples: 0,
        skipped_examples: 0,
        model_id: model.model_id(),
        path: out.display().to_string(),
    })
}

/// The coordinator's profiler state: persona DB, catalogue and the current model.
#[derive(Debug)]
pub struct ProfilingService {
    pub db: PersonaDb,
    pub catalogue: Catalogue,
    model: RwLock<(Arc<Profiler>, ModelInfo)>,
    data_dir: PathBuf,
    training: Mutex<()>,
}

impl ProfilingService {
    /// Opens the persona tables in `<data_dir>/persona.db`, loads the catalogue (the
    /// operator's file or the built-in) and the model (`<data_dir>/profiler.bin` if a
    /// previous `model train` wrote one and it loads, the shipped model otherwise).
    pub fn open(data_dir: &Path, catalogue: Option<&Path>) -> Result<Self, ProfileError> {
        let store = Store::open(&data_dir.join("persona.db")).map_err(PersonaDbError::from)?;
        Self::with_store(Arc::new(store), data_dir, catalogue)
    }

    /// As [`ProfilingService::open`], with the persona tables in `store` (the
    /// coordinator's, so the service shares its connections).
    pub fn with_store(
        store: Arc<Store>,
        data_dir: &Path,
        catalogue: Option<&Path>,
    ) -> Result<Self, ProfileError> {
        let db = PersonaDb::new(store)?;
        let catalogue = Catalogue::load_or_builtin(catalogue)?;
        let trained = data_dir.join(MODEL_FILE);
        let model = match std::fs::read(&trained) {
            Ok(bytes) => match Profiler::from_bytes(&bytes) {
                Ok(p) => {
                    let id = p.model_id();
                    (
                        Arc::new(p),
                        ModelInfo {
                            id,
                            source: "trained".into(),
                        },
                    )
                }
                Err(e) => {
                    tracing::warn!(path = %trained.display(), "ignoring trained model: {e}");
                    Self::shipped()?
                }
            },
            Err(_) => Self::shipped()?,
        };
        Ok(Self {
            db,
            catalogue,
            model: RwLock::new(model),
            data_dir: data_dir.to_owned(),
            training: Mutex::new(()),
        })
    }

    fn shipped() -> Result<(Arc<Profiler>, ModelInfo), ProfileError> {
        let p = Profiler::shipped()?;
        let id = p.model_id();
        Ok((
            Arc::new(p),
            ModelInfo {
                id,
                source: "shipped".into(),
            },
        ))
    }

    /// Profiles against the database's personas and the current model.
    pub fn profile(&self, req: &ProfileRequest) -> Result<ProfileDoc, ProfileError> {
        req.validate()?;
        let personas: Vec<Persona> = self.db.all()?.into_iter().map(|s| s.persona).collect();
        let (model, info) = self
            .model
            .read()
            .map_err(|_| ProfileError::Poisoned)?
            .clone();
        profile(req, &personas, &model, info, &self.catalogue)
    }

    /// Trains on the shipped corpus plus the database's feedback, over every persona in
    /// the database, stores the model in the data directory and serves it from now on.
    /// Blocking (seconds to a minute); call it from a blocking task. One at a time.
    pub fn train(&self, seed: u64) -> Result<TrainOutcome, ProfileError> {
        let _one = self.training.try_lock().map_err(|_| ProfileError::Busy)?;
        let slugs: Vec<String> = self.db.all()?.into_iter().map(|s| s.persona.slug).collect();
        let mut examples = persona_models::corpus::shipped_corpus();
        let corpus_examples = examples.len();
        examples.retain(|e| slugs.contains(&e.slug));
        let mut feedback = self.db.feedback()?;
        // Examples the fleet confirmed by observation (belief.rs).
        feedback.extend(crate::profile::belief::training_feedback(self.db.store())?);
        let mut skipped = corpus_examples - examples.len();
        let mut used = 0;
        for f in &feedback {
            if slugs.contains(&f.slug) {
                examples.push(to_example(f));
                used += 1;
            } else {
                skipped += 1;
            }
        }
        let (bytes, report) = persona_models::train(&examples, &slugs, seed)?;
        let model = Profiler::from_bytes(&bytes)?;
        let path = self.data_dir.join(MODEL_FILE);
        write_atomic(&path, &bytes)?;
        let id = model.model_id();
        *self.model.write().map_err(|_| ProfileError::Poisoned)? = (
            Arc::new(model),
            ModelInfo {
                id: id.clone(),
                source: "trained".into(),
            },
        );
        Ok(TrainOutcome {
            report,
            corpus_examples,
            feedback_examples: used,
            skipped_examples: skipped,
            model_id: id,
            path: path.display().to_string(),
        })
    }
}

/// The prior of a declared purpose is the profiler's distribution for it.
impl crate::profile::belief::PriorSource for ProfilingService {
    type Error = ProfileError;

    fn prior(
        &self,
        purpose: &persona_shared::protocol::Purpose,
    ) -> Result<Vec<persona_shared::protocol::PersonaProb>, ProfileError> {
        let doc = self.profile(&ProfileRequest {
            description: purpose.description.clone(),
            software: purpose.software.clone(),
            data_gb: purpose.data_gb,
        })?;
        Ok(doc
            .personas
            .into_iter()
            .map(|w| persona_shared::protocol::PersonaProb {
                slug: w.slug,
                probability: w.probability as f32,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(d: &str) -> ProfileRequest {
        ProfileRequest {
            description: d.into(),
            software: vec![],
            data_gb: None,
        }
    }

    #[test]
    fn bad_requests() {
        assert!(matches!(
            req("  ").validate(),
            Err(ProfileError::EmptyDescription)
        ));
        let long = "a".repeat(MAX_DESCRIPTION_BYTES + 1);
        assert!(matches!(
            req(&long).validate(),
            Err(ProfileError::DescriptionTooLong { .. })
        ));
        for g in [-1.0, f64::NAN, f64::INFINITY, 2e7] {
            let mut r = req("web server");
            r.data_gb = Some(g);
            assert!(
                matches!(r.validate(), Err(ProfileError::DataSize { .. })),
                "{g}"
            );
        }
        let mut r = req("web server");
        r.software = vec!["x\u{7}".into()];
        assert!(r.validate().is_err());
        assert!(matches!(
            description_from_bytes(b"ok \xff\xfe".to_vec()),
            Err(ProfileError::NotUtf8 { offset: 3 })
        ));
        assert_eq!(parse_software_list(" a, ,b ,c"), vec!["a", "b", "c"]);
    }

    #[test]
    fn distribution_covers_every_persona_and_sums_to_one() {
        let ps = personas::builtin().expect("builtin");
        let mut extra = ps[0].clone();
        extra.slug = "quantum-chemist".into();
        let mut all = ps.clone();
        all.push(extra);
        let slugs: Vec<String> = ps
            .iter()
            .map(|p| p.slug.clone())
            .chain(["gone".to_owned()])
            .collect();
        let probs = vec![0.05f32; 11]
            .into_iter()
            .chain([0.45])
            .collect::<Vec<_>>();
        let mut notes = vec![];
        let d = distribution(&slugs, &probs[..slugs.len()], &all, &mut notes);
        assert_eq!(d.len(), all.len());
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(d[10], 0.0);
        assert!(notes[0].contains("quantum-chemist"));
    }

    #[test]
    fn offline_profile_invariants() {
        let r = ProfileRequest {
            description: "fine-tuning a 7B model with LoRA on an RTX 4090, 64 GB RAM".into(),
            software: vec!["pytorch".into(), "frobnicator-9000".into()],
            data_gb: Some(80.0),
        };
        let doc = profile_offline(&r, None).expect("profile");
        assert_eq!(doc.personas.len(), 10);
        let sum: f64 = doc.personas.iter().map(|p| p.probability).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!(
            doc.personas
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability)
        );
        assert_eq!(doc.unknown_software, vec!["frobnicator-9000"]);
        assert!(doc.recommended.memory_gib >= 64e9 / 1073741824.0);
        assert!(doc.recommended.gpus >= 1);
        assert!(
            doc.recommended.instance.is_some(),
            "{:?} {:?}",
            doc.recommended,
            doc.notes
        );
    }
}
