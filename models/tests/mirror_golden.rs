//! The shipped mirror model answers the recorded windows exactly as recorded.
//!
//! What it is for: a change to how a model file is opened or how inference runs (the
//! envelope of b9e7904, the shared network code after it) must not move a single
//! probability. `fixtures/mirror_windows.bin` holds 42 windows (4 generated per built-in
//! persona, an all-zero and an all-0.5 one); `fixtures/mirror_golden.json` the answers
//! recorded with `examples/mirror_golden.rs` on the code before b9e7904. A retrained model
//! changes the answers on purpose: record them again (see the example).

use persona_models::Mirror;
use persona_shared::window::FEATURE_DIM;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    model_version: String,
    slugs: Vec<String>,
    windows: usize,
    probabilities: Vec<Vec<f32>>,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn windows() -> Vec<[f32; FEATURE_DIM]> {
    let bytes = fixture("mirror_windows.bin");
    assert_eq!(bytes.len() % (FEATURE_DIM * 4), 0, "whole rows only");
    bytes
        .chunks_exact(FEATURE_DIM * 4)
        .map(|row| {
            let mut w = [0.0f32; FEATURE_DIM];
            for (v, b) in w.iter_mut().zip(row.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            w
        })
        .collect()
}

#[test]
fn shipped_mirror_answers_the_recorded_windows_as_recorded() {
    let golden: Golden =
        serde_json::from_slice(&fixture("mirror_golden.json")).expect("golden file parses");
    let mirror = Mirror::shipped().expect("shipped mirror model");
    assert_eq!(
        mirror.version(),
        golden.model_version,
        "the shipped model changed: record its answers again with examples/mirror_golden.rs"
    );
    assert_eq!(mirror.slugs(), golden.slugs.as_slice());
    let windows = windows();
    assert_eq!(windows.len(), golden.windows);
    assert_eq!(golden.probabilities.len(), golden.windows);
    let mut worst = 0.0f32;
    for (i, (w, want)) in windows.iter().zip(&golden.probabilities).enumerate() {
        let got = mirror.predict(w).expect("predict");
        assert_eq!(got.len(), want.len(), "window {i}: one answer per persona");
        for (g, e) in got.iter().zip(want) {
            worst = worst.max((g - e).abs());
        }
        let top = |p: &[f32]| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k)
        };
        assert_eq!(top(&got), top(want), "window {i}: top persona moved");
    }
    // The backend is pure Rust and single-threaded: the same weights on the same input
    // give the same bits. The bound only allows for a different float library.
    assert!(worst <= 1e-6, "largest difference {worst}");
}
