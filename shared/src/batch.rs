//! Turning a run of samples into one wire [`Batch`], and reading a batch's series back
//! without decoding its values (the coordinator stores value blocks as received).
//!
//! The builder keeps one column per series and reuses every buffer between batches, so
//! pushing a sample does not allocate once the set of devices is stable. A device that
//! appears mid-batch gets NaN for the instants before it existed; one that disappears
//! gets NaN after. Metrics the coordinator derives (`cpu.*_cores`) are not sent.

use crate::codec;
use crate::metrics::{self, MetricId, disk, host, nic};
use crate::protocol::{Batch, WireProc};
use crate::sample::{Device, Sample};
use crate::varint;

/// Column store for one device's values during a batch.
#[derive(Debug)]
struct DeviceColumns<const N: usize> {
    name: String,
    cols: [Vec<f64>; N],
    /// Seen in the current sample.
    seen: bool,
    /// Seen at least once in the current batch.
    present: bool,
}

/// Accumulates samples and emits batches.
#[derive(Debug)]
pub struct BatchBuilder {
    ts: Vec<i64>,
    host: [Vec<f64>; host::COUNT],
    disk_total: [Vec<f64>; disk::COUNT],
    nic_total: [Vec<f64>; nic::COUNT],
    disks: Vec<DeviceColumns<{ disk::COUNT }>>,
    nics: Vec<DeviceColumns<{ nic::COUNT }>>,
    procs: Vec<WireProc>,
    /// Order-insensitive hash of the names in `procs`.
    procs_names: u64,
    /// Names hash and time of the process list last sealed into a batch.
    procs_sent: Option<(u64, i64)>,
}

/// How often an unchanged set of busiest processes is repeated. The names are the
/// persona signal and are sent at once when they change; their CPU and RSS figures are
/// refreshed at this pace, which keeps the list to a few percent of the bytes.
pub const PROCS_REFRESH_MS: i64 = 60_000;

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            ts: Vec::new(),
            host: std::array::from_fn(|_| Vec::new()),
            disk_total: std::array::from_fn(|_| Vec::new()),
            nic_total: std::array::from_fn(|_| Vec::new()),
            disks: Vec::new(),
            nics: Vec::new(),
            procs: Vec::new(),
            procs_names: 0,
            procs_sent: None,
        }
    }
}

/// FNV-1a of a name, combined by XOR into an order-insensitive set hash.
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn push_devices<const N: usize>(
    cols: &mut Vec<DeviceColumns<N>>,
    devs: &[Device<N>],
    n_before: usize,
) {
    for c in cols.iter_mut() {
        c.seen = false;
    }
    for d in devs {
        let idx = match cols.iter().position(|c| c.name == d.name) {
            Some(i) => i,
            None => {
                cols.push(DeviceColumns {
                    name: d.name.clone(),
                    cols: std::array::from_fn(|_| vec![f64::NAN; n_before]),
                    seen: false,
                    present: false,
                });
                cols.len() - 1
            }
        };
        let c = &mut cols[idx];
        if c.seen {
            continue; // a duplicate name in one sample: keep the first
        }
        c.seen = true;
        c.present = true;
        for (col, v) in c.cols.iter_mut().zip(d.values.iter()) {
            col.push(*v);
        }
    }
    for c in cols.iter_mut().filter(|c| !c.seen) {
        for col in c.cols.iter_mut() {
            col.push(f64::NAN);
        }
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of samples waiting.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Adds one sample. The process list of the latest sample is the batch's.
    pub fn push(&mut self, s: &Sample) {
        let n_before = self.ts.len();
        self.ts.push(s.ts_ms);
        for (col, v) in self.host.iter_mut().zip(s.host.iter()) {
            col.push(*v);
        }
        for (col, v) in self.disk_total.iter_mut().zip(s.disk_total.iter()) {
            col.push(*v);
        }
        for (col, v) in self.nic_total.iter_mut().zip(s.nic_total.iter()) {
            col.push(*v);
        }
        push_devices(&mut self.disks, &s.disks, n_before);
        push_devices(&mut self.nics, &s.nics, n_before);
        if !s.top_cpu.is_empty() || !s.top_rss.is_empty() {
            // Overwrite in place: the lists repeat every tick between process scans.
            let mut n = 0;
            for p in s.top_cpu.iter().chain(s.top_rss.iter()) {
                if self.procs[..n].iter().any(|w| w.comm == p.comm) {
                    continue;
                }
                let cpu_milli = (f64::from(p.cpu_pct) * 10.0)
                    .round()
                    .clamp(0.0, f64::from(u32::MAX)) as u32;
                let rss_kib = u32::try_from(p.rss_bytes / 1024).unwrap_or(u32::MAX);
                match self.procs.get_mut(n) {
                    Some(w) => {
                        w.comm.clear();
                        w.comm.push_str(&p.comm);
                        w.cpu_milli = cpu_milli;
                        w.rss_kib = rss_kib;
                    }
                    None => self.procs.push(WireProc {
                        comm: p.comm.clone(),
                        cpu_milli,
                        rss_kib,
                    }),
                }
                n += 1;
            }
            self.procs.truncate(n);
            self.procs_names = self.procs.iter().fold(0, |h, w| h ^ name_hash(&w.comm));
        }
    }

    /// Encodes the waiting samples as batch `seq` and empties the builder (keeping its
    /// buffers). Returns None when there is nothing to send.
    pub fn finish(&mut self, seq: u64) -> Option<Batch> {
        let mut b = Batch {
            seq,
            timestamps: Vec::with_capacity(16),
            instances: Vec::new(),
            index: Vec::with_capacity(256),
            data: Vec::with_capacity(1024),
            procs: Vec::new(),
            mirror: None,
        };
        if !self.encode_into(seq, &mut b) {
            return None;
        }
        self.clear();
        Some(b)
    }

    /// Encodes the waiting samples as batch `seq` into `b`, reusing its buffers, and
    /// leaves the builder as it is: the agent re-encodes the open batch after every tick
    /// to persist it, without allocating once the buffers have grown. Returns false
    /// (leaving `b` untouched) when there is nothing to encode.
    pub fn encode_into(&self, seq: u64, b: &mut Batch) -> bool {
        if self.ts.is_empty() {
            return false;
        }
        b.seq = seq;
        b.timestamps.clear();
        b.index.clear();
        b.data.clear();
        codec::encode_timestamps(&self.ts, &mut b.timestamps);
        for (i, col) in self.host.iter().enumerate() {
            if metrics::derived_from_ratio(i).is_none() {
                put_series(b, metrics::HOST[i].id, 0, metrics::HOST[i].scale, col);
            }
        }
        for (i, col) in self.disk_total.iter().enumerate() {
            put_series(b, metrics::DISK[i].id, 0, metrics::DISK[i].scale, col);
        }
        for (i, col) in self.nic_total.iter().enumerate() {
            put_series(b, metrics::NIC[i].id, 0, metrics::NIC[i].scale, col);
        }
        let mut n_inst = 0;
        for d in self.disks.iter().filter(|d| d.present) {
            n_inst += 1;
            set_instance(&mut b.instances, n_inst, &d.name);
            for (i, col) in d.cols.iter().enumerate() {
                put_series(
                    b,
                    metrics::DISK[i].id,
                    n_inst as u64,
                    metrics::DISK[i].scale,
                    col,
                );
            }
        }
        for d in self.nics.iter().filter(|d| d.present) {
            n_inst += 1;
            set_instance(&mut b.instances, n_inst, &d.name);
            for (i, col) in d.cols.iter().enumerate() {
                put_series(
                    b,
                    metrics::NIC[i].id,
                    n_inst as u64,
                    metrics::NIC[i].scale,
                    col,
                );
            }
        }
        b.instances.truncate(n_inst);
        let procs: &[WireProc] = if self.procs_due() { &self.procs } else { &[] };
        b.procs.truncate(procs.len());
        for (i, p) in procs.iter().enumerate() {
            match b.procs.get_mut(i) {
                Some(w) => {
                    w.comm.clone_from(&p.comm);
                    w.cpu_milli = p.cpu_milli;
                    w.rss_kib = p.rss_kib;
                }
                None => b.procs.push(p.clone()),
            }
        }
        true
    }

    /// Timestamp of the newest waiting sample.
    pub fn last_ts(&self) -> Option<i64> {
        self.ts.last().copied()
    }

    /// Whether the batch being built carries the process list: when the set of names
    /// changed since the last sealed list, or that one is [`PROCS_REFRESH_MS`] old.
    fn procs_due(&self) -> bool {
        if self.procs.is_empty() {
            return false;
        }
        match (self.procs_sent, self.ts.last()) {
            (Some((names, at)), Some(&now)) => {
                names != self.procs_names || now - at >= PROCS_REFRESH_MS
            }
            _ => true,
        }
    }

    /// Drops the waiting samples, keeping every buffer for the next batch. Call it when
    /// the batch is sealed: it also records whether the process list went out.
    pub fn clear(&mut self) {
        if self.procs_due()
            && let Some(&now) = self.ts.last()
        {
            self.procs_sent = Some((self.procs_names, now));
        }
        self.ts.clear();
        for col in self
            .host
            .iter_mut()
            .chain(self.disk_total.iter_mut())
            .chain(self.nic_total.iter_mut())
        {
            col.clear();
        }
        // Devices gone for a whole batch are forgotten; the others keep their buffers.
        self.disks.retain(|d| d.present);
        self.nics.retain(|d| d.present);
        for d in &mut self.disks {
            d.present = false;
            d.cols.iter_mut().for_each(Vec::clear);
        }
        for d in &mut self.nics {
            d.present = false;
            d.cols.iter_mut().for_each(Vec::clear);
        }
    }
}

/// Sets the `n`-th (1-based) instance name, reusing the String already there.
fn set_instance(instances: &mut Vec<String>, n: usize, name: &str) {
    match instances.get_mut(n - 1) {
        Some(s) => {
            s.clear();
            s.push_str(name);
        }
        None => instances.push(name.to_owned()),
    }
}

fn put_series(b: &mut Batch, metric: MetricId, instance: u64, scale: i8, col: &[f64]) {
    let start = b.data.len();
    codec::encode_values(col, scale, &mut b.data);
    varint::put(&mut b.index, u64::from(metric));
    varint::put(&mut b.index, instance);
    varint::put(&mut b.index, (b.data.len() - start) as u64);
}

/// One series of a received batch, values still encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesRef<'a> {
    pub metric: MetricId,
    /// None for a host metric or a total.
    pub instance: Option<&'a str>,
    pub block: &'a [u8],
}

/// Why a batch's structure is invalid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("series index truncated at byte {at}")]
    IndexTruncated { at: usize },
    #[error("unknown metric id {id}")]
    UnknownMetric { id: u64 },
    #[error("series {metric} refers to instance {instance} but the batch has {have}")]
    BadInstance {
        metric: MetricId,
        instance: u64,
        have: usize,
    },
    #[error("metric {metric} is host-wide but has instance {instance}")]
    InstanceOnHostMetric { metric: MetricId, instance: u64 },
    #[error("block of series {metric} is {len} bytes but only {left} remain in data")]
    BlockOverrun {
        metric: MetricId,
        len: u64,
        left: usize,
    },
    #[error("{left} bytes of data are not covered by the index")]
    TrailingData { left: usize },
    #[error("timestamps: {0}")]
    Timestamps(codec::CodecError),
    #[error("batch has {points} points, more than the maximum {max}")]
    TooManyPoints { points: usize, max: usize },
    #[error("timestamps not strictly increasing at point {at}")]
    Unordered { at: usize },
    #[error("timestamp {ts_ms} ms is outside the accepted window [{min}, {max}]")]
    OutOfWindow { ts_ms: i64, min: i64, max: i64 },
}

impl Batch {
    /// Iterates the series of this batch, checking the structure but not the values.
    pub fn series(&self) -> impl Iterator<Item = Result<SeriesRef<'_>, BatchError>> + '_ {
        let mut pos = 0usize;
        let mut data_pos = 0usize;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            if pos >= self.index.len() {
                if data_pos != self.data.len() {
                    failed = true;
                    return Some(Err(BatchError::TrailingData {
                        left: self.data.len() - data_pos,
                    }));
                }
                return None;
            }
            let r = self.next_series(&mut pos, &mut data_pos);
            failed = r.is_err();
            Some(r)
        })
    }

    fn next_series(
        &self,
        pos: &mut usize,
        data_pos: &mut usize,
    ) -> Result<SeriesRef<'_>, BatchError> {
        let at = *pos;
        let mut get = || varint::get(&self.index, pos).ok_or(BatchError::IndexTruncated { at });
        let id = get()?;
        let instance = get()?;
        let len = get()?;
        let metric = u16::try_from(id)
            .ok()
            .and_then(metrics::by_id)
            .ok_or(BatchError::UnknownMetric { id })?;
        let inst = match instance {
            0 => None,
            i if metric.scope == metrics::Scope::Host => {
                return Err(BatchError::InstanceOnHostMetric {
                    metric: metric.id,
                    instance: i,
                });
            }
            i => Some(
                usize::try_from(i - 1)
                    .ok()
                    .and_then(|k| self.instances.get(k))
                    .ok_or(BatchError::BadInstance {
                        metric: metric.id,
                        instance: i,
                        have: self.instances.len(),
                    })?
                    .as_str(),
            ),
        };
        let left = self.data.len() - *data_pos;
        let n =
            usize::try_from(len)
                .ok()
                .filter(|&n| n <= left)
                .ok_or(BatchError::BlockOverrun {
                    metric: metric.id,
                    len,
                    left,
                })?;
        let block = &self.data[*data_pos..*data_pos + n];
        *data_pos += n;
        Ok(SeriesRef {
            metric: metric.id,
            instance: inst,
            block,
        })
    }

    /// Decodes and checks the timestamps: at most `max_points`, strictly increasing and
    /// all inside `[min_ms, max_ms]`.
    pub fn check_timestamps(
        &self,
        max_points: usize,
        min_ms: i64,
        max_ms: i64,
    ) -> Result<Vec<i64>, BatchError> {
        let ts = codec::decode_timestamps(&self.timestamps, max_points)
            .map_err(BatchError::Timestamps)?;
        if ts.len() > max_points {
            return Err(BatchError::TooManyPoints {
                points: ts.len(),
                max: max_points,
            });
        }
        for (i, w) in ts.windows(2).enumerate() {
            if w[1] <= w[0] {
                return Err(BatchError::Unordered { at: i + 1 });
            }
        }
        if let Some(&t) = ts.iter().find(|&&t| t < min_ms || t > max_ms) {
            return Err(BatchError::OutOfWindow {
                ts_ms: t,
                min: min_ms,
                max: max_ms,
            });
        }
        Ok(ts)
    }

    /// Number of numeric values carried (points times series, plus two per process),
    /// the denominator of "bytes per sample".
    pub fn value_count(&self, points: usize) -> usize {
        self.series().filter(Result::is_ok).count() * points + 2 * self.procs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{DiskValues, NicValues, ProcEntry};

    fn sample(t: i64, with_sdb: bool) -> Sample {
        let mut s = Sample {
            ts_ms: t,
            ..Sample::default()
        };
        for (i, v) in s.host.iter_mut().enumerate() {
            *v = i as f64 + (t % 7) as f64 * 0.01;
        }
        s.disk_total = [1.0; disk::COUNT];
        s.nic_total = [2.0; nic::COUNT];
        s.disks.push(DiskValues {
            name: "vda".into(),
            values: [3.0; disk::COUNT],
        });
        if with_sdb {
            s.disks.push(DiskValues {
                name: "sdb".into(),
                values: [4.0; disk::COUNT],
            });
        }
        s.nics.push(NicValues {
            name: "eth0".into(),
            values: [5.0; nic::COUNT],
        });
        s.top_cpu.push(ProcEntry {
            comm: "rustc".into(),
            cpu_pct: 150.0,
            rss_bytes: 1 << 30,
        });
        s.top_rss.push(ProcEntry {
            comm: "rustc".into(),
            cpu_pct: 150.0,
            rss_bytes: 1 << 30,
        });
        s
    }

    #[test]
    fn batches_carry_every_series_and_devices_that_come_and_go() {
        let mut b = BatchBuilder::new();
        for t in 0..10 {
            b.push(&sample(1_000_000 + t * 1000, (3..6).contains(&t)));
        }
        let batch = b.finish(1).unwrap();
        assert!(b.is_empty());
        let ts = batch.check_timestamps(100, 0, i64::MAX).unwrap();
        assert_eq!(ts.len(), 10);
        let series: Vec<_> = batch.series().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            series.len(),
            host::COUNT - 8 + 2 * (disk::COUNT + nic::COUNT) + disk::COUNT
        );
        let sdb = series
            .iter()
            .find(|s| s.instance == Some("sdb") && s.metric == 100)
            .unwrap();
        let v = codec::decode_values(sdb.block, 0, 100).unwrap();
        assert_eq!(v.iter().filter(|x| x.is_nan()).count(), 7);
        assert_eq!(v[3], 4.0);
        let load1 = series.iter().find(|s| s.metric == 18).unwrap();
        let v = codec::decode_values(load1.block, -2, 100).unwrap();
        // Sample t=0 is at 1_000_000 ms: load1 = 17 + (1_000_000 % 7) * 0.01.
        assert!((v[0] - 17.01).abs() < 1e-9, "{}", v[0]);
        assert_eq!(batch.procs.len(), 1);
        assert_eq!(batch.procs[0].cpu_milli, 1500);
        // A device gone for a whole batch is forgotten.
        b.push(&sample(2_000_000, false));
        let batch = b.finish(2).unwrap();
        assert_eq!(batch.instances, vec!["vda".to_string(), "eth0".to_string()]);
        assert!(b.finish(3).is_none());
    }

    #[test]
    fn process_lists_go_out_on_change_and_once_a_minute() {
        let mut b = BatchBuilder::new();
        let mut t = 1_000_000;
        let batch = |b: &mut BatchBuilder, t: &mut i64, comm: &str| {
            let mut s = sample(*t, false);
            s.top_cpu[0].comm = comm.into();
            b.push(&s);
            *t += 10_000;
            b.finish(1).unwrap().procs.len()
        };
        assert_eq!(batch(&mut b, &mut t, "rustc"), 1, "first list goes out");
        assert_eq!(batch(&mut b, &mut t, "rustc"), 0, "unchanged: not repeated");
        assert_eq!(batch(&mut b, &mut t, "ffmpeg"), 2, "names changed");
        for _ in 0..5 {
            assert_eq!(batch(&mut b, &mut t, "ffmpeg"), 0);
        }
        assert_eq!(
            batch(&mut b, &mut t, "ffmpeg"),
            2,
            "refreshed after a minute"
        );
    }

    #[test]
    fn structural_errors_are_reported() {
        let mut b = BatchBuilder::new();
        b.push(&sample(1_000, false));
        b.push(&sample(2_000, false));
        let good = b.finish(1).unwrap();
        let mut bad = good.clone();
        bad.data.pop();
        assert!(bad.series().any(|r| r.is_err()));
        let mut bad = good.clone();
        bad.data.push(0);
        assert!(matches!(
            bad.series().last(),
            Some(Err(BatchError::TrailingData { left: 1 }))
        ));
        let mut bad = good.clone();
        bad.instances.clear();
        assert!(
            bad.series()
                .any(|r| matches!(r, Err(BatchError::BadInstance { .. })))
        );
        let mut bad = good.clone();
        bad.index = vec![0x7f, 0, 0];
        assert!(matches!(
            bad.series().next(),
            Some(Err(BatchError::UnknownMetric { id: 127 }))
        ));
        assert!(matches!(
            good.check_timestamps(100, 1_500, 5_000),
            Err(BatchError::OutOfWindow { .. })
        ));
        assert!(good.check_timestamps(1, 0, 5_000).is_err());
    }
}
