//! Feature extraction for the Usage Profiler: text, software list and data size in, one
//! fixed-width `f32` vector out.
//!
//! What it is for: turning what a user types ("fine-tunign a 7B model w/ LoRA", software
//! `pytorch==2.3`, 80 GB) into numbers with the *hashing trick*, so that no vocabulary has to
//! be stored and unseen or misspelled words still land on features the model has seen (their
//! character n-grams overlap with the correct spelling's).
//!
//! What it is not: a tokenizer for any other purpose, or a spec extractor ("16 vCPUs" is
//! handled as plain words here; hard constraints are extracted by the coordinator).
//!
//! Layout of the vector (all sizes come from [`FeatureConfig`], which is stored in the model
//! file so that training and inference can never disagree):
//! ```text
//! [0, text_dims)                      hashed words, word bigrams, char n-grams   (L2-normalised)
//! [text_dims, text_dims+sw_dims)      hashed software names                       (L2-normalised)
//! [.., + DATA_BINS)                   one-hot log-binned data size, last bin = unknown
//! ```
//! The hash is FNV-1a 64 over UTF-8 bytes with a namespace byte and a fixed seed, so it is the
//! same on every run and every platform. Input is capped ([`MAX_INPUT_BYTES`], token and
//! software counts) so hostile input costs bounded time and memory.

use serde::{Deserialize, Serialize};

/// Longest description (in bytes) that is looked at; the rest is ignored. Real descriptions
/// are a few hundred bytes; the cap bounds work on hostile input.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// At most this many words are used from a description (after the byte cap).
pub const MAX_TOKENS: usize = 4096;
/// At most this many software entries are used.
pub const MAX_SOFTWARE: usize = 256;
/// Words longer than this (in chars) contribute only their word feature, no char n-grams:
/// such "words" are hashes, URLs or base64, and would only add noise and work.
pub const MAX_NGRAM_WORD_CHARS: usize = 40;
/// Upper edges (GB, exclusive) of the data-size bins; one more bin holds everything larger,
/// and the last bin of all means "unknown".
pub const DATA_BIN_EDGES_GB: [f64; 7] = [1.0, 10.0, 50.0, 200.0, 1000.0, 10_000.0, 100_000.0];
/// Number of data-size features: one per edge, one for "larger", one for "unknown".
pub const DATA_BINS: usize = DATA_BIN_EDGES_GB.len() + 2;

/// The feature settings; stored in the model file next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Buckets for text features (words, bigrams, char n-grams).
    pub text_dims: u32,
    /// Buckets for software names.
    pub software_dims: u32,
    /// Shortest char n-gram.
    pub char_ngram_min: u8,
    /// Longest char n-gram.
    pub char_ngram_max: u8,
    /// Weight of one word (unigram) occurrence.
    pub word_weight: f32,
    /// Weight of one word-bigram occurrence.
    pub bigram_weight: f32,
    /// Weight of one char n-gram occurrence; small because a word yields many of them.
    pub char_weight: f32,
    /// Seed mixed into every hash; changing it makes a different (incompatible) model.
    pub hash_seed: u64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        // Measured choices (5 seeds each, docs/BENCHMARKS-profiler-draft.md): 4096 text
        // buckets beat 2048 by ~1.5 points top-1 and match 8192 at half the model size;
        // char n-grams at 0.5 and bigrams at 0.3 beat 0.25/0.7 by ~0.6 points; L2-normalised
        // blocks beat raw counts by ~0.3 points and make the output independent of length.
        Self {
            text_dims: 4096,
            software_dims: 512,
            char_ngram_min: 3,
            char_ngram_max: 5,
            word_weight: 1.0,
            bigram_weight: 0.3,
            char_weight: 0.5,
            hash_seed: 0x5045_5253_4f4e_4131, // "PERSONA1"
        }
    }
}

impl FeatureConfig {
    /// Width of the feature vector.
    pub fn dims(&self) -> usize {
        self.text_dims as usize + self.software_dims as usize + DATA_BINS
    }

    /// Checks the settings are usable; a model file with other values is refused.
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=1 << 20).contains(&self.text_dims) {
            return Err(format!("text_dims {} outside 16..=1048576", self.text_dims));
        }
        if !(16..=1 << 20).contains(&self.software_dims) {
            return Err(format!(
                "software_dims {} outside 16..=1048576",
                self.software_dims
            ));
        }
        if self.char_ngram_min == 0
            || self.char_ngram_min > self.char_ngram_max
            || self.char_ngram_max > 8
        {
            return Err(format!(
                "char n-gram range {}..={} invalid (need 1 <= min <= max <= 8)",
                self.char_ngram_min, self.char_ngram_max
            ));
        }
        for (name, w) in [
            ("word_weight", self.word_weight),
            ("bigram_weight", self.bigram_weight),
            ("char_weight", self.char_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(format!("{name} {w} must be finite and >= 0"));
            }
        }
        Ok(())
    }
}

// Namespace bytes keep the same string in different roles apart ("nginx" the word vs
// "nginx" the software name vs the char n-gram "ngi").
const NS_WORD: u8 = b'w';
const NS_BIGRAM: u8 = b'b';
const NS_CHAR: u8 = b'c';
const NS_SOFTWARE: u8 = b's';

/// FNV-1a 64 over `seed`, a namespace byte and the bytes of `parts` (separated by 0xff, which
/// never occurs in UTF-8). Stable across runs and platforms by construction.
pub fn stable_hash(seed: u64, namespace: u8, parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    };
    for b in seed.to_le_bytes() {
        eat(b);
    }
    eat(namespace);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            eat(0xff);
        }
        for &b in p.as_bytes() {
            eat(b);
        }
    }
    // FNV's low bits mix poorly for short keys; a final avalanche (splitmix64's) fixes that
    // before the modulo.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Is `c` part of a word? Alphanumerics plus the joiners that make tech names (`c++`, `c#`,
/// `node.js`, `f#`, `x86_64`, `fine-tuning`).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '+' | '#' | '.' | '-' | '_')
}

/// Splits text into lowercase words.
///
/// Joiners are kept inside a word (`node.js`, `c++`, `k8s`, `x86_64`) but trimmed from its ends,
/// except a trailing `+`/`#` which is part of names like `c++`, `c#`, `kdb+`. Words made only
/// of joiners are dropped. At most [`MAX_TOKENS`] words are returned.
pub fn tokenize(text: &str) -> Vec<String> {
    let text = cap(text, MAX_INPUT_BYTES);
    let mut out = Vec::new();
    for raw in text.split(|c: char| !is_word_char(c)) {
        if out.len() >= MAX_TOKENS {
            break;
        }
        let trimmed = raw
            .trim_start_matches(['.', '-', '_', '+', '#'])
            .trim_end_matches(['.', '-', '_']);
        if !trimmed.chars().any(char::is_alphanumeric) {
            continue;
        }
        out.push(trimmed.to_lowercase());
    }
    out
}

/// The pieces of a compound word (`fine-tuning` -> `fine`, `tuning`; `node.js` -> `node`,
/// `js`), so that "finetuning", "fine tuning" and "fine-tuning" share features.
fn sub_words(word: &str) -> impl Iterator<Item = &str> {
    let compound = word.contains(['.', '-', '_']);
    word.split(['.', '-', '_'])
        .filter(move |p| compound && !p.is_empty())
}

/// Normalises one software entry: lowercase, no registry path, no version.
///
/// `PyTorch==2.3` -> `pytorch`, `postgresql-15` -> `postgresql`, `nginx:1.25-alpine` -> `nginx`,
/// `docker.io/library/redis:7` -> `redis`, `Blender 4.1` -> `blender`, `numpy>=1.26` -> `numpy`,
/// `node@20` -> `node`. Returns `None` for entries with nothing left.
pub fn normalize_software(name: &str) -> Option<String> {
    let s = cap(name.trim(), 256).to_lowercase();
    // Version / extras specifiers (pip, apt, npm, conda) and image tags.
    let s = s
        .split(['=', '>', '<', '~', '!', '@', ':', '[', ';', ','])
        .next()
        .unwrap_or("");
    // Image references: keep the last path segment.
    let s = s.rsplit('/').next().unwrap_or("");
    // Drop trailing version-like parts: "postgresql-15", "blender 4.1", "python 3", "cuda_12".
    let parts: Vec<&str> = s
        .split([' ', '-', '_', '\t'])
        .filter(|p| !p.is_empty())
        .collect();
    let mut keep = parts.len();
    while keep > 1 && looks_like_version(parts[keep - 1]) {
        keep -= 1;
    }
    let joined = parts[..keep].join("-");
    let joined = joined.trim_matches(|c: char| !c.is_alphanumeric() && c != '+' && c != '#');
    if joined.is_empty() || looks_like_version(joined) {
        None
    } else {
        Some(joined.to_string())
    }
}

/// `15`, `4.1`, `v2`, `2.3.0rc1`, `latest`, `lts`: parts that name a version, not a product.
fn looks_like_version(part: &str) -> bool {
    let p = part.strip_prefix('v').unwrap_or(part);
    matches!(p, "latest" | "lts" | "stable")
        || p.chars().next().is_some_and(|c| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
}

/// Index of the data-size bin for `data_gb`; `None`, negative, NaN or infinite sizes are
/// "unknown" (the caller rejects bad sizes with a clear error before this point; the model
/// itself never panics on them).
pub fn data_bin(data_gb: Option<f64>) -> usize {
    match data_gb {
        Some(gb) if gb.is_finite() && gb >= 0.0 => DATA_BIN_EDGES_GB
            .iter()
            .position(|&edge| gb < edge)
            .unwrap_or(DATA_BIN_EDGES_GB.len()),
        _ => DATA_BINS - 1,
    }
}

/// A feature extractor for one [`FeatureConfig`].
#[derive(Debug, Clone)]
pub struct Featurizer {
    cfg: FeatureConfig,
}

impl Featurizer {
    /// A featurizer; `cfg` must have passed [`FeatureConfig::validate`].
    pub fn new(cfg: FeatureConfig) -> Self {
        Self { cfg }
    }

    /// The settings.
    pub fn config(&self) -> &FeatureConfig {
        &self.cfg
    }

    /// The sparse text features of `text` as (bucket, weight) pairs, before normalisation.
    /// Exposed for tests (misspelling overlap) and diagnostics.
    pub fn text_features(&self, text: &str) -> Vec<(u32, f32)> {
        let c = &self.cfg;
        let seed = c.hash_seed;
        let bucket = |h: u64| (h % u64::from(c.text_dims)) as u32;
        let words = tokenize(text);
        let mut out = Vec::with_capacity(words.len() * 16);
        let mut buf = String::new();
        for (i, w) in words.iter().enumerate() {
            out.push((bucket(stable_hash(seed, NS_WORD, &[w])), c.word_weight));
            for part in sub_words(w) {
                out.push((
                    bucket(stable_hash(seed, NS_WORD, &[part])),
                    c.word_weight * 0.5,
                ));
            }
            if let Some(next) = words.get(i + 1) {
                out.push((
                    bucket(stable_hash(seed, NS_BIGRAM, &[w, next])),
                    c.bigram_weight,
                ));
            }
            // Char n-grams of the word with boundary markers, so prefixes and suffixes are
            // features of their own ("<lor", "ra>").
            let chars: Vec<char> = w.chars().collect();
            if chars.len() > MAX_NGRAM_WORD_CHARS || c.char_weight == 0.0 {
                continue;
            }
            let mut marked = Vec::with_capacity(chars.len() + 2);
            marked.push('<');
            marked.extend_from_slice(&chars);
            marked.push('>');
            for n in usize::from(c.char_ngram_min)..=usize::from(c.char_ngram_max) {
                if n > marked.len() {
                    break;
                }
                for win in marked.windows(n) {
                    buf.clear();
                    buf.extend(win.iter());
                    out.push((bucket(stable_hash(seed, NS_CHAR, &[&buf])), c.char_weight));
                }
            }
        }
        out
    }

    /// The dense feature vector for one input (length [`FeatureConfig::dims`]).
    pub fn features(
        &self,
        description: &str,
        software: &[String],
        data_gb: Option<f64>,
    ) -> Vec<f32> {
        let c = &self.cfg;
        let text_dims = c.text_dims as usize;
        let sw_dims = c.software_dims as usize;
        let mut v = vec![0.0f32; self.cfg.dims()];

        // Software names also count as words of the description: a user may put "pytorch" in
        // either place, and both should mean the same thing.
        let mut sw_names = Vec::new();
        for s in software.iter().take(MAX_SOFTWARE) {
            if let Some(n) = normalize_software(s) {
                sw_names.push(n);
            }
        }
        let mut text = String::with_capacity(description.len().min(MAX_INPUT_BYTES) + 64);
        text.push_str(cap(description, MAX_INPUT_BYTES));
        for n in &sw_names {
            if text.len() + n.len() + 1 > MAX_INPUT_BYTES {
                break;
            }
            text.push(' ');
            text.push_str(n);
        }
        for (b, w) in self.text_features(&text) {
            v[b as usize] += w;
        }
        l2_normalize(&mut v[..text_dims]);

        for n in &sw_names {
            let b =
                (stable_hash(c.hash_seed, NS_SOFTWARE, &[n]) % u64::from(c.software_dims)) as usize;
            v[text_dims + b] += 1.0;
        }
        l2_normalize(&mut v[text_dims..text_dims + sw_dims]);

        v[text_dims + sw_dims + data_bin(data_gb)] = 1.0;
        v
    }
}

/// Scales `v` to unit L2 length (left alone when all zero). Keeps long and short descriptions
/// on the same scale, so length alone does not move the prediction.
fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in v {
            *x /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn buckets(f: &Featurizer, text: &str) -> HashSet<u32> {
        f.text_features(text).into_iter().map(|(b, _)| b).collect()
    }

    #[test]
    fn tokenizer_keeps_tech_names_and_lowercases() {
        assert_eq!(
            tokenize("Fine-tuning LLaMA w/ C++, Node.js & k8s; kdb+ (q) and C#."),
            vec![
                "fine-tuning",
                "llama",
                "w",
                "c++",
                "node.js",
                "k8s",
                "kdb+",
                "q",
                "and",
                "c#"
            ]
        );
        assert_eq!(tokenize("pytorch==2.3"), vec!["pytorch", "2.3"]);
        assert_eq!(tokenize("...---  +++ ###"), Vec::<String>::new());
        assert_eq!(tokenize("end of sentence."), vec!["end", "of", "sentence"]);
    }

    #[test]
    fn compound_words_share_features_with_their_parts() {
        let f = Featurizer::new(FeatureConfig::default());
        let compound = buckets(&f, "fine-tuning");
        let parts = buckets(&f, "fine tuning");
        let word = |w: &str| {
            (stable_hash(f.config().hash_seed, NS_WORD, &[w]) % u64::from(f.config().text_dims))
                as u32
        };
        assert!(compound.contains(&word("fine")) && compound.contains(&word("tuning")));
        assert!(parts.contains(&word("fine")) && parts.contains(&word("tuning")));
    }

    #[test]
    fn char_ngrams_cover_three_to_five() {
        let cfg = FeatureConfig {
            word_weight: 0.0,
            bigram_weight: 0.0,
            ..FeatureConfig::default()
        };
        let f = Featurizer::new(cfg);
        // "<ab>" has 2 trigrams, 1 four-gram, no five-gram; plus the (zero-weight) word.
        let feats: Vec<_> = f
            .text_features("ab")
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .collect();
        assert_eq!(feats.len(), 3);
        // "<lora>" (6 chars): 4 trigrams + 3 four-grams + 2 five-grams.
        let feats: Vec<_> = f
            .text_features("lora")
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .collect();
        assert_eq!(feats.len(), 9);
    }

    #[test]
    fn misspelled_word_shares_most_features_with_the_correct_one() {
        let f = Featurizer::new(FeatureConfig::default());
        for (right, wrong) in [
            ("streaming", "streeming"),
            ("kubernetes", "kubernets"),
            ("tensorflow", "tensorflwo"),
            ("postgresql", "postgressql"),
            ("transcoding", "transcodeing"),
        ] {
            let a = buckets(&f, right);
            let b = buckets(&f, wrong);
            let shared = a.intersection(&b).count() as f64;
            let jaccard = shared / a.union(&b).count() as f64;
            // The word feature itself differs, but most char n-grams survive one typo.
            assert!(
                shared / a.len() as f64 > 0.4,
                "{right} vs {wrong}: shared {shared} of {}",
                a.len()
            );
            assert!(jaccard > 0.3, "{right} vs {wrong}: jaccard {jaccard}");
            // An unrelated word shares almost nothing.
            let c = buckets(&f, "spreadsheet");
            assert!((a.intersection(&c).count() as f64) < 0.15 * a.len() as f64);
        }
    }

    #[test]
    fn hashing_is_stable() {
        // Pinned value (computed independently in Python from the definition): if it changes,
        // every shipped model silently breaks.
        assert_eq!(
            stable_hash(0, b'w', &["nginx"]),
            stable_hash(0, b'w', &["nginx"])
        );
        assert_ne!(
            stable_hash(0, b'w', &["nginx"]),
            stable_hash(0, b's', &["nginx"])
        );
        assert_ne!(
            stable_hash(0, b'b', &["a", "bc"]),
            stable_hash(0, b'b', &["ab", "c"])
        );
        assert_eq!(stable_hash(0, b'w', &["nginx"]), 0x09cb_c90e_6eb6_92d6);
    }

    #[test]
    fn software_names_are_normalised() {
        let cases = [
            ("PyTorch==2.3", Some("pytorch")),
            ("numpy>=1.26,<2", Some("numpy")),
            ("postgresql-16", Some("postgresql")),
            ("nginx:1.25-alpine", Some("nginx")),
            ("docker.io/library/redis:7", Some("redis")),
            ("Blender 4.1", Some("blender")),
            ("node@20", Some("node")),
            ("transformers[torch]", Some("transformers")),
            ("nvidia-driver-535", Some("nvidia-driver")),
            ("kdb+", Some("kdb+")),
            ("obs-studio", Some("obs-studio")),
            ("python3.11", Some("python3.11")),
            ("  ", None),
            ("==1.0", None),
            ("4.2", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_software(raw).as_deref(), want, "{raw}");
        }
    }

    #[test]
    fn data_size_bins() {
        assert_eq!(data_bin(None), DATA_BINS - 1);
        assert_eq!(data_bin(Some(f64::NAN)), DATA_BINS - 1);
        assert_eq!(data_bin(Some(-1.0)), DATA_BINS - 1);
        assert_eq!(data_bin(Some(f64::INFINITY)), DATA_BINS - 1);
        assert_eq!(data_bin(Some(0.0)), 0);
        assert_eq!(data_bin(Some(0.5)), 0);
        assert_eq!(data_bin(Some(1.0)), 1);
        assert_eq!(data_bin(Some(80.0)), 3);
        assert_eq!(data_bin(Some(5000.0)), 5);
        assert_eq!(data_bin(Some(1e9)), DATA_BIN_EDGES_GB.len());
        let f = Featurizer::new(FeatureConfig::default());
        let v = f.features("x", &[], Some(80.0));
        let base = f.config().dims() - DATA_BINS;
        assert_eq!(v[base..].iter().filter(|x| **x == 1.0).count(), 1);
        assert_eq!(v[base + 3], 1.0);
    }

    #[test]
    fn vector_shape_and_normalisation() {
        let f = Featurizer::new(FeatureConfig::default());
        let sw = vec!["pytorch".to_string(), "peft".to_string()];
        let v = f.features("fine-tuning a 7B model with LoRA", &sw, None);
        assert_eq!(v.len(), f.config().dims());
        let t = f.config().text_dims as usize;
        let s = f.config().software_dims as usize;
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm(&v[..t]) - 1.0).abs() < 1e-4);
        assert!((norm(&v[t..t + s]) - 1.0).abs() < 1e-4);
        // Repeating the text barely changes the normalised vector (only the seam bigram
        // "lora fine-tuning" is new): the output does not depend on length.
        let long = "fine-tuning a 7B model with LoRA ".repeat(50);
        let w = f.features(&long, &sw, None);
        let dot: f32 = v[..t].iter().zip(&w[..t]).map(|(a, b)| a * b).sum();
        assert!(dot > 0.8, "cosine {dot}");
    }

    #[test]
    fn hostile_input_is_bounded_and_never_panics() {
        let f = Featurizer::new(FeatureConfig::default());
        let dims = f.config().dims();
        // Empty.
        let v = f.features("", &[], None);
        assert_eq!(v.len(), dims);
        assert!(v[..dims - DATA_BINS].iter().all(|x| *x == 0.0));
        // Huge: far over the cap; work is bounded by MAX_INPUT_BYTES / MAX_TOKENS.
        let huge = "a".repeat(10 * 1024 * 1024);
        let v = f.features(&huge, &[], None);
        assert!(v.iter().all(|x| x.is_finite()));
        let many_words = "word ".repeat(1_000_000);
        assert!(f.text_features(&many_words).len() <= MAX_TOKENS * 40);
        // Weird unicode: combining marks, RTL, emoji, NUL, a multi-byte char across the cap.
        let weird = "Z\u{0351}\u{036b}a\u{0357}lgo \u{202e}gnimaerts\u{202c} 🎮🎥 \0 \u{feff}データ サイエンス";
        let v = f.features(weird, &["🐘".to_string(), "\u{0}".to_string()], Some(-0.0));
        assert!(v.iter().all(|x| x.is_finite()));
        let mut edge = "x".repeat(MAX_INPUT_BYTES - 1);
        edge.push('é');
        let v = f.features(&edge, &[], None);
        assert!(v.iter().all(|x| x.is_finite()));
        // Very long software lists and names.
        let sw: Vec<String> = (0..10_000).map(|i| format!("pkg{i}=={i}")).collect();
        let v = f.features("x", &sw, None);
        assert!(v.iter().all(|x| x.is_finite()));
        assert_eq!(
            normalize_software(&"n".repeat(100_000)).map(|s| s.len()),
            Some(256)
        );
    }

    #[test]
    fn config_validation() {
        assert!(FeatureConfig::default().validate().is_ok());
        let bad = FeatureConfig {
            text_dims: 0,
            ..FeatureConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = FeatureConfig {
            char_ngram_min: 6,
            char_ngram_max: 3,
            ..FeatureConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = FeatureConfig {
            char_weight: f32::NAN,
            ..FeatureConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
