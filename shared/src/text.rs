//! Terminal-safe text from peers, for storing and for `personactl`'s human output. Agent-supplied strings (host
//! facts, the declared purpose, event summaries, process names) reach the tables, and an
//! agent that controls them must not be able to drive the operator's terminal: a CSI
//! sequence can move the cursor and rewrite what was printed, an OSC one set the title
//! or, on some terminals, the clipboard. Everything printed for humans passes through
//! here; `--json` needs nothing (JSON escapes every control character).
//!
//! What goes: ESC and the whole sequence it starts (CSI `ESC [ ... final`, OSC
//! `ESC ] ... BEL|ST`, DCS/SOS/PM/APC strings up to ST, two-byte escapes), the same
//! sequences introduced by their 8-bit C1 forms (U+009B CSI, U+009D OSC, ...), every
//! other C0 and C1 control character and DEL, and the bidirectional overrides that make
//! text read differently than it is stored. Newline and tab stay in multi-line text
//! ([`clean_text`]) and become a space in a table cell ([`clean_line`]).

use std::borrow::Cow;

/// Whether `c` is dropped in any text: controls other than newline and tab, DEL, C1,
/// and the Unicode bidi embeddings, overrides and isolates.
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// What an escape introducer starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seq {
    /// `[` / U+009B: parameters and intermediates, then one final byte in `@..=~`.
    Csi,
    /// `]`, `P`, `X`, `^`, `_` / U+009D, U+0090, U+0098, U+009E, U+009F: a string up to
    /// ST (`ESC \` or U+009C), or BEL for OSC.
    Str,
}

fn sequence_of_c1(c: char) -> Option<Seq> {
    match c {
        '\u{9B}' => Some(Seq::Csi),
        '\u{9D}' | '\u{90}' | '\u{98}' | '\u{9E}' | '\u{9F}' => Some(Seq::Str),
        _ => None,
    }
}

/// Removes escape sequences and control characters; `keep_lines` keeps newline and tab
/// (else each becomes a space). Borrows when there is nothing to remove.
fn clean(s: &str, keep_lines: bool) -> Cow<'_, str> {
    let needs = s
        .chars()
        .any(|c| is_unsafe(c) || (!keep_lines && matches!(c, '\n' | '\t')));
    if !needs {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        let seq = if c == '\u{1b}' {
            match it.peek().copied() {
                Some('[') => {
                    it.next();
                    Some(Seq::Csi)
                }
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    it.next();
                    Some(Seq::Str)
                }
                // A two-byte escape (ESC 7, ESC c, ...): drop the byte after ESC too,
                // unless it is itself a control (handled on the next turn).
                Some(n) if !n.is_control() => {
                    it.next();
                    None
                }
                _ => None,
            }
        } else {
            sequence_of_c1(c)
        };
        match seq {
            Some(Seq::Csi) => {
                // Parameters 0x30..=0x3F and intermediates 0x20..=0x2F, then the final
                // byte; anything else ends the sequence where it stands.
                while let Some(&n) = it.peek() {
                    it.next();
                    if !('\u{20}'..='\u{3f}').contains(&n) {
                        break;
                    }
                }
            }
            Some(Seq::Str) => {
                while let Some(n) = it.next() {
                    if n == '\u{7}' || n == '\u{9C}' {
                        break;
                    }
                    if n == '\u{1b}' {
                        if it.peek() == Some(&'\\') {
                            it.next();
                        }
                        break;
                    }
                }
            }
            None if is_unsafe(c) => {}
            None if !keep_lines && matches!(c, '\n' | '\t') => out.push(' '),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Text safe to print as multi-line output: escapes and controls removed, newline and
/// tab kept.
pub fn clean_text(s: &str) -> Cow<'_, str> {
    clean(s, true)
}

/// Text safe to print in one table cell or one line: as [`clean_text`], and newline and
/// tab become a space so a cell cannot break the table.
pub fn clean_line(s: &str) -> Cow<'_, str> {
    clean(s, false)
}

/// Replaces `s` in place by its one-line [`clean_line`] form (for fields stored from a
/// peer: facts, purpose, event summaries, process names).
pub fn clean_in_place(s: &mut String) {
    if let Cow::Owned(c) = clean_line(s) {
        *s = c;
    }
}

#[cfg(test)]
mod core_tests {
    use super::*;

    #[test]
    fn whole_sequences_and_controls_go() {
        assert_eq!(clean_line("Debian\x1b[2J\x1b]0;owned\x07 12"), "Debian 12");
        assert_eq!(clean_text("line1\nline2"), "line1\nline2");
        let mut s = String::from("x\x1b[1my");
        clean_in_place(&mut s);
        assert_eq!(s, "xy");
    }
}
