//! Enrolled agents: who a client certificate belongs to, what each agent reported (host
//! facts, declared purpose), revocation and the admin listing.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use persona_shared::facts::HostFacts;

use super::{Store, StoreError, now_ms, sql};

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
    /// Fingerprint of the command key the agent pinned (None: it trusts the CA).
    pub command_key: Option<String>,
}

/// Which agents a listing covers.
enum Which<'a> {
    All,
    One(&'a str),
}

impl Store {
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

    /// An agent by id, with its key and whether it is revoked.
    pub fn agent_by_id(&self, id: &str) -> Result<Option<AgentAuth>, StoreError> {
        self.r()?
            .query_row(
                "SELECT key, revoked_ms IS NOT NULL FROM agents WHERE id = ?1",
                params![id],
                |r| {
                    Ok(AgentAuth {
                        key: r.get(0)?,
                        id: id.to_owned(),
                        revoked: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(sql("agent lookup"))
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

    /// Records what an agent said in Hello or Facts (each as JSON; None keeps the old).
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

    /// The host facts an agent last reported; None when there is no such agent, it has
    /// not reported them, or they do not parse.
    pub fn agent_host_facts(&self, id: &str) -> Result<Option<HostFacts>, StoreError> {
        let text: Option<Option<String>> = self
            .r()?
            .query_row("SELECT facts FROM agents WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("agent facts"))?;
        Ok(text.flatten().and_then(|t| serde_json::from_str(&t).ok()))
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

    /// The command key agent `key` pinned, if any.
    pub fn agent_command_key(&self, key: i64) -> Result<Option<String>, StoreError> {
        self.r()?
            .query_row(
                "SELECT command_key FROM agents WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(sql("agent command key"))
    }

    /// Every agent, in enrollment order.
    pub fn list_agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.query_agents(Which::All)
    }

    pub fn get_agent(&self, id: &str) -> Result<Option<AgentInfo>, StoreError> {
        Ok(self.query_agents(Which::One(id))?.into_iter().next())
    }

    fn query_agents(&self, which: Which<'_>) -> Result<Vec<AgentInfo>, StoreError> {
        let c = self.r()?;
        let tail = match which {
            Which::All => "ORDER BY a.enrolled_ms",
            Which::One(_) => "WHERE a.id = ?1",
        };
        let q = format!(
            "SELECT a.id, a.hostname, a.enrolled_ms, a.revoked_ms, a.last_seen_ms, a.committed_seq,
                    (SELECT COUNT(*) FROM batches b WHERE b.agent = a.key), a.facts, a.purpose, a.procs,
                    a.command_key
             FROM agents a {tail}"
        );
        let mut st = c.prepare(&q).map_err(sql("list agents"))?;
        let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
        let map = |r: &rusqlite::Row<'_>| {
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
                command_key: r.get(10)?,
            })
        };
        let rows = match which {
            Which::All => st.query_map([], map),
            Which::One(id) => st.query_map(params![id], map),
        }
        .map_err(sql("list agents"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list agents"))
    }
}
