//! Training through the public API, on a tiny slice of the corpus so it stays fast in debug.

use persona_models::ModelError;
use persona_models::corpus::{Example, shipped_slugs};
use persona_models::features::FeatureConfig;
use persona_models::profiler::{Profiler, TrainConfig, shipped_corpus, train_with};

fn tiny_config() -> TrainConfig {
    TrainConfig {
        features: FeatureConfig {
            text_dims: 512,
            software_dims: 64,
            ..FeatureConfig::default()
        },
        hidden: 16,
        epochs: 4,
        ..TrainConfig::default()
    }
}

/// The first `n` examples of every persona.
fn slice(n: usize) -> Vec<Example> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    shipped_corpus()
        .into_iter()
        .filter(|e| {
            let c = seen.entry(e.slug.clone()).or_default();
            *c += 1;
            *c <= n
        })
        .collect()
}

#[test]
fn same_seed_same_model_other_seed_other_model() {
    let data = slice(12);
    let slugs = shipped_slugs();
    let cfg = tiny_config();
    let (a, ra) = train_with(&data, &slugs, 7, &cfg).unwrap();
    let (b, rb) = train_with(&data, &slugs, 7, &cfg).unwrap();
    assert_eq!(a, b, "same seed must give byte-identical model files");
    assert_eq!(
        (ra.top1, ra.top2, &ra.confusion),
        (rb.top1, rb.top2, &rb.confusion)
    );
    let (c, _) = train_with(&data, &slugs, 8, &cfg).unwrap();
    assert_ne!(a, c);
}

#[test]
fn report_is_consistent_and_the_model_loads() {
    let data = slice(10);
    let slugs = shipped_slugs();
    let (bytes, r) = train_with(&data, &slugs, 1, &tiny_config()).unwrap();
    // Stratified 80/20: 2 of every 10 held out.
    assert_eq!(r.n_test, 20);
    assert_eq!(r.n_train, 80);
    assert_eq!(r.confusion.len(), 10);
    let held: u32 = r.confusion.iter().flatten().sum();
    assert_eq!(held as usize, r.n_test);
    for row in &r.confusion {
        assert_eq!(row.iter().sum::<u32>(), 2);
    }
    assert!((0.0..=1.0).contains(&r.top1) && r.top1 <= r.top2 && r.top2 <= 1.0);
    assert_eq!(r.slugs, slugs);
    let p = Profiler::from_bytes(&bytes).unwrap();
    assert_eq!(p.slugs(), slugs.as_slice());
    assert_eq!(p.meta().n_train, 80);
    assert_eq!(p.feature_config().text_dims, 512);
    serde_json::to_string(&r).unwrap();
}

#[test]
fn training_refuses_what_it_cannot_do() {
    let slugs = shipped_slugs();
    let mut data = slice(3);
    data[0].slug = "astronaut".to_string();
    let err = train_with(&data, &slugs, 1, &tiny_config()).unwrap_err();
    assert!(matches!(err, ModelError::Training { .. }));
    assert!(err.to_string().contains("astronaut"), "{err}");
    assert!(train_with(&[], &slugs, 1, &tiny_config()).is_err());
    assert!(train_with(&slice(3), &[], 1, &tiny_config()).is_err());
    let twice = vec!["a".to_string(), "a".to_string()];
    assert!(train_with(&slice(3), &twice, 1, &tiny_config()).is_err());
}

#[test]
fn a_persona_without_examples_is_allowed() {
    let mut slugs = shipped_slugs();
    slugs.push("quantum-annealer".to_string());
    let (bytes, r) = train_with(&slice(5), &slugs, 3, &tiny_config()).unwrap();
    assert_eq!(r.confusion.len(), 11);
    assert_eq!(Profiler::from_bytes(&bytes).unwrap().slugs().len(), 11);
}
