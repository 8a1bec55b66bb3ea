//! The durable outbox: every telemetry batch the coordinator has not acknowledged, in
//! SQLite (`state_dir/outbox.db`), so that neither a dead link, nor an agent restart,
//! nor a VM reboot loses data.
//!
//! A batch is stored as the MessagePack body of its `AgentMsg::Batch` frame (without the
//! 4-byte length prefix), ready to send. The batch being filled is stored too, marked
//! unsealed, and rewritten after every tick; a crash therefore loses at most the tick in
//! progress, and on the next start the unsealed batch is sealed as it is.
//!
//! Durability: WAL with `synchronous=NORMAL`, so a commit survives the process being
//! killed (the WAL is in the kernel's page cache) without an fsync per tick. Sealing a
//! batch commits with `synchronous=FULL` (one fsync per batch interval): a sealed batch,
//! and the sequence counter that numbered it, survive a power loss before the batch can
//! ever be sent. On power loss the agent can therefore lose the unsealed batch (at most
//! one batch interval) and forget acknowledgements (those batches are resent and the
//! coordinator de-duplicates them); it never reuses a sequence number the coordinator
//! may have seen.
//!
//! The outbox is bounded: when the stored bytes exceed the bound, the oldest sealed
//! batches are deleted and counted (`dropped_batches`, `dropped_bytes`). The disk is a
//! bound too: a write that fails with `SQLITE_FULL` (no space left, or `max_page_count`)
//! deletes the oldest sealed batch, counts it the same way, and is retried, until it
//! fits or nothing is left to delete. The WAL is kept small so that it is not what fills
//! the disk: a passive checkpoint after every seal (the WAL is then reused from its start
//! rather than grown) and `journal_size_limit` so a burst does not keep its space. A
//! sealed batch that still cannot be written is kept in memory (a few at most) and
//! written, in order, before anything else on the next write: a batch is never left
//! unsealed on disk while the agent runs. Counters that cannot be written for lack of
//! space are kept in memory and written with the next successful write.
//!
//! Deleting a batch the coordinator acknowledged (or refused for good) needs space too:
//! SQLite writes the delete to the WAL first. On a disk that is 100% full such a delete is
//! never paid for with an unsent batch. The batch is marked settled in memory instead: it
//! is not offered again and does not count as pending, and its row is deleted, and
//! counted, as soon as a write finds room, first of all when a write needs room. The
//! sealed batches kept in memory are offered to the link like stored ones, and an
//! acknowledged one is simply forgotten: so while the coordinator is reachable, a disk
//! that stays 100% full loses nothing that the link keeps up with. A restart forgets the
//! marks; the rows are then sent again and the coordinator answers them as duplicates.
//!
//! This module knows nothing about the network or about what a batch contains.
//!
//! The daemon shares one outbox between the sampling thread, the link and the health
//! endpoint behind a mutex; [`lock`] is the one way they take it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use persona_shared::sqlite::{self, OpenOptions, SqliteError, Synchronous};
use rusqlite::{Connection, OptionalExtension, params};

/// Most batches one write may drop to make room before it gives up (the batch is then
/// kept in memory, see the module comment).
const MAX_DROPS_PER_WRITE: usize = 256;

/// Runs a `DELETE ... RETURNING` to its end and returns its first row. Stepping to the
/// end matters: the statement's implicit commit happens at the last step, and on a full
/// disk that is where `SQLITE_FULL` comes; `query_row` stops after the first row, so a
/// failed commit rolled the delete back without an error.
fn delete_returning<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut st = c.prepare_cached(sql)?;
    let mut rows = st.query(p)?;
    let first = match rows.next()? {
        Some(r) => Some(f(r)?),
        None => None,
    };
    while rows.next()?.is_some() {}
    Ok(first)
}

/// Unix mode of the outbox database and its WAL files: the VM's telemetry is private to
/// the agent's user (the state dir is 0700 as well).
pub const DB_MODE: u32 = 0o600;
/// `journal_size_limit` of the outbox database: what the WAL is cut back to after a
/// checkpoint (it grows by one batch interval's rewrites of the open batch in between).
pub const JOURNAL_SIZE_LIMIT: u64 = 1 << 20;
/// Sealed batches kept in memory while the disk refuses them; beyond this the oldest is
/// dropped (and counted).
const MAX_UNWRITTEN: usize = 4;

/// Outbox errors, each with the database file.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: {0}")]
    Open(#[from] SqliteError),
    #[error("outbox {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("outbox {path}: batch {seq} is already sealed")]
    AlreadySealed { path: PathBuf, seq: u64 },
    #[error("outbox {path}: sequence number {seq} is out of range")]
    SeqRange { path: PathBuf, seq: u64 },
    /// The disk (or `max_page_count`) is full and no sealed batch is left to make room.
    #[error(
        "outbox {path}: the disk is full and no unsent batch is left to drop; batch {seq} is kept in memory and written when there is space"
    )]
    Full { path: PathBuf, seq: u64 },
}

/// Counters and sizes, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Sealed batches waiting for an acknowledgement (those kept in memory while the disk
    /// is full included).
    pub pending_batches: u64,
    /// Bytes stored, the open batch included.
    pub stored_bytes: u64,
    /// The sequence number the next new batch will get.
    pub next_seq: u64,
    /// Batches deleted unsent because the outbox was full, since it was created.
    pub dropped_batches: u64,
    pub dropped_bytes: u64,
    /// Batches the coordinator refused permanently (deleted, counted).
    pub rejected_batches: u64,
    /// Batches acknowledged and deleted, since it was created.
    pub acked_batches: u64,
}

/// The outbox database. Not `Sync`: share it behind a mutex; every call is short.
#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    max_bytes: u64,
    /// Sum of stored frame sizes, kept in memory so the bound costs no query per tick.
    stored_bytes: u64,
    next_seq: u64,
    /// The unsealed batch, if any: (seq, stored size).
    open: Option<(u64, u64)>,
    /// Sealed batches the disk refused, oldest first (see the module comment).
    unwritten: std::collections::VecDeque<(u64, Vec<u8>)>,
    /// Sequence numbers of unsealed rows whose batch was given up (dropped from
    /// `unwritten`): deleted on the next successful write.
    orphans: Vec<u64>,
    /// Counter increments not yet written (disk full): (key, amount).
    unrecorded: Vec<(&'static str, u64)>,
    /// `next_seq` was advanced in memory but not yet persisted (disk full).
    next_seq_dirty: bool,
    /// Batches acknowledged or refused for good whose delete the full disk refused:
    /// seq -> the counter their delete adds to. Never sent again; deleted first when
    /// there is room (see the module comment).
    settled: std::collections::BTreeMap<u64, &'static str>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
    seq        INTEGER PRIMARY KEY,
    sealed     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    frame      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(key, value) VALUES
    ('next_seq', 1), ('dropped_batches', 0), ('dropped_bytes', 0),
    ('rejected_batches', 0), ('acked_batches', 0);
";

fn to_i64(seq: u64, path: &Path) -> Result<i64, OutboxError> {
    i64::try_from(seq).map_err(|_| OutboxError::SeqRange {
        path: path.to_owned(),
        seq,
    })
}

use persona_shared::clock::now_ms;

impl Outbox {
    /// Opens (or creates) the outbox at `path`; seals a batch left unsealed by a crash.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Outbox, OutboxError> {
        let sq = |source| OutboxError::Sqlite {
            path: path.to_owned(),
            source,
        };
        // NORMAL per tick; sealing switches to FULL for its one commit (see above).
        let conn = sqlite::open(
            path,
            OpenOptions::new(Synchronous::Normal)
                .mode(DB_MODE)
                .journal_size_limit(JOURNAL_SIZE_LIMIT),
        )?;
        conn.execute_batch(SCHEMA).map_err(sq)?;

        let resealed = conn
            .execute("UPDATE batches SET sealed = 1 WHERE sealed = 0", [])
            .map_err(sq)?;
        if resealed > 0 {
            tracing::info!(
                batches = resealed,
                "outbox: sealed the batch left open by the previous run"
            );
        }
        let stored: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(frame)), 0) FROM batches",
                [],
                |r| r.get(0),
            )
            .map_err(sq)?;
        let max_seq: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM batches", [], |r| {
                r.get(0)
            })
            .map_err(sq)?;
        let next: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .map_err(sq)?;
        let mut ob = Outbox {
            conn,
            path: path.to_owned(),
            max_bytes,
            stored_bytes: u64::try_from(stored).unwrap_or(0),
            next_seq: u64::try_from(next).unwrap_or(1).max(1),
            open: None,
            unwritten: std::collections::VecDeque::new(),
            orphans: Vec::new(),
            unrecorded: Vec::new(),
            next_seq_dirty: false,
            settled: std::collections::BTreeMap::new(),
        };
        // Defensive: the counter must be above every stored batch even if meta was lost.
        let above = u64::try_from(max_seq).unwrap_or(0) + 1;
        if ob.next_seq < above {
            ob.bump_next_seq(above)?;
        }
        ob.enforce_bound()?;
        Ok(ob)
    }

    fn sq(&self) -> impl Fn(rusqlite::Error) -> OutboxError + '_ {
        |source| OutboxError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Highest sequence number ever assigned (0 = none), for Hello.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Assigns the next sequence number to a new batch and persists the counter, so the
    /// number is never handed out again.
    ///
    /// On a full disk the number is still handed out and persisted with the next write
    /// that fits: until then no row carries it, so the coordinator cannot have seen it.
    pub fn reserve_seq(&mut self) -> Result<u64, OutboxError> {
        let seq = self.next_seq;
        let next = to_i64(seq + 1, &self.path)?;
        self.next_seq = seq + 1;
        match self.write(None, |c| {
            c.execute("UPDATE meta SET value = ?1 WHERE key = 'next_seq'", [next])
        }) {
            Ok(_) => self.next_seq_dirty = false,
            Err(OutboxError::Full { .. }) => self.next_seq_dirty = true,
            Err(e) => {
                self.next_seq = seq;
                return Err(e);
            }
        }
        Ok(seq)
    }

    /// Raises the counter to at least `min_next` (the coordinator has committed more than
    /// this outbox remembers, e.g. after a restore from an old disk image).
    pub fn bump_next_seq(&mut self, min_next: u64) -> Result<(), OutboxError> {
        if min_next <= self.next_seq {
            return Ok(());
        }
        let v = to_i64(min_next, &self.path)?;
        self.write(None, |c| {
            c.execute("UPDATE meta SET value = ?1 WHERE key = 'next_seq'", [v])
        })?;
        self.next_seq = min_next;
        self.next_seq_dirty = false;
        Ok(())
    }

    /// Runs one write statement; on `SQLITE_FULL` drops the oldest sealed batch (never
    /// `keep`), counts it and tries again, until the write fits or nothing is left to
    /// drop ([`OutboxError::Full`]).
    fn write<T>(
        &mut self,
        keep: Option<u64>,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        // Bounded, whatever the file system does: each pass deletes a batch for real.
        for _ in 0..MAX_DROPS_PER_WRITE {
            match f(&self.conn) {
                Ok(v) => return Ok(v),
                Err(e) if sqlite::is_full(&e) => {
                    if !self.drop_oldest(keep)? {
                        break;
                    }
                }
                Err(e) => return Err(self.sq()(e)),
            }
        }
        Err(OutboxError::Full {
            path: self.path.clone(),
            seq: keep.unwrap_or(0),
        })
    }

    /// The oldest stored sealed batch that is still unsent: not `keep`, not settled.
    fn oldest_unsent(&self, keep: Option<u64>) -> Result<Option<i64>, OutboxError> {
        let keep = to_i64(keep.unwrap_or(0), &self.path)?;
        let n = i64::try_from(self.settled.len() + 1).unwrap_or(i64::MAX);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT seq FROM batches WHERE sealed = 1 AND seq != ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(self.sq())?;
        let rows = st
            .query_map([keep, n], |r| r.get::<_, i64>(0))
            .map_err(self.sq())?;
        for row in rows {
            let seq = row.map_err(self.sq())?;
            if !self.settled.contains_key(&u64::try_from(seq).unwrap_or(0)) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// Deletes the oldest sealed batch other than `keep` to make room; false when there
    /// is none (or the delete itself does not fit).
    fn drop_oldest(&mut self, keep: Option<u64>) -> Result<bool, OutboxError> {
        // Rows already delivered make room before any unsent batch does.
        if self.delete_settled()? {
            return Ok(true);
        }
        // On a full disk the WAL is usually what holds the space (a passive checkpoint
        // after each seal cannot shrink the file); moving it into the database and
        // truncating it is the one write that frees disk instead of taking it. It may
        // fail (a reader, or no room in the database file): then the delete below
        // decides.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let seq = match self.oldest_unsent(keep) {
            Ok(Some(seq)) => seq,
            Ok(None) => return Ok(false),
            Err(OutboxError::Sqlite { source, .. }) if sqlite::is_full(&source) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        // Run to its end, so a commit that does not fit on the disk is an error here
        // (see `delete_returning`: a failed commit unseen dropped the same batch forever
        // on a real full disk, at 100% CPU, holding the lock).
        let len = match delete_returning(
            &self.conn,
            "DELETE FROM batches WHERE seq = ?1 AND sealed = 1 RETURNING LENGTH(frame)",
            [seq],
            |r| r.get::<_, i64>(0),
        ) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(false),
            Err(e) if sqlite::is_full(&e) => return Ok(false),
            Err(e) => return Err(self.sq()(e)),
        };
        let len = u64::try_from(len).unwrap_or(0);
        self.stored_bytes = self.stored_bytes.saturating_sub(len);
        self.unrecorded.push(("dropped_batches", 1));
        self.unrecorded.push(("dropped_bytes", len));
        tracing::warn!(
            seq,
            bytes = len,
            "outbox: the disk is full; dropped the oldest unsent batch to make room"
        );
        Ok(true)
    }

    /// Writes what an earlier full disk left pending: counters, the sequence counter,
    /// orphaned unsealed rows and the sealed batches kept in memory, in that order.
    fn catch_up(&mut self) -> Result<(), OutboxError> {
        // First what frees space: the rows of batches already delivered.
        self.delete_settled()?;
        while let Some(&(key, n)) = self.unrecorded.first() {
            let v = i64::try_from(n).unwrap_or(i64::MAX);
            self.write(None, |c| {
                c.execute(
                    "UPDATE meta SET value = value + ?1 WHERE key = ?2",
                    params![v, key],
                )
            })?;
            self.unrecorded.remove(0);
        }
        if self.next_seq_dirty {
            let v = to_i64(self.next_seq, &self.path)?;
            self.write(None, |c| {
                c.execute("UPDATE meta SET value = ?1 WHERE key = 'next_seq'", [v])
            })?;
            self.next_seq_dirty = false;
        }
        while let Some(&seq) = self.orphans.first() {
            let s = to_i64(seq, &self.path)?;
            let len: Option<i64> = self.write(None, |c| {
                delete_returning(
                    c,
                    "DELETE FROM batches WHERE seq = ?1 AND sealed = 0 RETURNING LENGTH(frame)",
                    [s],
                    |r| r.get(0),
                )
            })?;
            if let Some(l) = len {
                self.stored_bytes = self
                    .stored_bytes
                    .saturating_sub(u64::try_from(l).unwrap_or(0));
            }
            self.orphans.remove(0);
        }
        while let Some((seq, frame)) = self.unwritten.pop_front() {
            if let Err(e) = self.put_now(seq, &frame, true) {
                self.unwritten.push_front((seq, frame));
                return Err(e);
            }
            tracing::info!(seq, "outbox: wrote a batch the full disk had refused");
        }
        Ok(())
    }

    /// Sealed batches waiting in memory for disk space.
    pub fn unwritten(&self) -> usize {
        self.unwritten.len()
    }

    /// Stores (or rewrites) the open batch `seq`, not yet to be sent.
    pub fn put_open(&mut self, seq: u64, frame: &[u8]) -> Result<(), OutboxError> {
        self.catch_up()?;
        self.put_now(seq, frame, false)
    }

    /// Stores batch `seq` as final and ready to send, durably (fsync), then checkpoints
    /// the WAL. When the disk refuses it even after dropping older batches, the batch is
    /// kept in memory and written before anything else on a later call (the error says
    /// so); batches are always sealed in the order they were given.
    pub fn seal(&mut self, seq: u64, frame: &[u8]) -> Result<(), OutboxError> {
        let r = match self.catch_up() {
            Ok(()) => self.put_now(seq, frame, true),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                self.checkpoint();
                Ok(())
            }
            Err(e @ (OutboxError::Full { .. } | OutboxError::Sqlite { .. })) => {
                self.keep_unwritten(seq, frame);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps a sealed batch the disk refused, dropping (and counting) the oldest kept one
    /// beyond [`MAX_UNWRITTEN`].
    fn keep_unwritten(&mut self, seq: u64, frame: &[u8]) {
        if self.unwritten.iter().any(|(s, _)| *s == seq) {
            return;
        }
        self.unwritten.push_back((seq, frame.to_vec()));
        while self.unwritten.len() > MAX_UNWRITTEN {
            if let Some((lost, f)) = self.unwritten.pop_front() {
                tracing::warn!(
                    seq = lost,
                    "outbox: the disk stays full; dropped a batch that could not be written"
                );
                self.orphans.push(lost);
                self.unrecorded.push(("dropped_batches", 1));
                self.unrecorded.push(("dropped_bytes", f.len() as u64));
            }
        }
    }

    /// A passive checkpoint: copies the WAL into the database without waiting for
    /// readers, so the next write starts the WAL over instead of growing it. A failure
    /// (a busy reader, a full disk) is harmless: the next seal tries again.
    fn checkpoint(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::debug!("outbox checkpoint: {e}");
        }
    }

    /// One put at FULL (sealed) or NORMAL (open) durability.
    fn put_now(&mut self, seq: u64, frame: &[u8], sealed: bool) -> Result<(), OutboxError> {
        if !sealed {
            return self.put(seq, frame, false);
        }
        // FULL for this one commit: the sealed batch and the counter reach the disk before
        // the batch can be sent (see the module comment on power loss).
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(self.sq())?;
        let r = self.put(seq, frame, true);
        let back = self
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(self.sq());
        r?;
        back
    }

    fn put(&mut self, seq: u64, frame: &[u8], sealed: bool) -> Result<(), OutboxError> {
        let s = to_i64(seq, &self.path)?;
        let old_len: Option<(i64, bool)> = match self.open {
            Some((open_seq, len)) if open_seq == seq => {
                Some((i64::try_from(len).unwrap_or(0), false))
            }
            _ => self
                .conn
                .query_row(
                    "SELECT LENGTH(frame), sealed FROM batches WHERE seq = ?1",
                    [s],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
                )
                .optional()
                .map_err(self.sq())?,
        };
        if let Some((_, true)) = old_len {
            return Err(OutboxError::AlreadySealed {
                path: self.path.clone(),
                seq,
            });
        }
        let created = now_ms();
        self.write(Some(seq), |c| {
            c.execute(
                "INSERT INTO batches(seq, sealed, created_ms, frame) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(seq) DO UPDATE SET sealed = excluded.sealed, frame = excluded.frame",
                params![s, sealed, created, frame],
            )
        })?;
        if seq >= self.next_seq {
            // A caller that did not reserve: keep the counter ahead anyway.
            self.bump_next_seq(seq + 1)?;
        }
        let old = old_len.map_or(0, |(l, _)| u64::try_from(l).unwrap_or(0));
        self.stored_bytes = self.stored_bytes.saturating_sub(old) + frame.len() as u64;
        if !sealed {
            self.open = Some((seq, frame.len() as u64));
        } else if self.open.is_some_and(|(o, _)| o == seq) {
            self.open = None;
        }
        self.enforce_bound()
    }

    /// Deletes the oldest sealed batches while the outbox is over its bound.
    fn enforce_bound(&mut self) -> Result<(), OutboxError> {
        // Delivered rows are not unsent batches: they go first, and are not counted as
        // dropped.
        if self.stored_bytes > self.max_bytes {
            self.delete_settled()?;
        }
        let mut dropped = 0u64;
        let mut dropped_bytes = 0u64;
        while self.stored_bytes > self.max_bytes {
            // Only the open batch (or rows already delivered) left: nothing to drop.
            let Some(seq) = self.oldest_unsent(None)? else {
                break;
            };
            let oldest: Option<i64> = self.write(None, |c| {
                delete_returning(
                    c,
                    "DELETE FROM batches WHERE seq = ?1 AND sealed = 1 RETURNING LENGTH(frame)",
                    [seq],
                    |r| r.get(0),
                )
            })?;
            let Some(len) = oldest else { break };
            let len = u64::try_from(len).unwrap_or(0);
            self.stored_bytes = self.stored_bytes.saturating_sub(len);
            dropped += 1;
            dropped_bytes += len;
        }
        if dropped > 0 {
            self.add_counter("dropped_batches", dropped)?;
            self.add_counter("dropped_bytes", dropped_bytes)?;
            tracing::warn!(
                batches = dropped,
                bytes = dropped_bytes,
                max_bytes = self.max_bytes,
                "outbox full: dropped the oldest unsent batches"
            );
        }
        Ok(())
    }

    /// Adds to a persistent counter; on a full disk the increment waits in memory.
    fn add_counter(&mut self, key: &'static str, n: u64) -> Result<(), OutboxError> {
        let v = i64::try_from(n).unwrap_or(i64::MAX);
        match self.write(None, |c| {
            c.execute(
                "UPDATE meta SET value = value + ?1 WHERE key = ?2",
                params![v, key],
            )
        }) {
            Ok(_) => Ok(()),
            Err(OutboxError::Full { .. }) => {
                self.unrecorded.push((key, n));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// A counter: what is stored plus what waits in memory.
    fn counter(&self, key: &str) -> Result<u64, OutboxError> {
        let v: i64 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map_err(self.sq())?;
        let waiting: u64 = self
            .unrecorded
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, n)| n)
            .sum();
        Ok(u64::try_from(v).unwrap_or(0) + waiting)
    }

    /// Up to `limit` sealed batches in sequence order.
    pub fn pending(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        self.pending_after(0, limit)
    }

    /// Up to `limit` sealed batches with a sequence number above `after`, in order (the
    /// link passes the highest one it already has in flight).
    pub fn pending_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let after = to_i64(after, &self.path)?;
        // Settled rows are skipped below: ask for as many more.
        let want = limit;
        let limit = i64::try_from(limit.saturating_add(self.settled.len())).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, frame FROM batches WHERE sealed = 1 AND seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(self.sq())?;
        let rows = stmt
            .query_map([after, limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(self.sq())?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, frame) = row.map_err(self.sq())?;
            let seq = u64::try_from(seq).unwrap_or(0);
            if !self.settled.contains_key(&seq) && out.len() < want {
                out.push((seq, frame));
            }
        }
        // Then what the full disk refused, kept in memory: newer than every stored
        // sealed batch, since batches are sealed in order.
        let after = u64::try_from(after).unwrap_or(0);
        for (seq, frame) in &self.unwritten {
            if *seq > after && out.len() < want {
                out.push((*seq, frame.clone()));
            }
        }
        Ok(out)
    }

    /// The stored frame of sealed batch `seq`, if it is still in the outbox.
    pub fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, OutboxError> {
        if self.settled.contains_key(&seq) {
            return Ok(None);
        }
        if let Some((_, frame)) = self.unwritten.iter().find(|(s, _)| *s == seq) {
            return Ok(Some(frame.clone()));
        }
        let s = to_i64(seq, &self.path)?;
        self.conn
            .query_row(
                "SELECT frame FROM batches WHERE seq = ?1 AND sealed = 1",
                [s],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sq())
    }

    /// Deletes sealed batch `seq`, which the coordinator has answered for good, and adds
    /// one to `counter`; false when it is not (or no longer) in the outbox. On a full
    /// disk, after one checkpoint to free the WAL, the batch is marked settled instead
    /// (see the module comment): making room by dropping an unsent batch to delete a
    /// delivered one would lose data for nothing.
    fn settle(&mut self, seq: u64, counter: &'static str) -> Result<bool, OutboxError> {
        if self.settled.contains_key(&seq) {
            return Ok(true);
        }
        // A batch the disk refused, delivered from memory: forget it. Its unsealed row,
        // if the open batch was stored, goes with the next write (like an orphan).
        if let Some(i) = self.unwritten.iter().position(|(s, _)| *s == seq) {
            self.unwritten.remove(i);
            self.orphans.push(seq);
            self.add_counter(counter, 1)?;
            return Ok(true);
        }
        let s = to_i64(seq, &self.path)?;
        for attempt in 0..2 {
            match delete_returning(
                &self.conn,
                "DELETE FROM batches WHERE seq = ?1 AND sealed = 1 RETURNING LENGTH(frame)",
                [s],
                |r| r.get::<_, i64>(0),
            ) {
                Ok(Some(len)) => {
                    let len = u64::try_from(len).unwrap_or(0);
                    self.stored_bytes = self.stored_bytes.saturating_sub(len);
                    self.add_counter(counter, 1)?;
                    return Ok(true);
                }
                Ok(None) => return Ok(false),
                Err(e) if sqlite::is_full(&e) && attempt == 0 => {
                    let _ = self
                        .conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                }
                Err(e) if sqlite::is_full(&e) => {}
                Err(e) => return Err(self.sq()(e)),
            }
        }
        // A read needs no space: is the batch there to settle?
        let there = self
            .conn
            .query_row(
                "SELECT 1 FROM batches WHERE seq = ?1 AND sealed = 1",
                [s],
                |_| Ok(()),
            )
            .optional()
            .map_err(self.sq())?
            .is_some();
        if there {
            tracing::warn!(
                seq,
                "outbox: the disk is full; batch {seq} is answered and will be deleted when there is room"
            );
            self.settled.insert(seq, counter);
        }
        Ok(there)
    }

    /// Deletes the rows of settled batches while the disk has room for it, oldest first,
    /// counting each; true when at least one was deleted.
    fn delete_settled(&mut self) -> Result<bool, OutboxError> {
        let mut any = false;
        while let Some((&seq, &counter)) = self.settled.first_key_value() {
            let s = to_i64(seq, &self.path)?;
            match delete_returning(
                &self.conn,
                "DELETE FROM batches WHERE seq = ?1 AND sealed = 1 RETURNING LENGTH(frame)",
                [s],
                |r| r.get::<_, i64>(0),
            ) {
                Ok(len) => {
                    if let Some(len) = len {
                        let len = u64::try_from(len).unwrap_or(0);
                        self.stored_bytes = self.stored_bytes.saturating_sub(len);
                        // Written with the next write that fits (catch_up), like every
                        // counter the full disk held back.
                        self.unrecorded.push((counter, 1));
                        any = true;
                    }
                    self.settled.remove(&seq);
                }
                Err(e) if sqlite::is_full(&e) => break,
                Err(e) => return Err(self.sq()(e)),
            }
        }
        Ok(any)
    }

    /// Batches answered for good whose rows wait for room on the disk.
    pub fn settled(&self) -> usize {
        self.settled.len()
    }

    /// The coordinator committed batch `seq`: forget it. Returns whether it was stored
    /// (a second ack for the same batch is harmless).
    pub fn ack(&mut self, seq: u64) -> Result<bool, OutboxError> {
        self.settle(seq, "acked_batches")
    }

    /// The coordinator refused batch `seq` for good (malformed, bad timestamps, too
    /// large): resending cannot help, so delete and count it.
    pub fn reject(&mut self, seq: u64) -> Result<bool, OutboxError> {
        self.settle(seq, "rejected_batches")
    }

    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let pending: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM batches WHERE sealed = 1", [], |r| {
                r.get(0)
            })
            .map_err(self.sq())?;
        Ok(OutboxStats {
            pending_batches: u64::try_from(pending)
                .unwrap_or(0)
                .saturating_sub(self.settled.len() as u64)
                + self.unwritten.len() as u64,
            stored_bytes: self.stored_bytes,
            next_seq: self.next_seq,
            dropped_batches: self.counter("dropped_batches")?,
            dropped_bytes: self.counter("dropped_bytes")?,
            rejected_batches: self.counter("rejected_batches")?,
            acked_batches: self.counter("acked_batches")?,
        })
    }
}

/// Locks the outbox; a panic elsewhere while it was held leaves SQLite consistent, so a
/// poisoned lock is taken over rather than propagated.
pub(crate) fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    outbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize, fill: u8) -> Vec<u8> {
        vec![fill; n]
    }

    #[test]
    fn batches_persist_across_reopen_and_seqs_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut ob = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(ob.last_seq(), 0);
        let a = ob.reserve_seq().unwrap();
        ob.put_open(a, &frame(10, 1)).unwrap();
        ob.seal(a, &frame(20, 1)).unwrap();
        let b = ob.reserve_seq().unwrap();
        ob.seal(b, &frame(30, 2)).unwrap();
        let c = ob.reserve_seq().unwrap();
        ob.seal(c, &frame(5, 3)).unwrap();
        assert!((a, b, c) == (1, 2, 3));
        assert!(ob.ack(c).unwrap());
        assert!(!ob.ack(c).unwrap(), "a second ack is harmless");
        assert!(matches!(
            ob.put_open(a, &frame(1, 0)),
            Err(OutboxError::AlreadySealed { .. })
        ));
        drop(ob);

        let mut ob = Outbox::open(&path, 1 << 20).unwrap();
        let p = ob.pending(10).unwrap();
        assert_eq!(p, vec![(1, frame(20, 1)), (2, frame(30, 2))]);
        assert_eq!(ob.pending_after(1, 10).unwrap().len(), 1);
        assert_eq!(ob.pending(1).unwrap().len(), 1);
        let s = ob.stats().unwrap();
        assert_eq!(
            (
                s.pending_batches,
                s.stored_bytes,
                s.next_seq,
                s.acked_batches
            ),
            (2, 50, 4, 1)
        );
        // seq 3 was acked and deleted, yet it is not handed out again.
        assert_eq!(ob.last_seq(), 3);
        assert_eq!(ob.reserve_seq().unwrap(), 4);
        drop(ob);
        // Even a reserved but never written seq stays used.
        let mut ob = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(ob.reserve_seq().unwrap(), 5);
        ob.bump_next_seq(100).unwrap();
        ob.bump_next_seq(50).unwrap();
        assert_eq!(ob.reserve_seq().unwrap(), 100);
    }

    #[test]
    fn an_unsealed_batch_is_sealed_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut ob = Outbox::open(&path, 1 << 20).unwrap();
        let a = ob.reserve_seq().unwrap();
        ob.put_open(a, &frame(10, 1)).unwrap();
        ob.put_open(a, &frame(12, 2)).unwrap();
        assert!(
            ob.pending(10).unwrap().is_empty(),
            "the open batch is not sent"
        );
        assert_eq!(ob.stats().unwrap().stored_bytes, 12);
        drop(ob); // as after SIGKILL: nothing else was done

        let mut ob = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(ob.pending(10).unwrap(), vec![(a, frame(12, 2))]);
        assert_eq!(ob.reserve_seq().unwrap(), a + 1);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let mut ob = Outbox::open(&path, 100).unwrap();
        for i in 0..5u8 {
            let s = ob.reserve_seq().unwrap();
            ob.seal(s, &frame(30, i)).unwrap();
        }
        // 5 x 30 bytes over a bound of 100: the two oldest went.
        let p = ob.pending(10).unwrap();
        assert_eq!(p.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4, 5]);
        // The open batch counts towards the bound but is never dropped itself.
        let s = ob.reserve_seq().unwrap();
        ob.put_open(s, &frame(40, 9)).unwrap();
        let st = ob.stats().unwrap();
        assert_eq!((st.dropped_batches, st.dropped_bytes), (3, 90));
        assert_eq!(st.stored_bytes, 100);
        assert_eq!(ob.pending(10).unwrap().len(), 2);
        ob.put_open(s, &frame(200, 9)).unwrap();
        assert!(ob.pending(10).unwrap().is_empty());
        drop(ob);
        // Counters persist; a smaller bound on reopen applies at once.
        let ob = Outbox::open(&path, 10).unwrap();
        let st = ob.stats().unwrap();
        assert_eq!(
            (st.dropped_batches, st.pending_batches, st.stored_bytes),
            (6, 0, 0)
        );
    }

    #[test]
    fn rejected_batches_are_deleted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("o.db"), 1000).unwrap();
        let s = ob.reserve_seq().unwrap();
        ob.seal(s, &frame(3, 0)).unwrap();
        assert!(ob.reject(s).unwrap());
        let st = ob.stats().unwrap();
        assert_eq!(
            (st.rejected_batches, st.pending_batches, st.stored_bytes),
            (1, 0, 0)
        );
    }

    fn unsealed_rows(ob: &Outbox) -> i64 {
        ob.conn
            .query_row("SELECT COUNT(*) FROM batches WHERE sealed = 0", [], |r| {
                r.get(0)
            })
            .unwrap()
    }

    fn set_max_pages(ob: &Outbox, pages: i64) {
        let _: i64 = ob
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .unwrap();
    }

    /// Issue 18, item 9: a database that cannot grow (SQLite's `max_page_count`, which
    /// fails exactly like a full disk) drops the oldest batch, counts it and writes the
    /// new one; a batch the disk refuses outright is kept and sealed later, never left
    /// unsealed on disk.
    #[test]
    fn a_full_database_drops_the_oldest_counts_it_and_never_leaves_a_batch_unsealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("o.db"), 1 << 30).unwrap();
        let pages: i64 = ob
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        // Room for a handful of 3000-byte batches (one overflow page each, and more).
        set_max_pages(&ob, pages + 12);
        let mut sealed = Vec::new();
        for i in 0..40u8 {
            let s = ob.reserve_seq().unwrap();
            ob.put_open(s, &frame(1500, i)).unwrap();
            ob.seal(s, &frame(3000, i)).unwrap();
            sealed.push(s);
        }
        let st = ob.stats().unwrap();
        assert!(st.dropped_batches > 0, "{st:?}");
        let kept: Vec<u64> = ob.pending(100).unwrap().iter().map(|(s, _)| *s).collect();
        // What was dropped is the oldest, and everything else is there, sealed.
        assert_eq!(kept.len() as u64 + st.dropped_batches, 40, "{st:?}");
        assert_eq!(kept, sealed[sealed.len() - kept.len()..].to_vec());
        assert_eq!(st.dropped_bytes, st.dropped_batches * 3000);
        assert_eq!(unsealed_rows(&ob), 0);

        // Nothing left to drop: the batch is kept in memory, counted as pending, and
        // sealed (in order, before the next one) once there is room again.
        for (s, _) in ob.pending(100).unwrap() {
            ob.ack(s).unwrap();
        }
        let s = ob.reserve_seq().unwrap();
        ob.put_open(s, &frame(100, 1)).unwrap();
        let e = ob.seal(s, &frame(200_000, 1)).unwrap_err();
        assert!(
            matches!(e, OutboxError::Full { seq, .. } if seq == s),
            "{e}"
        );
        assert_eq!(ob.unwritten(), 1);
        assert_eq!(ob.stats().unwrap().pending_batches, 1);
        let t = ob.reserve_seq().unwrap();
        assert!(ob.put_open(t, &frame(10, 2)).is_err(), "still full");
        set_max_pages(&ob, 1_000_000);
        ob.put_open(t, &frame(10, 2)).unwrap();
        assert_eq!(ob.unwritten(), 0);
        assert_eq!(ob.pending(10).unwrap(), vec![(s, frame(200_000, 1))]);
        ob.seal(t, &frame(20, 2)).unwrap();
        assert_eq!(unsealed_rows(&ob), 0);
        let st = ob.stats().unwrap();
        assert_eq!(st.pending_batches, 2);
        drop(ob);
        // The counters written late are on disk.
        let ob = Outbox::open(&dir.path().join("o.db"), 1 << 30).unwrap();
        assert_eq!(ob.stats().unwrap().dropped_batches, st.dropped_batches);
    }

    /// A full disk with the coordinator reachable: a sealed batch the disk refused is
    /// offered to the link from memory, and once acknowledged it is forgotten (counted
    /// as acked, never written later, its open row deleted with the next write).
    #[test]
    fn a_batch_kept_in_memory_is_sent_and_forgotten_once_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("o.db"), 1 << 30).unwrap();
        let first = ob.reserve_seq().unwrap();
        ob.seal(first, &frame(100, 1)).unwrap();
        let s = ob.reserve_seq().unwrap();
        ob.put_open(s, &frame(10, 2)).unwrap();
        let pages: i64 = ob
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        set_max_pages(&ob, pages);
        // Too large for the database that cannot grow; the first batch is dropped
        // for room and the new one is still refused: kept in memory.
        assert!(ob.seal(s, &frame(200_000, 2)).is_err());
        assert_eq!(ob.unwritten(), 1);
        assert_eq!(ob.pending(10).unwrap(), vec![(s, frame(200_000, 2))]);
        assert_eq!(ob.pending_after(s, 10).unwrap(), vec![]);
        assert_eq!(ob.get(s).unwrap(), Some(frame(200_000, 2)));
        let before = ob.stats().unwrap();
        assert!(ob.ack(s).unwrap());
        assert!(!ob.ack(s).unwrap(), "a second ack finds nothing");
        assert_eq!(ob.unwritten(), 0);
        assert_eq!(ob.pending(10).unwrap(), vec![]);
        assert_eq!(ob.get(s).unwrap(), None);
        let after = ob.stats().unwrap();
        assert_eq!(after.pending_batches, 0);
        assert_eq!(after.acked_batches, before.acked_batches + 1);
        assert_eq!(after.dropped_batches, before.dropped_batches);
        // Room again: the acked batch is not written, its open row is gone.
        set_max_pages(&ob, 1_000_000);
        let t = ob.reserve_seq().unwrap();
        ob.seal(t, &frame(50, 3)).unwrap();
        assert_eq!(ob.pending(10).unwrap(), vec![(t, frame(50, 3))]);
        assert_eq!(unsealed_rows(&ob), 0);
        let rows: i64 = ob
            .conn
            .query_row("SELECT COUNT(*) FROM batches", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    /// Issue 18, item 9: the WAL does not grow until SQLite's automatic checkpoint
    /// (1000 pages, 4 MiB: the whole of a small disk); it is checkpointed at every seal
    /// and kept to `journal_size_limit`.
    #[test]
    fn the_wal_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let mut ob = Outbox::open(&path, 1 << 30).unwrap();
        let mut wal_max = 0;
        for i in 0..60u8 {
            let s = ob.reserve_seq().unwrap();
            for t in 1..10usize {
                ob.put_open(s, &frame(800 * t, i)).unwrap();
            }
            ob.seal(s, &frame(8000, i)).unwrap();
            ob.ack(s).unwrap();
            let wal = std::fs::metadata(dir.path().join("o.db-wal")).map_or(0, |m| m.len());
            wal_max = wal_max.max(wal);
        }
        assert!(wal_max < 512 * 1024, "WAL grew to {wal_max} bytes");
    }
}
