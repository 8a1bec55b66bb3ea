//! The process list of each committed batch (`batch_procs`): the batch rows keep only the
//! series, and the window features need the busiest processes too. Written inside the
//! ingest transaction, deleted with the batches' retention.

use rusqlite::{Connection, OptionalExtension, params};

use persona_shared::protocol::WireProc;

use super::{Store, StoreError, sql};

/// Keeps a new batch's process list (nothing when it carried none). Runs inside the
/// ingest transaction.
pub(super) fn record(
    tx: &Connection,
    agent_key: i64,
    seq: i64,
    end_ms: i64,
    procs: &[WireProc],
) -> Result<(), StoreError> {
    if procs.is_empty() {
        return Ok(());
    }
    let blob = rmp_serde::to_vec(procs).map_err(|e| StoreError::Corrupt {
        agent: agent_key.to_string(),
        seq: u64::try_from(seq).unwrap_or(0),
        reason: format!("process list: {e}"),
    })?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO batch_procs(agent, seq, end_ms, procs) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![agent_key, seq, end_ms, blob]))
    .map_err(sql("batch procs"))?;
    Ok(())
}

/// Retention of the process lists (with the batches').
pub(super) fn delete_before(c: &Connection, cutoff_ms: i64) -> Result<usize, StoreError> {
    c.execute(
        "DELETE FROM batch_procs WHERE end_ms < ?1",
        params![cutoff_ms],
    )
    .map_err(sql("batch procs retention"))
}

impl Store {
    /// The process list stored with a batch (empty when it carried none).
    pub fn batch_procs(&self, agent_key: i64, seq: i64) -> Result<Vec<WireProc>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .r()?
            .query_row(
                "SELECT procs FROM batch_procs WHERE agent = ?1 AND seq = ?2",
                params![agent_key, seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("batch procs"))?;
        match blob {
            None => Ok(Vec::new()),
            Some(b) => rmp_serde::from_slice(&b).map_err(|e| StoreError::Corrupt {
                agent: agent_key.to_string(),
                seq: u64::try_from(seq).unwrap_or(0),
                reason: format!("stored process list: {e}"),
            }),
        }
    }
}
