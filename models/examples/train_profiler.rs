//! Trains the Usage Profiler on the shipped corpus and writes the model file.
//!
//! ```text
//! cargo run --release -p persona-models --features train --example train_profiler -- \
//!     --out models/assets/profiler.bin --seed 42
//! ```
//! Prints the training report, then the "new user" check on `corpus/fresh-eval.tsv`, as one
//! JSON document on stdout. `--corpus-dir models/corpus` reads the corpus from disk instead
//! of the copy built into the binary (for corpus work without a rebuild). `--hidden N --epochs N --dropout P --lr X --text-dims N` override
//! the defaults for experiments (the shipped model uses the defaults).

use std::process::ExitCode;

use persona_models::corpus::{Example, fresh_eval, parse_corpus, parse_fresh_eval, shipped_slugs};
use persona_models::eval::evaluate;
use persona_models::profiler::{Profiler, TrainConfig, shipped_corpus, train_with};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_profiler: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut out = None;
    let mut seed = 42u64;
    let mut cfg = TrainConfig::default();
    let mut corpus_dir: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{a}: {e}"));
        match a.as_str() {
            "--out" => out = Some(val()?),
            "--corpus-dir" => corpus_dir = Some(val()?),
            "--seed" => seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--hidden" => cfg.hidden = num(val()?)? as usize,
            "--epochs" => cfg.epochs = num(val()?)? as usize,
            "--batch" => cfg.batch_size = num(val()?)? as usize,
            "--dropout" => cfg.dropout = num(val()?)? as f32,
            "--lr" => cfg.learning_rate = num(val()?)?,
            "--smoothing" => cfg.label_smoothing = num(val()?)? as f32,
            "--wd" => cfg.weight_decay = num(val()?)? as f32,
            "--text-dims" => cfg.features.text_dims = num(val()?)? as u32,
            "--char-weight" => cfg.features.char_weight = num(val()?)? as f32,
            "--bigram-weight" => cfg.features.bigram_weight = num(val()?)? as f32,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // `--corpus-dir models/corpus` reads the TSV files at run time (for corpus work without a
    // rebuild); without it the corpus built into the binary is used.
    let (corpus, fresh_set) = match &corpus_dir {
        None => (shipped_corpus(), fresh_eval()),
        Some(dir) => read_corpus_dir(dir)?,
    };
    let (bytes, report) =
        train_with(&corpus, &shipped_slugs(), seed, &cfg).map_err(|e| e.to_string())?;
    let profiler = Profiler::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let fresh = evaluate(&profiler, &fresh_set).map_err(|e| e.to_string())?;
    if let Some(path) = &out {
        std::fs::write(path, &bytes).map_err(|e| format!("writing {path}: {e}"))?;
        eprintln!(
            "wrote {path} ({} bytes, model id {})",
            bytes.len(),
            profiler.model_id()
        );
    }
    eprintln!(
        "held-out top1 {:.4} top2 {:.4} (n_test {}), new-user top1 {:.4} top2 {:.4} (n {}), {:.1} s",
        report.top1, report.top2, report.n_test, fresh.top1, fresh.top2, fresh.n, report.seconds
    );
    let mixed = mixed_check(&profiler, &fresh_set)?;
    eprintln!(
        "mixed-pair check: both personas in top 2 for {:.4} of {} pairs, mean lesser share {:.3}",
        mixed.0, mixed.1, mixed.2
    );
    let doc = serde_json::json!({
        "mixed_pair_check": { "both_in_top2": mixed.0, "pairs": mixed.1, "mean_lesser_probability": mixed.2 },
        "report": report,
        "model_bytes": bytes.len(),
        "model_id": profiler.model_id(),
        "new_user_check": fresh,
    });
    println!("{doc:#}");
    Ok(())
}

fn read_corpus_dir(dir: &str) -> Result<(Vec<Example>, Vec<Example>), String> {
    let read = |name: &str| {
        let path = format!("{dir}/{name}");
        std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))
    };
    let mut corpus = Vec::new();
    for slug in shipped_slugs() {
        let text = read(&format!("{slug}.tsv"))?;
        corpus.extend(parse_corpus(&slug, &text).map_err(|e| e.to_string())?);
    }
    let fresh = parse_fresh_eval(&read("fresh-eval.tsv")?, "fresh-eval.tsv")
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((corpus, fresh))
}

/// "Mixed request" check: joins the first new-user description of persona A with the first of
/// persona B ("... and also ...") for every ordered pair A != B, and measures how often both
/// A and B are the top two, and the mean probability of the lesser of the two.
fn mixed_check(profiler: &Profiler, fresh: &[Example]) -> Result<(f64, usize, f64), String> {
    use persona_models::profiler::ProfileInput;
    let mut firsts: Vec<&Example> = Vec::new();
    for ex in fresh {
        if !firsts.iter().any(|f| f.slug == ex.slug) {
            firsts.push(ex);
        }
    }
    let (mut both, mut n, mut lesser) = (0usize, 0usize, 0.0f64);
    for a in &firsts {
        for b in &firsts {
            if a.slug == b.slug {
                continue;
            }
            let text = format!("{} and also {}", a.description, b.description);
            let probs = profiler
                .predict(&ProfileInput {
                    description: &text,
                    software: &[],
                    data_gb: None,
                })
                .map_err(|e| e.to_string())?;
            let idx = |s: &str| profiler.slugs().iter().position(|x| x == s).unwrap_or(0);
            let (pa, pb) = (probs[idx(&a.slug)], probs[idx(&b.slug)]);
            let mut sorted = probs.clone();
            sorted.sort_by(|x, y| y.total_cmp(x));
            if sorted.len() >= 2 && pa.min(pb) >= sorted[1] {
                both += 1;
            }
            lesser += f64::from(pa.min(pb));
            n += 1;
        }
    }
    let n_f = n.max(1) as f64;
    Ok((both as f64 / n_f, n, lesser / n_f))
}
