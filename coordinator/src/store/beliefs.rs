//! Persona beliefs: the current state per agent (`persona_belief`), its snapshots
//! (`persona_belief_history`) and the examples a stable observation leaves for training
//! (`feedback_examples`). How a belief changes is the `belief` feature's; the store
//! loads, hands the state to it and writes back what it decided, in one transaction.

use rusqlite::{Connection, OptionalExtension, params};

use persona_shared::protocol::PersonaProb;

use super::{Store, StoreError, sql};

/// One agent's stored belief state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BeliefRecord {
    /// The declared purpose, as the JSON text recorded at Hello.
    pub purpose: Option<String>,
    pub prior: Vec<PersonaProb>,
    pub observed: Vec<PersonaProb>,
    pub observed_hours: f64,
    pub reports: i64,
    pub last_report_ms: Option<i64>,
    pub history_ms: Option<i64>,
    pub stable_slug: Option<String>,
    pub stable_since_ms: Option<i64>,
    pub stable_count: i64,
}

/// What a belief update writes.
#[derive(Debug, Clone)]
pub struct BeliefWrite {
    pub record: BeliefRecord,
    /// The combined distribution of `record`.
    pub combined: Vec<PersonaProb>,
    /// The update's time (`updated_ms`, and the snapshot's time).
    pub at_ms: i64,
    /// Also keep a snapshot in the history.
    pub snapshot: bool,
    /// A training example to keep (once per agent and observed persona).
    pub feedback: Option<FeedbackExample>,
}

/// A confident, stable observation paired with the declared purpose.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackExample {
    pub at_ms: i64,
    pub description: String,
    pub software: Vec<String>,
    pub observed_slug: String,
    pub probability: f64,
}

/// A snapshot of one agent's beliefs.
#[derive(Debug, Clone, PartialEq)]
pub struct BeliefSnapshot {
    pub at_ms: i64,
    pub prior: Vec<PersonaProb>,
    pub observed: Vec<PersonaProb>,
    pub combined: Vec<PersonaProb>,
    pub observed_hours: f64,
}

/// Where and when a feedback example was observed, and the persona.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackLabel {
    pub agent_id: String,
    pub at_ms: i64,
    pub observed_slug: String,
}

fn to_json(v: &[PersonaProb]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn from_json(s: Option<String>) -> Vec<PersonaProb> {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn load(conn: &Connection, agent_id: &str) -> Result<Option<BeliefRecord>, StoreError> {
    conn.query_row(
        "SELECT purpose, prior, observed, observed_hours, reports, last_report_ms, history_ms,
                stable_slug, stable_since_ms, stable_count
         FROM persona_belief WHERE agent_id = ?1",
        [agent_id],
        |r| {
            Ok(BeliefRecord {
                purpose: r.get(0)?,
                prior: from_json(r.get(1)?),
                observed: from_json(r.get(2)?),
                observed_hours: r.get(3)?,
                reports: r.get(4)?,
                last_report_ms: r.get(5)?,
                history_ms: r.get(6)?,
                stable_slug: r.get(7)?,
                stable_since_ms: r.get(8)?,
                stable_count: r.get(9)?,
            })
        },
    )
    .optional()
    .map_err(sql("load belief"))
}

fn save(conn: &Connection, agent_id: &str, w: &BeliefWrite) -> Result<(), StoreError> {
    let s = &w.record;
    conn.execute(
        "INSERT INTO persona_belief(agent_id, purpose, prior, observed, combined, observed_hours,
             reports, last_report_ms, history_ms, updated_ms, stable_slug, stable_since_ms, stable_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT(agent_id) DO UPDATE SET purpose = ?2, prior = ?3, observed = ?4,
             combined = ?5, observed_hours = ?6, reports = ?7, last_report_ms = ?8,
             history_ms = ?9, updated_ms = ?10, stable_slug = ?11, stable_since_ms = ?12,
             stable_count = ?13",
        params![
            agent_id,
            s.purpose,
            to_json(&s.prior),
            to_json(&s.observed),
            to_json(&w.combined),
            s.observed_hours,
            s.reports,
            s.last_report_ms,
            s.history_ms,
            w.at_ms,
            s.stable_slug,
            s.stable_since_ms,
            s.stable_count
        ],
    )
    .map_err(sql("save belief"))?;
    if w.snapshot {
        conn.execute(
            "INSERT OR REPLACE INTO persona_belief_history(agent_id, at_ms, prior, observed, combined, observed_hours)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                agent_id,
                w.at_ms,
                to_json(&s.prior),
                to_json(&s.observed),
                to_json(&w.combined),
                s.observed_hours
            ],
        )
        .map_err(sql("belief history"))?;
    }
    Ok(())
}

/// Keeps a feedback example unless one exists for (agent, persona); true when new.
fn remember(conn: &Connection, agent_id: &str, f: &FeedbackExample) -> Result<bool, StoreError> {
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO feedback_examples(agent_id, at_ms, description, software, observed_slug, probability)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                agent_id,
                f.at_ms,
                f.description,
                serde_json::to_string(&f.software).unwrap_or_else(|_| "[]".into()),
                f.observed_slug,
                f.probability
            ],
        )
        .map_err(sql("store feedback example"))?;
    Ok(n > 0)
}

impl Store {
    /// Updates one agent's beliefs in one transaction: `decide` gets the stored state
    /// (None for an agent with none yet) and returns what to write, or None to write
    /// nothing. Returns None when nothing was written, else whether a new feedback
    /// example was kept.
    pub fn update_belief(
        &self,
        agent_id: &str,
        decide: impl FnOnce(Option<BeliefRecord>) -> Option<BeliefWrite>,
    ) -> Result<Option<bool>, StoreError> {
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("begin belief update"))?;
        let Some(w) = decide(load(&tx, agent_id)?) else {
            return Ok(None);
        };
        let new_example = match &w.feedback {
            Some(f) => remember(&tx, agent_id, f)?,
            None => false,
        };
        save(&tx, agent_id, &w)?;
        tx.commit().map_err(sql("commit belief update"))?;
        Ok(Some(new_example))
    }

    /// One agent's stored beliefs; None when nothing is known about it.
    pub fn belief(&self, agent_id: &str) -> Result<Option<BeliefRecord>, StoreError> {
        let c = self.r()?;
        load(&c, agent_id)
    }

    /// The agent's belief snapshots at or after `since_ms`, oldest first.
    pub fn belief_history(
        &self,
        agent_id: &str,
        since_ms: i64,
    ) -> Result<Vec<BeliefSnapshot>, StoreError> {
        let conn = self.r()?;
        let mut st = conn
            .prepare_cached(
                "SELECT at_ms, prior, observed, combined, observed_hours FROM persona_belief_history
                 WHERE agent_id = ?1 AND at_ms >= ?2 ORDER BY at_ms",
            )
            .map_err(sql("belief history"))?;
        let rows = st
            .query_map(params![agent_id, since_ms], |r| {
                Ok(BeliefSnapshot {
                    at_ms: r.get(0)?,
                    prior: from_json(r.get(1)?),
                    observed: from_json(r.get(2)?),
                    combined: from_json(r.get(3)?),
                    observed_hours: r.get(4)?,
                })
            })
            .map_err(sql("belief history"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("belief history"))
    }

    /// Deletes belief snapshots older than `cutoff_ms`; returns how many went.
    pub fn delete_belief_history_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        self.w()?
            .execute(
                "DELETE FROM persona_belief_history WHERE at_ms < ?1",
                [cutoff_ms],
            )
            .map_err(sql("delete old belief snapshots"))
    }

    /// Every observed feedback example, oldest first (ties by agent).
    pub fn feedback_examples(&self) -> Result<Vec<(String, FeedbackExample)>, StoreError> {
        let c = self.r()?;
        let q = sql("list feedback_examples");
        let mut st = c
            .prepare(
                "SELECT agent_id, at_ms, description, software, observed_slug, probability
                 FROM feedback_examples ORDER BY at_ms, agent_id",
            )
            .map_err(&q)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, f64>(5)?,
                ))
            })
            .map_err(&q)?;
        let mut out = Vec::new();
        for row in rows {
            let (agent_id, at_ms, description, software, observed_slug, probability) =
                row.map_err(&q)?;
            let software: Vec<String> =
                serde_json::from_str(&software).map_err(|e| StoreError::CorruptRow {
                    what: "feedback example of agent",
                    key: agent_id.clone(),
                    reason: format!("feedback_examples software list: {e}"),
                })?;
            out.push((
                agent_id,
                FeedbackExample {
                    at_ms,
                    description,
                    software,
                    observed_slug,
                    probability,
                },
            ));
        }
        Ok(out)
    }

    /// Who, when and which persona of every observed feedback example, oldest first.
    pub fn feedback_labels(&self) -> Result<Vec<FeedbackLabel>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare("SELECT agent_id, at_ms, observed_slug FROM feedback_examples ORDER BY at_ms, agent_id")
            .map_err(sql("feedback examples"))?;
        st.query_map([], |r| {
            Ok(FeedbackLabel {
                agent_id: r.get(0)?,
                at_ms: r.get(1)?,
                observed_slug: r.get(2)?,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql("feedback examples"))
    }
}
