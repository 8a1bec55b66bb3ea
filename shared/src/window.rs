//! Window features: the fixed-length vector that describes how a machine behaved over
//! the last few minutes (5 by default), the input of the behavioural-mirroring model.
//!
//! One definition for both sides. The agent feeds every sample it takes
//! ([`Window::push_sample`]) and the process list of every batch it seals
//! ([`Window::set_procs`]); the coordinator replays stored or received batches
//! ([`Window::push_batch`]). Both paths reduce a sample to the same [`Point`] of integer
//! quanta, *after* the codec's quantisation ([`crate::codec::quantise`]), so the agent
//! sees exactly the numbers the coordinator decodes. Every running sum is kept in exact
//! integer arithmetic, so the features depend only on which points are in the window,
//! never on the order of additions or on how long the window has been running: the
//! coordinator can rebuild an agent's vector from any stored stretch of batches.
//!
//! Incremental, no rescan per tick: a ring buffer of points (capacity fixed at
//! construction: the window at the fastest sampling interval, 100 ms), per channel running
//! counts and sums (sum of squares for the four resources), and for each resource
//! (CPU, memory, disk, network) a 64-bucket histogram whose counts go up on push and down
//! on eviction. p50/p95 are read from the histogram (O(64), bucket resolution: 1/64 of
//! capacity for ratios, half an octave for rates, which is finer than the differences
//! between personas), max comes from a monotonic deque (exact, amortised O(1)),
//! periodicity from running lagged products of the CPU series at a few fixed lags.
//! Pushing a sample does not allocate.
//!
//! What it is not: the model (persona-models), the collector (agent) or storage.

use crate::batch::BatchError;
use crate::codec::{self, CodecError};
use crate::metrics::{self, disk, host, nic};
use crate::protocol::{Batch, WireProc};
use crate::sample::Sample;

/// Default window length.
pub const DEFAULT_WINDOW_MS: i64 = 300_000;
/// Shortest and longest window accepted.
pub const WINDOW_MS_RANGE: std::ops::RangeInclusive<i64> = 10_000..=3_600_000;
/// The fastest sampling interval the agent allows; sizes the ring buffer.
pub const MIN_SAMPLE_INTERVAL_MS: i64 = 100;
/// Buckets of the hashed process-name bag. Each name goes into two buckets (two mixes
/// of one hash), so two names rarely share both and a background daemon seldom masks a
/// workload's process.
pub const PROC_BUCKETS: usize = 256;
/// Length of the feature vector.
pub const FEATURE_DIM: usize = 46 + PROC_BUCKETS;
/// A CPU sample below this share of capacity (in 1e-4) counts as idle.
const IDLE_BELOW: i64 = 500;
/// Lags (in samples) of the periodicity estimate, paired as (L, L/2).
const LAGS: [usize; 7] = [5, 10, 15, 20, 30, 60, 120];
const LAG_PAIRS: [(usize, usize); 5] = [(1, 0), (3, 1), (4, 2), (5, 4), (6, 5)];
/// Histogram buckets per resource.
const BUCKETS: usize = 64;
/// A missing value in a [`Point`].
const MISSING: i64 = i64::MIN;

/// Channels of a [`Point`], each an integer number of the unit in its comment.
pub mod ch {
    /// user + nice + system + irq + softirq, 1e-4 of capacity.
    pub const CPU_BUSY: usize = 0;
    /// user + nice, 1e-4.
    pub const CPU_USER: usize = 1;
    /// system + irq + softirq, 1e-4.
    pub const CPU_SYSTEM: usize = 2;
    pub const CPU_IOWAIT: usize = 3;
    pub const CPU_STEAL: usize = 4;
    /// Online vCPUs.
    pub const CPU_ONLINE: usize = 5;
    /// MemTotal - MemAvailable over MemTotal, 1e-4.
    pub const MEM_RATIO: usize = 6;
    /// Memory used, MB.
    pub const MEM_MB: usize = 7;
    /// Disk bytes per second, kB/s (whole disks).
    pub const DISK_READ: usize = 8;
    pub const DISK_WRITE: usize = 9;
    /// Completed requests per second, 0.1/s.
    pub const DISK_READ_IOPS: usize = 10;
    pub const DISK_WRITE_IOPS: usize = 11;
    /// Network bytes per second without loopback, kB/s.
    pub const NET_RX: usize = 12;
    pub const NET_TX: usize = 13;
    /// Packets per second, rx + tx, without loopback.
    pub const NET_PKTS: usize = 14;
    /// Loopback bytes received per second, kB/s.
    pub const LO: usize = 15;
    /// PSI "some" stall share over the tick, 1e-4.
    pub const PSI_CPU: usize = 16;
    pub const PSI_MEM: usize = 17;
    pub const PSI_IO: usize = 18;
    /// Context switches per second.
    pub const CTXT: usize = 19;
    /// Runnable tasks.
    pub const RUNNING: usize = 20;
    /// Major faults per second.
    pub const MAJFLT: usize = 21;
    /// DISK_READ + DISK_WRITE.
    pub const DISK: usize = 22;
    /// NET_RX + NET_TX.
    pub const NET: usize = 23;
    pub const COUNT: usize = 24;
}

/// The resources with full statistics, in feature order.
const RESOURCES: [usize; 4] = [ch::CPU_BUSY, ch::MEM_RATIO, ch::DISK, ch::NET];

/// One sample reduced to what the window needs: integer quanta per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub ts_ms: i64,
    v: [i64; ch::COUNT],
}

impl Default for Point {
    fn default() -> Self {
        Self {
            ts_ms: 0,
            v: [MISSING; ch::COUNT],
        }
    }
}

/// The registry values a point is made of, in this order.
#[derive(Debug, Clone, Copy)]
enum Src {
    Host(usize),
    DiskTotal(usize),
    NicTotal(usize),
    Lo(usize),
}

const SOURCES: [Src; 24] = [
    Src::Host(host::CPU_USER_RATIO),
    Src::Host(host::CPU_NICE_RATIO),
    Src::Host(host::CPU_SYSTEM_RATIO),
    Src::Host(host::CPU_IOWAIT_RATIO),
    Src::Host(host::CPU_IRQ_RATIO),
    Src::Host(host::CPU_SOFTIRQ_RATIO),
    Src::Host(host::CPU_STEAL_RATIO),
    Src::Host(host::CPU_ONLINE),
    Src::Host(host::PROCS_RUNNING),
    Src::Host(host::CTXT_PER_S),
    Src::Host(host::MEM_TOTAL),
    Src::Host(host::MEM_USED),
    Src::Host(host::MEM_MAJFLT_PER_S),
    Src::Host(host::PSI_CPU + 2),
    Src::Host(host::PSI_MEMORY + 2),
    Src::Host(host::PSI_IO + 2),
    Src::DiskTotal(disk::READ_BYTES_PER_S),
    Src::DiskTotal(disk::WRITE_BYTES_PER_S),
    Src::DiskTotal(disk::READ_IOPS),
    Src::DiskTotal(disk::WRITE_IOPS),
    Src::NicTotal(nic::RX_BYTES_PER_S),
    Src::NicTotal(nic::TX_BYTES_PER_S),
    Src::NicTotal(nic::RX_PACKETS_PER_S),
    Src::Lo(nic::RX_BYTES_PER_S),
];
/// Index of the tx packets source, kept apart so the table above stays 24 long.
const TX_PKTS: usize = nic::TX_PACKETS_PER_S;

fn scale_of(src: Src) -> i8 {
    match src {
        Src::Host(i) => metrics::HOST[i].scale,
        Src::DiskTotal(i) => metrics::DISK[i].scale,
        Src::NicTotal(i) | Src::Lo(i) => metrics::NIC[i].scale,
    }
}

/// The codec's integer quanta of `v` at `scale`, or None for NaN and the like.
fn quanta(v: f64, scale: i8) -> Option<i64> {
    let q = codec::quantise(v, scale);
    if !q.is_finite() {
        return None;
    }
    let x = if scale < 0 {
        q * 10f64.powi(-i32::from(scale))
    } else {
        q / 10f64.powi(i32::from(scale))
    };
    let r = x.round();
    (r.abs() < 9.0e15).then_some(r as i64)
}

impl Point {
    /// Builds a point from raw registry values (`raw[i]` for `SOURCES[i]`, `tx_pkts` for
    /// the nic total's tx packets). Both sides come through here.
    fn from_raw(ts_ms: i64, raw: &[f64; 24], tx_pkts: f64) -> Point {
        let mut q = [None; 24];
        for (i, (src, v)) in SOURCES.iter().zip(raw.iter()).enumerate() {
            q[i] = quanta(*v, scale_of(*src));
        }
        let txp = quanta(tx_pkts, metrics::NIC[TX_PKTS].scale);
        let g = |i: usize| q[i];
        let sum = |idx: &[usize]| -> Option<i64> {
            idx.iter()
                .try_fold(0i64, |a, &i| g(i).map(|x| a.saturating_add(x)))
        };
        let kb = |x: Option<i64>| x.map(|b| b.max(0) / 1000);
        let mut v = [MISSING; ch::COUNT];
        let mut set = |c: usize, x: Option<i64>| {
            if let Some(x) = x {
                v[c] = x;
            }
        };
        set(ch::CPU_BUSY, sum(&[0, 1, 2, 4, 5]));
        set(ch::CPU_USER, sum(&[0, 1]));
        set(ch::CPU_SYSTEM, sum(&[2, 4, 5]));
        set(ch::CPU_IOWAIT, g(3));
        set(ch::CPU_STEAL, g(6));
        set(ch::CPU_ONLINE, g(7));
        set(ch::RUNNING, g(8));
        set(ch::CTXT, g(9));
        // mem.* are in kB quanta (scale 3).
        let mem = match (g(10), g(11)) {
            (Some(t), Some(u)) if t > 0 => Some((u.clamp(0, t) * 10_000 / t, u.max(0) / 1000)),
            _ => None,
        };
        set(ch::MEM_RATIO, mem.map(|m| m.0));
        set(ch::MEM_MB, mem.map(|m| m.1));
        set(ch::MAJFLT, g(12));
        set(ch::PSI_CPU, g(13));
        set(ch::PSI_MEM, g(14));
        set(ch::PSI_IO, g(15));
        let (dr, dw) = (kb(g(16)), kb(g(17)));
        set(ch::DISK_READ, dr);
        set(ch::DISK_WRITE, dw);
        set(ch::DISK, dr.zip(dw).map(|(a, b)| a + b));
        set(ch::DISK_READ_IOPS, g(18));
        set(ch::DISK_WRITE_IOPS, g(19));
        let (rx, tx) = (kb(g(20)), kb(g(21)));
        set(ch::NET_RX, rx);
        set(ch::NET_TX, tx);
        set(ch::NET, rx.zip(tx).map(|(a, b)| a + b));
        set(ch::NET_PKTS, g(22).zip(txp).map(|(a, b)| a + b));
        set(ch::LO, kb(g(23)));
        Point { ts_ms, v }
    }

    /// The agent's path: a sample as collected.
    pub fn from_sample(s: &Sample) -> Point {
        let mut raw = [f64::NAN; 24];
        for (r, src) in raw.iter_mut().zip(SOURCES.iter()) {
            *r = match *src {
                Src::Host(i) => s.host[i],
                Src::DiskTotal(i) => s.disk_total[i],
                Src::NicTotal(i) => s.nic_total[i],
                Src::Lo(i) => s
                    .nics
                    .iter()
                    .find(|n| n.name == "lo")
                    .map_or(f64::NAN, |n| n.values[i]),
            };
        }
        Point::from_raw(s.ts_ms, &raw, s.nic_total[TX_PKTS])
    }

    /// Value of a channel (None when it was not available).
    pub fn get(&self, c: usize) -> Option<i64> {
        self.v.get(c).copied().filter(|&x| x != MISSING)
    }
}

/// Why a batch could not be replayed into a window.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("batch {seq}: {source}")]
    Batch {
        seq: u64,
        #[source]
        source: BatchError,
    },
    #[error("batch {seq}: metric {metric}: {source}")]
    Values {
        seq: u64,
        metric: u16,
        #[source]
        source: CodecError,
    },
    #[error("batch {seq}: timestamps: {source}")]
    Timestamps {
        seq: u64,
        #[source]
        source: CodecError,
    },
    #[error("batch {seq}: metric {metric} has {got} points for {want} timestamps")]
    PointCount {
        seq: u64,
        metric: u16,
        got: usize,
        want: usize,
    },
}

/// Most points one batch may carry when replayed (an hour at 100 ms).
pub const MAX_BATCH_POINTS: usize = 36_000;

/// The coordinator's path: decodes the series a window needs from a batch into points,
/// appended to `out` (oldest first). Series the batch lacks are missing values.
pub fn points_from_batch(batch: &Batch, out: &mut Vec<Point>) -> Result<(), WindowError> {
    let seq = batch.seq;
    let ts = codec::decode_timestamps(&batch.timestamps, MAX_BATCH_POINTS)
        .map_err(|source| WindowError::Timestamps { seq, source })?;
    let n = ts.len();
    let mut cols: [Option<Vec<f64>>; 25] = std::array::from_fn(|_| None);
    for s in batch.series() {
        let s = s.map_err(|source| WindowError::Batch { seq, source })?;
        let Some(def) = metrics::by_id(s.metric) else {
            continue;
        };
        let wanted = SOURCES
            .iter()
            .position(|src| match (*src, s.instance) {
                (Src::Host(i), None) => metrics::HOST[i].id == s.metric,
                (Src::DiskTotal(i), None) => metrics::DISK[i].id == s.metric,
                (Src::NicTotal(i), None) => metrics::NIC[i].id == s.metric,
                (Src::Lo(i), Some("lo")) => metrics::NIC[i].id == s.metric,
                _ => false,
            })
            .or_else(|| {
                (s.instance.is_none() && s.metric == metrics::NIC[TX_PKTS].id).then_some(24)
            });
        let Some(slot) = wanted else { continue };
        let v = codec::decode_values(s.block, def.scale, MAX_BATCH_POINTS).map_err(|source| {
            WindowError::Values {
                seq,
                metric: s.metric,
                source,
            }
        })?;
        if v.len() != n {
            return Err(WindowError::PointCount {
                seq,
                metric: s.metric,
                got: v.len(),
                want: n,
            });
        }
        cols[slot] = Some(v);
    }
    out.reserve(n);
    for (k, &t) in ts.iter().enumerate() {
        let mut raw = [f64::NAN; 24];
        for (r, c) in raw.iter_mut().zip(cols.iter()) {
            if let Some(c) = c {
                *r = c[k];
            }
        }
        let txp = cols[24].as_ref().map_or(f64::NAN, |c| c[k]);
        out.push(Point::from_raw(t, &raw, txp));
    }
    Ok(())
}

/// Settings of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Points older than the newest point minus this are evicted.
    pub window_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            window_ms: DEFAULT_WINDOW_MS,
        }
    }
}

impl WindowConfig {
    /// Points the ring holds: the window at the fastest sampling interval.
    pub fn capacity(&self) -> usize {
        let w = self
            .window_ms
            .clamp(*WINDOW_MS_RANGE.start(), *WINDOW_MS_RANGE.end());
        usize::try_from(w / MIN_SAMPLE_INTERVAL_MS).unwrap_or(36_000) + 1
    }
}

/// Running count and sums of one channel.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    n: i64,
    sum: i128,
    sumsq: i128,
}

impl Sums {
    fn add(&mut self, x: i64, sign: i64) {
        self.n += sign;
        let x = i128::from(x);
        self.sum += i128::from(sign) * x;
        self.sumsq += i128::from(sign) * x * x;
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    fn std(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        // n*sumsq - sum^2 is exact in i128 for any window this module accepts.
        let n = i128::from(self.n);
        let num = (n * self.sumsq - self.sum * self.sum).max(0);
        (num as f64).sqrt() / self.n as f64
    }
}

/// A histogram bucket for a resource value.
fn bucket(res: usize, q: i64) -> usize {
    if res < 2 {
        // Ratios in 1e-4: 64 equal buckets over 0..=10000.
        usize::try_from(q.clamp(0, 10_000) * 64 / 10_001).unwrap_or(0)
    } else if q <= 0 {
        0
    } else {
        // Rates: half-octave buckets from integer arithmetic only.
        let k = 63 - u64::from(q.unsigned_abs().leading_zeros());
        let half = if k >= 1 {
            (q.unsigned_abs() >> (k - 1)) & 1
        } else {
            0
        };
        usize::try_from(1 + 2 * k + half).unwrap_or(63).min(63)
    }
}

/// The value a bucket stands for (its middle), in the channel's unit.
fn bucket_value(res: usize, b: usize) -> f64 {
    if res < 2 {
        (b as f64 + 0.5) * 10_001.0 / 64.0
    } else if b == 0 {
        0.0
    } else {
        let k = ((b - 1) / 2) as i32;
        let half = (b - 1) % 2;
        let lo = 2f64.powi(k) * if half == 1 { 1.5 } else { 1.0 };
        let hi = 2f64.powi(k) * if half == 1 { 2.0 } else { 1.5 };
        (lo + hi) / 2.0
    }
}

/// The sliding window. See the module documentation.
#[derive(Debug, Clone)]
pub struct Window {
    cfg: WindowConfig,
    ring: Vec<Point>,
    /// Sequence number of the oldest point held and of the next one to push.
    first: u64,
    next: u64,
    sums: [Sums; ch::COUNT],
    hist: [[u32; BUCKETS]; 4],
    /// Monotonic deques (sequence numbers) of the resources' maxima.
    maxq: [Vec<u64>; 4],
    maxq_head: [usize; 4],
    idle: i64,
    lag_prod: [i128; LAGS.len()],
    lag_n: [i64; LAGS.len()],
    /// Sums of the older and of the newer member of each lag's pairs (exact covariance).
    lag_old: [i128; LAGS.len()],
    lag_new: [i128; LAGS.len()],
    bag: [f32; PROC_BUCKETS],
}

impl Window {
    /// An empty window; allocates its buffers once, here.
    pub fn new(cfg: WindowConfig) -> Window {
        let cap = cfg.capacity();
        Window {
            cfg,
            ring: vec![Point::default(); cap],
            first: 0,
            next: 0,
            sums: [Sums::default(); ch::COUNT],
            hist: [[0; BUCKETS]; 4],
            maxq: std::array::from_fn(|_| Vec::with_capacity(cap)),
            maxq_head: [0; 4],
            idle: 0,
            lag_prod: [0; LAGS.len()],
            lag_n: [0; LAGS.len()],
            lag_old: [0; LAGS.len()],
            lag_new: [0; LAGS.len()],
            bag: [0.0; PROC_BUCKETS],
        }
    }

    pub fn config(&self) -> WindowConfig {
        self.cfg
    }

    /// Points in the window.
    pub fn len(&self) -> usize {
        usize::try_from(self.next - self.first).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.first
    }

    /// Timestamp of the newest point.
    pub fn end_ms(&self) -> Option<i64> {
        (!self.is_empty()).then(|| self.at(self.next - 1).ts_ms)
    }

    fn at(&self, seq: u64) -> &Point {
        &self.ring[(seq % self.ring.len() as u64) as usize]
    }

    /// Forgets everything (keeps the buffers).
    pub fn clear(&mut self) {
        let cfg = self.cfg;
        self.first = 0;
        self.next = 0;
        self.sums = [Sums::default(); ch::COUNT];
        self.hist = [[0; BUCKETS]; 4];
        for q in &mut self.maxq {
            q.clear();
        }
        self.maxq_head = [0; 4];
        self.idle = 0;
        self.lag_prod = [0; LAGS.len()];
        self.lag_n = [0; LAGS.len()];
        self.lag_old = [0; LAGS.len()];
        self.lag_new = [0; LAGS.len()];
        self.bag = [0.0; PROC_BUCKETS];
        self.cfg = cfg;
    }

    /// The agent's path: adds a sample (quantised as the codec would).
    pub fn push_sample(&mut self, s: &Sample) {
        self.push(Point::from_sample(s));
    }

    /// The coordinator's path: replays a batch, its points then its process list.
    pub fn push_batch(
        &mut self,
        batch: &Batch,
        scratch: &mut Vec<Point>,
    ) -> Result<(), WindowError> {
        scratch.clear();
        points_from_batch(batch, scratch)?;
        for p in scratch.iter() {
            self.push(*p);
        }
        if !batch.procs.is_empty() {
            self.set_procs(&batch.procs);
        }
        Ok(())
    }

    /// Adds a point. A point not newer than the newest is ignored (clock went back).
    pub fn push(&mut self, p: Point) {
        if let Some(end) = self.end_ms()
            && p.ts_ms <= end
        {
            return;
        }
        // Evict by age, then by room.
        while !self.is_empty() && self.at(self.first).ts_ms <= p.ts_ms - self.cfg.window_ms {
            self.evict();
        }
        if self.len() == self.ring.len() {
            self.evict();
        }
        let seq = self.next;
        let cap = self.ring.len() as u64;
        self.ring[(seq % cap) as usize] = p;
        self.next += 1;
        for (c, s) in self.sums.iter_mut().enumerate() {
            if let Some(x) = p.get(c) {
                s.add(x, 1);
            }
        }
        for (r, &c) in RESOURCES.iter().enumerate() {
            if let Some(x) = p.get(c) {
                self.hist[r][bucket(r, x)] += 1;
                // Monotonic deque: drop smaller-or-equal values from the back.
                while self.maxq[r].len() > self.maxq_head[r] {
                    let Some(&back) = self.maxq[r].last() else {
                        break;
                    };
                    if self.at(back).get(c).unwrap_or(i64::MIN) <= x {
                        self.maxq[r].pop();
                    } else {
                        break;
                    }
                }
                if self.maxq[r].len() == self.maxq[r].capacity() {
                    // Compact the consumed head instead of growing.
                    let h = self.maxq_head[r];
                    self.maxq[r].drain(..h);
                    self.maxq_head[r] = 0;
                }
                self.maxq[r].push(seq);
            }
        }
        if let Some(x) = p.get(ch::CPU_BUSY) {
            if x < IDLE_BELOW {
                self.idle += 1;
            }
            for (i, &l) in LAGS.iter().enumerate() {
                let l = l as u64;
                if seq >= self.first + l
                    && let Some(y) = self.at(seq - l).get(ch::CPU_BUSY)
                {
                    self.lag_prod[i] += i128::from(x) * i128::from(y);
                    self.lag_n[i] += 1;
                    self.lag_old[i] += i128::from(y);
                    self.lag_new[i] += i128::from(x);
                }
            }
        }
    }

    fn evict(&mut self) {
        let seq = self.first;
        let p = *self.at(seq);
        for (c, s) in self.sums.iter_mut().enumerate() {
            if let Some(x) = p.get(c) {
                s.add(x, -1);
            }
        }
        for (r, &c) in RESOURCES.iter().enumerate() {
            if let Some(x) = p.get(c) {
                let b = &mut self.hist[r][bucket(r, x)];
                *b = b.saturating_sub(1);
                if self.maxq[r].get(self.maxq_head[r]) == Some(&seq) {
                    self.maxq_head[r] += 1;
                }
            }
        }
        if let Some(x) = p.get(ch::CPU_BUSY) {
            if x < IDLE_BELOW {
                self.idle -= 1;
            }
            for (i, &l) in LAGS.iter().enumerate() {
                let partner = seq + l as u64;
                if partner < self.next
                    && let Some(y) = self.at(partner).get(ch::CPU_BUSY)
                {
                    self.lag_prod[i] -= i128::from(x) * i128::from(y);
                    self.lag_n[i] -= 1;
                    self.lag_old[i] -= i128::from(x);
                    self.lag_new[i] -= i128::from(y);
                }
            }
        }
        self.first += 1;
    }

    /// Sets the busiest processes (a batch's list). Weighted by CPU share with a floor,
    /// hashed into [`PROC_BUCKETS`] buckets that sum to 1.
    pub fn set_procs(&mut self, procs: &[WireProc]) {
        self.set_bag(procs.iter().map(|p| (p.comm.as_str(), p.cpu_milli)));
    }

    /// The agent's equivalent of [`Window::set_procs`] from a sample's top lists, with the
    /// batch builder's de-duplication and rounding (used where no batch is built, as in
    /// `persona-agent observe`). Does nothing when the sample has no process list.
    pub fn set_procs_from_sample(&mut self, s: &Sample) {
        if s.top_cpu.is_empty() && s.top_rss.is_empty() {
            return;
        }
        let all = || s.top_cpu.iter().chain(s.top_rss.iter());
        let unique = all()
            .enumerate()
            .filter(move |(i, p)| !all().take(*i).any(|q| q.comm == p.comm));
        self.set_bag(unique.map(|(_, p)| {
            let milli = (f64::from(p.cpu_pct) * 10.0)
                .round()
                .clamp(0.0, f64::from(u32::MAX)) as u32;
            (p.comm.as_str(), milli)
        }));
    }

    fn set_bag<'a>(&mut self, procs: impl Iterator<Item = (&'a str, u32)> + Clone) {
        self.bag = [0.0; PROC_BUCKETS];
        let (n, total) = procs
            .clone()
            .fold((0u64, 0u64), |(n, t), (_, c)| (n + 1, t + u64::from(c)));
        if n == 0 {
            return;
        }
        for (comm, cpu) in procs {
            let share = if total == 0 {
                1.0 / n as f64
            } else {
                0.25 / n as f64 + 0.75 * f64::from(cpu) / total as f64
            };
            for b in proc_buckets(comm) {
                self.bag[b] += (share / 2.0) as f32;
            }
        }
    }

    /// The feature vector. All zeros (and a zero bag) for an empty window.
    pub fn features(&self, out: &mut [f32; FEATURE_DIM]) {
        *out = [0.0; FEATURE_DIM];
        if self.is_empty() {
            return;
        }
        let mut k = 0;
        let mut put = |v: f64| {
            out[k] = if v.is_finite() { v as f32 } else { 0.0 };
            k += 1;
        };
        // Per resource: mean, p50, p95, max, std (squashed to ~0..1), burstiness.
        for (r, &c) in RESOURCES.iter().enumerate() {
            let s = &self.sums[c];
            let squash = |x: f64| -> f64 {
                match r {
                    0 | 1 => x / 10_000.0,
                    // kB/s: log scale, 1 GB/s ~ 1.
                    _ => (1.0 + x.max(0.0)).log2() / 20.0,
                }
            };
            let (mean, std) = (s.mean(), s.std());
            put(squash(mean));
            put(squash(self.percentile(r, 0.50)));
            put(squash(self.percentile(r, 0.95)));
            put(squash(self.max(r) as f64));
            put(if r < 2 { std / 10_000.0 } else { squash(std) });
            put(if mean + std > 0.0 {
                (std - mean) / (std + mean)
            } else {
                -1.0
            });
        }
        let mean = |c: usize| self.sums[c].mean();
        let ratio = |a: f64, b: f64, none: f64| if a + b > 0.0 { a / (a + b) } else { none };
        let n = self.sums[ch::CPU_BUSY].n.max(1) as f64;
        let online = mean(ch::CPU_ONLINE).max(1.0);
        // Size-dependent levels.
        put((1.0 + mean(ch::CPU_BUSY) / 10_000.0 * online).log2() / 5.0);
        put((1.0 + mean(ch::MEM_MB) / 1024.0).log2() / 8.0);
        // Shape of the CPU series.
        put(self.idle as f64 / n);
        put(self.periodicity());
        // Disk mix and request size.
        let (dr, dw) = (mean(ch::DISK_READ), mean(ch::DISK_WRITE));
        let (ir, iw) = (
            mean(ch::DISK_READ_IOPS) / 10.0,
            mean(ch::DISK_WRITE_IOPS) / 10.0,
        );
        put(ratio(dr, dw, 0.5));
        put(ratio(ir, iw, 0.5));
        let req_kb = if ir + iw > 0.0 {
            (dr + dw) / (ir + iw)
        } else {
            0.0
        };
        put((1.0 + req_kb).log2() / 10.0);
        put((1.0 + ir + iw).log2() / 16.0);
        // Network asymmetry and packet size.
        let (rx, tx) = (mean(ch::NET_RX), mean(ch::NET_TX));
        put(ratio(rx, tx, 0.5));
        let pkts = mean(ch::NET_PKTS);
        let pkt_bytes = if pkts > 0.0 {
            (rx + tx) * 1000.0 / pkts
        } else {
            0.0
        };
        put((pkt_bytes / 1500.0).min(2.0));
        put((1.0 + pkts).log2() / 20.0);
        put((1.0 + mean(ch::LO)).log2() / 20.0);
        // Pressure and steal (square roots spread the small values that matter).
        put((mean(ch::PSI_CPU) / 10_000.0).max(0.0).sqrt());
        put((mean(ch::PSI_MEM) / 10_000.0).max(0.0).sqrt());
        put((mean(ch::PSI_IO) / 10_000.0).max(0.0).sqrt());
        put((mean(ch::CPU_STEAL) / 10_000.0).max(0.0).sqrt());
        put((mean(ch::CPU_IOWAIT) / 10_000.0).max(0.0).sqrt());
        // How the CPU is spent.
        let (us, sy) = (mean(ch::CPU_USER), mean(ch::CPU_SYSTEM));
        put(ratio(sy, us, 0.0));
        put((1.0 + mean(ch::CTXT) / online).log2() / 20.0);
        put((mean(ch::RUNNING) / online).min(8.0) / 8.0);
        put((1.0 + mean(ch::MAJFLT)).log2() / 16.0);
        put(ratio(rx + tx, dr + dw, 0.5));
        debug_assert_eq!(k, FEATURE_DIM - PROC_BUCKETS);
        out[FEATURE_DIM - PROC_BUCKETS..].copy_from_slice(&self.bag);
    }

    /// The `q` quantile of a resource from its histogram, in the channel's unit.
    fn percentile(&self, r: usize, q: f64) -> f64 {
        let h = &self.hist[r];
        let total: u64 = h.iter().map(|&c| u64::from(c)).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut acc = 0u64;
        for (b, &c) in h.iter().enumerate() {
            acc += u64::from(c);
            if acc >= rank {
                return bucket_value(r, b);
            }
        }
        bucket_value(r, BUCKETS - 1)
    }

    fn max(&self, r: usize) -> i64 {
        self.maxq[r]
            .get(self.maxq_head[r])
            .and_then(|&s| self.at(s).get(RESOURCES[r]))
            .unwrap_or(0)
    }

    /// 0..1: how strongly the CPU series repeats at one of the fixed lags, as the
    /// autocorrelation at lag L minus the one at L/2 (a trend or a flat line scores 0).
    /// The lagged covariance uses the pairs' own means, computed exactly in integers, so a
    /// nearly flat series (a saturated CPU) does not turn rounding into correlation; a
    /// series whose standard deviation is under 1% of capacity scores 0.
    fn periodicity(&self) -> f64 {
        let s = &self.sums[ch::CPU_BUSY];
        if s.n < 20 {
            return 0.0;
        }
        let std = s.std();
        if std < 100.0 {
            return 0.0;
        }
        let var = std * std;
        let r = |i: usize| -> Option<f64> {
            let n = i128::from(self.lag_n[i]);
            (n >= 10).then(|| {
                let num = n * self.lag_prod[i] - self.lag_old[i] * self.lag_new[i];
                (num as f64 / (n * n) as f64 / var).clamp(-1.0, 1.0)
            })
        };
        LAG_PAIRS
            .iter()
            .filter_map(|&(l, h)| Some((r(l)? - r(h)?) / 2.0))
            .fold(0.0f64, f64::max)
            .clamp(0.0, 1.0)
    }
}

/// The two bag buckets of a process name: FNV-1a of the name, through two different
/// SplitMix64 finalisers (FNV's low bits alone spread short names poorly).
pub fn proc_buckets(comm: &str) -> [usize; 2] {
    let h = comm.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % PROC_BUCKETS as u64) as usize
    };
    [mix(h), mix(h ^ 0x9e37_79b9_7f4a_7c15)]
}

/// Names of the features, in vector order (documentation and debugging).
pub fn feature_names() -> Vec<String> {
    let mut v = Vec::with_capacity(FEATURE_DIM);
    for r in ["cpu", "mem", "disk", "net"] {
        for s in ["mean", "p50", "p95", "max", "std", "burstiness"] {
            v.push(format!("{r}.{s}"));
        }
    }
    for n in [
        "cpu.cores_log",
        "mem.gib_log",
        "cpu.idle_fraction",
        "cpu.periodicity",
        "disk.read_byte_share",
        "disk.read_op_share",
        "disk.request_kb_log",
        "disk.iops_log",
        "net.rx_share",
        "net.packet_size",
        "net.packets_log",
        "net.loopback_log",
        "psi.cpu",
        "psi.memory",
        "psi.io",
        "cpu.steal",
        "cpu.iowait",
        "cpu.system_share",
        "cpu.ctxt_per_core_log",
        "cpu.running_per_core",
        "mem.major_faults_log",
        "io.net_share",
    ] {
        v.push(n.to_owned());
    }
    for b in 0..PROC_BUCKETS {
        v.push(format!("procs.bag{b}"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::sample::{NicValues, ProcEntry};

    /// A deterministic pseudo-random sample: a CPU square wave with period 30, disk and
    /// network noise, and a process list that changes now and then.
    fn sample(i: i64) -> Sample {
        let mut s = Sample {
            ts_ms: 1_700_000_000_000 + i * 1000,
            ..Sample::default()
        };
        let r = |k: i64| ((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0;
        let busy = if (i / 15) % 2 == 0 { 0.7 } else { 0.1 };
        s.host[host::CPU_USER_RATIO] = busy * 0.8 + r(1) * 0.01;
        s.host[host::CPU_NICE_RATIO] = 0.0;
        s.host[host::CPU_SYSTEM_RATIO] = busy * 0.2;
        s.host[host::CPU_IOWAIT_RATIO] = r(2) * 0.02;
        s.host[host::CPU_IRQ_RATIO] = 0.0;
        s.host[host::CPU_SOFTIRQ_RATIO] = 0.001;
        s.host[host::CPU_STEAL_RATIO] = 0.0003;
        s.host[host::CPU_ONLINE] = 2.0;
        s.host[host::PROCS_RUNNING] = 2.0;
        s.host[host::CTXT_PER_S] = 4000.0 + r(3) * 100.0;
        s.host[host::MEM_TOTAL] = 8.0e9;
        s.host[host::MEM_USED] = 2.0e9 + r(4) * 1e8;
        s.host[host::MEM_MAJFLT_PER_S] = 0.0;
        s.host[host::PSI_CPU + 2] = r(5) * 0.1;
        s.host[host::PSI_MEMORY + 2] = f64::NAN;
        s.host[host::PSI_IO + 2] = r(6) * 0.01;
        s.disk_total[disk::READ_BYTES_PER_S] = r(7) * 1e6;
        s.disk_total[disk::WRITE_BYTES_PER_S] = r(8) * 4e6;
        s.disk_total[disk::READ_IOPS] = r(7) * 100.0;
        s.disk_total[disk::WRITE_IOPS] = r(8) * 300.0;
        s.nic_total[nic::RX_BYTES_PER_S] = r(9) * 2e5;
        s.nic_total[nic::TX_BYTES_PER_S] = r(10) * 1e6;
        s.nic_total[nic::RX_PACKETS_PER_S] = r(9) * 200.0;
        s.nic_total[nic::TX_PACKETS_PER_S] = r(10) * 800.0;
        let mut lo = NicValues::new("lo");
        lo.values[nic::RX_BYTES_PER_S] = r(11) * 3e5;
        s.nics.push(lo);
        s.nics.push(NicValues::new("eth0"));
        if i % 5 == 0 {
            let name = if (i / 40) % 2 == 0 {
                "postgres"
            } else {
                "rustc"
            };
            s.top_cpu.push(ProcEntry {
                comm: name.into(),
                cpu_pct: 50.0 + r(12) as f32 * 10.0,
                rss_bytes: 1 << 28,
            });
            s.top_cpu.push(ProcEntry {
                comm: "sshd".into(),
                cpu_pct: 0.3,
                rss_bytes: 1 << 22,
            });
            s.top_rss.push(ProcEntry {
                comm: name.into(),
                cpu_pct: 50.0,
                rss_bytes: 1 << 28,
            });
        }
        s
    }

    /// The agent path (samples, then each sealed batch's process list) and the
    /// coordinator path (the same batches, encoded and decoded) give bit-identical
    /// vectors at every batch end, across more than one window length.
    #[test]
    fn agent_and_coordinator_paths_give_identical_vectors() {
        let cfg = WindowConfig { window_ms: 60_000 };
        let mut agent = Window::new(cfg);
        let mut coord = Window::new(cfg);
        let mut builder = BatchBuilder::new();
        let mut scratch = Vec::new();
        let (mut a, mut c) = ([0f32; FEATURE_DIM], [0f32; FEATURE_DIM]);
        let mut compared = 0;
        for i in 0..400 {
            let s = sample(i);
            agent.push_sample(&s);
            builder.push(&s);
            if i % 10 == 9 {
                let batch = builder.finish(u64::try_from(i).unwrap_or(0)).unwrap();
                if !batch.procs.is_empty() {
                    agent.set_procs(&batch.procs);
                }
                // Over the wire and back.
                let mut frame = Vec::new();
                crate::protocol::encode_batch_frame(&batch, &mut frame, 1 << 20).unwrap();
                let (msg, _) =
                    crate::protocol::decode_frame::<crate::protocol::AgentMsg>(&frame, 1 << 20)
                        .unwrap()
                        .unwrap();
                let crate::protocol::AgentMsg::Batch(back) = msg else {
                    panic!("not a batch")
                };
                coord.push_batch(&back, &mut scratch).unwrap();
                agent.features(&mut a);
                coord.features(&mut c);
                let (ab, cb): (Vec<u32>, Vec<u32>) = (
                    a.iter().map(|x| x.to_bits()).collect(),
                    c.iter().map(|x| x.to_bits()).collect(),
                );
                assert_eq!(ab, cb, "vectors differ after batch ending at sample {i}");
                compared += 1;
            }
        }
        assert_eq!(compared, 40);
        // The window is full (60 points at 1 s), and its contents are meaningful.
        assert_eq!(agent.len(), 60);
        let names = feature_names();
        let get = |n: &str| a[names.iter().position(|x| x == n).unwrap()];
        assert!((get("cpu.mean") - 0.4).abs() < 0.02, "{}", get("cpu.mean"));
        assert!(get("cpu.periodicity") > 0.5, "{}", get("cpu.periodicity"));
        assert!(get("net.loopback_log") > 0.0);
        assert!((a[FEATURE_DIM - PROC_BUCKETS..].iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    /// A window rebuilt from a later start (the coordinator replaying only the last
    /// batches) equals the long-running one: the sums are exact.
    #[test]
    fn vector_depends_only_on_the_points_in_the_window() {
        let cfg = WindowConfig { window_ms: 30_000 };
        let mut long = Window::new(cfg);
        let mut short = Window::new(cfg);
        for i in 0..500 {
            long.push_sample(&sample(i));
            if i >= 500 - 40 {
                short.push_sample(&sample(i));
            }
        }
        let procs = [WireProc {
            comm: "nginx".into(),
            cpu_milli: 300,
            rss_kib: 1,
        }];
        long.set_procs(&procs);
        short.set_procs(&procs);
        let (mut a, mut b) = ([0f32; FEATURE_DIM], [0f32; FEATURE_DIM]);
        long.features(&mut a);
        short.features(&mut b);
        assert_eq!(a, b);
        assert_eq!(long.len(), 30);
    }

    /// Only the CPU set: user = `v`, the other busy modes 0.
    fn cpu_only(s: &mut Sample, v: f64) {
        for i in 0..=host::CPU_STEAL_RATIO {
            s.host[i] = 0.0;
        }
        s.host[host::CPU_USER_RATIO] = v;
    }

    #[test]
    fn statistics_match_a_direct_computation() {
        let mut w = Window::new(WindowConfig { window_ms: 100_000 });
        let vals: Vec<f64> = (0..100).map(|i| f64::from(i % 10) / 10.0).collect();
        for (i, v) in vals.iter().enumerate() {
            let mut s = Sample {
                ts_ms: i as i64 * 1000 + 1,
                ..Sample::default()
            };
            cpu_only(&mut s, *v);
            w.push_sample(&s);
        }
        let mut f = [0f32; FEATURE_DIM];
        w.features(&mut f);
        // mean 0.45, max 0.9, std of 0..0.9 uniform = 0.2872.
        assert!((f[0] - 0.45).abs() < 1e-6);
        assert!((f[3] - 0.9).abs() < 1e-6);
        assert!((f[4] - 0.287_228).abs() < 1e-4, "{}", f[4]);
        // p50 (the 50th of 100 sorted values: 0.4) and p95 to bucket resolution (1/64).
        assert!((f[1] - 0.4).abs() < 0.03, "{}", f[1]);
        assert!((f[2] - 0.9).abs() < 0.03, "{}", f[2]);
        // Idle: the 0.0 samples, one in ten.
        let names = feature_names();
        let idle = names.iter().position(|n| n == "cpu.idle_fraction").unwrap();
        assert!((f[idle] - 0.1).abs() < 1e-6);
        // Memory and the rest were never set: zeros, no NaN.
        assert!(f.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn max_follows_evictions() {
        let mut w = Window::new(WindowConfig { window_ms: 10_000 });
        let mut f = [0f32; FEATURE_DIM];
        for i in 0..40 {
            let mut s = Sample {
                ts_ms: i * 1000,
                ..Sample::default()
            };
            // A single spike at i = 5, then a slow ramp.
            cpu_only(
                &mut s,
                if i == 5 {
                    1.0
                } else {
                    f64::from(i as i32) / 100.0
                },
            );
            w.push_sample(&s);
            w.features(&mut f);
            let expect = if (5..15).contains(&i) {
                1.0
            } else {
                f64::from(i as i32) / 100.0
            };
            assert!((f64::from(f[3]) - expect).abs() < 1e-6, "i={i}: {}", f[3]);
        }
    }

    #[test]
    fn buckets_are_monotonic() {
        for r in 0..4 {
            let mut prev = 0;
            for q in (0..2_000_000i64).step_by(997) {
                let b = bucket(r, q);
                assert!(b >= prev && b < BUCKETS);
                prev = b;
            }
        }
        assert_eq!(bucket(2, 1), 1);
        assert_eq!(bucket(2, 3), 4);
    }

    #[test]
    fn bad_batches_are_errors() {
        let mut b = BatchBuilder::new();
        b.push(&sample(0));
        b.push(&sample(1));
        let mut batch = b.finish(1).unwrap();
        batch.data.truncate(batch.data.len() / 2);
        let mut w = Window::new(WindowConfig::default());
        assert!(w.push_batch(&batch, &mut Vec::new()).is_err());
        let mut batch2 = b.finish(2);
        assert!(batch2.is_none());
        batch2 = Some(Batch {
            timestamps: vec![0xff],
            ..Batch::default()
        });
        assert!(matches!(
            w.push_batch(batch2.as_ref().unwrap(), &mut Vec::new()),
            Err(WindowError::Timestamps { .. })
        ));
    }
}
