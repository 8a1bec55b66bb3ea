//! The persona database and the profiler's feedback examples, in the coordinator's store
//! (`persona.db`; the tables and their SQL are `store::personas`).
//!
//! What it is for: `personas` holds one row per persona (slug, the validated persona as
//! JSON, `source` = builtin|imported, update time). An empty database is seeded from the
//! built-in catalogue; on upgrade, built-ins that are missing are added and built-in rows
//! the operator never replaced are refreshed to the new built-in text, while imported rows
//! are never touched. An import is validated in full before the transaction starts and is
//! written in one transaction: all or nothing. `feedback` holds labelled requests
//! (description, software, data size, slug, where it came from) that `model train` adds to
//! the shipped corpus; issue 5 fills it from observed behaviour.
//!
//! What it is not: validation rules (see `personas`) or the HTTP layer (`profile_api`).

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::profile::personas::{self, Format, Persona, PersonaError};
use crate::store::{PersonaRecord, Store, StoreError};

pub use crate::store::{Feedback, ImportReport};

/// Errors of the persona database.
#[derive(Debug, thiserror::Error)]
pub enum PersonaDbError {
    #[error("persona database: {0}")]
    Store(#[from] StoreError),
    #[error("stored persona {slug} is corrupt: {reason}")]
    Corrupt { slug: String, reason: String },
    #[error("built-in persona catalogue is invalid: {0}")]
    Builtin(#[from] PersonaError),
    #[error("bad feedback example: {0}")]
    Feedback(String),
}

/// A persona as listed.
#[derive(Debug, Clone, Serialize)]
pub struct PersonaRow {
    pub slug: String,
    pub name: String,
    pub source: String,
    pub updated_ms: i64,
}

/// A stored persona with its bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct StoredPersona {
    pub source: String,
    pub updated_ms: i64,
    pub persona: Persona,
}

/// The persona tables, in the coordinator's store.
#[derive(Debug)]
pub struct PersonaDb {
    store: Arc<Store>,
}

impl PersonaDb {
    /// Opens the store at `path` (`persona.db`) and seeds or upgrades the built-ins.
    pub fn open(path: &Path) -> Result<Self, PersonaDbError> {
        Self::new(Arc::new(Store::open(path)?))
    }

    /// The persona tables of `store`, with the built-ins seeded or upgraded.
    pub fn new(store: Arc<Store>) -> Result<Self, PersonaDbError> {
        let db = Self { store };
        db.seed()?;
        Ok(db)
    }

    /// The store the tables live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Adds missing built-ins and refreshes unedited ones, in one transaction.
    fn seed(&self) -> Result<(), PersonaDbError> {
        let builtins = personas::builtin()?
            .iter()
            .map(|p| Ok((p.slug.clone(), Self::encode(p)?)))
            .collect::<Result<Vec<_>, PersonaDbError>>()?;
        Ok(self.store.seed_builtin_personas(&builtins)?)
    }

    fn encode(p: &Persona) -> Result<String, PersonaDbError> {
        serde_json::to_string(p).map_err(|e| PersonaDbError::Corrupt {
            slug: p.slug.clone(),
            reason: e.to_string(),
        })
    }

    fn decode(slug: &str, body: &str) -> Result<Persona, PersonaDbError> {
        personas::parse_persona(body.as_bytes(), Format::Json).map_err(|e| {
            PersonaDbError::Corrupt {
                slug: slug.to_owned(),
                reason: e.to_string(),
            }
        })
    }

    fn stored(r: PersonaRecord) -> Result<StoredPersona, PersonaDbError> {
        Ok(StoredPersona {
            persona: Self::decode(&r.slug, &r.body)?,
            source: r.source,
            updated_ms: r.updated_ms,
        })
    }

    /// All personas, built-ins first in their fixed order, then the rest by slug.
    pub fn all(&self) -> Result<Vec<StoredPersona>, PersonaDbError> {
        let mut out = self
            .store
            .personas()?
            .into_iter()
            .map(Self::stored)
            .collect::<Result<Vec<_>, PersonaDbError>>()?;
        let order = |slug: &str| {
            personas::BUILTIN
                .iter()
                .position(|(s, _)| *s == slug)
                .unwrap_or(usize::MAX)
        };
        out.sort_by(|a, b| {
            order(&a.persona.slug)
                .cmp(&order(&b.persona.slug))
                .then(a.persona.slug.cmp(&b.persona.slug))
        });
        Ok(out)
    }

    /// The list view.
    pub fn list(&self) -> Result<Vec<PersonaRow>, PersonaDbError> {
        Ok(self
            .all()?
            .into_iter()
            .map(|s| PersonaRow {
                slug: s.persona.slug,
                name: s.persona.name,
                source: s.source,
                updated_ms: s.updated_ms,
            })
            .collect())
    }

    /// One persona.
    pub fn get(&self, slug: &str) -> Result<Option<StoredPersona>, PersonaDbError> {
        self.store.persona(slug)?.map(Self::stored).transpose()
    }

    /// Writes already-validated personas in one transaction (all or nothing). A persona
    /// with an existing slug replaces it and becomes `imported` (operator-owned from then on).
    pub fn import(&self, list: &[Persona]) -> Result<ImportReport, PersonaDbError> {
        // Re-validate: callers should have, but nothing unvalidated may reach the table.
        for p in list {
            personas::validate(p)?;
        }
        let rows = list
            .iter()
            .map(|p| Ok((p.slug.clone(), Self::encode(p)?)))
            .collect::<Result<Vec<_>, PersonaDbError>>()?;
        Ok(self.store.import_personas(&rows)?)
    }

    /// Stores one labelled example (the slug must be a known persona).
    pub fn add_feedback(&self, f: &Feedback) -> Result<i64, PersonaDbError> {
        if f.description.trim().is_empty() || f.description.len() > 64 * 1024 {
            return Err(PersonaDbError::Feedback(
                "description must be 1..=65536 bytes".into(),
            ));
        }
        if f.data_gb.is_some_and(|g| !g.is_finite() || g < 0.0) {
            return Err(PersonaDbError::Feedback(
                "data_gb must be a finite number >= 0".into(),
            ));
        }
        if self.get(&f.slug)?.is_none() {
            return Err(PersonaDbError::Feedback(format!(
                "unknown persona {:?}",
                f.slug
            )));
        }
        Ok(self.store.add_feedback(f)?)
    }

    /// All feedback examples, oldest first.
    pub fn feedback(&self) -> Result<Vec<Feedback>, PersonaDbError> {
        Ok(self.store.feedback()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_import_and_upgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("persona.db");
        let db = PersonaDb::open(&path).expect("open");
        let list = db.list().expect("list");
        assert_eq!(list.len(), 10);
        assert!(list.iter().all(|r| r.source == "builtin"));
        assert_eq!(list[0].slug, "data-scientist-ml");

        // An operator edit survives a restart (re-seed).
        let mut p = db.get("web-server").expect("get").expect("present").persona;
        p.name = "Our web tier".into();
        let mut new = p.clone();
        new.slug = "web-server-eu".into();
        let r = db.import(&[p, new]).expect("import");
        assert_eq!((r.replaced.len(), r.added.len()), (1, 1));
        drop(db);
        let db = PersonaDb::open(&path).expect("reopen");
        let w = db.get("web-server").expect("get").expect("present");
        assert_eq!(
            (w.persona.name.as_str(), w.source.as_str()),
            ("Our web tier", "imported")
        );
        assert_eq!(db.list().expect("list").len(), 11);

        // A deleted built-in comes back on the next start.
        assert!(db.store().delete_persona("ci-runner").expect("delete"));
        drop(db);
        let db = PersonaDb::open(&path).expect("reopen");
        assert!(db.get("ci-runner").expect("get").is_some());
    }

    #[test]
    fn import_is_all_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = PersonaDb::open(&dir.path().join("p.db")).expect("open");
        let good = db.get("vdi-office").expect("get").expect("present").persona;
        let mut a = good.clone();
        a.slug = "new-one".into();
        let mut b = good;
        b.slug = "new-two".into();
        b.requirements.cpu_cores.value = f64::INFINITY;
        assert!(db.import(&[a, b]).is_err());
        assert!(db.get("new-one").expect("get").is_none(), "half-imported");
    }

    #[test]
    fn feedback_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = PersonaDb::open(&dir.path().join("p.db")).expect("open");
        let f = Feedback {
            description: "postgres primary for the shop".into(),
            software: vec!["postgresql".into()],
            data_gb: Some(200.0),
            slug: "database-oltp".into(),
            source: "operator".into(),
        };
        db.add_feedback(&f).expect("add");
        assert_eq!(db.feedback().expect("list"), vec![f.clone()]);
        let mut bad = f;
        bad.slug = "nope".into();
        assert!(db.add_feedback(&bad).is_err());
    }
}
