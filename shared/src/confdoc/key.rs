//! The shape of one documented configuration key and how a table of them is rendered as
//! markdown. What this is not: the tables themselves (`agent`, `policy` beside this
//! file, the coordinator's in its config module) or any parsing.

use std::fmt::Write as _;

/// One documented key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// Dotted TOML path, e.g. `purpose.data_gb`.
    pub key: &'static str,
    /// TOML type as an operator writes it.
    pub ty: &'static str,
    /// The default as a TOML value, or `None` when the key is unset by default.
    pub default: Option<&'static str>,
    /// What values are accepted.
    pub allowed: &'static str,
    pub meaning: &'static str,
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Renders one markdown section: a heading, an intro paragraph and the key table.
pub fn render_section(title: &str, intro: &str, keys: &[KeyDoc]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n\n{intro}\n");
    let _ = writeln!(out, "| key | type | default | allowed | meaning |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for k in keys {
        let default = k.default.map_or("unset".to_owned(), |d| format!("`{d}`"));
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            k.key,
            k.ty,
            cell(&default),
            cell(k.allowed),
            cell(k.meaning)
        );
    }
    out
}

/// A TOML document that sets `key` (dotted, at most one table level) to `value`.
pub fn toml_setting(key: &str, value: &str) -> String {
    match key.split_once('.') {
        Some((table, k)) => format!("[{table}]\n{k} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_escape_pipes_and_unset_defaults_say_so() {
        let keys = [KeyDoc {
            key: "a.b",
            ty: "string",
            default: None,
            allowed: "x | y",
            meaning: "m",
        }];
        let s = render_section("T", "intro", &keys);
        assert!(s.starts_with("## T\n\nintro\n"), "{s}");
        assert!(
            s.contains("| `a.b` | string | unset | x \\| y | m |"),
            "{s}"
        );
        assert_eq!(toml_setting("a.b", "1"), "[a]\nb = 1\n");
        assert_eq!(toml_setting("a", "1"), "a = 1\n");
    }
}
