//! The training corpus: labelled example requests, and the TSV format they are kept in.
//!
//! What it is for: `models/corpus/<slug>.tsv` is the shipped, hand-written corpus (built into
//! the binary with `include_str!`); the coordinator adds feedback examples from its database
//! and passes both to [`crate::profiler::train`].
//!
//! Format, one example per line:
//! `description<TAB>software,comma,separated<TAB>data_gb_or_empty`. Blank lines and lines
//! starting with `#` are ignored. The slug is the file name. The held-out "new user" file
//! (`fresh-eval.tsv`) has the slug as an extra first column and is never trained on.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// One labelled request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// What the user wrote.
    pub description: String,
    /// Software they listed (raw, as typed).
    pub software: Vec<String>,
    /// Data size in GB, if given.
    pub data_gb: Option<f64>,
    /// The persona this request belongs to.
    pub slug: String,
}

/// The ten built-in personas, in the order the shipped model outputs them.
pub const SHIPPED_SLUGS: [&str; 10] = [
    "data-scientist-ml",
    "fullstack-developer",
    "game-streamer",
    "hft-modeler",
    "web-server",
    "database-oltp",
    "ci-runner",
    "etl-analytics",
    "vdi-office",
    "media-render",
];

const SHIPPED_FILES: [(&str, &str); 10] = [
    (
        "data-scientist-ml",
        include_str!("../corpus/data-scientist-ml.tsv"),
    ),
    (
        "fullstack-developer",
        include_str!("../corpus/fullstack-developer.tsv"),
    ),
    ("game-streamer", include_str!("../corpus/game-streamer.tsv")),
    ("hft-modeler", include_str!("../corpus/hft-modeler.tsv")),
    ("web-server", include_str!("../corpus/web-server.tsv")),
    ("database-oltp", include_str!("../corpus/database-oltp.tsv")),
    ("ci-runner", include_str!("../corpus/ci-runner.tsv")),
    ("etl-analytics", include_str!("../corpus/etl-analytics.tsv")),
    ("vdi-office", include_str!("../corpus/vdi-office.tsv")),
    ("media-render", include_str!("../corpus/media-render.tsv")),
];

const FRESH_EVAL: &str = include_str!("../corpus/fresh-eval.tsv");

/// The shipped slugs as owned strings (the output order of the shipped model).
pub fn shipped_slugs() -> Vec<String> {
    SHIPPED_SLUGS.iter().map(|s| (*s).to_string()).collect()
}

/// The shipped training corpus, all personas, in file order.
///
/// The files are part of the build, and a unit test checks that every line parses, so this
/// cannot fail at run time; a line that somehow did not parse would be skipped.
pub fn shipped_corpus() -> Vec<Example> {
    let mut out = Vec::new();
    for (slug, text) in SHIPPED_FILES {
        for ex in parse_lines(slug, text).flatten() {
            out.push(ex);
        }
    }
    out
}

/// The held-out "new user" examples (written after training, never trained on).
pub fn fresh_eval() -> Vec<Example> {
    parse_fresh_eval(FRESH_EVAL, "fresh-eval.tsv")
        .into_iter()
        .flatten()
        .collect()
}

/// Parses a per-persona corpus file (`slug` is the label of every line).
pub fn parse_corpus(slug: &str, text: &str) -> Result<Vec<Example>, ModelError> {
    parse_lines(slug, text).collect()
}

/// Parses a file with the slug as first column (`fresh-eval.tsv`).
pub fn parse_fresh_eval(text: &str, source_name: &str) -> Vec<Result<Example, ModelError>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if is_skipped(line) {
            continue;
        }
        match line.split_once('\t') {
            Some((slug, rest)) => out.push(parse_line(slug.trim(), rest, source_name, i + 1)),
            None => out.push(Err(ModelError::CorpusLine {
                source_name: source_name.to_string(),
                line: i + 1,
                reason: "expected slug<TAB>description<TAB>software<TAB>data_gb".to_string(),
            })),
        }
    }
    out
}

fn is_skipped(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

fn parse_lines<'a>(
    slug: &'a str,
    text: &'a str,
) -> impl Iterator<Item = Result<Example, ModelError>> + 'a {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !is_skipped(l))
        .map(move |(i, l)| parse_line(slug, l, &format!("{slug}.tsv"), i + 1))
}

/// Parses `description<TAB>software<TAB>data_gb` (the last two columns may be missing).
pub fn parse_line(
    slug: &str,
    line: &str,
    source_name: &str,
    line_no: usize,
) -> Result<Example, ModelError> {
    let err = |reason: String| ModelError::CorpusLine {
        source_name: source_name.to_string(),
        line: line_no,
        reason,
    };
    let mut cols = line.split('\t');
    let description = cols.next().unwrap_or("").trim().to_string();
    let software: Vec<String> = cols
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let data_gb = match cols.next().map(str::trim) {
        None | Some("") => None,
        Some(s) => {
            let v: f64 = s
                .parse()
                .map_err(|_| err(format!("data_gb {s:?} is not a number")))?;
            if !v.is_finite() || v < 0.0 {
                return Err(err(format!("data_gb {v} must be finite and >= 0")));
            }
            Some(v)
        }
    };
    if cols.next().is_some() {
        return Err(err("more than 3 tab-separated columns".to_string()));
    }
    if description.is_empty() && software.is_empty() {
        return Err(err("empty description and no software".to_string()));
    }
    if slug.is_empty() {
        return Err(err("empty slug".to_string()));
    }
    Ok(Example {
        description,
        software,
        data_gb,
        slug: slug.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_shipped_line_parses_and_each_persona_has_150() {
        for (slug, text) in SHIPPED_FILES {
            let examples = parse_corpus(slug, text).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                examples.len() >= 150,
                "{slug}: only {} examples",
                examples.len()
            );
        }
        assert_eq!(
            shipped_corpus().len(),
            SHIPPED_FILES
                .iter()
                .map(|(s, t)| parse_corpus(s, t).map(|v| v.len()).unwrap_or(0))
                .sum::<usize>()
        );
    }

    #[test]
    fn fresh_eval_parses_and_is_never_in_the_training_corpus() {
        let parsed = parse_fresh_eval(FRESH_EVAL, "fresh-eval.tsv");
        assert!(
            parsed.iter().all(Result::is_ok),
            "{:?}",
            parsed.iter().find(|r| r.is_err())
        );
        let train: HashSet<String> = shipped_corpus()
            .into_iter()
            .map(|e| e.description.to_lowercase())
            .collect();
        for ex in fresh_eval() {
            assert!(
                SHIPPED_SLUGS.contains(&ex.slug.as_str()),
                "unknown slug {}",
                ex.slug
            );
            assert!(
                !train.contains(&ex.description.to_lowercase()),
                "{:?} is also a training example",
                ex.description
            );
        }
    }

    #[test]
    fn line_format() {
        let ex = parse_line("s", "hello world\tpytorch, peft ,\t80", "t", 1).unwrap();
        assert_eq!(ex.software, vec!["pytorch", "peft"]);
        assert_eq!(ex.data_gb, Some(80.0));
        let ex = parse_line("s", "just text", "t", 1).unwrap();
        assert!(ex.software.is_empty() && ex.data_gb.is_none());
        assert!(parse_line("s", "x\t\tlots", "t", 3).is_err());
        assert!(parse_line("s", "x\t\t-5", "t", 3).is_err());
        assert!(parse_line("s", "x\t\t1\textra", "t", 3).is_err());
        assert!(parse_line("s", "\t\t", "t", 3).is_err());
        let err = parse_line("s", "x\t\tNaN", "f.tsv", 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("f.tsv line 7"), "{err}");
    }
}
