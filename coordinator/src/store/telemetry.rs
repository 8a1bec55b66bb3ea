//! Telemetry batches: group-committed ingest, one series over a time range, the newest
//! values, the batches of a window (for replaying them through the window features) and
//! retention.

use rusqlite::params;

use persona_shared::batch::BatchError;
use persona_shared::codec;
use persona_shared::metrics::{self, MetricDef};
use persona_shared::protocol::{Batch, WireProc};

use super::{Store, StoreError, now_ms, procs, sql};

/// One batch ready to be committed.
#[derive(Debug)]
pub struct IngestItem {
    pub agent_key: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub points: usize,
    pub batch: Batch,
}

/// The newest instant of an agent: its timestamp (ms) and each series' value by name.
pub type Latest = (i64, Vec<(String, f64)>);

/// The most points one batch may carry (an hour at 100 ms sampling).
pub const MAX_POINTS: usize = 36_000;

/// Batches deleted per statement by retention, so a large purge never holds the write
/// lock for long.
const RETENTION_SLICE: usize = 5000;

impl Store {
    /// Commits a group of batches in one transaction (group commit across agents), with
    /// each new batch's process list, and the agents' committed sequence numbers.
    /// Returns, per item, whether it was a duplicate of a batch already stored.
    pub fn ingest(&self, items: &[IngestItem]) -> Result<Vec<bool>, StoreError> {
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("ingest begin"))?;
        let mut dup = Vec::with_capacity(items.len());
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO batches(agent, seq, start_ms, end_ms, points, received_ms, ts, instances, idx, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(sql("ingest prepare"))?;
            let mut upd = tx
                .prepare_cached(
                    "UPDATE agents SET committed_seq = MAX(committed_seq, ?2), last_seen_ms = ?3, procs = COALESCE(?4, procs) WHERE key = ?1",
                )
                .map_err(sql("ingest prepare"))?;
            let now = now_ms();
            for it in items {
                let b = &it.batch;
                let instances = b.instances.join("\n");
                let seq = i64::try_from(b.seq).unwrap_or(i64::MAX);
                let n = ins
                    .execute(params![
                        it.agent_key,
                        seq,
                        it.start_ms,
                        it.end_ms,
                        it.points as i64,
                        now,
                        b.timestamps,
                        instances,
                        b.index,
                        b.data
                    ])
                    .map_err(sql("ingest insert"))?;
                dup.push(n == 0);
                if n == 1 {
                    procs::record(&tx, it.agent_key, seq, it.end_ms, &b.procs)?;
                }
                let procs = (n == 1 && !b.procs.is_empty()).then(|| procs_json(&b.procs));
                upd.execute(params![it.agent_key, seq, now, procs])
                    .map_err(sql("ingest agent"))?;
            }
        }
        tx.commit().map_err(sql("ingest commit"))?;
        Ok(dup)
    }

    /// Deletes telemetry (batches and their process lists) that ended before
    /// `cutoff_ms`; returns the batches deleted.
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .w()?
                .execute(
                    "DELETE FROM batches WHERE (agent, seq) IN
                       (SELECT agent, seq FROM batches WHERE end_ms < ?1 LIMIT ?2)",
                    params![cutoff_ms, RETENTION_SLICE as i64],
                )
                .map_err(sql("retention"))?;
            total += n;
            if n < RETENTION_SLICE {
                let c = self.w()?;
                procs::delete_before(&c, cutoff_ms)?;
                return Ok(total);
            }
        }
    }

    /// The points of one series since `since_ms`, oldest first. Derived metrics
    /// (`cpu.*_cores`) are computed from their ratio and the online CPU count.
    pub fn series(
        &self,
        agent_key: i64,
        agent_id: &str,
        def: &MetricDef,
        instance: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare_cached(
                "SELECT seq, ts, instances, idx, data FROM batches WHERE agent = ?1 AND end_ms >= ?2 ORDER BY start_ms",
            )
            .map_err(sql("series"))?;
        let mut rows = st
            .query(params![agent_key, since_ms])
            .map_err(sql("series"))?;
        let derived = (def.scope == metrics::Scope::Host)
            .then(|| metrics::derived_from_ratio(usize::from(def.id) - 1))
            .flatten();
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql("series row"))? {
            let batch = row_batch(r)?;
            let corrupt = |reason: String| StoreError::Corrupt {
                agent: agent_id.to_owned(),
                seq: batch.seq,
                reason,
            };
            let ts = codec::decode_timestamps(&batch.timestamps, MAX_POINTS)
                .map_err(|e| corrupt(e.to_string()))?;
            let values = match derived {
                Some(ratio_idx) => {
                    let ratio = find_values(&batch, &metrics::HOST[ratio_idx], None)
                        .map_err(|e| corrupt(e.to_string()))?;
                    let online =
                        find_values(&batch, &metrics::HOST[metrics::host::CPU_ONLINE], None)
                            .map_err(|e| corrupt(e.to_string()))?;
                    match (ratio, online) {
                        (Some(r), Some(o)) => Some(
                            r.iter()
                                .zip(o.iter())
                                .map(|(a, b)| codec::quantise(a * b, def.scale))
                                .collect(),
                        ),
                        _ => None,
                    }
                }
                None => find_values(&batch, def, instance).map_err(|e| corrupt(e.to_string()))?,
            };
            let Some(values) = values else { continue };
            if values.len() != ts.len() {
                return Err(corrupt(format!(
                    "{} values for {} timestamps",
                    values.len(),
                    ts.len()
                )));
            }
            out.extend(
                ts.into_iter()
                    .zip(values)
                    .filter(|(t, v)| *t >= since_ms && !v.is_nan()),
            );
        }
        Ok(out)
    }

    /// The latest value of every series of an agent's newest batch, by series name.
    pub fn latest(&self, agent_key: i64) -> Result<Option<Latest>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare_cached("SELECT seq, ts, instances, idx, data FROM batches WHERE agent = ?1 ORDER BY end_ms DESC LIMIT 1")
            .map_err(sql("latest"))?;
        let mut rows = st.query(params![agent_key]).map_err(sql("latest"))?;
        let Some(r) = rows.next().map_err(sql("latest row"))? else {
            return Ok(None);
        };
        let batch = row_batch(r)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            agent: agent_key.to_string(),
            seq: batch.seq,
            reason,
        };
        let ts = codec::decode_timestamps(&batch.timestamps, MAX_POINTS)
            .map_err(|e| corrupt(e.to_string()))?;
        let Some(&last_ts) = ts.last() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for s in batch.series() {
            let s = s.map_err(|e| corrupt(e.to_string()))?;
            let Some(def) = metrics::by_id(s.metric) else {
                continue;
            };
            let v = codec::decode_values(s.block, def.scale, MAX_POINTS)
                .map_err(|e| corrupt(e.to_string()))?;
            let name = match s.instance {
                Some(i) => format!("{}@{i}", def.name),
                None => def.name.to_owned(),
            };
            out.push((name, v.last().copied().unwrap_or(f64::NAN)));
        }
        Ok(Some((last_ts, out)))
    }

    /// The stored batches of an agent that overlap `from_ms..=to_ms` (ending at or after
    /// `from_ms`, starting at or before `to_ms`), oldest first, each with the process
    /// list stored with it (empty when it carried none). Their points are not cut to the
    /// range.
    pub fn batches_between(
        &self,
        agent_key: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Batch>, StoreError> {
        let mut batches: Vec<Batch> = {
            let c = self.r()?;
            let mut st = c
                .prepare_cached(
                    "SELECT seq, ts, instances, idx, data FROM batches
                     WHERE agent = ?1 AND end_ms >= ?2 AND start_ms <= ?3 ORDER BY start_ms",
                )
                .map_err(sql("feedback window"))?;
            let mut rows = st
                .query(params![agent_key, from_ms, to_ms])
                .map_err(sql("feedback window"))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sql("feedback window"))? {
                out.push(row_batch(r)?);
            }
            out
        };
        for b in &mut batches {
            let seq = i64::try_from(b.seq).unwrap_or(i64::MAX);
            b.procs = self.batch_procs(agent_key, seq)?;
        }
        Ok(batches)
    }
}

fn procs_json(p: &[WireProc]) -> String {
    let v: Vec<_> = p
        .iter()
        .map(|p| serde_json::json!({"comm": p.comm, "cpu_pct": f64::from(p.cpu_milli) / 10.0, "rss_bytes": u64::from(p.rss_kib) * 1024}))
        .collect();
    serde_json::Value::Array(v).to_string()
}

fn row_batch(r: &rusqlite::Row<'_>) -> Result<Batch, StoreError> {
    let get = sql("batch row");
    let seq: i64 = r.get(0).map_err(&get)?;
    let instances: String = r.get(2).map_err(&get)?;
    Ok(Batch {
        seq: u64::try_from(seq).unwrap_or(0),
        timestamps: r.get(1).map_err(&get)?,
        instances: if instances.is_empty() {
            Vec::new()
        } else {
            instances.split('\n').map(str::to_owned).collect()
        },
        index: r.get(3).map_err(&get)?,
        data: r.get(4).map_err(&get)?,
        procs: Vec::new(),
        mirror: None,
    })
}

#[derive(Debug, thiserror::Error)]
enum FindError {
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("{0}")]
    Codec(#[from] codec::CodecError),
}

fn find_values(
    batch: &Batch,
    def: &MetricDef,
    instance: Option<&str>,
) -> Result<Option<Vec<f64>>, FindError> {
    for s in batch.series() {
        let s = s?;
        if s.metric == def.id && s.instance == instance {
            return Ok(Some(codec::decode_values(s.block, def.scale, MAX_POINTS)?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::batch::BatchBuilder;
    use persona_shared::metrics::host;
    use persona_shared::sample::Sample;

    /// A resent batch is recognised, a new batch's process list is kept inside the same
    /// commit, and retention deletes both.
    #[test]
    fn ingest_dedups_keeps_procs_and_retention_deletes_both() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        let (token, _) = store.create_token(60_000, 1).unwrap();
        store.enroll(&token, "a-1", "h", "fp").unwrap().unwrap();
        let key = store.agent_key("a-1").unwrap().unwrap();
        let t0 = 1_700_000_000_000i64;
        let mut builder = BatchBuilder::new();
        for i in 0..10 {
            let mut s = Sample {
                ts_ms: t0 + i * 1000,
                ..Sample::default()
            };
            s.host[host::CPU_USER_RATIO] = 0.5;
            s.host[host::CPU_ONLINE] = 2.0;
            builder.push(&s);
        }
        let mut b = builder.finish(1).unwrap();
        b.procs = vec![WireProc {
            comm: "cc1".into(),
            cpu_milli: 900,
            rss_kib: 4,
        }];
        let item = || IngestItem {
            agent_key: key,
            start_ms: t0,
            end_ms: t0 + 9000,
            points: 10,
            batch: b.clone(),
        };
        assert_eq!(store.ingest(&[item()]).unwrap(), vec![false]);
        assert_eq!(store.ingest(&[item()]).unwrap(), vec![true], "resent");
        assert_eq!(store.committed_seq(key).unwrap(), 1);
        assert_eq!(store.batch_procs(key, 1).unwrap(), b.procs);
        let got = store.batches_between(key, t0, t0 + 1).unwrap();
        assert_eq!((got.len(), &got[0].procs), (1, &b.procs));
        let cpu = store
            .series(key, "a-1", &metrics::HOST[host::CPU_USER_RATIO], None, 0)
            .unwrap();
        assert_eq!(cpu.len(), 10);
        let (at, latest) = store.latest(key).unwrap().unwrap();
        assert_eq!(at, t0 + 9000);
        assert!(!latest.is_empty());
        assert_eq!(
            store.delete_before(t0 + 9000).unwrap(),
            0,
            "ends at the cutoff"
        );
        assert_eq!(store.delete_before(t0 + 9001).unwrap(), 1);
        assert!(store.batch_procs(key, 1).unwrap().is_empty());
        assert!(store.latest(key).unwrap().is_none());
    }
}
