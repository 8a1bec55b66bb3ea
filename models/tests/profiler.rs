//! The profiler through its public API: the shipped model, the model file, probabilities.

use persona_models::ModelError;
use persona_models::corpus::shipped_slugs;
use persona_models::profiler::{ProfileInput, Profiler, low_confidence};

fn sw(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn top(p: &Profiler, description: &str, software: &[String], data_gb: Option<f64>) -> String {
    let probs = p
        .predict(&ProfileInput {
            description,
            software,
            data_gb,
        })
        .expect("predict");
    let best = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .expect("at least one persona");
    p.slugs()[best].clone()
}

#[test]
fn shipped_model_loads_with_the_ten_personas() {
    let p = Profiler::shipped().unwrap();
    assert_eq!(p.slugs(), shipped_slugs().as_slice());
    assert!(p.meta().top1 >= 0.9, "shipped model top1 {}", p.meta().top1);
    assert_eq!(p.model_id().len(), 64);
}

#[test]
fn shipped_model_ranks_obvious_requests_right() {
    let p = Profiler::shipped().unwrap();
    let cases: [(&str, Vec<String>, Option<f64>, &str); 10] = [
        (
            "fine-tuning a 7B model with LoRA",
            sw(&["pytorch"]),
            Some(80.0),
            "data-scientist-ml",
        ),
        (
            "Next.js frontend and a Django API, I need a dev box with docker",
            vec![],
            None,
            "fullstack-developer",
        ),
        (
            "I stream games on Twitch with OBS and NVENC",
            vec![],
            None,
            "game-streamer",
        ),
        (
            "backtesting HFT strategies on tick data in kdb+",
            vec![],
            Some(2000.0),
            "hft-modeler",
        ),
        (
            "nginx reverse proxy for our production website",
            sw(&["nginx"]),
            None,
            "web-server",
        ),
        (
            "Postgres primary for order processing, lots of small transactions",
            sw(&["postgresql-16", "pgbouncer"]),
            Some(300.0),
            "database-oltp",
        ),
        (
            "self-hosted GitHub Actions runner",
            vec![],
            None,
            "ci-runner",
        ),
        (
            "nightly Spark and dbt ETL into the warehouse",
            sw(&["airflow"]),
            Some(5000.0),
            "etl-analytics",
        ),
        (
            "Citrix desktops with Office 365 and Teams for the accounting team",
            vec![],
            None,
            "vdi-office",
        ),
        (
            "render an animation in Blender Cycles",
            sw(&["blender"]),
            None,
            "media-render",
        ),
    ];
    for (d, s, g, want) in cases {
        assert_eq!(top(&p, d, &s, g), want, "{d}");
    }
}

#[test]
fn probabilities_are_a_distribution() {
    let p = Profiler::shipped().unwrap();
    let long = "training models ".repeat(3000);
    let inputs: Vec<(&str, Vec<String>, Option<f64>)> = vec![
        ("x", vec![], None),
        ("🎮 データ \u{202e} \0", vec![], Some(1e12)),
        (
            &long,
            sw(&["pytorch==2.3", "unknown-thing-nobody-uses"]),
            Some(0.0),
        ),
        ("", sw(&["nginx"]), Some(f64::NAN)),
        ("I stream games and also train small models", vec![], None),
    ];
    for (d, s, g) in &inputs {
        let probs = p
            .predict(&ProfileInput {
                description: d,
                software: s,
                data_gb: *g,
            })
            .unwrap();
        assert_eq!(probs.len(), p.slugs().len());
        assert!(
            probs
                .iter()
                .all(|x| x.is_finite() && *x >= 0.0 && *x <= 1.0)
        );
        let sum: f32 = probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "sum {sum}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let p = Profiler::shipped().unwrap();
    let empty = p.predict(&ProfileInput {
        description: "  \n",
        software: &[],
        data_gb: None,
    });
    assert!(matches!(empty, Err(ModelError::EmptyInput)));
    let huge = "a".repeat(1024 * 1024);
    let err = p
        .predict(&ProfileInput {
            description: &huge,
            software: &[],
            data_gb: None,
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputTooLarge {
                what: "description",
                ..
            }
        ),
        "{err}"
    );
    let many: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let err = p
        .predict(&ProfileInput {
            description: "x",
            software: &many,
            data_gb: None,
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputTooLarge {
                what: "software list",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn mixed_requests_give_mixed_distributions() {
    let p = Profiler::shipped().unwrap();
    let probs = p
        .predict(&ProfileInput {
            description: "I stream games on twitch with OBS and also fine-tune small LLMs with LoRA in pytorch",
            software: &[],
            data_gb: None,
        })
        .unwrap();
    let idx = |s: &str| p.slugs().iter().position(|x| x == s).unwrap();
    let (g, d) = (probs[idx("game-streamer")], probs[idx("data-scientist-ml")]);
    assert!(g > 0.1 && d > 0.1, "game {g} ds {d}: {probs:?}");
}

#[test]
fn low_confidence_rule() {
    assert!(low_confidence(&[0.1; 10]));
    assert!(low_confidence(&[0.5, 0.4, 0.1]));
    assert!(!low_confidence(&[0.9, 0.05, 0.05]));
    assert!(low_confidence(&[0.44, 0.1, 0.1]));
    assert!(low_confidence(&[]));
}

#[test]
fn model_file_round_trips_and_damage_is_refused() {
    let bytes = include_bytes!("../assets/profiler.bin");
    let p = Profiler::from_bytes(bytes).unwrap();
    let q = Profiler::shipped().unwrap();
    assert_eq!(p.model_id(), q.model_id());
    let input = ProfileInput {
        description: "ci runner for rust",
        software: &[],
        data_gb: None,
    };
    assert_eq!(p.predict(&input).unwrap(), q.predict(&input).unwrap());

    // Empty / random / truncated bytes: not an envelope.
    assert!(matches!(
        Profiler::from_bytes(&[]),
        Err(ModelError::Corrupt { .. })
    ));
    assert!(matches!(
        Profiler::from_bytes(b"GIF89a not a model"),
        Err(ModelError::Corrupt { .. })
    ));
    assert!(matches!(
        Profiler::from_bytes(&bytes[..bytes.len() / 2]),
        Err(ModelError::Corrupt { .. })
    ));

    // One flipped bit in the weights: checksum.
    let mut flipped = bytes.to_vec();
    let n = flipped.len();
    flipped[n - 100] ^= 0x01;
    let err = Profiler::from_bytes(&flipped).unwrap_err();
    assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("checksum"));
}

/// Builds an envelope by hand, as another program (or a future version) might.
fn envelope(kind: &str, version: u32, payload: &[u8]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Env<'a> {
        kind: &'a str,
        format_version: u32,
        #[serde(with = "serde_bytes")]
        sha256: Vec<u8>,
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
    }
    let sha = ring::digest::digest(&ring::digest::SHA256, payload)
        .as_ref()
        .to_vec();
    rmp_serde::to_vec_named(&Env {
        kind,
        format_version: version,
        sha256: sha,
        payload,
    })
    .expect("encode envelope")
}

#[test]
fn foreign_and_future_files_are_refused() {
    let err = Profiler::from_bytes(&envelope("persona-mirror", 1, b"x")).unwrap_err();
    assert!(matches!(err, ModelError::Foreign { .. }), "{err}");
    let err = Profiler::from_bytes(&envelope("persona-profiler", 99, b"x")).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedVersion { found: 99, .. }),
        "{err}"
    );
    // Right kind, right checksum, garbage payload.
    let err = Profiler::from_bytes(&envelope("persona-profiler", 1, b"garbage")).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
}
