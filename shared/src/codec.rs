//! Lossless (at a declared precision) compression of metric time series, so the agent can
//! ship a second-resolution series in a few bits per point. A series travels as two kinds of
//! blocks: a value block (f64 samples quantised to a decimal precision `10^scale`) and a
//! timestamp block (i64 milliseconds). Blocks are self-delimiting, so a message can carry
//! several back to back; the decoders treat their input as hostile.
//!
//! # Wire format (part of the protocol: changing it needs a protocol version bump)
//!
//! Common pieces:
//! - `varint`: unsigned LEB128, 7 bits per byte, least significant group first, high bit set
//!   on every byte but the last; at most 10 bytes (the 10th may only be 0 or 1).
//! - `zigzag(x) = (x << 1) ^ (x >> 63)` on 64 bits, so small negatives stay small.
//! - Bit streams are written most significant bit first, within each byte and within each
//!   field, and end with zero bits up to the next byte boundary (the decoder checks they are
//!   zero). `z:N` below is an N-bit unsigned field.
//!
//! Value block, for a series at `scale` (the scale is not on the wire; both sides take it
//! from the metric registry; every function here clamps it to -9..=9):
//! ```text
//! block := count:varint  [first rest{count-1}]  pad      (no bits at all when count == 0)
//! first := L:6 z:L        L in 0..=55, q = unzigzag(z)
//!        | 111111 raw:64  (L == 63) IEEE-754 bits of the value, kept exactly
//! rest  := 0                 delta = 0
//!        | 10     z:6        delta = unzigzag(z)
//!        | 110    z:13
//!        | 1110   z:20
//!        | 11110  z:32
//!        | 11111 0 q:64      absolute q, two's complement
//!        | 11111 1 raw:64    IEEE-754 bits, kept exactly; the delta base stays the last q
//! ```
//! A value `v` is stored as the quantum count `q = round(v / 10^scale)` (half away from
//! zero) when `v` is finite and `|q| <= 2^53`; it decodes to `q * 10^scale`, computed as
//! `q as f64 / 10^-scale` for negative scales and `q as f64 * 10^scale` otherwise (see
//! [`quantise`]). Anything else (NaN with its payload, ±inf, values beyond 2^53 quanta)
//! takes the raw escape. Deltas are between consecutive `q`s; the first value's base is 0.
//!
//! Timestamp block (milliseconds since the Unix epoch):
//! ```text
//! block := count:varint [zigzag(t0):varint [zigzag(t1 - t0):varint dods{count-2}]] pad
//! dod   := 0                 delta-of-delta = 0
//!        | 10    z:7         dod = unzigzag(z)
//!        | 110   z:12
//!        | 1110  z:20
//!        | 1111  z:64
//! ```
//! Differences are taken modulo 2^64 (wrapping), which makes every i64 sequence, however
//! wild, round-trip exactly without an extra escape code.
//!
//! # What it is not
//! Not a general compressor (no entropy coding, no dictionary), not an integrity check (a
//! flipped bit can decode to a wrong but plausible series), and not self-describing (no
//! magic, no version, no scale: the surrounding message has them). The sign of zero is
//! not kept: `-0.0` decodes as `0.0`, as do values that round to zero quanta.

use thiserror::Error;

/// Errors from decoding hostile or corrupt blocks. Bit positions count from the first bit
/// of the block's first byte.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum CodecError {
    /// The block ends before `what` is complete.
    #[error("block truncated while reading {what} at bit {at_bit}")]
    Truncated { what: &'static str, at_bit: u64 },
    /// The declared point count exceeds the caller's limit.
    #[error("block declares {count} points, more than the limit of {max}")]
    TooManyPoints { count: u64, max: usize },
    /// A header varint is malformed.
    #[error("bad block header: {what} at byte {at_byte}")]
    BadHeader { what: &'static str, at_byte: usize },
    /// A decoded quantum count leaves the representable range (|q| <= 2^53).
    #[error("{what} out of range at bit {at_bit}")]
    Overflow { what: &'static str, at_bit: u64 },
    /// A code no encoder produces.
    #[error("corrupt block: {what} at bit {at_bit}")]
    Corrupt { what: &'static str, at_bit: u64 },
    /// `decode_values`/`decode_timestamps` got bytes after the block; use the `_into`
    /// variants to walk concatenated blocks.
    #[error("{extra} trailing bytes after a {consumed}-byte block")]
    TrailingBytes { consumed: usize, extra: usize },
}

/// Largest quantum count kept as an integer: beyond it f64 cannot hold every integer, so
/// deltas would stop being exact.
const MAX_Q: i64 = 1 << 53;
const MIN_SCALE: i8 = -9;
const MAX_SCALE: i8 = 9;
/// Exact in f64 up to 10^22; we need 10^9 at most.
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// First-value length code meaning "64 raw f64 bits follow".
const FIRST_RAW: u64 = 63;
/// zigzag(±2^53) needs 55 bits.
const FIRST_MAX_LEN: u64 = 55;

/// Value delta buckets after the `0` (delta 0) code: prefix of `i + 1` ones and a zero,
/// then `width` bits. Chosen for the byte budget; see the tests for measured sizes.
const VALUE_BUCKETS: [u32; 4] = [6, 13, 20, 32];
/// Timestamp delta-of-delta buckets; the last one (prefix `1111`, no zero) is 64 bits.
const TS_BUCKETS: [u32; 3] = [7, 12, 20];

/// Out-of-range scales are clamped the same way by every function here, so a round trip
/// still holds; the registry is what keeps scales in range.
fn clamp_scale(scale: i8) -> i8 {
    scale.clamp(MIN_SCALE, MAX_SCALE)
}

/// Quantum count of `v`, or `None` when the value must be stored raw.
fn to_quanta(v: f64, scale: i8) -> Option<i64> {
    let scale = clamp_scale(scale);
    let p = POW10[usize::from(scale.unsigned_abs())];
    // Multiplying by an exact power of ten is more accurate than dividing by an inexact
    // 10^-k, so negative scales multiply.
    let x = if scale < 0 { v * p } else { v / p };
    if !x.is_finite() {
        return None;
    }
    let r = x.round();
    if r.abs() > MAX_Q as f64 {
        return None;
    }
    // |r| <= 2^53 and integral, so the cast is exact.
    Some(r as i64)
}

fn from_quanta(q: i64, scale: i8) -> f64 {
    let scale = clamp_scale(scale);
    let p = POW10[usize::from(scale.unsigned_abs())];
    // Dividing by the exact 10^k gives the correctly rounded q * 10^-k.
    if scale < 0 {
        q as f64 / p
    } else {
        q as f64 * p
    }
}

/// Quantise a value the way the codec does: what a round trip returns for it. Finite
/// values within 2^53 quanta come back as `round(v / 10^scale) * 10^scale` (as computed in
/// f64); anything else (NaN, ±inf, huge values) comes back unchanged. Quantising again is
/// a no-op below 2^51 quanta; above, the two f64 roundings may move it by one quantum.
pub fn quantise(v: f64, scale: i8) -> f64 {
    match to_quanta(v, scale) {
        Some(q) => from_quanta(q, scale),
        None => v,
    }
}

fn zigzag(x: i64) -> u64 {
    ((x as u64) << 1) ^ ((x >> 63) as u64)
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ (-((z & 1) as i64))
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at byte `at`; returns the value and the byte position after it.
fn read_varint(block: &[u8], at: usize, what: &'static str) -> Result<(u64, usize), CodecError> {
    let mut v = 0u64;
    for i in 0..10usize {
        let pos = at.saturating_add(i);
        let b = *block.get(pos).ok_or(CodecError::Truncated {
            what,
            at_bit: (pos as u64).saturating_mul(8),
        })?;
        if i == 9 && b > 1 {
            return Err(CodecError::BadHeader {
                what: "varint longer than 64 bits",
                at_byte: pos,
            });
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, pos + 1));
        }
    }
    // Unreachable: the 10th byte is either rejected above or ends the varint.
    Err(CodecError::BadHeader {
        what: "varint longer than 64 bits",
        at_byte: at,
    })
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Pending bits in the low `nbits` bits; fewer than 8 between calls.
    acc: u64,
    nbits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        BitWriter {
            out,
            acc: 0,
            nbits: 0,
        }
    }

    /// Writes the low `width` (<= 64) bits of `value`.
    fn write(&mut self, value: u64, width: u32) {
        // Split wide fields so the accumulator (< 8 pending bits) never overflows.
        if width > 32 {
            self.write_small(value >> 32, width - 32);
            self.write_small(value, 32);
        } else {
            self.write_small(value, width);
        }
    }

    fn write_small(&mut self, value: u64, width: u32) {
        if width == 0 {
            return;
        }
        let value = value & ((1u64 << width) - 1);
        self.acc = (self.acc << width) | value;
        self.nbits += width;
        while self.nbits >= 8 {
            self.nbits -= 8;
            self.out.push((self.acc >> self.nbits) as u8);
        }
        self.acc &= (1u64 << self.nbits) - 1;
    }

    fn finish(self) {
        if self.nbits > 0 {
            self.out.push((self.acc << (8 - self.nbits)) as u8);
        }
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: u64,
    len_bits: u64,
}

impl<'a> BitReader<'a> {
    /// Starts reading `data` at byte `start` (positions stay relative to `data`).
    fn new(data: &'a [u8], start: usize) -> Self {
        BitReader {
            data,
            pos: (start as u64) * 8,
            len_bits: (data.len() as u64) * 8,
        }
    }

    fn remaining(&self) -> u64 {
        self.len_bits.saturating_sub(self.pos)
    }

    /// Reads a `width`-bit (<= 64) field.
    fn read(&mut self, width: u32, what: &'static str) -> Result<u64, CodecError> {
        if self.remaining() < u64::from(width) {
            return Err(CodecError::Truncated {
                what,
                at_bit: self.pos,
            });
        }
        let mut v = 0u64;
        let mut need = width;
        while need > 0 {
            let byte = usize::try_from(self.pos / 8)
                .ok()
                .and_then(|i| self.data.get(i))
                .copied()
                .ok_or(CodecError::Truncated {
                    what,
                    at_bit: self.pos,
                })?;
            let avail = 8 - (self.pos % 8) as u32;
            let take = avail.min(need);
            let bits = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            // `v` holds `width - need` bits, so this never shifts bits out.
            v = (v << take) | bits;
            need -= take;
            self.pos += u64::from(take);
        }
        Ok(v)
    }

    /// Counts leading one bits, stopping after a zero or at `max` ones.
    fn read_prefix(&mut self, max: u32, what: &'static str) -> Result<u32, CodecError> {
        let mut ones = 0;
        while ones < max {
            if self.read(1, what)? == 0 {
                break;
            }
            ones += 1;
        }
        Ok(ones)
    }

    /// Checks the padding and returns the bytes consumed from the start of `data`.
    fn finish(self) -> Result<usize, CodecError> {
        let pad = ((8 - self.pos % 8) % 8) as u32;
        let at_bit = self.pos;
        let mut this = self;
        if this.read(pad, "padding")? != 0 {
            return Err(CodecError::Corrupt {
                what: "non-zero padding",
                at_bit,
            });
        }
        usize::try_from(this.pos / 8).map_err(|_| CodecError::Corrupt {
            what: "block length",
            at_bit,
        })
    }
}

/// Reads the point count and rejects counts that are over the limit or that could not fit
/// in the rest of the block, before anyone allocates for them.
fn read_count(block: &[u8], max_points: usize) -> Result<(usize, usize), CodecError> {
    let (count, after) = read_varint(block, 0, "point count")?;
    if count > max_points as u64 {
        return Err(CodecError::TooManyPoints {
            count,
            max: max_points,
        });
    }
    // Every point takes at least one bit (the first ones much more).
    let remaining_bits = (block.len().saturating_sub(after) as u64).saturating_mul(8);
    if count > remaining_bits {
        return Err(CodecError::Truncated {
            what: "points (count exceeds block size)",
            at_bit: (block.len() as u64).saturating_mul(8),
        });
    }
    // count <= max_points, so it fits in usize.
    Ok((count as usize, after))
}

/// Appends one value block for `values` at precision `10^scale` to `out`.
pub fn encode_values(values: &[f64], scale: i8, out: &mut Vec<u8>) {
    write_varint(out, values.len() as u64);
    let mut w = BitWriter::new(out);
    let mut prev_q: i64 = 0;
    for (i, &v) in values.iter().enumerate() {
        let q = to_quanta(v, scale);
        if i == 0 {
            match q {
                Some(q) => {
                    let z = zigzag(q);
                    let len = u64::from(64 - z.leading_zeros());
                    w.write(len, 6);
                    w.write(z, len as u32);
                }
                None => {
                    w.write(FIRST_RAW, 6);
                    w.write(v.to_bits(), 64);
                }
            }
        } else {
            match q {
                Some(q) => write_value_delta(&mut w, prev_q, q),
                None => {
                    w.write(0b11111, 5);
                    w.write(1, 1);
                    w.write(v.to_bits(), 64);
                }
            }
        }
        if let Some(q) = q {
            prev_q = q;
        }
    }
    w.finish();
}

fn write_value_delta(w: &mut BitWriter<'_>, prev_q: i64, q: i64) {
    // Both are within ±2^53, so this cannot fail; the fallback keeps it panic-free anyway.
    let Some(delta) = q.checked_sub(prev_q) else {
        write_absolute(w, q);
        return;
    };
    if delta == 0 {
        w.write(0, 1);
        return;
    }
    let z = zigzag(delta);
    for (i, &width) in VALUE_BUCKETS.iter().enumerate() {
        if z >> width == 0 {
            let ones = i as u32 + 1;
            // `ones` ones then a zero.
            w.write(((1u64 << ones) - 1) << 1, ones + 1);
            w.write(z, width);
            return;
        }
    }
    write_absolute(w, q);
}

fn write_absolute(w: &mut BitWriter<'_>, q: i64) {
    w.write(0b11111, 5);
    w.write(0, 1);
    w.write(q as u64, 64);
}

fn check_q(q: i64, what: &'static str, at_bit: u64) -> Result<i64, CodecError> {
    if q.checked_abs().is_some_and(|a| a <= MAX_Q) {
        Ok(q)
    } else {
        Err(CodecError::Overflow { what, at_bit })
    }
}

/// Decodes one value block that must span all of `block`.
pub fn decode_values(block: &[u8], scale: i8, max_points: usize) -> Result<Vec<f64>, CodecError> {
    let mut out = Vec::new();
    let consumed = decode_values_into(block, scale, max_points, &mut out)?;
    no_trailing(block, consumed)?;
    Ok(out)
}

/// Decodes the value block at the start of `block`, appending its points to `out`, and
/// returns the bytes it took. On error `out` is left as it was.
pub fn decode_values_into(
    block: &[u8],
    scale: i8,
    max_points: usize,
    out: &mut Vec<f64>,
) -> Result<usize, CodecError> {
    let start_len = out.len();
    let result = decode_values_inner(block, scale, max_points, out);
    if result.is_err() {
        out.truncate(start_len);
    }
    result
}

fn decode_values_inner(
    block: &[u8],
    scale: i8,
    max_points: usize,
    out: &mut Vec<f64>,
) -> Result<usize, CodecError> {
    let (count, header_len) = read_count(block, max_points)?;
    out.reserve(count);
    let mut r = BitReader::new(block, header_len);
    let mut prev_q: i64 = 0;
    for i in 0..count {
        let at_bit = r.pos;
        if i == 0 {
            let len = r.read(6, "first value length")?;
            if len == FIRST_RAW {
                out.push(f64::from_bits(r.read(64, "raw value")?));
            } else if len <= FIRST_MAX_LEN {
                let q = unzigzag(r.read(len as u32, "first value")?);
                prev_q = check_q(q, "first value", at_bit)?;
                out.push(from_quanta(prev_q, scale));
            } else {
                return Err(CodecError::Corrupt {
                    what: "first value length code",
                    at_bit,
                });
            }
            continue;
        }
        let ones = r.read_prefix(5, "value code")?;
        let q = match ones {
            0 => prev_q,
            1..=4 => {
                let width = VALUE_BUCKETS[ones as usize - 1];
                let delta = unzigzag(r.read(width, "value delta")?);
                let q = prev_q.checked_add(delta).ok_or(CodecError::Overflow {
                    what: "value",
                    at_bit,
                })?;
                check_q(q, "value", at_bit)?
            }
            _ => {
                if r.read(1, "escape kind")? == 1 {
                    out.push(f64::from_bits(r.read(64, "raw value")?));
                    continue;
                }
                check_q(
                    r.read(64, "absolute value")? as i64,
                    "absolute value",
                    at_bit,
                )?
            }
        };
        prev_q = q;
        out.push(from_quanta(q, scale));
    }
    r.finish()
}

fn no_trailing(block: &[u8], consumed: usize) -> Result<(), CodecError> {
    if consumed == block.len() {
        Ok(())
    } else {
        Err(CodecError::TrailingBytes {
            consumed,
            extra: block.len().saturating_sub(consumed),
        })
    }
}

/// Appends one timestamp block for `ts_ms` to `out`.
pub fn encode_timestamps(ts_ms: &[i64], out: &mut Vec<u8>) {
    write_varint(out, ts_ms.len() as u64);
    let [t0, rest @ ..] = ts_ms else {
        return;
    };
    write_varint(out, zigzag(*t0));
    let [t1, rest @ ..] = rest else {
        return;
    };
    let mut delta = t1.wrapping_sub(*t0);
    write_varint(out, zigzag(delta));
    let mut w = BitWriter::new(out);
    let mut prev = *t1;
    for &t in rest {
        let d = t.wrapping_sub(prev);
        let z = zigzag(d.wrapping_sub(delta));
        if z == 0 {
            w.write(0, 1);
        } else if let Some(i) = TS_BUCKETS.iter().position(|&width| z >> width == 0) {
            let ones = i as u32 + 1;
            w.write(((1u64 << ones) - 1) << 1, ones + 1);
            w.write(z, TS_BUCKETS[i]);
        } else {
            w.write(0b1111, 4);
            w.write(z, 64);
        }
        delta = d;
        prev = t;
    }
    w.finish();
}

/// Decodes one timestamp block that must span all of `block`.
pub fn decode_timestamps(block: &[u8], max_points: usize) -> Result<Vec<i64>, CodecError> {
    let mut out = Vec::new();
    let consumed = decode_timestamps_into(block, max_points, &mut out)?;
    no_trailing(block, consumed)?;
    Ok(out)
}

/// Decodes the timestamp block at the start of `block`, appending its points to `out`, and
/// returns the bytes it took. On error `out` is left as it was.
pub fn decode_timestamps_into(
    block: &[u8],
    max_points: usize,
    out: &mut Vec<i64>,
) -> Result<usize, CodecError> {
    let start_len = out.len();
    let result = decode_timestamps_inner(block, max_points, out);
    if result.is_err() {
        out.truncate(start_len);
    }
    result
}

fn decode_timestamps_inner(
    block: &[u8],
    max_points: usize,
    out: &mut Vec<i64>,
) -> Result<usize, CodecError> {
    let (count, mut pos) = read_count(block, max_points)?;
    if count == 0 {
        return Ok(pos);
    }
    out.reserve(count);
    let (z0, next) = read_varint(block, pos, "first timestamp")?;
    pos = next;
    let mut prev = unzigzag(z0);
    out.push(prev);
    if count == 1 {
        return Ok(pos);
    }
    let (zd, next) = read_varint(block, pos, "first timestamp delta")?;
    pos = next;
    let mut delta = unzigzag(zd);
    prev = prev.wrapping_add(delta);
    out.push(prev);
    let mut r = BitReader::new(block, pos);
    for _ in 2..count {
        let ones = r.read_prefix(4, "timestamp code")?;
        let z = match ones {
            0 => 0,
            1..=3 => r.read(TS_BUCKETS[ones as usize - 1], "timestamp delta-of-delta")?,
            _ => r.read(64, "timestamp delta-of-delta")?,
        };
        delta = delta.wrapping_add(unzigzag(z));
        prev = prev.wrapping_add(delta);
        out.push(prev);
    }
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_v(values: &[f64], scale: i8) -> Vec<u8> {
        let mut out = Vec::new();
        encode_values(values, scale, &mut out);
        out
    }

    fn enc_t(ts: &[i64]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_timestamps(ts, &mut out);
        out
    }

    /// Same value, bit for bit, except that every NaN matches every NaN.
    fn same(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    fn assert_values_round_trip(values: &[f64], scale: i8) -> Vec<u8> {
        let block = enc_v(values, scale);
        let back = decode_values(&block, scale, values.len()).unwrap();
        assert_eq!(back.len(), values.len());
        for (v, b) in values.iter().zip(&back) {
            assert!(same(quantise(*v, scale), *b), "{v} -> {b}");
        }
        block
    }

    /// Deterministic noise so size assertions are stable.
    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn constant_series_is_tiny() {
        for (v, scale) in [(0.0, 0), (42.0, 0), (0.0125, -4), (100.0, 0), (2.5e6, 4)] {
            let block = assert_values_round_trip(&[v; 10], scale);
            assert!(block.len() <= 4, "{v}@{scale}: {} bytes", block.len());
        }
        // A first value of more than 8 significant bits pushes it to 5 bytes; repeats still
        // cost one bit each.
        let block = assert_values_round_trip(&[0.4375; 10], -4);
        assert_eq!(block.len(), 5);
        let block = assert_values_round_trip(&[0.4375; 1000], -4);
        assert!(block.len() <= 2 + 3 + 125, "{}", block.len());
    }

    #[test]
    fn measured_sizes_stay_within_budget() {
        let mut seed = 7;
        let cpu: Vec<f64> = (0..10).map(|_| 0.30 + 0.1 * lcg(&mut seed)).collect();
        let cpu_block = assert_values_round_trip(&cpu, -4);
        let bytes: Vec<f64> = (0..10)
            .map(|_| (1.2e6 + 4e5 * lcg(&mut seed)).round())
            .collect();
        let bytes_block = assert_values_round_trip(&bytes, 0);
        let ts: Vec<i64> = (0..10)
            .map(|i| 1_760_000_000_000 + i * 1000 + (lcg(&mut seed) * 40.0) as i64 - 20)
            .collect();
        let ts_block = enc_t(&ts);
        assert_eq!(decode_timestamps(&ts_block, 10).unwrap(), ts);
        println!(
            "cpu@-4: {} B, bytes@0: {} B, ts: {} B",
            cpu_block.len(),
            bytes_block.len(),
            ts_block.len()
        );
        assert!(cpu_block.len() <= 21, "{}", cpu_block.len());
        assert!(bytes_block.len() <= 38, "{}", bytes_block.len());
        assert!(ts_block.len() <= 19, "{}", ts_block.len());
    }

    #[test]
    fn special_values() {
        let values = [
            f64::NAN,
            1.5,
            f64::INFINITY,
            1.5,
            f64::NEG_INFINITY,
            -0.0,
            f64::from_bits(0x7ff8_0000_dead_beef),
            f64::MAX,
            f64::MIN_POSITIVE,
            -f64::MAX,
        ];
        for scale in [-9, -4, 0, 3, 9] {
            let block = enc_v(&values, scale);
            let back = decode_values(&block, scale, 100).unwrap();
            assert!(back[0].is_nan());
            assert_eq!(back[2], f64::INFINITY);
            assert_eq!(back[4], f64::NEG_INFINITY);
            assert_eq!(back[5], 0.0);
            // NaN payloads travel untouched.
            assert_eq!(back[6].to_bits(), 0x7ff8_0000_dead_beef);
            assert_eq!(back[7], f64::MAX);
            assert_eq!(back[9], -f64::MAX);
            assert_eq!(back[1], quantise(1.5, scale));
        }
        // A raw first value leaves the delta base at 0.
        assert_values_round_trip(&[f64::NAN, 0.0, 0.0, 3.0], 0);
        assert_values_round_trip(&[f64::INFINITY], 0);
    }

    #[test]
    fn huge_jumps_and_resets() {
        assert_values_round_trip(&[0.0, 1e300, 0.0, -1e300, 0.0], 0);
        let limit = (1u64 << 53) as f64;
        assert_values_round_trip(&[-limit, limit, -limit, limit + 2.0, 0.0], 0);
        assert_values_round_trip(&[1e15, -1e15, 1e15], -1);
        // A counter that resets to 0 and climbs again.
        let counter = [1e9, 1.1e9, 1.2e9, 0.0, 1e5, 2e5, 5e12, 0.0];
        let block = assert_values_round_trip(&counter, 0);
        assert_eq!(decode_values(&block, 0, 8).unwrap(), counter);
        // Values on bucket edges.
        let mut edges = vec![0.0];
        for w in [6, 13, 20, 32, 33] {
            let half = (1i64 << (w - 1)) as f64;
            edges.extend([half - 1.0, 0.0, -half, 0.0, half, 0.0, -half - 1.0, 0.0]);
        }
        assert_values_round_trip(&edges, 0);
    }

    #[test]
    fn timestamps_round_trip_extremes() {
        let cases: Vec<Vec<i64>> = vec![
            vec![],
            vec![i64::MIN],
            vec![i64::MAX, i64::MIN],
            vec![i64::MIN, i64::MAX, i64::MIN, 0, i64::MAX, i64::MAX, -1],
            vec![0, 1000, 2000, 3000, 4001, 4999, 6000],
            vec![5, 5, 5, 5],
            (0..300).map(|i| 1_760_000_000_000 + i * 1000).collect(),
        ];
        for ts in cases {
            let block = enc_t(&ts);
            assert_eq!(decode_timestamps(&block, ts.len()).unwrap(), ts);
        }
        // Regular 1 s spacing costs one bit per point after the first two.
        let regular: Vec<i64> = (0..1000).map(|i| 1_760_000_000_000 + i * 1000).collect();
        assert!(enc_t(&regular).len() <= 2 + 6 + 2 + 125);
    }

    #[test]
    fn empty_input() {
        assert_eq!(enc_v(&[], 0), vec![0]);
        assert_eq!(enc_t(&[]), vec![0]);
        assert_eq!(decode_values(&[0], 0, 0).unwrap(), Vec::<f64>::new());
        assert_eq!(decode_timestamps(&[0], 0).unwrap(), Vec::<i64>::new());
        assert!(matches!(
            decode_values(&[], 0, 10),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(
            decode_timestamps(&[], 10),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn concatenated_blocks() {
        let a = [1.0, 2.0, 2.0, f64::NAN];
        let b = [7.25, 7.5];
        let mut buf = Vec::new();
        encode_values(&a, -2, &mut buf);
        encode_values(&[], -2, &mut buf);
        encode_values(&b, -2, &mut buf);
        let mut out = Vec::new();
        let mut at = 0;
        let mut blocks = 0;
        while at < buf.len() {
            at += decode_values_into(&buf[at..], -2, 10, &mut out).unwrap();
            blocks += 1;
        }
        assert_eq!(blocks, 3);
        assert_eq!(out.len(), 6);
        assert_eq!(&out[..3], &a[..3]);
        assert!(out[3].is_nan());
        assert_eq!(&out[4..], &b);
        assert!(matches!(
            decode_values(&buf, -2, 10),
            Err(CodecError::TrailingBytes { .. })
        ));

        let mut buf = Vec::new();
        let t1 = [10, 20, 30];
        let t2 = [i64::MIN];
        encode_timestamps(&t1, &mut buf);
        encode_timestamps(&t2, &mut buf);
        let mut out = vec![99];
        let n = decode_timestamps_into(&buf, 10, &mut out).unwrap();
        let m = decode_timestamps_into(&buf[n..], 10, &mut out).unwrap();
        assert_eq!(n + m, buf.len());
        assert_eq!(out, [99, 10, 20, 30, i64::MIN]);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let values: Vec<f64> = (0..50).map(|i| (i * i) as f64 * 0.37).collect();
        let block = enc_v(&values, -2);
        let ts: Vec<i64> = (0..50)
            .map(|i| i64::from(i) * 997 + i64::from(i % 7) * 3)
            .collect();
        let tblock = enc_t(&ts);
        for cut in 0..block.len() {
            let mut out = vec![1.0];
            let err = decode_values_into(&block[..cut], -2, 100, &mut out).unwrap_err();
            assert!(
                matches!(err, CodecError::Truncated { .. }),
                "{cut}: {err:?}"
            );
            assert_eq!(out, [1.0], "output restored on error");
        }
        for cut in 0..tblock.len() {
            let err = decode_timestamps(&tblock[..cut], 100).unwrap_err();
            assert!(
                matches!(err, CodecError::Truncated { .. }),
                "{cut}: {err:?}"
            );
        }
    }

    #[test]
    fn hostile_headers() {
        // A huge declared count is refused before any allocation.
        let mut block = Vec::new();
        write_varint(&mut block, u64::MAX);
        assert_eq!(
            decode_values(&block, 0, 1000),
            Err(CodecError::TooManyPoints {
                count: u64::MAX,
                max: 1000
            })
        );
        assert!(matches!(
            decode_timestamps(&block, usize::MAX),
            Err(CodecError::Truncated { .. })
        ));
        // Within the limit but more points than bits.
        assert!(matches!(
            decode_values(&[100, 0xff], 0, 1000),
            Err(CodecError::Truncated { .. })
        ));
        assert_eq!(
            decode_values(&[5], 0, 4),
            Err(CodecError::TooManyPoints { count: 5, max: 4 })
        );
        // An 11-byte varint.
        assert!(matches!(
            decode_values(&[0xff; 11], 0, 10),
            Err(CodecError::BadHeader { .. })
        ));
        // Unused first-value length code 60.
        assert!(matches!(
            decode_values(&[1, 60 << 2], 0, 10),
            Err(CodecError::Corrupt { .. })
        ));
        // Non-zero padding.
        assert!(matches!(
            decode_values(&[1, 0b0000_0001], 0, 10),
            Err(CodecError::Corrupt { .. })
        ));
        // Deltas that walk past 2^53 quanta.
        let mut block = vec![2];
        let mut w = BitWriter::new(&mut block);
        w.write(55, 6);
        w.write(zigzag(MAX_Q), 55);
        w.write(0b10, 2);
        w.write(zigzag(1), 6);
        w.finish();
        assert!(matches!(
            decode_values(&block, 0, 10),
            Err(CodecError::Overflow { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 1;
        for len in 0..200usize {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len).map(|_| (lcg(&mut seed) * 256.0) as u8).collect();
                let _ = decode_values(&bytes, (len % 19) as i8 - 9, 1000);
                let _ = decode_timestamps(&bytes, 1000);
            }
        }
    }

    #[test]
    fn quantise_matches_scale() {
        assert_eq!(quantise(0.123456, -4), 0.1235);
        assert_eq!(quantise(1234.0, 3), 1000.0);
        assert_eq!(quantise(1500.0, 3), 2000.0);
        assert_eq!(quantise(-1500.0, 3), -2000.0);
        assert!(quantise(f64::NAN, 0).is_nan());
        assert_eq!(quantise(1e300, 0), 1e300);
        // Out-of-range scales clamp, consistently with the codec.
        assert_eq!(
            quantise(0.1234567891234, -20),
            quantise(0.1234567891234, -9)
        );
        assert_values_round_trip(&[0.1234567891234, 5.5], -20);
        assert_values_round_trip(&[1.5e12, 5.5], 100);
    }
}
