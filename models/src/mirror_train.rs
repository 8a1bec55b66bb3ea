//! Training the mirror model (cargo feature `train`).
//!
//! What it is for: `personactl model train` (on the coordinator, over the personas in its
//! database plus the feedback windows it has collected) and the `train_mirror` example
//! (the shipped model). Windows are generated from the personas ([`crate::mirror_data`]),
//! fitted with the profiler's training loop (Adam, cross-entropy with label smoothing,
//! dropout; seeded and reproducible), and evaluated on a separately generated set and on
//! the feedback windows, through the model file that is returned.
//!
//! What it is not: a judge of feedback quality: the coordinator only hands over windows
//! whose observed persona was confident and stable.

use std::time::Instant;

use persona_shared::window::FEATURE_DIM;
use serde::Serialize;

use crate::ModelError;
use crate::mirror::{Mirror, MirrorMeta, encode};
use crate::mirror_data::{GenConfig, PersonaProfile, generate};
use crate::rng::Rng;
use crate::train::{TrainConfig, fit};

/// A window the fleet labelled: its feature vector and the persona it was.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledWindow {
    pub slug: String,
    pub features: Vec<f32>,
}

/// Hyper-parameters; the default is what the shipped model uses.
#[derive(Debug, Clone)]
pub struct MirrorTrainConfig {
    /// Generated training windows per persona.
    pub per_persona: usize,
    /// Generated evaluation windows per persona (another seed).
    pub eval_per_persona: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub dropout: f32,
    pub weight_decay: f32,
    pub label_smoothing: f32,
    /// How many times each feedback window is repeated in the training set (they are few
    /// and real, so they weigh more than a generated one).
    pub feedback_repeat: usize,
    pub generator: GenConfig,
}

impl Default for MirrorTrainConfig {
    fn default() -> Self {
        Self {
            per_persona: 600,
            eval_per_persona: 100,
            hidden: 64,
            epochs: 40,
            batch_size: 64,
            learning_rate: 3e-3,
            dropout: 0.2,
            weight_decay: 1e-4,
            label_smoothing: 0.2,
            feedback_repeat: 5,
            generator: GenConfig::default(),
        }
    }
}

/// What a training run measured.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorTrainReport {
    /// Accuracy on the generated evaluation windows.
    pub top1: f64,
    pub top2: f64,
    /// `confusion[true][predicted]` on the evaluation windows, in `slugs` order.
    pub confusion: Vec<Vec<u32>>,
    pub slugs: Vec<String>,
    pub n_generated: usize,
    pub n_feedback: usize,
    /// Feedback windows whose persona is not among `slugs` (skipped).
    pub feedback_skipped: usize,
    /// Top-1 accuracy on the feedback windows (they are also trained on: a sanity check
    /// that the model can represent them, not a held-out figure).
    pub feedback_top1: Option<f64>,
    pub n_eval: usize,
    pub seconds: f64,
    pub seed: u64,
    /// Version and SHA-256 (hex) of the model file produced.
    pub version: String,
    pub sha256: String,
    pub bytes: usize,
}

/// Trains a mirror model over `profiles` (output order = their order) plus `feedback`.
pub fn train_mirror(
    profiles: &[PersonaProfile],
    feedback: &[LabelledWindow],
    seed: u64,
    created_ms: i64,
    cfg: &MirrorTrainConfig,
) -> Result<(Vec<u8>, MirrorTrainReport), ModelError> {
    let started = Instant::now();
    let fail = |reason: String| ModelError::Training { reason };
    if profiles.is_empty() {
        return Err(fail("no personas given".into()));
    }
    if cfg.per_persona == 0 || cfg.hidden == 0 || cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(fail(
            "per_persona, hidden, epochs and batch_size must be > 0".into(),
        ));
    }
    let slugs: Vec<String> = profiles.iter().map(|p| p.slug.clone()).collect();
    let mut rng = Rng::new(seed);
    let (mut x, mut y) = generate(profiles, cfg.per_persona, &cfg.generator, &mut rng);
    let n_generated = y.len();
    let mut fb_x = Vec::new();
    let mut fb_y = Vec::new();
    let mut skipped = 0;
    for w in feedback {
        match slugs.iter().position(|s| *s == w.slug) {
            Some(l)
                if w.features.len() == FEATURE_DIM && w.features.iter().all(|v| v.is_finite()) =>
            {
                fb_x.extend_from_slice(&w.features);
                fb_y.push(l);
            }
            _ => skipped += 1,
        }
    }
    for _ in 0..cfg.feedback_repeat {
        x.extend_from_slice(&fb_x);
        y.extend_from_slice(&fb_y);
    }
    let tc = TrainConfig {
        hidden: cfg.hidden,
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        learning_rate: cfg.learning_rate,
        dropout: cfg.dropout,
        weight_decay: cfg.weight_decay,
        label_smoothing: cfg.label_smoothing,
        ..TrainConfig::default()
    };
    let model = fit(&x, &y, FEATURE_DIM, slugs.len(), &tc, &mut rng);
    let meta = |top1, top2| MirrorMeta {
        top1,
        top2,
        n_generated,
        n_feedback: fb_y.len(),
        seed,
        created_ms,
    };
    // Evaluate through the file, on windows generated from another stream.
    let provisional = encode(&slugs, cfg.hidden, meta(0.0, 0.0), model.clone())?;
    let mirror = Mirror::from_bytes(&provisional)?;
    let mut eval_rng = Rng::new(seed ^ 0x5eed_e7a1);
    let (ex, ey) = generate(
        profiles,
        cfg.eval_per_persona.max(1),
        &cfg.generator,
        &mut eval_rng,
    );
    let (top1, top2, confusion) = accuracy(&mirror, &ex, &ey)?;
    let feedback_top1 = if fb_y.is_empty() {
        None
    } else {
        Some(accuracy(&mirror, &fb_x, &fb_y)?.0)
    };
    let bytes = encode(&slugs, cfg.hidden, meta(top1, top2), model)?;
    let final_model = Mirror::from_bytes(&bytes)?;
    let report = MirrorTrainReport {
        top1,
        top2,
        confusion,
        slugs,
        n_generated,
        n_feedback: fb_y.len(),
        feedback_skipped: skipped,
        feedback_top1,
        n_eval: ey.len(),
        seconds: started.elapsed().as_secs_f64(),
        seed,
        version: final_model.version().to_owned(),
        sha256: crate::mirror::hex(&final_model.file_sha256()),
        bytes: bytes.len(),
    };
    Ok((bytes, report))
}

/// Top-1, top-2 and the confusion matrix of `mirror` on labelled rows.
pub fn accuracy(
    mirror: &Mirror,
    x: &[f32],
    y: &[usize],
) -> Result<(f64, f64, Vec<Vec<u32>>), ModelError> {
    let k = mirror.slugs().len();
    let mut confusion = vec![vec![0u32; k]; k];
    if y.is_empty() {
        return Ok((0.0, 0.0, confusion));
    }
    let probs = mirror.predict_rows(x, y.len())?;
    let (mut t1, mut t2) = (0usize, 0usize);
    for (i, &label) in y.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        if order[0] == label {
            t1 += 1;
        }
        if order.iter().take(2).any(|&o| o == label) {
            t2 += 1;
        }
        if let Some(c) = confusion.get_mut(label).and_then(|r| r.get_mut(order[0])) {
            *c += 1;
        }
    }
    let n = y.len() as f64;
    Ok((t1 as f64 / n, t2 as f64 / n, confusion))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror_data::HourlySeries;

    fn flat(v50: f64, v95: f64) -> HourlySeries {
        HourlySeries {
            p50: vec![vec![v50; 24]; 7],
            p95: vec![vec![v95; 24]; 7],
        }
    }

    /// A tiny run: two clearly different personas are told apart, the report is honest
    /// about the file, feedback with an unknown persona is skipped, and the same seed
    /// gives the same bytes.
    #[test]
    fn tiny_training_separates_two_personas_and_is_reproducible() {
        let profiles = vec![
            PersonaProfile {
                slug: "media-render".into(),
                cpu_cores: flat(6.0, 8.0),
                memory_gib: flat(8.0, 10.0),
                disk_mbps: flat(20.0, 60.0),
                network_mbps: flat(0.1, 1.0),
                software: vec![],
            },
            PersonaProfile {
                slug: "web-server".into(),
                cpu_cores: flat(0.1, 0.5),
                memory_gib: flat(1.0, 2.0),
                disk_mbps: flat(0.2, 2.0),
                network_mbps: flat(5.0, 40.0),
                software: vec![],
            },
        ];
        let cfg = MirrorTrainConfig {
            per_persona: 40,
            eval_per_persona: 20,
            epochs: 15,
            generator: GenConfig {
                window_ms: 60_000,
                ..GenConfig::default()
            },
            ..MirrorTrainConfig::default()
        };
        let fb = vec![
            LabelledWindow {
                slug: "web-server".into(),
                features: vec![0.1; FEATURE_DIM],
            },
            LabelledWindow {
                slug: "no-such".into(),
                features: vec![0.1; FEATURE_DIM],
            },
        ];
        let (bytes, report) = train_mirror(&profiles, &fb, 3, 0, &cfg).expect("train");
        assert!(report.top1 > 0.9, "{report:?}");
        assert_eq!(report.n_feedback, 1);
        assert_eq!(report.feedback_skipped, 1);
        let m = Mirror::from_bytes(&bytes).expect("load");
        assert_eq!(m.version(), report.version);
        assert_eq!(report.bytes, bytes.len());
        let (again, _) = train_mirror(&profiles, &fb, 3, 0, &cfg).expect("train");
        assert_eq!(bytes, again);
    }
}
