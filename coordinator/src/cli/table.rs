//! Human tables for `personactl`: columns padded to their widest cell, numbers aligned
//! right, and the state column coloured only when stdout is a terminal and `NO_COLOR`
//! is unset (a pipe or a file gets plain text, so `grep` and `awk` see no escape codes).
//! Machine output is `--json`, never this.

use std::fmt::Write as _;
use std::io::IsTerminal;

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table built row by row and rendered once.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
    color: bool,
}

/// Whether to colour stdout: a terminal, and no `NO_COLOR` (https://no-color.org).
pub fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// ANSI colour of a state word (green good, yellow waiting, red bad), if any.
fn state_color(cell: &str) -> Option<&'static str> {
    match cell {
        "connected" | "active" | "ok" => Some("32"),
        "disconnected" | "used" | "expired" | "pending" => Some("33"),
        "revoked" | "failed" | "error" => Some("31"),
        _ => None,
    }
}

impl Table {
    pub fn new(headers: &[(&'static str, Align)]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
            color: stdout_color(),
        }
    }

    /// Forces colour on or off (tests).
    pub fn with_color(mut self, on: bool) -> Self {
        self.color = on;
        self
    }

    /// Adds a row; each cell is made terminal-safe and one line
    /// ([`super::text::clean_line`]), so a cell can neither drive the terminal nor
    /// break the table.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| match super::text::clean_line(&c) {
                    std::borrow::Cow::Borrowed(_) => c,
                    std::borrow::Cow::Owned(o) => o,
                })
                .collect(),
        );
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut width: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>, header: bool| {
            for (i, ((_, align), w)) in self.headers.iter().zip(&width).enumerate() {
                let c = cells.next().unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                let last = i + 1 == n;
                // Padding is computed on the plain text, then the colour wraps only the
                // word, so colour never breaks the alignment.
                let shown = match (self.color, header, state_color(c)) {
                    (true, true, _) => format!("\x1b[1m{c}\x1b[0m"),
                    (true, false, Some(code)) => format!("\x1b[{code}m{c}\x1b[0m"),
                    _ => c.to_owned(),
                };
                match align {
                    Align::Left if last => out.push_str(&shown),
                    Align::Left => {
                        let _ = write!(out, "{shown}{:pad$}", "");
                    }
                    Align::Right => {
                        let _ = write!(out, "{:pad$}{shown}", "");
                    }
                }
                if !last {
                    out.push_str("  ");
                }
            }
            out.push('\n');
        };
        line(&mut out, &mut self.headers.iter().map(|(h, _)| *h), true);
        for r in &self.rows {
            line(&mut out, &mut r.iter().map(String::as_str), false);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_plain_and_coloured() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("N", Align::Right),
            ("STATE", Align::Left),
        ])
        .with_color(false);
        t.row(vec!["a-1".into(), "7".into(), "connected".into()]);
        t.row(vec!["a-22222".into(), "1234".into(), "revoked".into()]);
        assert_eq!(
            t.render(),
            "ID          N  STATE\na-1         7  connected\na-22222  1234  revoked\n"
        );
        let t = t.with_color(true);
        let s = t.render();
        assert!(s.contains("\x1b[32mconnected\x1b[0m") && s.contains("\x1b[31mrevoked\x1b[0m"));
        // Stripping the escapes gives the plain table back.
        let plain: String = s
            .split('\x1b')
            .enumerate()
            .map(|(i, p)| {
                if i == 0 {
                    p
                } else {
                    p.split_once('m').map_or("", |x| x.1)
                }
            })
            .collect();
        assert_eq!(plain, Table { color: false, ..t }.render());
    }
}
