//! The configuration engine's settings per VM (`engine_vms`): mode, platform, bounds and
//! what was last applied. Modes and platforms are stored as their names; the engine
//! parses them (an unknown name falls back to its default there).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, sql};

/// One VM's stored settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineVm {
    pub mode: String,
    pub platform: String,
    pub bounds: EngineVmBounds,
    pub initial_done: bool,
    pub last_applied_ms: Option<i64>,
    pub last_command: Option<String>,
    /// Limits learned from refused resizes, as the engine wrote them (JSON).
    pub learned: Option<String>,
    /// The last command the engine learned from (so one refusal is learned once).
    pub learned_from: Option<String>,
}

/// The bounds an operator set (None: unbounded).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineVmBounds {
    pub min_vcpus: Option<f64>,
    pub max_vcpus: Option<f64>,
    pub min_memory_gib: Option<f64>,
    pub max_memory_gib: Option<f64>,
    pub max_memory_platform_gib: Option<f64>,
}

/// Settings to write (the operator's part; what was applied is kept).
#[derive(Debug, Clone, Copy)]
pub struct EngineVmSettings<'a> {
    pub mode: &'a str,
    pub platform: &'a str,
    pub bounds: EngineVmBounds,
    pub initial_done: bool,
    pub updated_ms: i64,
}

/// A VM whose mode is not `off`, for the engine's auto pass.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineVmSummary {
    pub agent_id: String,
    pub mode: String,
    pub initial_done: bool,
    pub last_applied_ms: Option<i64>,
}

impl Store {
    /// The stored settings of a VM; None when none were ever written.
    pub fn engine_vm(&self, agent_id: &str) -> Result<Option<EngineVm>, StoreError> {
        self.r()?
            .query_row(
                "SELECT mode, platform, min_vcpus, max_vcpus, min_memory_gib, max_memory_gib,
                        max_memory_platform_gib, initial_done, last_applied_ms, last_command,
                        learned, learned_from
                 FROM engine_vms WHERE agent_id = ?1",
                params![agent_id],
                |r| {
                    Ok(EngineVm {
                        mode: r.get(0)?,
                        platform: r.get(1)?,
                        bounds: EngineVmBounds {
                            min_vcpus: r.get(2)?,
                            max_vcpus: r.get(3)?,
                            min_memory_gib: r.get(4)?,
                            max_memory_gib: r.get(5)?,
                            max_memory_platform_gib: r.get(6)?,
                        },
                        initial_done: r.get::<_, i64>(7)? != 0,
                        last_applied_ms: r.get(8)?,
                        last_command: r.get(9)?,
                        learned: r.get(10)?,
                        learned_from: r.get(11)?,
                    })
                },
            )
            .optional()
            .map_err(sql("engine settings"))
    }

    /// Writes a VM's settings (creating its row).
    pub fn put_engine_settings(
        &self,
        agent_id: &str,
        s: &EngineVmSettings<'_>,
    ) -> Result<(), StoreError> {
        let b = &s.bounds;
        self.w()?
            .execute(
                "INSERT INTO engine_vms(agent_id, mode, platform, min_vcpus, max_vcpus, min_memory_gib,
                     max_memory_gib, max_memory_platform_gib, initial_done, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(agent_id) DO UPDATE SET mode = ?2, platform = ?3, min_vcpus = ?4,
                     max_vcpus = ?5, min_memory_gib = ?6, max_memory_gib = ?7,
                     max_memory_platform_gib = ?8, initial_done = ?9, updated_ms = ?10",
                params![
                    agent_id,
                    s.mode,
                    s.platform,
                    b.min_vcpus,
                    b.max_vcpus,
                    b.min_memory_gib,
                    b.max_memory_gib,
                    b.max_memory_platform_gib,
                    i64::from(s.initial_done),
                    s.updated_ms
                ],
            )
            .map_err(sql("engine settings update"))?;
        Ok(())
    }

    /// Records that `command` was submitted for the VM at `now_ms` (and, when
    /// `initial`, that its initial sizing is done).
    pub fn record_engine_applied(
        &self,
        agent_id: &str,
        command: &str,
        initial: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "INSERT INTO engine_vms(agent_id, initial_done, last_applied_ms, last_command, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?3)
                 ON CONFLICT(agent_id) DO UPDATE SET initial_done = MAX(initial_done, ?2),
                     last_applied_ms = ?3, last_command = ?4, updated_ms = ?3",
                params![agent_id, i64::from(initial), now_ms, command],
            )
            .map_err(sql("engine applied"))?;
        Ok(())
    }

    /// Stores the limits learned for a VM (`None` clears them) and, when given, the
    /// command they were learned from.
    pub fn put_engine_learned(
        &self,
        agent_id: &str,
        learned: Option<&str>,
        from_command: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "INSERT INTO engine_vms(agent_id, learned, learned_from, updated_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(agent_id) DO UPDATE SET learned = ?2,
                     learned_from = COALESCE(?3, learned_from), updated_ms = ?4",
                params![agent_id, learned, from_command, now_ms],
            )
            .map_err(sql("engine learned"))?;
        Ok(())
    }

    /// Marks a VM's initial sizing as done (it needed no change).
    pub fn mark_engine_initial_done(&self, agent_id: &str, now_ms: i64) -> Result<(), StoreError> {
        self.w()?
            .execute(
                "UPDATE engine_vms SET initial_done = 1, updated_ms = ?2 WHERE agent_id = ?1",
                params![agent_id, now_ms],
            )
            .map_err(sql("engine initial done"))?;
        Ok(())
    }

    /// The VMs whose mode is not `off`.
    pub fn engine_vms_enabled(&self) -> Result<Vec<EngineVmSummary>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare("SELECT agent_id, mode, initial_done, last_applied_ms FROM engine_vms WHERE mode != 'off'")
            .map_err(sql("engine auto"))?;
        let rows = st
            .query_map([], |r| {
                Ok(EngineVmSummary {
                    agent_id: r.get(0)?,
                    mode: r.get(1)?,
                    initial_done: r.get::<_, i64>(2)? != 0,
                    last_applied_ms: r.get(3)?,
                })
            })
            .map_err(sql("engine auto"))?;
        rows.collect::<Result<_, _>>().map_err(sql("engine auto"))
    }
}
