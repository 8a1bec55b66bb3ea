//! Allocation-free helpers for reading and parsing `/proc` and `/sys` text: read a file
//! into a reused buffer, split it into lines and whitespace-separated fields as borrowed
//! slices, and parse numbers from those slices. They exist so that the steady-state tick
//! does not touch the allocator; they are not a general-purpose procfs parser (the
//! `procfs` crate is, and the tests use it as an oracle against these).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Reads the whole file at `path` into `buf` (cleared first). Once `buf` has grown to
/// the file's size this does not allocate: the kernel's pseudo-files report size 0, so
/// `read_to_end` reads into the spare capacity we already own. `File::open` turns the
/// path into a C string on the stack for paths shorter than a few hundred bytes.
pub(crate) fn read_into(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_end(buf)?;
    Ok(())
}

/// Lines of `buf`, without the trailing newline; a final empty line is skipped.
pub(crate) fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// Whitespace-separated fields of one line.
pub(crate) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
}

/// Parses an unsigned decimal integer; `None` on anything else (sign, empty, overflow).
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a decimal number such as `0.26` or `12` (no allocation: `str::parse` works on
/// the borrowed slice). Rejects NaN and infinities, which the kernel never prints.
pub(crate) fn parse_f64(s: &[u8]) -> Option<f64> {
    let v: f64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Rate of a monotonic counter between two readings `secs` seconds apart. A counter that
/// went backwards (reset, driver reload, 32-bit wrap: they cannot be told apart without
/// knowing the counter's width) or an elapsed time that is not positive gives NaN for
/// this tick; the next tick measures from the new value. So no rate is ever negative or
/// absurdly large.
pub(crate) fn rate(prev: u64, cur: u64, secs: f64) -> f64 {
    match cur.checked_sub(prev) {
        Some(d) if secs > 0.0 => d as f64 / secs,
        _ => f64::NAN,
    }
}

/// Seconds between two monotonic readings in nanoseconds; `None` when not positive.
pub(crate) fn elapsed_secs(prev_ns: Option<u64>, now_ns: u64) -> f64 {
    match prev_ns.and_then(|p| now_ns.checked_sub(p)) {
        Some(d) if d > 0 => d as f64 / 1e9,
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_f64(b"0.26"), Some(0.26));
        assert_eq!(parse_f64(b"nan"), None);
        assert_eq!(parse_f64(b"x"), None);
    }

    #[test]
    fn rates_never_negative() {
        assert_eq!(rate(10, 30, 2.0), 10.0);
        assert!(rate(30, 10, 2.0).is_nan());
        assert!(rate(10, 30, 0.0).is_nan());
        assert!(rate(10, 30, f64::NAN).is_nan());
        assert_eq!(rate(u64::MAX - 1, u64::MAX, 1.0), 1.0);
        assert!(elapsed_secs(None, 5).is_nan());
        assert!(elapsed_secs(Some(5), 5).is_nan());
        assert!(elapsed_secs(Some(6), 5).is_nan());
        assert_eq!(elapsed_secs(Some(0), 500_000_000), 0.5);
    }

    #[test]
    fn splitting() {
        let b = b"a  b\tc\n\nd\n";
        let l: Vec<_> = lines(b).collect();
        assert_eq!(l, vec![&b"a  b\tc"[..], b"d"]);
        let f: Vec<_> = fields(l[0]).collect();
        assert_eq!(f, vec![&b"a"[..], b"b", b"c"]);
    }
}
