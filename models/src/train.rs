//! Training the Usage Profiler (cargo feature `train`).
//!
//! What it is for: `personactl model train` and the `train_profiler` example. One call does
//! the whole job: a seeded, stratified 80/20 split, Adam on cross-entropy with autodiff on the
//! flex CPU backend, evaluation of the held-out 20% through the very model file that is
//! returned (so the figures are the shipped model's figures, loaded the way it will be loaded).
//!
//! What it is not: a general training framework; no checkpoints, no early stopping on the
//! test split (that would leak it), no GPU.
//!
//! Reproducibility: all randomness (init, split, shuffling, dropout) comes from one seeded
//! [`crate::rng::Rng`] owned by the run, never from burn's process-wide RNG; burn is built
//! without its `rayon` feature, so flex runs single-threaded and its float sums happen in a
//! fixed order. Same seed + same corpus => the same model bytes.

use std::collections::HashMap;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, decay::WeightDecayConfig};
use burn::prelude::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::ModelError;
use crate::corpus::Example;
use crate::eval::{Evaluation, evaluate_features};
use crate::features::{FeatureConfig, Featurizer};
use crate::mlp::{Mlp, inference_device};
use crate::profiler::{ModelMeta, Profiler, encode_model};
use crate::rng::Rng;

/// What a training run measured.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Held-out top-1 accuracy (0..=1).
    pub top1: f64,
    /// Held-out top-2 accuracy (0..=1).
    pub top2: f64,
    /// `confusion[true][predicted]` counts on the held-out split, in `slugs` order.
    pub confusion: Vec<Vec<u32>>,
    /// Output order of the model.
    pub slugs: Vec<String>,
    /// Examples trained on.
    pub n_train: usize,
    /// Examples held out.
    pub n_test: usize,
    /// Wall-clock seconds of the whole call.
    pub seconds: f64,
    /// Seed of the run.
    pub seed: u64,
    /// Epochs run.
    pub epochs: usize,
}

/// Hyper-parameters. [`TrainConfig::default`] is what [`train`] uses and what the shipped
/// model was trained with.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Feature settings (stored in the model file).
    pub features: FeatureConfig,
    /// Hidden layer width.
    pub hidden: usize,
    /// Passes over the training split.
    pub epochs: usize,
    /// Examples per Adam step.
    pub batch_size: usize,
    /// Adam learning rate at the start; decays linearly to 10% of it by the last epoch.
    pub learning_rate: f64,
    /// Dropout on the hidden layer (0 = off).
    pub dropout: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Share of each persona held out for the test split.
    pub test_fraction: f64,
    /// Label smoothing of the cross-entropy targets (0 = hard labels). Without it the model
    /// learns to put ~all mass on one persona, and a mixed request ("I stream games and also
    /// train models") comes out as 93% / 7% instead of a real mix.
    pub label_smoothing: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            features: FeatureConfig::default(),
            hidden: 96,
            epochs: 30,
            batch_size: 32,
            learning_rate: 3e-3,
            dropout: 0.3,
            weight_decay: 1e-5,
            test_fraction: 0.2,
            label_smoothing: 0.1,
        }
    }
}

/// Trains a profiler with the default settings; returns the model file bytes and the report.
///
/// `slugs` fixes the output order; every example's slug must be one of them (a persona
/// without examples is allowed and simply gets little probability).
pub fn train(
    examples: &[Example],
    slugs: &[String],
    seed: u64,
) -> Result<(Vec<u8>, TrainReport), ModelError> {
    train_with(examples, slugs, seed, &TrainConfig::default())
}

/// [`train`] with explicit hyper-parameters (experiments, tiny test runs).
pub fn train_with(
    examples: &[Example],
    slugs: &[String],
    seed: u64,
    cfg: &TrainConfig,
) -> Result<(Vec<u8>, TrainReport), ModelError> {
    let started = Instant::now();
    let fail = |reason: String| ModelError::Training { reason };
    cfg.features.validate().map_err(fail)?;
    if slugs.is_empty() {
        return Err(fail("no personas given".to_string()));
    }
    if cfg.hidden == 0 || cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(fail(
            "hidden, epochs and batch_size must be > 0".to_string(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.dropout) || !(0.0..1.0).contains(&cfg.test_fraction) {
        return Err(fail(
            "dropout and test_fraction must be in [0, 1)".to_string(),
        ));
    }
    let index: HashMap<&str, usize> = slugs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    if index.len() != slugs.len() {
        return Err(fail("a persona slug is listed twice".to_string()));
    }
    let mut labels = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        match index.get(ex.slug.as_str()) {
            Some(&l) => labels.push(l),
            None => {
                return Err(fail(format!(
                    "example {i} ({:?}) has persona {:?}, which is not among the {} given",
                    truncate(&ex.description, 40),
                    ex.slug,
                    slugs.len()
                )));
            }
        }
    }
    if examples.len() < 2 {
        return Err(fail(format!(
            "{} examples; need at least 2",
            examples.len()
        )));
    }

    let mut rng = Rng::new(seed);
    let (train_idx, test_idx) = stratified_split(&labels, slugs.len(), cfg.test_fraction, &mut rng);

    let featurizer = Featurizer::new(cfg.features.clone());
    let d_in = cfg.features.dims();
    let featurize = |idx: &[usize]| -> Vec<f32> {
        let mut m = Vec::with_capacity(idx.len() * d_in);
        for &i in idx {
            let ex = &examples[i];
            m.extend(featurizer.features(&ex.description, &ex.software, ex.data_gb));
        }
        m
    };
    let x_train = featurize(&train_idx);
    let y_train: Vec<usize> = train_idx.iter().map(|&i| labels[i]).collect();

    let model = fit(&x_train, &y_train, d_in, slugs.len(), cfg, &mut rng);

    // Evaluate through the model file itself: what is measured is what ships.
    let provisional = encode_model(
        slugs,
        &cfg.features,
        cfg.hidden,
        ModelMeta {
            top1: 0.0,
            top2: 0.0,
            n_train: train_idx.len(),
            n_test: test_idx.len(),
            seed,
        },
        model.clone(),
    )?;
    let profiler = Profiler::from_bytes(&provisional)?;
    let x_test = featurize(&test_idx);
    let y_test: Vec<usize> = test_idx.iter().map(|&i| labels[i]).collect();
    let Evaluation {
        top1,
        top2,
        confusion,
        ..
    } = evaluate_features(&profiler, &x_test, &y_test)?;

    let bytes = encode_model(
        slugs,
        &cfg.features,
        cfg.hidden,
        ModelMeta {
            top1,
            top2,
            n_train: train_idx.len(),
            n_test: test_idx.len(),
            seed,
        },
        model,
    )?;
    Ok((
        bytes,
        TrainReport {
            top1,
            top2,
            confusion,
            slugs: slugs.to_vec(),
            n_train: train_idx.len(),
            n_test: test_idx.len(),
            seconds: started.elapsed().as_secs_f64(),
            seed,
            epochs: cfg.epochs,
        },
    ))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Per persona: shuffle its examples and hold out `round(fraction * n)` of them (at least one
/// when it has two or more, none when it has one). Returned index lists are sorted so the
/// split does not depend on anything but the seed and the example order.
fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    fraction: f64,
    rng: &mut Rng,
) -> (Vec<usize>, Vec<usize>) {
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut train = Vec::new();
    let mut test = Vec::new();
    for members in &mut by_class {
        rng.shuffle(members);
        let n = members.len();
        let mut k = (fraction * n as f64).round() as usize;
        if n >= 2 && fraction > 0.0 {
            k = k.clamp(1, n - 1);
        } else {
            k = 0;
        }
        test.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The training loop proper.
pub(crate) fn fit(
    x: &[f32],
    y: &[usize],
    d_in: usize,
    n_classes: usize,
    cfg: &TrainConfig,
    rng: &mut Rng,
) -> Mlp {
    let device: Device = inference_device().autodiff();
    let h = cfg.hidden;
    // Init: hidden layer small uniform (inputs are L2-normalised blocks, a handful of unit-ish
    // entries), output layer Kaiming-uniform-like on the hidden width.
    let k1 = (3.0 / d_in as f32).sqrt().max(0.02);
    let k2 = (1.0 / h as f32).sqrt();
    let mut uniform = |n: usize, k: f32| -> Vec<f32> {
        (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * k).collect()
    };
    let w1 = uniform(d_in * h, k1);
    let w2 = uniform(h * n_classes, k2);
    let mut model = Mlp::from_weights(
        [d_in, h, n_classes],
        w1,
        vec![0.0; h],
        w2,
        vec![0.0; n_classes],
        &device,
    );
    let mut optim = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay)))
        .init();
    let smoothing = (cfg.label_smoothing > 0.0).then_some(cfg.label_smoothing);
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing(smoothing)
        .init(&device);

    let n = y.len();
    let mut order: Vec<usize> = (0..n).collect();
    let keep = 1.0 - cfg.dropout;
    for epoch in 0..cfg.epochs {
        let progress = epoch as f64 / cfg.epochs as f64;
        let lr = cfg.learning_rate * (1.0 - 0.9 * progress);
        rng.shuffle(&mut order);
        for batch in order.chunks(cfg.batch_size) {
            let b = batch.len();
            let mut xb = Vec::with_capacity(b * d_in);
            let mut yb = Vec::with_capacity(b);
            for &i in batch {
                xb.extend_from_slice(&x[i * d_in..(i + 1) * d_in]);
                yb.push(y[i] as i64);
            }
            let xt = Tensor::<2>::from_data(TensorData::new(xb, [b, d_in]), &device);
            let yt = Tensor::<1, Int>::from_data(TensorData::new(yb, [b]), &device);
            let logits = if cfg.dropout > 0.0 {
                let mask: Vec<f32> = (0..b * h)
                    .map(|_| {
                        if rng.next_f32() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mt = Tensor::<2>::from_data(TensorData::new(mask, [b, h]), &device);
                model.forward_masked(xt, mt)
            } else {
                model.forward(xt)
            };
            let loss = loss_fn.forward(logits, yt);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
    }
    model
}
