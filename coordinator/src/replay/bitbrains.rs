//! Reader for the GWA-T-12 Bitbrains per-VM CSV files, gzipped or not.
//!
//! What it is for: turning one file (one VM, one month) into samples of CPU cores used,
//! memory GiB used and the provisioned size, fast: the whole file is read (and inflated)
//! at once and split by hand, parsing only the six columns the replay needs. Columns are
//! found by their header text, separated by `;` plus optional whitespace (the archive
//! uses `";\t"`). The timestamp column says `[ms]` but holds Unix seconds (see the
//! dataset README); values above 10^11 are taken as milliseconds all the same.
//!
//! Usage is defined as the issue defines it: CPU cores used = `CPU usage [MHZ]` /
//! (`CPU capacity provisioned [MHZ]` / `CPU cores`); memory used = `Memory usage [KB]`.
//! A row is *malformed* (counted, the first few kept as examples, skipped) when its field
//! count differs from the header's, a needed field is not a finite number >= 0, or its
//! timestamp does not move forward. A row with 0 cores, capacity or memory is the VM
//! before it existed (the README mentions these) and is counted as *unprovisioned*.
//! A file whose header lacks a needed column, that is empty, not text, or not valid gzip
//! is refused with the reason.
//!
//! What it is not: the policies or the metrics (`replay`).

use std::io::Read;
use std::path::Path;

use super::ReplayError;

/// One usable row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_s: i64,
    /// Cores in use.
    pub cpu_cores: f64,
    /// GiB in use.
    pub memory_gib: f64,
    /// Cores provisioned.
    pub prov_cores: f64,
    /// GiB provisioned.
    pub prov_memory_gib: f64,
}

/// What reading one file found besides the samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileStats {
    pub rows: u64,
    pub malformed: u64,
    pub unprovisioned: u64,
    /// The first few malformed rows: "path:line: reason".
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 3;
const KIB_PER_GIB: f64 = 1024.0 * 1024.0;

/// The header columns the replay reads, in the order `parse_bytes` unpacks them.
pub const NEEDED: [&str; 6] = [
    "Timestamp [ms]",
    "CPU cores",
    "CPU capacity provisioned [MHZ]",
    "CPU usage [MHZ]",
    "Memory capacity provisioned [KB]",
    "Memory usage [KB]",
];

/// Reads a whole file, inflating it if it starts with the gzip magic.
fn read_all(path: &Path) -> Result<Vec<u8>, ReplayError> {
    let raw = std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 10);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| ReplayError::NotBitbrains {
                path: path.display().to_string(),
                reason: format!("gzip data is corrupt: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn fields(line: &str) -> impl Iterator<Item = &str> {
    line.split(';').map(str::trim)
}

/// Parses one file.
pub fn parse(path: &Path) -> Result<(Vec<Sample>, FileStats), ReplayError> {
    let bytes = read_all(path)?;
    parse_bytes(&bytes, &path.display().to_string())
}

/// Parses file content; `origin` names it in errors and examples.
pub fn parse_bytes(bytes: &[u8], origin: &str) -> Result<(Vec<Sample>, FileStats), ReplayError> {
    let refuse = |reason: String| ReplayError::NotBitbrains {
        path: origin.to_owned(),
        reason,
    };
    let mut lines = bytes.split(|b| *b == b'\n');
    let header = lines
        .next()
        .filter(|h| !h.iter().all(u8::is_ascii_whitespace))
        .ok_or_else(|| refuse("the file is empty".into()))?;
    let header = std::str::from_utf8(header)
        .map_err(|_| refuse("the first line is not text (not a CSV file)".into()))?;
    let names: Vec<&str> = fields(header).collect();
    let mut cols = [0usize; 6];
    for (k, want) in NEEDED.iter().enumerate() {
        cols[k] = names.iter().position(|n| n == want).ok_or_else(|| {
            refuse(format!(
                "the header has no column {want:?} (is this a GWA-T-12 Bitbrains per-VM file? header: {:?})",
                header.chars().take(120).collect::<String>()
            ))
        })?;
    }
    let width = names.len();
    let mut stats = FileStats::default();
    let mut out = Vec::with_capacity(bytes.len() / 128);
    let mut last_t = i64::MIN;
    let mut vals = [0f64; 6];
    for (no, line) in lines.enumerate() {
        let line_no = no + 2;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        stats.rows += 1;
        let bad = |reason: String, stats: &mut FileStats| {
            stats.malformed += 1;
            if stats.examples.len() < MAX_EXAMPLES {
                stats.examples.push(format!("{origin}:{line_no}: {reason}"));
            }
        };
        let Ok(line) = std::str::from_utf8(line) else {
            bad("not text".into(), &mut stats);
            continue;
        };
        let mut n = 0;
        let mut err = None;
        for (i, f) in fields(line).enumerate() {
            n += 1;
            if let Some(k) = cols.iter().position(|c| *c == i) {
                match f.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => vals[k] = v,
                    _ => {
                        err.get_or_insert_with(|| {
                            format!("{:?} = {f:?} is not a number >= 0", NEEDED[k])
                        });
                    }
                }
            }
        }
        if n != width {
            bad(format!("{n} fields, the header has {width}"), &mut stats);
            continue;
        }
        if let Some(e) = err {
            bad(e, &mut stats);
            continue;
        }
        let [ts, cores, cap, usage, mem_prov, mem_used] = vals;
        let t_s = if ts > 1e11 { ts / 1000.0 } else { ts } as i64;
        if t_s <= last_t {
            bad(
                format!("timestamp {t_s} does not move forward (previous {last_t})"),
                &mut stats,
            );
            continue;
        }
        if cores <= 0.0 || cap <= 0.0 || mem_prov <= 0.0 {
            stats.unprovisioned += 1;
            continue;
        }
        last_t = t_s;
        out.push(Sample {
            t_s,
            cpu_cores: usage / (cap / cores),
            memory_gib: mem_used / KIB_PER_GIB,
            prov_cores: cores,
            prov_memory_gib: mem_prov / KIB_PER_GIB,
        });
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\tMemory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\tDisk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]\n";

    #[test]
    fn parses_rows_and_counts_bad_ones() {
        let text = format!(
            "{HEAD}1372629804;\t2;\t5851.9989;\t2925.99945;\t50.0;\t8218624.0;\t1048576.0;\t0;\t0;\t0;\t0\n\
             1372630104;\t0;\t0;\t0;\t0;\t0;\t0;\t0;\t0;\t0;\t0\n\
             1372630404;\t2;\t5851.9989;\tabc;\t0;\t8218624.0;\t1.0;\t0;\t0;\t0;\t0\n\
             1372630704;\t2;\t5851.9989;\t1.0\n\
             1372630404;\t2;\t5851.9989;\t1.0;\t0;\t8218624.0;\t1.0;\t0;\t0;\t0;\t0\n\
             \n\
             1372631004;\t2;\t5851.9989;\t5851.9989;\t100;\t8218624.0;\t2097152.0;\t0;\t0;\t0;\t0\n"
        );
        let (s, st) = parse_bytes(text.as_bytes(), "t.csv").expect("parses");
        assert_eq!(s.len(), 3, "{s:?}");
        assert!((s[0].cpu_cores - 1.0).abs() < 1e-9);
        assert!((s[0].memory_gib - 1.0).abs() < 1e-9);
        assert!((s[0].prov_memory_gib - 7.837).abs() < 1e-3);
        assert!((s[2].cpu_cores - 2.0).abs() < 1e-9);
        assert_eq!(st.rows, 6);
        assert_eq!(st.unprovisioned, 1);
        assert_eq!(st.malformed, 2);
        assert!(st.examples[0].starts_with("t.csv:4:"), "{:?}", st.examples);
        assert!(st.examples[1].contains("4 fields"), "{:?}", st.examples);
    }

    #[test]
    fn refuses_other_files() {
        for (text, why) in [
            ("", "empty"),
            ("a,b,c\n1,2,3\n", "no column"),
            ("\u{0}\u{1}\u{2}\n", "no column"),
        ] {
            let e = parse_bytes(text.as_bytes(), "x.csv").expect_err(text);
            assert!(
                e.to_string().contains("x.csv") && e.to_string().contains(why),
                "{e}"
            );
        }
        let e = parse_bytes(&[0xff, 0xfe, b'\n'], "y.csv").expect_err("binary");
        assert!(e.to_string().contains("not text"), "{e}");
    }
}
