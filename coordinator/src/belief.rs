//! What the coordinator believes each VM is: the **prior** (the profiler's distribution
//! over personas for the purpose declared in Hello), the **observed** distribution (the
//! agent's mirror reports, smoothed over time) and the **combined** posterior that the
//! engine sizes from, with their history; and the feedback loop that turns a confident,
//! stable observation into a training example for the profiler.
//!
//! ## The combination
//! A Dirichlet-style pseudo-count: the declared intent is worth [`PRIOR_HOURS`] hours of
//! observation, and each hour the agent reports adds one hour of evidence:
//!
//! ```text
//! combined_k = (A * prior_k + h * observed_k) / (A + h)      A = 6 h, h = observed hours
//! ```
//!
//! so the prior's weight `A / (A + h)` is 1 before the first report, 1/2 after six hours
//! of reports, 1/5 after a day, and keeps falling. With no declared purpose the combined
//! distribution is the observed one; with no reports yet it is the prior. `h` counts the
//! time the reports cover (the gap since the previous report, at most a minute each), not
//! wall time, so a VM whose agent was down for a week has not gained a week of evidence.
//!
//! The observed distribution is an exponentially weighted mean of the reports with a
//! time constant of [`OBSERVED_TAU_S`] (one hour): it follows a real change of use within
//! hours, but one odd window does not move it.
//!
//! ## History
//! The current state is one row per agent (`persona_belief`); a snapshot goes to
//! `persona_belief_history` when the prior changes and at most every
//! [`HISTORY_EVERY_MS`] (5 min) of reports, so a fleet reporting every 10 s does not
//! write a history row per batch.
//!
//! ## Feedback
//! The observation is *confident and stable* when the top persona of every report has
//! probability at least [`STABLE_P`] (0.7), is the same persona, for at least
//! [`STABLE_REPORTS`] consecutive reports spanning at least [`STABLE_MS`] (30 min). Then
//! the pair (declared description and software, observed persona) is stored once per
//! agent and persona in `feedback_examples`; `personactl model train` adds these to the
//! profiler's training examples (see [`training_feedback`]).
//!
//! What it is not: the profiler (`profiling`), the mirror model (the agent's) or the
//! sizing decision (the engine's, which calls [`combined`]).

use std::sync::{Arc, RwLock};

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use persona_shared::protocol::{MirrorReport, PersonaProb, Purpose};

use crate::persona_db::{Feedback, PersonaDbError};
use crate::profiling::{ProfileRequest, ProfilingService};
use crate::store::{Store, StoreError};

/// Hours of observation the declared intent is worth.
pub const PRIOR_HOURS: f64 = 6.0;
/// Time constant of the observed distribution's moving average, in seconds.
pub const OBSERVED_TAU_S: f64 = 3600.0;
/// Most evidence one report adds, in seconds (reports come every batch, 10 s by default).
pub const MAX_REPORT_GAP_S: f64 = 60.0;
/// At most one history snapshot per agent in this many ms (besides prior changes).
pub const HISTORY_EVERY_MS: i64 = 5 * 60 * 1000;
/// The feedback rule: top-1 probability, consecutive reports, time span.
pub const STABLE_P: f32 = 0.7;
pub const STABLE_REPORTS: i64 = 10;
pub const STABLE_MS: i64 = 30 * 60 * 1000;
/// Each observed example counts this many times in training: it is a label the fleet
/// confirmed over half an hour, stronger evidence than one line of the shipped corpus.
pub const FEEDBACK_WEIGHT: usize = 5;
/// Most personas in one mirror report, and the longest slug.
const MAX_REPORT_PERSONAS: usize = 256;
const MAX_SLUG: usize = 64;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS persona_belief(
    agent_id TEXT PRIMARY KEY, purpose TEXT, prior TEXT, observed TEXT, combined TEXT,
    observed_hours REAL NOT NULL DEFAULT 0, reports INTEGER NOT NULL DEFAULT 0,
    last_report_ms INTEGER, history_ms INTEGER, updated_ms INTEGER NOT NULL,
    stable_slug TEXT, stable_since_ms INTEGER, stable_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS persona_belief_history(
    agent_id TEXT NOT NULL, at_ms INTEGER NOT NULL, prior TEXT, observed TEXT,
    combined TEXT NOT NULL, observed_hours REAL NOT NULL,
    PRIMARY KEY(agent_id, at_ms));
CREATE TABLE IF NOT EXISTS feedback_examples(
    agent_id TEXT NOT NULL, at_ms INTEGER NOT NULL, description TEXT NOT NULL,
    software TEXT NOT NULL, observed_slug TEXT NOT NULL, probability REAL NOT NULL,
    PRIMARY KEY(agent_id, observed_slug));
";

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { context, source }
}

/// The profiler the beliefs use for priors, installed once the profiling service is up
/// (the QUIC server is built before it).
#[derive(Debug, Default)]
pub struct Beliefs {
    profiler: RwLock<Option<Arc<ProfilingService>>>,
}

impl Beliefs {
    pub fn set_profiler(&self, svc: Arc<ProfilingService>) {
        if let Ok(mut p) = self.profiler.write() {
            *p = Some(svc);
        }
    }

    /// The installed profiler, if any.
    pub fn profiler(&self) -> Option<Arc<ProfilingService>> {
        self.profiler.read().ok().and_then(|p| p.clone())
    }
}

/// One agent's beliefs, each sorted by descending probability (empty when unknown).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Belief {
    pub prior: Vec<PersonaProb>,
    pub observed: Vec<PersonaProb>,
    pub combined: Vec<PersonaProb>,
    pub observed_hours: f64,
    pub reports: i64,
    /// The prior's weight in `combined`: A / (A + h).
    pub prior_weight: f64,
}

fn sorted(mut v: Vec<PersonaProb>) -> Vec<PersonaProb> {
    v.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then_with(|| a.slug.cmp(&b.slug))
    });
    v
}

fn prob_of(v: &[PersonaProb], slug: &str) -> f64 {
    v.iter()
        .find(|p| p.slug == slug)
        .map_or(0.0, |p| f64::from(p.probability))
}

/// The prior's weight after `hours` of observation.
pub fn prior_weight(hours: f64, have_prior: bool, have_observed: bool) -> f64 {
    match (have_prior, have_observed) {
        (true, false) => 1.0,
        (false, _) => 0.0,
        (true, true) => PRIOR_HOURS / (PRIOR_HOURS + hours.max(0.0)),
    }
}

/// The pooling formula of the module docs.
pub fn combine(prior: &[PersonaProb], observed: &[PersonaProb], hours: f64) -> Vec<PersonaProb> {
    let w = prior_weight(hours, !prior.is_empty(), !observed.is_empty());
    let mut slugs: Vec<&str> = prior
        .iter()
        .chain(observed)
        .map(|p| p.slug.as_str())
        .collect();
    slugs.sort_unstable();
    slugs.dedup();
    let mut out: Vec<PersonaProb> = slugs
        .into_iter()
        .map(|s| PersonaProb {
            slug: s.to_owned(),
            probability: (w * prob_of(prior, s) + (1.0 - w) * prob_of(observed, s)) as f32,
        })
        .collect();
    normalise(&mut out);
    sorted(out)
}

fn normalise(v: &mut [PersonaProb]) {
    let total: f64 = v.iter().map(|p| f64::from(p.probability)).sum();
    if total > 0.0 && total.is_finite() {
        for p in v.iter_mut() {
            p.probability = (f64::from(p.probability) / total) as f32;
        }
    }
}

/// Checks a mirror report from the network and returns its distribution, normalised.
pub fn checked_report(r: &MirrorReport) -> Result<Vec<PersonaProb>, String> {
    if r.distribution.is_empty() || r.distribution.len() > MAX_REPORT_PERSONAS {
        return Err(format!(
            "{} personas in a mirror report (1..={MAX_REPORT_PERSONAS})",
            r.distribution.len()
        ));
    }
    if let Some(p) = r
        .distribution
        .iter()
        .find(|p| !(p.probability.is_finite() && p.probability >= 0.0))
    {
        return Err(format!("probability {} of {}", p.probability, p.slug));
    }
    if let Some(p) = r
        .distribution
        .iter()
        .find(|p| p.slug.is_empty() || p.slug.len() > MAX_SLUG)
    {
        return Err(format!("slug {:?} is empty or too long", p.slug));
    }
    let mut d = r.distribution.clone();
    normalise(&mut d);
    Ok(d)
}

fn to_json(v: &[PersonaProb]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn from_json(s: Option<String>) -> Vec<PersonaProb> {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// The stored state of one agent.
#[derive(Debug, Default)]
struct State {
    purpose: Option<String>,
    prior: Vec<PersonaProb>,
    observed: Vec<PersonaProb>,
    hours: f64,
    reports: i64,
    last_report_ms: Option<i64>,
    history_ms: Option<i64>,
    stable_slug: Option<String>,
    stable_since_ms: Option<i64>,
    stable_count: i64,
}

fn load(conn: &rusqlite::Connection, agent_id: &str) -> Result<Option<State>, StoreError> {
    conn.query_row(
        "SELECT purpose, prior, observed, observed_hours, reports, last_report_ms, history_ms,
                stable_slug, stable_since_ms, stable_count
         FROM persona_belief WHERE agent_id = ?1",
        [agent_id],
        |r| {
            Ok(State {
                purpose: r.get(0)?,
                prior: from_json(r.get(1)?),
                observed: from_json(r.get(2)?),
                hours: r.get(3)?,
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

fn save(
    conn: &rusqlite::Connection,
    agent_id: &str,
    s: &State,
    now: i64,
    snapshot: bool,
) -> Result<Vec<PersonaProb>, StoreError> {
    let combined = combine(&s.prior, &s.observed, s.hours);
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
            to_json(&combined),
            s.hours,
            s.reports,
            s.last_report_ms,
            s.history_ms,
            now,
            s.stable_slug,
            s.stable_since_ms,
            s.stable_count
        ],
    )
    .map_err(sql("save belief"))?;
    if snapshot {
        conn.execute(
            "INSERT OR REPLACE INTO persona_belief_history(agent_id, at_ms, prior, observed, combined, observed_hours)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                agent_id,
                now,
                to_json(&s.prior),
                to_json(&s.observed),
                to_json(&combined),
                s.hours
            ],
        )
        .map_err(sql("belief history"))?;
    }
    Ok(combined)
}

/// Records the prior for a declared purpose (at each Hello). Without a profiler, or
/// without a usable description, the prior is empty.
pub fn set_prior(
    store: &Store,
    profiler: Option<&ProfilingService>,
    agent_id: &str,
    purpose: Option<&Purpose>,
) -> Result<(), StoreError> {
    let prior = match (purpose, profiler) {
        (Some(p), Some(svc)) => {
            let req = ProfileRequest {
                description: p.description.clone(),
                software: p.software.clone(),
                data_gb: p.data_gb,
            };
            match svc.profile(&req) {
                Ok(doc) => sorted(
                    doc.personas
                        .into_iter()
                        .map(|w| PersonaProb {
                            slug: w.slug,
                            probability: w.probability as f32,
                        })
                        .collect(),
                ),
                Err(e) => {
                    tracing::info!(agent = agent_id, "no prior for the declared purpose: {e}");
                    Vec::new()
                }
            }
        }
        _ => Vec::new(),
    };
    let purpose_json = purpose.and_then(|p| serde_json::to_string(p).ok());
    let now = crate::store::now_ms();
    let guard = store.w()?;
    let conn = guard
        .unchecked_transaction()
        .map_err(sql("begin belief update"))?;
    let mut s = load(&conn, agent_id)?.unwrap_or_default();
    let changed = s.prior != prior || s.purpose != purpose_json;
    s.prior = prior;
    s.purpose = purpose_json;
    save(&conn, agent_id, &s, now, changed)?;
    conn.commit().map_err(sql("commit belief update"))
}

/// Folds one mirror report into the agent's beliefs (after its batch was committed).
/// Reports older than the last one are ignored. May store a feedback example.
pub fn on_mirror(store: &Store, agent_id: &str, report: &MirrorReport) -> Result<(), StoreError> {
    let dist = match checked_report(report) {
        Ok(d) => d,
        Err(why) => {
            tracing::warn!(agent = agent_id, "ignoring a mirror report: {why}");
            return Ok(());
        }
    };
    let t = report.window_end_ms;
    // One transaction per report: one commit on the writer the ingest shares.
    let guard = store.w()?;
    let conn = guard
        .unchecked_transaction()
        .map_err(sql("begin belief update"))?;
    let mut s = load(&conn, agent_id)?.unwrap_or_default();
    if s.last_report_ms.is_some_and(|l| t <= l) {
        return Ok(());
    }
    let gap_s = s
        .last_report_ms
        .map_or(10.0, |l| (t - l) as f64 / 1000.0)
        .clamp(0.0, MAX_REPORT_GAP_S);
    if s.observed.is_empty() {
        s.observed = sorted(dist.clone());
    } else {
        let dt = s.last_report_ms.map_or(gap_s, |l| (t - l) as f64 / 1000.0);
        let alpha = 1.0 - (-dt.max(0.0) / OBSERVED_TAU_S).exp();
        let mut slugs: Vec<String> = s
            .observed
            .iter()
            .chain(&dist)
            .map(|p| p.slug.clone())
            .collect();
        slugs.sort_unstable();
        slugs.dedup();
        let mut next: Vec<PersonaProb> = slugs
            .into_iter()
            .map(|slug| {
                let p = (1.0 - alpha) * prob_of(&s.observed, &slug) + alpha * prob_of(&dist, &slug);
                PersonaProb {
                    slug,
                    probability: p as f32,
                }
            })
            .collect();
        normalise(&mut next);
        s.observed = sorted(next);
    }
    s.hours += gap_s / 3600.0;
    s.reports += 1;
    s.last_report_ms = Some(t);

    // Stability of the raw reports' top persona.
    let top = sorted(dist).into_iter().next();
    match top {
        Some(p) if p.probability >= STABLE_P => {
            if s.stable_slug.as_deref() == Some(p.slug.as_str()) {
                s.stable_count += 1;
            } else {
                s.stable_slug = Some(p.slug.clone());
                s.stable_since_ms = Some(t);
                s.stable_count = 1;
            }
            if s.stable_count >= STABLE_REPORTS
                && s.stable_since_ms
                    .is_some_and(|since| t - since >= STABLE_MS)
            {
                remember(&conn, agent_id, &s, &p, t)?;
            }
        }
        _ => {
            s.stable_slug = None;
            s.stable_since_ms = None;
            s.stable_count = 0;
        }
    }
    let snapshot = s.history_ms.is_none_or(|h| t - h >= HISTORY_EVERY_MS);
    if snapshot {
        s.history_ms = Some(t);
    }
    save(&conn, agent_id, &s, t, snapshot)?;
    conn.commit().map_err(sql("commit belief update"))
}

/// Stores the feedback example of a stable observation, once per agent and persona.
fn remember(
    conn: &rusqlite::Connection,
    agent_id: &str,
    s: &State,
    top: &PersonaProb,
    now: i64,
) -> Result<(), StoreError> {
    let Some(purpose) = s
        .purpose
        .as_deref()
        .and_then(|p| serde_json::from_str::<Purpose>(p).ok())
    else {
        return Ok(());
    };
    if purpose.description.trim().is_empty() {
        return Ok(());
    }
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO feedback_examples(agent_id, at_ms, description, software, observed_slug, probability)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                agent_id,
                now,
                purpose.description,
                serde_json::to_string(&purpose.software).unwrap_or_else(|_| "[]".into()),
                top.slug,
                f64::from(top.probability)
            ],
        )
        .map_err(sql("store feedback example"))?;
    if n > 0 {
        tracing::info!(
            agent = agent_id,
            persona = %top.slug,
            "stable observation stored as a profiler training example"
        );
    }
    Ok(())
}

/// The agent's beliefs; None when nothing is known about it.
pub fn belief(store: &Store, agent_id: &str) -> Result<Option<Belief>, StoreError> {
    let conn = store.r()?;
    let Some(s) = load(&conn, agent_id)? else {
        return Ok(None);
    };
    let combined = combine(&s.prior, &s.observed, s.hours);
    Ok(Some(Belief {
        prior_weight: prior_weight(s.hours, !s.prior.is_empty(), !s.observed.is_empty()),
        prior: s.prior,
        observed: s.observed,
        combined,
        observed_hours: s.hours,
        reports: s.reports,
    }))
}

/// The combined posterior the engine sizes from (empty when nothing is known).
pub fn combined(store: &Store, agent_id: &str) -> Result<Vec<PersonaProb>, StoreError> {
    Ok(belief(store, agent_id)?
        .map(|b| b.combined)
        .unwrap_or_default())
}

/// The agent's belief snapshots at or after `since_ms`, oldest first.
pub fn history(store: &Store, agent_id: &str, since_ms: i64) -> Result<Vec<Value>, StoreError> {
    let conn = store.r()?;
    let mut st = conn
        .prepare_cached(
            "SELECT at_ms, prior, observed, combined, observed_hours FROM persona_belief_history
             WHERE agent_id = ?1 AND at_ms >= ?2 ORDER BY at_ms",
        )
        .map_err(sql("belief history"))?;
    let rows = st
        .query_map(params![agent_id, since_ms], |r| {
            Ok(json!({
                "at_ms": r.get::<_, i64>(0)?,
                "prior": from_json(r.get(1)?),
                "observed": from_json(r.get(2)?),
                "combined": from_json(r.get(3)?),
                "observed_hours": r.get::<_, f64>(4)?,
            }))
        })
        .map_err(sql("belief history"))?;
    rows.collect::<Result<_, _>>()
        .map_err(sql("belief history"))
}

/// `GET /v1/agents/{id}/beliefs?since_ms=MS`: the current beliefs and the snapshots since
/// `since_ms` (default: all), `{"agent", "prior", "observed", "combined", "belief",
/// "history": [{"at_ms", "prior", "observed", "combined", "observed_hours"}]}`.
pub async fn handle(
    shared: &Arc<crate::server::Shared>,
    method: &hyper::Method,
    parts: &[&str],
    query: &str,
) -> Option<crate::api::Resp> {
    use crate::api::{error, reply};
    use hyper::StatusCode;
    let ["v1", "agents", id, "beliefs"] = parts else {
        return None;
    };
    if method != hyper::Method::GET {
        return None;
    }
    let mut since_ms = 0i64;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("since_ms", v)) => match v.parse() {
                Ok(x) => since_ms = x,
                Err(_) => {
                    return Some(error(
                        StatusCode::BAD_REQUEST,
                        format!("since_ms={v:?} is not a time in ms"),
                    ));
                }
            },
            _ => {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {kv:?}"),
                ));
            }
        }
    }
    let (store, id) = (shared.store.clone(), (*id).to_owned());
    let r = tokio::task::spawn_blocking(move || {
        match store.agent_key(&id) {
            Ok(Some(_)) => {}
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no agent {id}")),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
        let mut v = json!({ "agent": id });
        let b = belief(&store, &id).map(Option::unwrap_or_default);
        match (b, history(&store, &id, since_ms)) {
            (Ok(b), Ok(h)) => {
                v["prior"] = json!(b.prior);
                v["observed"] = json!(b.observed);
                v["combined"] = json!(b.combined);
                v["belief"] = json!({
                    "observed_hours": b.observed_hours,
                    "reports": b.reports,
                    "prior_weight": b.prior_weight,
                });
                v["history"] = Value::Array(h);
                reply(StatusCode::OK, &v)
            }
            (Err(e), _) | (_, Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    })
    .await
    .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e));
    Some(r)
}

/// Adds `prior`, `observed`, `combined` (each `[{"slug","probability"}]`), the prior's
/// weight and the agent's recent events to the `agents show` document.
pub fn augment_agent_json(store: &Store, agent_id: &str, v: &mut Value) -> Result<(), StoreError> {
    let b = belief(store, agent_id)?.unwrap_or_default();
    v["prior"] = json!(b.prior);
    v["observed"] = json!(b.observed);
    v["combined"] = json!(b.combined);
    v["belief"] = json!({
        "observed_hours": b.observed_hours,
        "reports": b.reports,
        "prior_weight": b.prior_weight,
    });
    let events = crate::events::list_events(store, Some(agent_id), 0, 20)?;
    v["events"] = json!(events);
    Ok(())
}

/// The human lines `personactl agents show` prints for the beliefs and recent events.
pub fn human_lines(v: &Value) -> String {
    let top = |k: &str| {
        let list = v[k].as_array().map_or(&[][..], Vec::as_slice);
        if list.is_empty() {
            return "-".to_owned();
        }
        list.iter()
            .take(3)
            .map(|p| {
                format!(
                    "{} {:.2}",
                    p["slug"].as_str().unwrap_or("?"),
                    p["probability"].as_f64().unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "persona:    combined {} (prior weight {:.2}, {:.1} h observed)\n            prior {}\n            observed {}\n",
        top("combined"),
        v["belief"]["prior_weight"].as_f64().unwrap_or(0.0),
        v["belief"]["observed_hours"].as_f64().unwrap_or(0.0),
        top("prior"),
        top("observed"),
    );
    if let Some(evs) = v["events"].as_array().filter(|e| !e.is_empty()) {
        s += "recent events:\n";
        for e in evs.iter().take(10) {
            s += &format!(
                "  {:<8} {:<16} {}\n",
                e["severity"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["summary"].as_str().unwrap_or("")
            );
        }
    }
    s
}

/// The observed feedback examples, in the profiler's training format, each repeated
/// [`FEEDBACK_WEIGHT`] times. Reads `feedback_examples` in the coordinator database at
/// `db_path` (the file the persona tables share).
pub fn training_feedback(db_path: &std::path::Path) -> Result<Vec<Feedback>, PersonaDbError> {
    let conn = rusqlite::Connection::open(db_path).map_err(|source| PersonaDbError::Open {
        path: db_path.to_owned(),
        source,
    })?;
    let exists: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'feedback_examples'",
            [],
            |r| r.get(0),
        )
        .map_err(|source| PersonaDbError::Sql {
            context: "find feedback_examples",
            source,
        })?;
    if !exists {
        return Ok(Vec::new());
    }
    let q = |source| PersonaDbError::Sql {
        context: "list feedback_examples",
        source,
    };
    let mut st = conn
        .prepare(
            "SELECT description, software, observed_slug FROM feedback_examples ORDER BY at_ms, agent_id",
        )
        .map_err(q)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(q)?;
    let mut out = Vec::new();
    for row in rows {
        let (description, software, slug) = row.map_err(q)?;
        let software: Vec<String> = serde_json::from_str(&software).map_err(|e| {
            PersonaDbError::Feedback(format!("feedback_examples software list: {e}"))
        })?;
        let f = Feedback {
            description,
            software,
            data_gb: None,
            slug,
            source: "observed".into(),
        };
        out.extend(std::iter::repeat_n(f, FEEDBACK_WEIGHT));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(pairs: &[(&str, f32)]) -> Vec<PersonaProb> {
        pairs
            .iter()
            .map(|(s, p)| PersonaProb {
                slug: (*s).into(),
                probability: *p,
            })
            .collect()
    }

    fn report(t: i64, pairs: &[(&str, f32)]) -> MirrorReport {
        MirrorReport {
            model_version: "m".into(),
            window_end_ms: t,
            distribution: d(pairs),
        }
    }

    #[test]
    fn the_prior_weighs_less_as_evidence_accumulates() {
        let prior = d(&[("web-server", 0.9), ("ci-runner", 0.1)]);
        let obs = d(&[("ci-runner", 0.9), ("web-server", 0.1)]);
        assert_eq!(combine(&prior, &[], 100.0), sorted(prior.clone()));
        assert_eq!(combine(&[], &obs, 0.0), sorted(obs.clone()));
        let at = |h| prob_of(&combine(&prior, &obs, h), "ci-runner");
        assert!((at(0.0) - 0.1).abs() < 1e-6);
        assert!(
            (at(PRIOR_HOURS) - 0.5).abs() < 1e-6,
            "equal weight at A hours"
        );
        assert!(at(24.0) > 0.7 && at(240.0) > at(24.0));
        let c = combine(&prior, &obs, 3.0);
        let total: f32 = c.iter().map(|p| p.probability).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn reports_build_the_observed_distribution_and_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("persona.db")).unwrap();
        let t0 = 1_700_000_000_000i64;
        for k in 0..60 {
            let r = report(t0 + k * 10_000, &[("ci-runner", 0.8), ("web-server", 0.2)]);
            on_mirror(&store, "a-1", &r).unwrap();
        }
        // An old or repeated report is ignored.
        on_mirror(&store, "a-1", &report(t0, &[("web-server", 1.0)])).unwrap();
        // A hostile one too.
        on_mirror(&store, "a-1", &report(t0 + 700_000, &[("x", f32::NAN)])).unwrap();
        let b = belief(&store, "a-1").unwrap().unwrap();
        assert_eq!(b.reports, 60);
        assert_eq!(b.observed[0].slug, "ci-runner");
        assert!((b.observed_hours - 600.0 / 3600.0).abs() < 1e-9);
        assert_eq!(b.combined, b.observed, "no prior: combined is observed");
        assert_eq!(combined(&store, "a-1").unwrap()[0].slug, "ci-runner");
        // 10 minutes of reports: snapshots at the first and after 5 minutes.
        assert_eq!(history(&store, "a-1", 0).unwrap().len(), 2);
        assert!(combined(&store, "nobody").unwrap().is_empty());
    }

    #[test]
    fn a_stable_confident_observation_becomes_one_feedback_example() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("persona.db");
        let store = Store::open(&path).unwrap();
        let purpose = Purpose {
            description: "nightly builds of our monorepo".into(),
            software: vec!["bazel".into()],
            data_gb: None,
        };
        set_prior(&store, None, "a-1", Some(&purpose)).unwrap();
        let t0 = 1_700_000_000_000i64;
        // 29 minutes confident, then one unsure report: the clock restarts.
        let mut t = t0;
        while t < t0 + 29 * 60_000 {
            on_mirror(
                &store,
                "a-1",
                &report(t, &[("ci-runner", 0.9), ("web-server", 0.1)]),
            )
            .unwrap();
            t += 10_000;
        }
        on_mirror(
            &store,
            "a-1",
            &report(t, &[("ci-runner", 0.5), ("web-server", 0.5)]),
        )
        .unwrap();
        assert!(training_feedback(&path).unwrap().is_empty());
        let start = t + 10_000;
        t = start;
        while t <= start + 31 * 60_000 {
            on_mirror(
                &store,
                "a-1",
                &report(t, &[("ci-runner", 0.9), ("web-server", 0.1)]),
            )
            .unwrap();
            t += 10_000;
        }
        let fb = training_feedback(&path).unwrap();
        assert_eq!(fb.len(), FEEDBACK_WEIGHT, "stored once: {fb:?}");
        assert_eq!(fb[0].slug, "ci-runner");
        assert_eq!(fb[0].description, purpose.description);
        assert_eq!(fb[0].software, purpose.software);
    }

    /// The feedback loop end to end: agents declared a purpose the profiler maps to one
    /// persona, behaved stably like another; after retraining, the profiler answers the
    /// observed persona for that description.
    #[test]
    fn stable_observations_change_the_profilers_answer_after_retraining() {
        let dir = tempfile::tempdir().unwrap();
        let svc = ProfilingService::open(dir.path(), None).unwrap();
        let store = Store::open(&dir.path().join("persona.db")).unwrap();
        let purpose = Purpose {
            description: "quarterly zorblax reconciliation runs for the finance team".into(),
            software: vec!["zorblaxd".into()],
            data_gb: None,
        };
        let req = ProfileRequest {
            description: purpose.description.clone(),
            software: purpose.software.clone(),
            data_gb: None,
        };
        let before = svc.profile(&req).unwrap().personas[0].slug.clone();
        let target = if before == "game-streamer" {
            "hft-modeler"
        } else {
            "game-streamer"
        };
        let t0 = 1_700_000_000_000i64;
        for agent in ["a-1", "a-2", "a-3"] {
            set_prior(&store, Some(&svc), agent, Some(&purpose)).unwrap();
            assert_eq!(
                belief(&store, agent).unwrap().unwrap().prior[0].slug,
                before
            );
            let mut t = t0;
            while t <= t0 + 31 * 60_000 {
                on_mirror(
                    &store,
                    agent,
                    &report(t, &[(target, 0.85), (&before, 0.15)]),
                )
                .unwrap();
                t += 10_000;
            }
            let b = belief(&store, agent).unwrap().unwrap();
            assert!(
                b.prior_weight < 1.0 && b.prior_weight > 0.8,
                "{}",
                b.prior_weight
            );
        }
        let outcome = svc.train(7).unwrap();
        assert_eq!(outcome.feedback_examples, 3 * FEEDBACK_WEIGHT);
        let after = svc.profile(&req).unwrap().personas[0].slug.clone();
        assert_eq!(
            after, target,
            "profiler still answers {after} (was {before})"
        );
    }
}
