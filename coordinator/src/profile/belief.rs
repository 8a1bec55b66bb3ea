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

use serde::Serialize;
use serde_json::{Value, json};

use persona_shared::protocol::{MirrorReport, PersonaProb, Purpose};

use crate::profile::persona_db::{Feedback, PersonaDbError};
use crate::store::{BeliefRecord, BeliefWrite, FeedbackExample, Store, StoreError};

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

/// What to write for `record` at `at_ms`: the state, its combined distribution, whether
/// to keep a history snapshot and a feedback example.
fn write(
    record: BeliefRecord,
    at_ms: i64,
    snapshot: bool,
    feedback: Option<FeedbackExample>,
) -> BeliefWrite {
    BeliefWrite {
        combined: combine(&record.prior, &record.observed, record.observed_hours),
        record,
        at_ms,
        snapshot,
        feedback,
    }
}

/// What turns a declared purpose into a prior: the profiler (`ProfilingService`
/// implements it). A trait, so beliefs need not know the service that owns them.
pub trait PriorSource {
    type Error: std::fmt::Display;
    /// The persona distribution for `purpose`, in any order.
    fn prior(&self, purpose: &Purpose) -> Result<Vec<PersonaProb>, Self::Error>;
}

/// Records the prior for a declared purpose (at each Hello). Without a profiler, or
/// without a usable description, the prior is empty.
pub fn set_prior<P: PriorSource>(
    store: &Store,
    profiler: Option<&P>,
    agent_id: &str,
    purpose: Option<&Purpose>,
) -> Result<(), StoreError> {
    let prior = match (purpose, profiler) {
        (Some(p), Some(svc)) => match svc.prior(p) {
            Ok(dist) => sorted(dist),
            Err(e) => {
                tracing::info!(agent = agent_id, "no prior for the declared purpose: {e}");
                Vec::new()
            }
        },
        _ => Vec::new(),
    };
    let purpose_json = purpose.and_then(|p| serde_json::to_string(p).ok());
    let now = crate::store::now_ms();
    store.update_belief(agent_id, |s| {
        let mut s = s.unwrap_or_default();
        let changed = s.prior != prior || s.purpose != purpose_json;
        s.prior = prior;
        s.purpose = purpose_json;
        Some(write(s, now, changed, None))
    })?;
    Ok(())
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
    let mut remembered = None;
    let new_example = store.update_belief(agent_id, |s| {
        let mut s = s.unwrap_or_default();
        if s.last_report_ms.is_some_and(|l| t <= l) {
            return None;
        }
        let feedback = fold_report(&mut s, dist, t);
        remembered = feedback.as_ref().map(|f| f.observed_slug.clone());
        let snapshot = s.history_ms.is_none_or(|h| t - h >= HISTORY_EVERY_MS);
        if snapshot {
            s.history_ms = Some(t);
        }
        Some(write(s, t, snapshot, feedback))
    })?;
    if new_example == Some(true)
        && let Some(slug) = remembered
    {
        tracing::info!(
            agent = agent_id,
            persona = %slug,
            "stable observation stored as a profiler training example"
        );
    }
    Ok(())
}

/// Folds the report `dist` at `t` into `s`; returns the feedback example to keep when the
/// observation has become confident and stable.
fn fold_report(s: &mut BeliefRecord, dist: Vec<PersonaProb>, t: i64) -> Option<FeedbackExample> {
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
    s.observed_hours += gap_s / 3600.0;
    s.reports += 1;
    s.last_report_ms = Some(t);

    // Stability of the raw reports' top persona.
    let top = sorted(dist).into_iter().next();
    let mut feedback = None;
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
                feedback = feedback_example(s, &p, t);
            }
        }
        _ => {
            s.stable_slug = None;
            s.stable_since_ms = None;
            s.stable_count = 0;
        }
    }
    feedback
}

/// The feedback example of a stable observation: the declared purpose (if there is a
/// usable one) and the observed persona. The store keeps it once per agent and persona.
fn feedback_example(s: &BeliefRecord, top: &PersonaProb, now: i64) -> Option<FeedbackExample> {
    let purpose = s
        .purpose
        .as_deref()
        .and_then(|p| serde_json::from_str::<Purpose>(p).ok())?;
    if purpose.description.trim().is_empty() {
        return None;
    }
    Some(FeedbackExample {
        at_ms: now,
        description: purpose.description,
        software: purpose.software,
        observed_slug: top.slug.clone(),
        probability: f64::from(top.probability),
    })
}

/// The agent's beliefs; None when nothing is known about it.
pub fn belief(store: &Store, agent_id: &str) -> Result<Option<Belief>, StoreError> {
    let Some(s) = store.belief(agent_id)? else {
        return Ok(None);
    };
    let combined = combine(&s.prior, &s.observed, s.observed_hours);
    Ok(Some(Belief {
        prior_weight: prior_weight(
            s.observed_hours,
            !s.prior.is_empty(),
            !s.observed.is_empty(),
        ),
        prior: s.prior,
        observed: s.observed,
        combined,
        observed_hours: s.observed_hours,
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
    Ok(store
        .belief_history(agent_id, since_ms)?
        .into_iter()
        .map(|h| {
            json!({
                "at_ms": h.at_ms,
                "prior": h.prior,
                "observed": h.observed,
                "combined": h.combined,
                "observed_hours": h.observed_hours,
            })
        })
        .collect())
}

/// Sets `prior`, `observed`, `combined` (each `[{"slug","probability"}]`) and `belief`
/// (observed hours, reports, the prior's weight) of a document about an agent.
pub fn put_json(b: &Belief, v: &mut Value) {
    v["prior"] = json!(b.prior);
    v["observed"] = json!(b.observed);
    v["combined"] = json!(b.combined);
    v["belief"] = json!({
        "observed_hours": b.observed_hours,
        "reports": b.reports,
        "prior_weight": b.prior_weight,
    });
}

/// Adds the beliefs ([`put_json`]) and the agent's recent events to the `agents show`
/// document.
pub fn augment_agent_json(store: &Store, agent_id: &str, v: &mut Value) -> Result<(), StoreError> {
    put_json(&belief(store, agent_id)?.unwrap_or_default(), v);
    let events = store.list_events(Some(agent_id), 0, 20)?;
    v["events"] = json!(events);
    Ok(())
}

/// The observed feedback examples (`feedback_examples`), in the profiler's training
/// format, each repeated [`FEEDBACK_WEIGHT`] times.
pub fn training_feedback(store: &Store) -> Result<Vec<Feedback>, PersonaDbError> {
    let mut out = Vec::new();
    for (_agent, e) in store.feedback_examples()? {
        let f = Feedback {
            description: e.description,
            software: e.software,
            data_gb: None,
            slug: e.observed_slug,
            source: "observed".into(),
        };
        out.extend(std::iter::repeat_n(f, FEEDBACK_WEIGHT));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{ProfileRequest, ProfilingService};

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
        set_prior::<ProfilingService>(&store, None, "a-1", Some(&purpose)).unwrap();
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
        assert!(training_feedback(&store).unwrap().is_empty());
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
        let fb = training_feedback(&store).unwrap();
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
