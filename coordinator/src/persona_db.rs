//! The persona database and the profiler's feedback examples, in the coordinator's SQLite
//! file (`persona.db`, its own connection; WAL lets it sit beside the telemetry store).
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

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::personas::{self, Format, Persona, PersonaError};
use crate::store::now_ms;

/// Errors of the persona database.
#[derive(Debug, thiserror::Error)]
pub enum PersonaDbError {
    #[error("persona database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("persona database query failed ({context}): {source}")]
    Sql {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("stored persona {slug} is corrupt: {reason}")]
    Corrupt { slug: String, reason: String },
    #[error("built-in persona catalogue is invalid: {0}")]
    Builtin(#[from] PersonaError),
    #[error("a lock on the persona database was poisoned by a panic")]
    Poisoned,
    #[error("bad feedback example: {0}")]
    Feedback(String),
}

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> PersonaDbError {
    move |source| PersonaDbError::Sql { context, source }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS personas(
    slug TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    source TEXT NOT NULL CHECK(source IN ('builtin', 'imported')),
    updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feedback(
    id INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    software TEXT NOT NULL,
    data_gb REAL,
    slug TEXT NOT NULL,
    source TEXT NOT NULL,
    created_ms INTEGER NOT NULL);
";

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

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
}

/// One labelled request for training.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    pub description: String,
    #[serde(default)]
    pub software: Vec<String>,
    #[serde(default)]
    pub data_gb: Option<f64>,
    pub slug: String,
    /// Where the label came from, e.g. "operator", "observed".
    pub source: String,
}

/// The persona tables.
#[derive(Debug)]
pub struct PersonaDb {
    conn: Mutex<Connection>,
}

impl PersonaDb {
    /// Opens `persona.db` (creating the tables) and seeds or upgrades the built-ins.
    pub fn open(path: &Path) -> Result<Self, PersonaDbError> {
        let conn = Connection::open(path).map_err(|source| PersonaDbError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql("busy_timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("journal_mode"))?;
        conn.execute_batch(SCHEMA).map_err(sql("persona schema"))?;
        let db = Self {
            conn: Mutex::new(conn),
        };
        db.seed()?;
        Ok(db)
    }

    fn c(&self) -> Result<std::sync::MutexGuard<'_, Connection>, PersonaDbError> {
        self.conn.lock().map_err(|_| PersonaDbError::Poisoned)
    }

    /// Adds missing built-ins and refreshes unedited ones, in one transaction.
    fn seed(&self) -> Result<(), PersonaDbError> {
        let builtins = personas::builtin()?;
        let mut c = self.c()?;
        let tx = c.transaction().map_err(sql("seed"))?;
        let now = now_ms();
        for p in &builtins {
            let body = serde_json::to_string(p).map_err(|e| PersonaDbError::Corrupt {
                slug: p.slug.clone(),
                reason: e.to_string(),
            })?;
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT source, body FROM personas WHERE slug = ?1",
                    params![p.slug],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql("seed lookup"))?;
            match existing {
                None => {
                    tx.execute(
                        "INSERT INTO personas(slug, body, source, updated_ms) VALUES (?1, ?2, 'builtin', ?3)",
                        params![p.slug, body, now],
                    )
                    .map_err(sql("seed insert"))?;
                }
                Some((source, old)) if source == "builtin" && old != body => {
                    tx.execute(
                        "UPDATE personas SET body = ?2, updated_ms = ?3 WHERE slug = ?1",
                        params![p.slug, body, now],
                    )
                    .map_err(sql("seed refresh"))?;
                }
                Some(_) => {}
            }
        }
        tx.commit().map_err(sql("seed commit"))
    }

    fn decode(slug: &str, body: &str) -> Result<Persona, PersonaDbError> {
        personas::parse_persona(body.as_bytes(), Format::Json).map_err(|e| {
            PersonaDbError::Corrupt {
                slug: slug.to_owned(),
                reason: e.to_string(),
            }
        })
    }

    /// All personas, built-ins first in their fixed order, then the rest by slug.
    pub fn all(&self) -> Result<Vec<StoredPersona>, PersonaDbError> {
        let c = self.c()?;
        let mut st = c
            .prepare("SELECT slug, body, source, updated_ms FROM personas")
            .map_err(sql("list personas"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(sql("list personas"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("list personas"))?;
        let mut out = rows
            .into_iter()
            .map(|(slug, body, source, updated_ms)| {
                Ok(StoredPersona {
                    persona: Self::decode(&slug, &body)?,
                    source,
                    updated_ms,
                })
            })
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
        let row: Option<(String, String, i64)> = self
            .c()?
            .query_row(
                "SELECT body, source, updated_ms FROM personas WHERE slug = ?1",
                params![slug],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql("get persona"))?;
        row.map(|(body, source, updated_ms)| {
            Ok(StoredPersona {
                persona: Self::decode(slug, &body)?,
                source,
                updated_ms,
            })
        })
        .transpose()
    }

    /// Writes already-validated personas in one transaction (all or nothing). A persona
    /// with an existing slug replaces it and becomes `imported` (operator-owned from then on).
    pub fn import(&self, list: &[Persona]) -> Result<ImportReport, PersonaDbError> {
        // Re-validate: callers should have, but nothing unvalidated may reach the table.
        for p in list {
            personas::validate(p)?;
        }
        let mut c = self.c()?;
        let tx = c.transaction().map_err(sql("import"))?;
        let now = now_ms();
        let mut report = ImportReport::default();
        for p in list {
            let body = serde_json::to_string(p).map_err(|e| PersonaDbError::Corrupt {
                slug: p.slug.clone(),
                reason: e.to_string(),
            })?;
            let n = tx
                .execute(
                    "UPDATE personas SET body = ?2, source = 'imported', updated_ms = ?3 WHERE slug = ?1",
                    params![p.slug, body, now],
                )
                .map_err(sql("import update"))?;
            if n == 1 {
                report.replaced.push(p.slug.clone());
            } else {
                tx.execute(
                    "INSERT INTO personas(slug, body, source, updated_ms) VALUES (?1, ?2, 'imported', ?3)",
                    params![p.slug, body, now],
                )
                .map_err(sql("import insert"))?;
                report.added.push(p.slug.clone());
            }
        }
        tx.commit().map_err(sql("import commit"))?;
        Ok(report)
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
        let software = serde_json::to_string(&f.software)
            .map_err(|e| PersonaDbError::Feedback(e.to_string()))?;
        let c = self.c()?;
        c.execute(
            "INSERT INTO feedback(description, software, data_gb, slug, source, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![f.description, software, f.data_gb, f.slug, f.source, now_ms()],
        )
        .map_err(sql("insert feedback"))?;
        Ok(c.last_insert_rowid())
    }

    /// All feedback examples, oldest first.
    pub fn feedback(&self) -> Result<Vec<Feedback>, PersonaDbError> {
        let c = self.c()?;
        let mut st = c
            .prepare(
                "SELECT description, software, data_gb, slug, source FROM feedback ORDER BY id",
            )
            .map_err(sql("list feedback"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<f64>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(sql("list feedback"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("list feedback"))?;
        rows.into_iter()
            .map(|(description, software, data_gb, slug, source)| {
                let software: Vec<String> =
                    serde_json::from_str(&software).map_err(|e| PersonaDbError::Corrupt {
                        slug: slug.clone(),
                        reason: format!("feedback software list: {e}"),
                    })?;
                Ok(Feedback {
                    description,
                    software,
                    data_gb,
                    slug,
                    source,
                })
            })
            .collect()
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
        db.c()
            .expect("lock")
            .execute("DELETE FROM personas WHERE slug = 'ci-runner'", [])
            .expect("delete");
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
