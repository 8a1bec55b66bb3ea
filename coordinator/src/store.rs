//! The coordinator's SQLite database: join tokens, enrolled agents, and telemetry.
//!
//! Telemetry is stored as received: one row per batch (primary key agent and sequence
//! number, so a resent batch is recognised and not stored twice) holding the timestamp
//! block, the series index and the concatenated value blocks. The series index inside
//! the row locates each metric's block, and the (agent, end time) index finds the rows of
//! a time range, so a query slices out the one block it needs and decodes only that.
//! Nothing is decoded on ingest. WAL mode with `synchronous=NORMAL` makes a commit
//! durable against a crash of the process (SIGKILL), which is what the ack promises.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use persona_shared::batch::BatchError;
use persona_shared::codec;
use persona_shared::metrics::{self, MetricDef};
use persona_shared::protocol::{Batch, WireProc};

use crate::pki;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Open(#[from] persona_shared::sqlite::SqliteError),
    #[error("database query failed ({context}): {source}")]
    Sql {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("a lock on the database was poisoned by a panic")]
    Poisoned,
    #[error("stored batch {seq} of agent {agent} is corrupt: {reason}")]
    Corrupt {
        agent: String,
        seq: u64,
        reason: String,
    },
    #[error("random source failed: {0}")]
    Random(String),
}

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { context, source }
}

/// Why a join token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    UsedUp,
    Revoked,
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown token",
            Self::Expired => "token expired",
            Self::UsedUp => "token already used",
            Self::Revoked => "token revoked",
        })
    }
}

/// A join token as listed (the secret is never stored, only its hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub uses_left: i64,
    pub used: i64,
    pub revoked: bool,
}

/// An enrolled agent as the server needs it on every connection.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentAuth {
    pub key: i64,
    pub id: String,
    pub revoked: bool,
}

/// An agent as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub id: String,
    pub hostname: String,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub committed_seq: i64,
    pub batches: i64,
    pub facts: Option<serde_json::Value>,
    pub purpose: Option<serde_json::Value>,
    pub top_processes: Option<serde_json::Value>,
}

/// One batch ready to be committed.
#[derive(Debug)]
pub struct IngestItem {
    pub agent_key: i64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub points: usize,
    pub batch: Batch,
}

fn hash_secret(secret: &str) -> String {
    pki::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens(
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, uses_left INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    revoked_ms INTEGER);
CREATE TABLE IF NOT EXISTS agents(
    key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, hostname TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE, enrolled_ms INTEGER NOT NULL, revoked_ms INTEGER,
    last_seen_ms INTEGER, committed_seq INTEGER NOT NULL DEFAULT 0,
    facts TEXT, purpose TEXT, procs TEXT);
CREATE TABLE IF NOT EXISTS batches(
    agent INTEGER NOT NULL, seq INTEGER NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
    points INTEGER NOT NULL, received_ms INTEGER NOT NULL, ts BLOB NOT NULL, instances TEXT NOT NULL,
    idx BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(agent, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_by_time ON batches(agent, end_ms);
CREATE INDEX IF NOT EXISTS batches_by_end ON batches(end_ms);
";

/// The database, with one connection for writes and one for reads (WAL lets them run
/// side by side).
#[derive(Debug)]
pub struct Store {
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    use persona_shared::sqlite::{OpenOptions, Synchronous};
    let opts = OpenOptions::new(Synchronous::Normal)
        .busy_timeout(std::time::Duration::from_secs(10))
        .mode(0o600);
    Ok(persona_shared::sqlite::open(path, opts)?)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, readable only by its owner.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let write = open_conn(path)?;
        write.execute_batch(SCHEMA).map_err(sql("schema"))?;
        // Command channel tables (coordinator/src/commands.rs).
        write
            .execute_batch(crate::commands::SCHEMA)
            .map_err(sql("commands schema"))?;
        // Agent events and persona beliefs (coordinator/src/events.rs, belief.rs).
        write
            .execute_batch(crate::events::SCHEMA)
            .map_err(sql("events schema"))?;
        write
            .execute_batch(crate::belief::SCHEMA)
            .map_err(sql("belief schema"))?;
        // Mirror model registry and per-batch process lists (coordinator/src/model_push.rs).
        write
            .execute_batch(crate::model_push::SCHEMA)
            .map_err(sql("model schema"))?;
        let read = open_conn(path)?;
        Ok(Self {
            write: Mutex::new(write),
            read: Mutex::new(read),
        })
    }

    pub(crate) fn w(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.write.lock().map_err(|_| StoreError::Poisoned)
    }

    pub(crate) fn r(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.read.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Creates a join token `ID.SECRET` (kubeadm's shape) valid for `ttl_ms` and `uses` enrollments.
    pub fn create_token(&self, ttl_ms: i64, uses: i64) -> Result<(String, TokenInfo), StoreError> {
        let id = pki::random_hex(3).map_err(|e| StoreError::Random(e.to_string()))?;
        let secret = pki::random_hex(16).map_err(|e| StoreError::Random(e.to_string()))?;
        let now = now_ms();
        let info = TokenInfo {
            id: id.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
            uses_left: uses,
            used: 0,
            revoked: false,
        };
        self.w()?
            .execute(
                "INSERT INTO tokens(id, secret_hash, created_ms, expires_ms, uses_left) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, hash_secret(&secret), now, info.expires_ms, uses],
            )
            .map_err(sql("insert token"))?;
        Ok((format!("{id}.{secret}"), info))
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare("SELECT id, created_ms, expires_ms, uses_left, used, revoked_ms FROM tokens ORDER BY created_ms")
            .map_err(sql("list tokens"))?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    created_ms: r.get(1)?,
                    expires_ms: r.get(2)?,
                    uses_left: r.get(3)?,
                    used: r.get(4)?,
                    revoked: r.get::<_, Option<i64>>(5)?.is_some(),
                })
            })
            .map_err(sql("list tokens"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list tokens"))
    }

    /// Revokes a token; false when there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .w()?
            .execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms()],
            )
            .map_err(sql("revoke token"))?;
        Ok(n == 1)
    }

    /// Checks a presented token and, if good, spends one use and enrolls the agent, in
    /// one transaction so a single-use token cannot enroll two agents.
    pub fn enroll(
        &self,
        token: &str,
        agent_id: &str,
        hostname: &str,
        fingerprint: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let Some((id, secret)) = token.split_once('.') else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("enroll"))?;
        let row: Option<(String, i64, i64, Option<i64>)> = tx
            .query_row(
                "SELECT secret_hash, expires_ms, uses_left, revoked_ms FROM tokens WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql("enroll token"))?;
        let now = now_ms();
        let refusal = match row {
            None => Some(TokenRefusal::Unknown),
            Some((hash, _, _, _)) if hash != hash_secret(secret) => Some(TokenRefusal::Unknown),
            Some((_, _, _, Some(_))) => Some(TokenRefusal::Revoked),
            Some((_, exp, _, _)) if exp <= now => Some(TokenRefusal::Expired),
            Some((_, _, left, _)) if left <= 0 => Some(TokenRefusal::UsedUp),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            return Ok(Err(r));
        }
        tx.execute(
            "UPDATE tokens SET uses_left = uses_left - 1, used = used + 1 WHERE id = ?1",
            params![id],
        )
        .map_err(sql("spend token"))?;
        tx.execute(
            "INSERT INTO agents(id, hostname, fingerprint, enrolled_ms) VALUES (?1, ?2, ?3, ?4)",
            params![agent_id, hostname, fingerprint, now],
        )
        .map_err(sql("insert agent"))?;
        tx.commit().map_err(sql("enroll commit"))?;
        Ok(Ok(()))
    }

    /// The agent a client certificate belongs to.
    pub fn agent_by_fingerprint(&self, fp: &str) -> Result<Option<AgentAuth>, StoreError> {
        self.r()?
            .query_row(
                "SELECT key, id, revoked_ms FROM agents WHERE fingerprint = ?1",
                params![fp],
                |r| {
                    Ok(AgentAuth {
                        key: r.get(0)?,
                        id: r.get(1)?,
                        revoked: r.get::<_, Option<i64>>(2)?.is_some(),
                    })
                },
            )
            .optional()
            .map_err(sql("agent by fingerprint"))
    }

    pub fn agent_key(&self, id: &str) -> Result<Option<i64>, StoreError> {
        self.r()?
            .query_row("SELECT key FROM agents WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("agent key"))
    }

    /// Revokes an agent; false when there is no such agent.
    pub fn revoke_agent(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .w()?
            .execute(
                "UPDATE agents SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms()],
            )
            .map_err(sql("revoke agent"))?;
        Ok(n == 1 || self.agent_key(id)?.is_some())
    }

    /// Records what an agent said in Hello or Facts.
    pub fn update_agent(
        &self,
        key: i64,
        facts: Option<&str>,
        purpose: Option<&str>,
    ) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "UPDATE agents SET last_seen_ms = ?2, facts = COALESCE(?3, facts), purpose = COALESCE(?4, purpose) WHERE key = ?1",
                params![key, now_ms(), facts, purpose],
            )
            .map_err(sql("update agent"))?;
        Ok(())
    }

    pub fn committed_seq(&self, key: i64) -> Result<u64, StoreError> {
        let s: i64 = self
            .r()?
            .query_row(
                "SELECT committed_seq FROM agents WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("committed seq"))?
            .unwrap_or(0);
        Ok(u64::try_from(s).unwrap_or(0))
    }

    /// Commits a group of batches in one transaction (group commit across agents).
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
                    crate::model_push::record_procs(&tx, it.agent_key, seq, it.end_ms, &b.procs)?;
                }
                let procs = (n == 1 && !b.procs.is_empty()).then(|| procs_json(&b.procs));
                upd.execute(params![it.agent_key, seq, now, procs])
                    .map_err(sql("ingest agent"))?;
            }
        }
        tx.commit().map_err(sql("ingest commit"))?;
        Ok(dup)
    }

    /// Deletes telemetry that ended before `cutoff_ms`; returns the batches deleted.
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        // In slices, so a large purge never holds the write lock for long.
        let mut total = 0;
        loop {
            let n = self
                .w()?
                .execute(
                    "DELETE FROM batches WHERE (agent, seq) IN
                       (SELECT agent, seq FROM batches WHERE end_ms < ?1 LIMIT 5000)",
                    params![cutoff_ms],
                )
                .map_err(sql("retention"))?;
            total += n;
            if n < 5000 {
                crate::model_push::delete_procs_before(self, cutoff_ms)?;
                return Ok(total);
            }
        }
    }

    pub fn list_agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.query_agents("ORDER BY a.enrolled_ms", params![])
    }

    pub fn get_agent(&self, id: &str) -> Result<Option<AgentInfo>, StoreError> {
        Ok(self
            .query_agents("WHERE a.id = ?1", params![id])?
            .into_iter()
            .next())
    }

    fn query_agents(
        &self,
        tail: &str,
        p: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<AgentInfo>, StoreError> {
        let c = self.r()?;
        let q = format!(
            "SELECT a.id, a.hostname, a.enrolled_ms, a.revoked_ms, a.last_seen_ms, a.committed_seq,
                    (SELECT COUNT(*) FROM batches b WHERE b.agent = a.key), a.facts, a.purpose, a.procs
             FROM agents a {tail}"
        );
        let mut st = c.prepare(&q).map_err(sql("list agents"))?;
        let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let rows = st
            .query_map(p, |r| {
                Ok(AgentInfo {
                    id: r.get(0)?,
                    hostname: r.get(1)?,
                    enrolled_ms: r.get(2)?,
                    revoked_ms: r.get(3)?,
                    last_seen_ms: r.get(4)?,
                    committed_seq: r.get(5)?,
                    batches: r.get(6)?,
                    facts: json(r.get(7)?),
                    purpose: json(r.get(8)?),
                    top_processes: json(r.get(9)?),
                })
            })
            .map_err(sql("list agents"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list agents"))
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
}

/// The newest instant of an agent: its timestamp (ms) and each series' value by name.
pub type Latest = (i64, Vec<(String, f64)>);

/// The most points one batch may carry (an hour at 100 ms sampling).
pub const MAX_POINTS: usize = 36_000;

fn procs_json(p: &[WireProc]) -> String {
    let v: Vec<_> = p
        .iter()
        .map(|p| serde_json::json!({"comm": p.comm, "cpu_pct": f64::from(p.cpu_milli) / 10.0, "rss_bytes": u64::from(p.rss_kib) * 1024}))
        .collect();
    serde_json::Value::Array(v).to_string()
}

fn row_batch(r: &rusqlite::Row<'_>) -> Result<Batch, StoreError> {
    let get = |e| StoreError::Sql {
        context: "batch row",
        source: e,
    };
    let seq: i64 = r.get(0).map_err(get)?;
    let instances: String = r.get(2).map_err(get)?;
    Ok(Batch {
        seq: u64::try_from(seq).unwrap_or(0),
        timestamps: r.get(1).map_err(get)?,
        instances: if instances.is_empty() {
            Vec::new()
        } else {
            instances.split('\n').map(str::to_owned).collect()
        },
        index: r.get(3).map_err(get)?,
        data: r.get(4).map_err(get)?,
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
