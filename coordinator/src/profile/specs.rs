//! Explicit specifications in a free-text request: "16 vCPUs", "16c/32t", "64 GB RAM",
//! "2 TB NVMe", "an RTX 4090", "2x A100", "a Xeon with 32 cores", "10 Gbps". They become
//! hard floors on sizing that override what the persona distribution suggests.
//!
//! What it is for: a small, predictable scanner (no model) over a tokenised description.
//! A number counts as a spec only when a unit *and* a resource word say what it is, so
//! "python 3.11", "a 7B model" or "PostgreSQL 16" are not specs, and "80 GB of data" is a
//! data size (reported as `data_gb`, used for storage when `--data-gb` is absent), not RAM.
//!
//! Decisions (documented in the README):
//! - vCPUs are hardware threads (each cloud vCPU is one thread). "16c/32t" therefore means
//!   32 vCPUs. A bare "32 cores" means 32 vCPUs: people read "cores" off `nproc`.
//! - Units are exact: GB/TB/MB are decimal (10^9, 10^12, 10^6 bytes) and converted to GiB;
//!   GiB/TiB/MiB are binary; a bare "G"/"gigs" (as in `-Xmx64g`, `free -g`) is GiB.
//! - When a resource is stated twice, the larger value wins (a floor must hold both).
//! - Implausible values (more than 1024 vCPUs, 32 TiB of RAM, 1 PiB of disk, 64 GPUs,
//!   1.6 Tbps) are dropped with a warning rather than turned into an impossible floor.
//!
//! What it is not: the persona classifier (that reads the same text with the burn model).

use serde::Serialize;

/// Hard constraints found in the text.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExplicitSpecs {
    pub vcpus: Option<u32>,
    pub memory_gib: Option<f64>,
    pub storage_gib: Option<f64>,
    /// "nvme", "ssd" or "hdd" when the text says which.
    pub storage_class: Option<String>,
    pub gpu_model: Option<String>,
    pub gpu_count: Option<u32>,
    /// Per-GPU memory, when stated next to the model ("A100 80GB").
    pub gpu_memory_gib: Option<f64>,
    pub network_mbps: Option<f64>,
    /// A data size mentioned in the text ("80 GB of data"), in GB. Not a hard constraint.
    pub data_gb: Option<f64>,
    /// The fragments that were recognised, in order, for the reader.
    pub matched: Vec<String>,
    /// Values dropped as implausible.
    pub warnings: Vec<String>,
}

impl ExplicitSpecs {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.vcpus.is_none()
            && self.memory_gib.is_none()
            && self.storage_gib.is_none()
            && self.gpu_model.is_none()
            && self.gpu_count.is_none()
            && self.network_mbps.is_none()
    }
}

const GIB: f64 = 1073741824.0;

/// GPU models recognised, with the name reported and the memory of the common variant
/// (GiB; vendors' data sheets), used to match a catalogue GPU when the model itself is not
/// offered.
pub const GPU_MODELS: [(&str, &str, f64); 22] = [
    ("a100", "A100", 40.0),
    ("h100", "H100", 80.0),
    ("h200", "H200", 141.0),
    ("b200", "B200", 192.0),
    ("a10g", "A10G", 24.0),
    ("a10", "A10", 24.0),
    ("a40", "A40", 48.0),
    ("l4", "L4", 24.0),
    ("l40", "L40", 48.0),
    ("l40s", "L40S", 48.0),
    ("t4", "T4", 16.0),
    ("v100", "V100", 16.0),
    ("a6000", "RTX A6000", 48.0),
    ("a5000", "RTX A5000", 24.0),
    ("a4000", "RTX A4000", 16.0),
    ("5090", "RTX 5090", 32.0),
    ("4090", "RTX 4090", 24.0),
    ("4080", "RTX 4080", 16.0),
    ("4070", "RTX 4070", 12.0),
    ("3090", "RTX 3090", 24.0),
    ("3080", "RTX 3080", 10.0),
    ("3060", "RTX 3060", 12.0),
];

/// Memory (GiB) of a known GPU model name as reported by [`extract`].
pub fn gpu_memory_of(model: &str) -> Option<f64> {
    GPU_MODELS
        .iter()
        .find(|(_, name, _)| name.eq_ignore_ascii_case(model))
        .map(|(_, _, m)| *m)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Word(String),
    Sym(char),
}

/// Splits on anything that is not a letter, digit or '.', and at digit->letter boundaries
/// ("64GB" -> 64, gb; "2x" -> 2, x) but not letter->digit ones ("a100", "rtx4090" stay).
fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && i + 1 < chars.len() && chars[i + 1].is_ascii_digit()))
            {
                i += 1;
            }
            let s: String = chars[start..i].iter().collect();
            // A digit run glued to letters that start a model name ("4090ti") stays a number.
            match s.parse::<f64>() {
                Ok(v) => out.push(Tok::Num(v)),
                Err(_) => out.push(Tok::Word(s)),
            }
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric()) {
                i += 1;
            }
            let w = chars[start..i].iter().collect::<String>().to_lowercase();
            // "2x A100": a lone x is the multiplication sign.
            out.push(if w == "x" {
                Tok::Sym('x')
            } else {
                Tok::Word(w)
            });
        } else {
            if matches!(c, '/' | 'x' | '×' | '-' | ':' | '=') {
                out.push(Tok::Sym(if c == '×' { 'x' } else { c }));
            }
            i += 1;
        }
    }
    out
}

fn word(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    }
}

const CPU_WORDS: [&str; 12] = [
    "vcpu",
    "vcpus",
    "cpu",
    "cpus",
    "core",
    "cores",
    "thread",
    "threads",
    "vcore",
    "vcores",
    "hyperthreads",
    "hts",
];
const MEM_WORDS: [&str; 3] = ["ram", "memory", "mem"];
const DISK_WORDS: [&str; 13] = [
    "nvme", "ssd", "ssds", "hdd", "hdds", "disk", "disks", "storage", "drive", "drives", "volume",
    "ebs", "sata",
];
const DATA_WORDS: [&str; 10] = [
    "data", "dataset", "datasets", "corpus", "files", "logs", "images", "videos", "parquet", "csv",
];
const FILLER: [&str; 8] = ["of", "ddr4", "ddr5", "ecc", "fast", "local", "the", "total"];

/// Bytes per unit for a size unit word; `None` if the word is not a size unit.
fn size_unit(w: &str) -> Option<f64> {
    Some(match w {
        "mb" | "megabytes" => 1e6,
        "mib" => 1048576.0,
        "gb" | "gigabytes" => 1e9,
        "gib" | "g" | "gig" | "gigs" => GIB,
        "tb" | "terabytes" => 1e12,
        "tib" => GIB * 1024.0,
        "pb" | "petabytes" => 1e15,
        "pib" => GIB * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// Mbit/s per unit for a network unit word.
fn net_unit(w: &str) -> Option<f64> {
    Some(match w {
        "gbps" | "gbit" | "gbits" | "gbe" | "gigabit" | "gb/s" => 1000.0,
        "mbps" | "mbit" | "mbits" | "megabit" => 1.0,
        "tbps" | "tbit" => 1_000_000.0,
        _ => return None,
    })
}

fn small_count(w: &str) -> Option<u32> {
    Some(match w {
        "a" | "an" | "one" | "single" => 1,
        "two" | "dual" | "pair" => 2,
        "three" => 3,
        "four" | "quad" => 4,
        "eight" => 8,
        _ => return None,
    })
}

/// Finds a GPU model at token `i`: returns (reported name, tokens consumed).
fn gpu_at(toks: &[Tok], i: usize) -> Option<(&'static str, usize)> {
    let lookup = |w: &str| {
        GPU_MODELS
            .iter()
            .find(|(k, _, _)| *k == w)
            .or_else(|| {
                w.strip_suffix('s')
                    .and_then(|s| GPU_MODELS.iter().find(|(k, _, _)| *k == s))
            })
            .map(|(_, name, _)| *name)
    };
    match toks.get(i)? {
        Tok::Word(w) if matches!(w.as_str(), "rtx" | "geforce" | "quadro" | "nvidia") => {
            // "rtx 4090", "geforce rtx 4090", "nvidia a100"
            match toks.get(i + 1)? {
                Tok::Num(n) => {
                    let s = format!("{}", *n as u64);
                    lookup(&s).map(|m| (m, 2))
                }
                Tok::Word(_) => gpu_at(toks, i + 1).map(|(m, k)| (m, k + 1)),
                Tok::Sym(_) => None,
            }
        }
        Tok::Word(w) => {
            let (w, rtx) = match w.strip_prefix("rtx") {
                Some(rest) => (rest, true),
                None => (w.as_str(), false),
            };
            // Bare 4-digit names ("4090") are only GPUs after "rtx"/"a"/"an"/a count.
            if !rtx && w.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            lookup(w).map(|m| (m, 1))
        }
        Tok::Num(n) => {
            let prev = word(i.checked_sub(1).and_then(|j| toks.get(j)));
            let after_count = matches!(
                i.checked_sub(1).and_then(|j| toks.get(j)),
                Some(Tok::Sym('x'))
            );
            if *n >= 1000.0
                && (matches!(prev, Some("a" | "an" | "rtx" | "dual" | "two" | "four"))
                    || after_count)
            {
                lookup(&format!("{}", *n as u64)).map(|m| (m, 1))
            } else {
                None
            }
        }
        Tok::Sym(_) => None,
    }
}

/// Scans `text` for explicit specifications.
pub fn extract(text: &str) -> ExplicitSpecs {
    let toks = tokenize(text);
    let mut s = ExplicitSpecs::default();
    let max_opt = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.map_or(v, |o: f64| o.max(v)));
    let mut i = 0;
    while i < toks.len() {
        // GPUs first: "2x A100", "2 A100s", "an RTX 4090", "A100 80GB".
        if let Some((model, used)) = gpu_at(&toks, i) {
            let count = match (
                i.checked_sub(1).and_then(|j| toks.get(j)),
                i.checked_sub(2).and_then(|j| toks.get(j)),
            ) {
                (Some(Tok::Sym('x')), Some(Tok::Num(n))) => Some(*n),
                (Some(Tok::Num(n)), _) if *n < 1000.0 => Some(*n),
                (Some(Tok::Word(w)), _) => small_count(w).map(f64::from),
                _ => None,
            }
            .unwrap_or(1.0);
            if (1.0..=64.0).contains(&count) && count.fract() == 0.0 {
                let c = count as u32;
                s.gpu_count = Some(s.gpu_count.map_or(c, |o| o.max(c)));
                s.gpu_model = Some(model.to_owned());
                s.matched.push(format!("{c}x {model}"));
            } else {
                s.warnings
                    .push(format!("{count} GPUs is not plausible; ignored"));
            }
            // "A100 80GB" / "A100 (80 GB)": memory of this GPU.
            // ...unless the size is followed by what it is the size of ("an RTX 4090, 64 GB
            // RAM": commas are not tokens, so look at the word after the unit).
            let what = word(toks.get(i + used + 2));
            let other = what.is_some_and(|w| {
                MEM_WORDS.contains(&w) || DISK_WORDS.contains(&w) || DATA_WORDS.contains(&w)
            });
            if let (Some(Tok::Num(n)), Some(u), false) = (
                toks.get(i + used),
                word(toks.get(i + used + 1)).and_then(size_unit),
                other,
            ) {
                let gib = n * u / GIB;
                if gib > 0.0 && gib <= 1024.0 {
                    s.gpu_memory_gib = Some(gib);
                    s.matched.push(format!("{model} {gib:.0} GiB"));
                }
                i += used + 2;
                continue;
            }
            i += used;
            continue;
        }
        let Tok::Num(n) = toks[i] else {
            // "cores: 16", "RAM: 64GB" are handled from the number's side below.
            i += 1;
            continue;
        };
        let next = word(toks.get(i + 1));
        // "16c/32t": threads are vCPUs.
        if next == Some("c")
            && toks.get(i + 2) == Some(&Tok::Sym('/'))
            && word(toks.get(i + 4)) == Some("t")
            && let Some(Tok::Num(t)) = toks.get(i + 3)
        {
            set_vcpus(&mut s, *t, &format!("{n}c/{t}t"));
            i += 5;
            continue;
        }
        // Skip a hyphen: "8-core", "64-GB".
        let (unit_at, unit) = match (toks.get(i + 1), word(toks.get(i + 2))) {
            (Some(Tok::Sym('-')), Some(w)) => (i + 2, Some(w)),
            _ => (i + 1, next),
        };
        let Some(unit) = unit else {
            // "vcpus: 16" / "cores = 8"
            let before = (1..=2)
                .filter_map(|k| i.checked_sub(k).and_then(|j| toks.get(j)))
                .find_map(|t| word(Some(t)));
            if let Some(w) = before
                && CPU_WORDS.contains(&w)
            {
                set_vcpus(&mut s, n, &format!("{w}: {n}"));
            }
            i += 1;
            continue;
        };
        if CPU_WORDS.contains(&unit) {
            set_vcpus(&mut s, n, &format!("{n} {unit}"));
            i = unit_at + 1;
            continue;
        }
        if let Some(mbps) = net_unit(unit) {
            let v = n * mbps;
            if v > 0.0 && v <= 1_600_000.0 {
                max_opt(&mut s.network_mbps, v);
                s.matched.push(format!("{n} {unit}"));
            } else {
                s.warnings.push(format!(
                    "{n} {unit} is not a plausible network speed; ignored"
                ));
            }
            i = unit_at + 1;
            continue;
        }
        if let Some(bytes) = size_unit(unit) {
            let gib = n * bytes / GIB;
            // What is it the size of? Look ahead over filler words, then behind.
            let mut j = unit_at + 1;
            while word(toks.get(j)).is_some_and(|w| FILLER.contains(&w)) {
                j += 1;
            }
            let after = word(toks.get(j));
            let before = (1..=3)
                .filter_map(|k| i.checked_sub(k).and_then(|j| toks.get(j)))
                .find_map(|t| word(Some(t)));
            let frag = format!("{n} {unit}");
            if after.is_some_and(|w| MEM_WORDS.contains(&w))
                || (after.is_none_or(|w| !DISK_WORDS.contains(&w) && !DATA_WORDS.contains(&w))
                    && before.is_some_and(|w| MEM_WORDS.contains(&w)))
            {
                if gib > 0.0 && gib <= 32768.0 {
                    max_opt(&mut s.memory_gib, gib);
                    s.matched.push(format!("{frag} memory"));
                } else {
                    s.warnings
                        .push(format!("{frag} of memory is not plausible; ignored"));
                }
            } else if let Some(w) = after
                .filter(|w| DISK_WORDS.contains(w))
                .or(before.filter(|w| DISK_WORDS.contains(w)))
            {
                if gib > 0.0 && gib <= 1_048_576.0 {
                    max_opt(&mut s.storage_gib, gib);
                    let class = match w {
                        "nvme" => Some("nvme"),
                        "ssd" | "ssds" | "ebs" => Some("ssd"),
                        "hdd" | "hdds" | "sata" => Some("hdd"),
                        _ => None,
                    };
                    if let Some(c) = class {
                        // The best class mentioned wins ("SSD ... 2 TB NVMe" -> nvme).
                        let rank = |c: &str| {
                            crate::profile::personas::STORAGE_CLASSES
                                .iter()
                                .position(|k| *k == c)
                        };
                        if s.storage_class.as_deref().and_then(rank) < rank(c) {
                            s.storage_class = Some(c.to_owned());
                        }
                    }
                    s.matched.push(format!("{frag} {w}"));
                } else {
                    s.warnings
                        .push(format!("{frag} of storage is not plausible; ignored"));
                }
            } else if after.is_some_and(|w| DATA_WORDS.contains(&w)) {
                let gb = n * bytes / 1e9;
                if gb > 0.0 {
                    max_opt(&mut s.data_gb, gb);
                    s.matched.push(format!("{frag} data"));
                }
            }
            i = unit_at + 1;
            continue;
        }
        i += 1;
    }
    s
}

fn set_vcpus(s: &mut ExplicitSpecs, n: f64, frag: &str) {
    if (1.0..=1024.0).contains(&n) && n.fract() == 0.0 {
        let v = n as u32;
        s.vcpus = Some(s.vcpus.map_or(v, |o| o.max(v)));
        s.matched.push(frag.to_owned());
    } else {
        s.warnings
            .push(format!("{frag}: not a plausible vCPU count; ignored"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(extract("16 vCPUs please").vcpus, Some(16));
        assert_eq!(extract("32 cores").vcpus, Some(32));
        assert_eq!(extract("a Xeon with 32 cores").vcpus, Some(32));
        assert_eq!(extract("an 8-core box").vcpus, Some(8));
        assert_eq!(extract("vcpus: 12").vcpus, Some(12));
        // Threads are vCPUs.
        assert_eq!(extract("Ryzen 9, 16c/32t").vcpus, Some(32));
        assert_eq!(extract("4 vcpu and later 8 vCPUs").vcpus, Some(8));
    }

    #[test]
    fn memory_units_are_exact() {
        assert!(close(extract("64 GB RAM").memory_gib, 64e9 / GIB));
        assert!(close(extract("64GiB memory").memory_gib, 64.0));
        assert!(close(extract("128 GB of RAM").memory_gib, 128e9 / GIB));
        assert!(close(extract("RAM: 32GB").memory_gib, 32e9 / GIB));
        assert!(close(extract("1 TiB of memory").memory_gib, 1024.0));
        assert!(close(extract("1 TB RAM").memory_gib, 1e12 / GIB));
        assert!(close(extract("-Xmx 64g ram").memory_gib, 64.0));
        assert!(close(extract("512 MiB memory").memory_gib, 0.5));
    }

    #[test]
    fn storage_units_and_classes() {
        let s = extract("2 TB NVMe");
        assert!(close(s.storage_gib, 2e12 / GIB));
        assert_eq!(s.storage_class.as_deref(), Some("nvme"));
        let s = extract("500GB SSD");
        assert!(close(s.storage_gib, 500e9 / GIB));
        assert_eq!(s.storage_class.as_deref(), Some("ssd"));
        let s = extract("4 TiB of disk");
        assert!(close(s.storage_gib, 4096.0));
        assert_eq!(s.storage_class, None);
        assert_eq!(extract("10 TB HDD").storage_class.as_deref(), Some("hdd"));
    }

    #[test]
    fn gpus() {
        let s = extract("an RTX 4090");
        assert_eq!(
            (s.gpu_model.as_deref(), s.gpu_count),
            (Some("RTX 4090"), Some(1))
        );
        let s = extract("2x A100");
        assert_eq!(
            (s.gpu_model.as_deref(), s.gpu_count),
            (Some("A100"), Some(2))
        );
        let s = extract("4 H100s");
        assert_eq!(
            (s.gpu_model.as_deref(), s.gpu_count),
            (Some("H100"), Some(4))
        );
        let s = extract("two L4 GPUs");
        assert_eq!((s.gpu_model.as_deref(), s.gpu_count), (Some("L4"), Some(2)));
        let s = extract("a 4090 for rendering");
        assert_eq!(s.gpu_model.as_deref(), Some("RTX 4090"));
        let s = extract("8x A100 80GB");
        assert_eq!(s.gpu_count, Some(8));
        assert!(close(s.gpu_memory_gib, 80e9 / GIB));
        assert_eq!(s.memory_gib, None, "GPU memory is not RAM");
        assert_eq!(extract("rtx4090").gpu_model.as_deref(), Some("RTX 4090"));
        let s = extract("an RTX 4090, 64 GB RAM");
        assert_eq!(s.gpu_memory_gib, None);
        assert!(close(s.memory_gib, 64e9 / GIB));
    }

    #[test]
    fn network() {
        assert!(close(extract("10 Gbps uplink").network_mbps, 10_000.0));
        assert!(close(extract("25GbE").network_mbps, 25_000.0));
        assert!(close(extract("100 Mbps").network_mbps, 100.0));
    }

    #[test]
    fn things_that_are_not_specs() {
        let s = extract("python 3.11 and PostgreSQL 16, fine-tuning a 7B model");
        assert!(s.is_empty(), "{s:?}");
        let s = extract("fine-tune with 80 GB of data");
        assert!(s.is_empty(), "{s:?}");
        assert!(close(s.data_gb, 80.0));
        let s = extract("a 2 TB dataset");
        assert_eq!(s.storage_gib, None);
        assert!(close(s.data_gb, 2000.0));
        assert!(extract("we have 3 developers and 2 teams").is_empty());
        assert!(extract("").is_empty());
    }

    #[test]
    fn implausible_values_are_dropped() {
        let s = extract("100000 vCPUs and 99999 TB RAM");
        assert_eq!(s.vcpus, None);
        assert_eq!(s.memory_gib, None);
        assert_eq!(s.warnings.len(), 2);
    }

    #[test]
    fn full_sentence() {
        let s = extract(
            "Need a box with 16 vCPUs, 64 GB RAM, 2 TB NVMe and an RTX 4090, 10 Gbps, for 80 GB of data",
        );
        assert_eq!(s.vcpus, Some(16));
        assert!(close(s.memory_gib, 64e9 / GIB));
        assert!(close(s.storage_gib, 2e12 / GIB));
        assert_eq!(s.storage_class.as_deref(), Some("nvme"));
        assert_eq!(s.gpu_model.as_deref(), Some("RTX 4090"));
        assert!(close(s.network_mbps, 10_000.0));
        assert!(close(s.data_gb, 80.0));
    }
}
