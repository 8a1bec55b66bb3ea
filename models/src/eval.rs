//! Accuracy figures for a profiler model: top-1, top-2 and a confusion matrix.
//!
//! What it is for: the held-out split inside [`crate::profiler::train`], and the "new user"
//! check on `corpus/fresh-eval.tsv` (examples written after training, never trained on).

use std::collections::HashMap;

use serde::Serialize;

use crate::ModelError;
use crate::corpus::Example;
use crate::profiler::Profiler;

/// Accuracy of a model on a labelled set.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Share whose top persona is right.
    pub top1: f64,
    /// Share whose right persona is among the top two.
    pub top2: f64,
    /// `confusion[true][predicted]`, in the model's slug order.
    pub confusion: Vec<Vec<u32>>,
    /// Examples evaluated.
    pub n: usize,
    /// The misses: (description, true slug, predicted slug).
    pub misses: Vec<(String, String, String)>,
}

/// Evaluates `profiler` on labelled examples. Examples whose slug the model does not know are
/// an error (they cannot be right or wrong).
pub fn evaluate(profiler: &Profiler, examples: &[Example]) -> Result<Evaluation, ModelError> {
    let index: HashMap<&str, usize> = profiler
        .slugs()
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let d = profiler.feature_config().dims();
    let mut x = Vec::with_capacity(examples.len() * d);
    let mut y = Vec::with_capacity(examples.len());
    for ex in examples {
        let l = index
            .get(ex.slug.as_str())
            .ok_or_else(|| ModelError::Invalid {
                reason: format!(
                    "evaluation example has persona {:?}, unknown to the model",
                    ex.slug
                ),
            })?;
        y.push(*l);
        x.extend(
            profiler
                .featurizer()
                .features(&ex.description, &ex.software, ex.data_gb),
        );
    }
    let mut ev = evaluate_features(profiler, &x, &y)?;
    // Name the misses, for the report.
    let probs = if y.is_empty() {
        Vec::new()
    } else {
        profiler.predict_batch(&x, y.len())?
    };
    let k = profiler.slugs().len();
    for (i, ex) in examples.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        let pred = argmax(row);
        if pred != y[i] {
            ev.misses.push((
                ex.description.clone(),
                ex.slug.clone(),
                profiler.slugs()[pred].clone(),
            ));
        }
    }
    Ok(ev)
}

/// Evaluates pre-computed feature rows `x` (one per label in `y`).
pub(crate) fn evaluate_features(
    profiler: &Profiler,
    x: &[f32],
    y: &[usize],
) -> Result<Evaluation, ModelError> {
    let k = profiler.slugs().len();
    let mut confusion = vec![vec![0u32; k]; k];
    if y.is_empty() {
        return Ok(Evaluation {
            top1: 0.0,
            top2: 0.0,
            confusion,
            n: 0,
            misses: Vec::new(),
        });
    }
    let probs = profiler.predict_batch(x, y.len())?;
    let (mut hit1, mut hit2) = (0usize, 0usize);
    for (i, &truth) in y.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        let first = argmax(row);
        let second = (0..k)
            .filter(|&j| j != first)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(first);
        confusion[truth][first] += 1;
        if first == truth {
            hit1 += 1;
            hit2 += 1;
        } else if second == truth {
            hit2 += 1;
        }
    }
    let n = y.len() as f64;
    Ok(Evaluation {
        top1: hit1 as f64 / n,
        top2: hit2 as f64 / n,
        confusion,
        n: y.len(),
        misses: Vec::new(),
    })
}

/// Index of the largest value (first one on ties); 0 for an empty slice.
pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &p) in v.iter().enumerate() {
        if p > v[best] {
            best = i;
        }
    }
    best
}
