//! The persona database (`personas`: one row per persona, its validated document as
//! JSON, `builtin` or `imported`, update time) and the operator's labelled requests
//! (`feedback`). Validation and the documents' shape are the profiler's
//! (`profile::personas`); the store keeps the text it is given.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms, sql};

/// A stored persona: its slug, document (JSON), `source` (`builtin` or `imported`) and
/// update time.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonaRecord {
    pub slug: String,
    pub body: String,
    pub source: String,
    pub updated_ms: i64,
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

impl Store {
    /// Adds the built-in personas that are missing and refreshes the built-in rows whose
    /// text changed, in one transaction; rows an operator imported are never touched.
    /// `builtins` are (slug, document).
    pub fn seed_builtin_personas(&self, builtins: &[(String, String)]) -> Result<(), StoreError> {
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("seed"))?;
        let now = now_ms();
        for (slug, body) in builtins {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT source, body FROM personas WHERE slug = ?1",
                    params![slug],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql("seed lookup"))?;
            match existing {
                None => {
                    tx.execute(
                        "INSERT INTO personas(slug, body, source, updated_ms) VALUES (?1, ?2, 'builtin', ?3)",
                        params![slug, body, now],
                    )
                    .map_err(sql("seed insert"))?;
                }
                Some((source, old)) if source == "builtin" && old != *body => {
                    tx.execute(
                        "UPDATE personas SET body = ?2, updated_ms = ?3 WHERE slug = ?1",
                        params![slug, body, now],
                    )
                    .map_err(sql("seed refresh"))?;
                }
                Some(_) => {}
            }
        }
        tx.commit().map_err(sql("seed commit"))
    }

    /// Every stored persona, in no particular order.
    pub fn personas(&self) -> Result<Vec<PersonaRecord>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare("SELECT slug, body, source, updated_ms FROM personas")
            .map_err(sql("list personas"))?;
        st.query_map([], |r| {
            Ok(PersonaRecord {
                slug: r.get(0)?,
                body: r.get(1)?,
                source: r.get(2)?,
                updated_ms: r.get(3)?,
            })
        })
        .map_err(sql("list personas"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("list personas"))
    }

    /// One persona.
    pub fn persona(&self, slug: &str) -> Result<Option<PersonaRecord>, StoreError> {
        self.r()?
            .query_row(
                "SELECT body, source, updated_ms FROM personas WHERE slug = ?1",
                params![slug],
                |r| {
                    Ok(PersonaRecord {
                        slug: slug.to_owned(),
                        body: r.get(0)?,
                        source: r.get(1)?,
                        updated_ms: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(sql("get persona"))
    }

    /// Writes personas (slug, document) in one transaction, all or nothing. One with an
    /// existing slug replaces it and becomes `imported` (operator-owned from then on).
    pub fn import_personas(&self, list: &[(String, String)]) -> Result<ImportReport, StoreError> {
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("import"))?;
        let now = now_ms();
        let mut report = ImportReport::default();
        for (slug, body) in list {
            let n = tx
                .execute(
                    "UPDATE personas SET body = ?2, source = 'imported', updated_ms = ?3 WHERE slug = ?1",
                    params![slug, body, now],
                )
                .map_err(sql("import update"))?;
            if n == 1 {
                report.replaced.push(slug.clone());
            } else {
                tx.execute(
                    "INSERT INTO personas(slug, body, source, updated_ms) VALUES (?1, ?2, 'imported', ?3)",
                    params![slug, body, now],
                )
                .map_err(sql("import insert"))?;
                report.added.push(slug.clone());
            }
        }
        tx.commit().map_err(sql("import commit"))?;
        Ok(report)
    }

    /// Deletes a persona (tests of the seeding).
    #[cfg(test)]
    pub(crate) fn delete_persona(&self, slug: &str) -> Result<bool, StoreError> {
        let n = self
            .w()?
            .execute("DELETE FROM personas WHERE slug = ?1", params![slug])
            .map_err(sql("delete persona"))?;
        Ok(n == 1)
    }

    /// Stores one labelled example as given; returns its id.
    pub fn add_feedback(&self, f: &Feedback) -> Result<i64, StoreError> {
        let software = serde_json::to_string(&f.software).map_err(|e| StoreError::Encode {
            what: "feedback software list",
            reason: e.to_string(),
        })?;
        let c = self.w()?;
        c.execute(
            "INSERT INTO feedback(description, software, data_gb, slug, source, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![f.description, software, f.data_gb, f.slug, f.source, now_ms()],
        )
        .map_err(sql("insert feedback"))?;
        Ok(c.last_insert_rowid())
    }

    /// All labelled examples, oldest first.
    pub fn feedback(&self) -> Result<Vec<Feedback>, StoreError> {
        let c = self.r()?;
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
                    serde_json::from_str(&software).map_err(|e| StoreError::CorruptRow {
                        what: "persona",
                        key: slug.clone(),
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
