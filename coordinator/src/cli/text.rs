//! The JSON side of terminal-safe output: every string of an API answer passes through
//! `persona_shared::text` before a human renderer sees it, and the renderers' tests
//! feed hostile strings through them. The string cleaning itself is shared with ingest
//! (which cleans what it stores).

use serde_json::Value;

#[cfg(test)]
use persona_shared::text::is_unsafe;
pub use persona_shared::text::{clean_line, clean_text};
#[cfg(test)]
use std::borrow::Cow;

/// A copy of a JSON document with every string (keys too) passed through
/// [`clean_text`]: what the human renderers are given, so no field of an answer reaches
/// the terminal raw, whichever renderer prints it.
pub fn clean_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(clean_text(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(clean_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (clean_text(k).into_owned(), clean_value(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Hostile strings for the renderers' tests: each carries a sequence that would act on a
/// terminal.
#[cfg(test)]
pub(crate) const HOSTILE: &[&str] = &[
    "\u{1b}[2J\u{1b}[Hwiped",
    "\u{1b}]0;owned\u{7}title",
    "\u{1b}]52;c;ZXZpbA==\u{1b}\\clip",
    "\u{9b}31mred",
    "bell\u{7}\u{8}\u{8}back",
    "\u{202e}txt.exe",
];

/// True when `s` holds nothing a terminal would act on (newline and tab allowed).
#[cfg(test)]
pub(crate) fn is_inert(s: &str) -> bool {
    !s.chars().any(is_unsafe)
}

/// A copy of `v` with a [`HOSTILE`] string appended to every string value (keys of
/// objects that renderers print as labels too), for the renderers' tests.
#[cfg(test)]
pub(crate) fn poison(v: &Value) -> Value {
    fn next(n: &mut usize) -> &'static str {
        *n += 1;
        HOSTILE[*n % HOSTILE.len()]
    }
    fn go(v: &Value, n: &mut usize) -> Value {
        match v {
            Value::String(s) => Value::String(format!("{s}{}", next(n))),
            Value::Array(a) => Value::Array(a.iter().map(|x| go(x, n)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        let key = if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                            k.clone()
                        } else {
                            format!("{k}{}", next(n))
                        };
                        (key, go(x, n))
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    go(v, &mut 0)
}

/// Renders a poisoned copy of `doc` as personactl would ([`super::human`]) and checks
/// that nothing in the output would act on a terminal, apart from the table's own
/// colours (on only when stdout is a terminal), and that `expect` still shows.
#[cfg(test)]
pub(crate) fn assert_renders_inert(
    doc: &Value,
    render: impl FnOnce(&Value) -> String,
    expect: &str,
) {
    let out = super::human(&poison(doc), render);
    let mut plain = out.clone();
    for sgr in [
        "\u{1b}[0m",
        "\u{1b}[1m",
        "\u{1b}[31m",
        "\u{1b}[32m",
        "\u{1b}[33m",
    ] {
        plain = plain.replace(sgr, "");
    }
    assert!(is_inert(&plain), "terminal control left in: {out:?}");
    assert!(plain.contains(expect), "{expect:?} missing from: {plain}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_go_whole_and_text_stays() {
        assert_eq!(clean_text("\u{1b}[2J\u{1b}[1;31mred\u{1b}[0m"), "red");
        assert_eq!(clean_text("a\u{1b}]0;title\u{7}b"), "ab");
        assert_eq!(
            clean_text("a\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\b"),
            "alinkb"
        );
        assert_eq!(clean_text("a\u{1b}Pq#0;2;0;0;0\u{1b}\\b"), "ab");
        assert_eq!(clean_text("a\u{9b}2Jb\u{9d}0;t\u{9c}c"), "abc");
        assert_eq!(clean_text("a\u{1b}7b\u{1b}cc"), "abc");
        assert_eq!(clean_text("nul\0 del\u{7f} bs\u{8}"), "nul del bs");
        assert_eq!(clean_text("\u{202e}gpj.exe"), "gpj.exe");
        assert_eq!(clean_text("two\nlines\tand tab"), "two\nlines\tand tab");
        assert_eq!(clean_line("two\nlines\tand tab"), "two lines and tab");
        // An unterminated sequence takes the rest with it, never the terminal.
        assert_eq!(clean_text("x\u{1b}]0;never ends"), "x");
        assert_eq!(clean_text("x\u{1b}"), "x");
        // Plain text (any script) is untouched and not copied.
        assert!(matches!(clean_text("héllo 世界 – ok"), Cow::Borrowed(_)));
        for h in HOSTILE {
            assert!(is_inert(&clean_text(h)), "{h:?}");
        }
    }

    #[test]
    fn every_string_of_a_document_is_cleaned() {
        let v = serde_json::json!({"a\u{1b}[2Jk": ["\u{1b}[31mx", {"n": 1, "s": "\u{9b}1my"}]});
        assert_eq!(
            clean_value(&v),
            serde_json::json!({"ak": ["x", {"n": 1, "s": "y"}]})
        );
    }
}
