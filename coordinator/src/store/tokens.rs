//! Join tokens (kubeadm's `ID.SECRET` shape; only a hash of the secret is stored) and
//! enrollment, which spends a token and creates the agent in one transaction.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, hex, now_ms, random_hex, sql};

/// Why a join token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Expired,
    UsedUp,
    Revoked,
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown token",
            Self::Expired => "token expired",
            Self::UsedUp => "token already used",
            Self::Revoked => "token revoked",
        })
    }
}

/// A join token as listed (the secret is never stored, only its hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub uses_left: i64,
    pub used: i64,
    pub revoked: bool,
}

fn hash_secret(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

impl Store {
    /// Creates a join token `ID.SECRET` (kubeadm's shape) valid for `ttl_ms` and `uses` enrollments.
    pub fn create_token(&self, ttl_ms: i64, uses: i64) -> Result<(String, TokenInfo), StoreError> {
        let id = random_hex(3)?;
        let secret = random_hex(16)?;
        let now = now_ms();
        let info = TokenInfo {
            id: id.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
            uses_left: uses,
            used: 0,
            revoked: false,
        };
        self.w()?
            .execute(
                "INSERT INTO tokens(id, secret_hash, created_ms, expires_ms, uses_left) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, hash_secret(&secret), now, info.expires_ms, uses],
            )
            .map_err(sql("insert token"))?;
        Ok((format!("{id}.{secret}"), info))
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let c = self.r()?;
        let mut st = c
            .prepare("SELECT id, created_ms, expires_ms, uses_left, used, revoked_ms FROM tokens ORDER BY created_ms")
            .map_err(sql("list tokens"))?;
        let rows = st
            .query_map([], |r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    created_ms: r.get(1)?,
                    expires_ms: r.get(2)?,
                    uses_left: r.get(3)?,
                    used: r.get(4)?,
                    revoked: r.get::<_, Option<i64>>(5)?.is_some(),
                })
            })
            .map_err(sql("list tokens"))?;
        rows.collect::<Result<_, _>>().map_err(sql("list tokens"))
    }

    /// Revokes a token; false when there is no such token.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .w()?
            .execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms()],
            )
            .map_err(sql("revoke token"))?;
        Ok(n == 1)
    }

    /// Checks a presented token and, if good, spends one use and enrolls the agent, in
    /// one transaction so a single-use token cannot enroll two agents.
    pub fn enroll(
        &self,
        token: &str,
        agent_id: &str,
        hostname: &str,
        fingerprint: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let Some((id, secret)) = token.split_once('.') else {
            return Ok(Err(TokenRefusal::Unknown));
        };
        let mut c = self.w()?;
        let tx = c.transaction().map_err(sql("enroll"))?;
        let row: Option<(String, i64, i64, Option<i64>)> = tx
            .query_row(
                "SELECT secret_hash, expires_ms, uses_left, revoked_ms FROM tokens WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(sql("enroll token"))?;
        let now = now_ms();
        let refusal = match row {
            None => Some(TokenRefusal::Unknown),
            Some((hash, _, _, _)) if hash != hash_secret(secret) => Some(TokenRefusal::Unknown),
            Some((_, _, _, Some(_))) => Some(TokenRefusal::Revoked),
            Some((_, exp, _, _)) if exp <= now => Some(TokenRefusal::Expired),
            Some((_, _, left, _)) if left <= 0 => Some(TokenRefusal::UsedUp),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            return Ok(Err(r));
        }
        tx.execute(
            "UPDATE tokens SET uses_left = uses_left - 1, used = used + 1 WHERE id = ?1",
            params![id],
        )
        .map_err(sql("spend token"))?;
        tx.execute(
            "INSERT INTO agents(id, hostname, fingerprint, enrolled_ms) VALUES (?1, ?2, ?3, ?4)",
            params![agent_id, hostname, fingerprint, now],
        )
        .map_err(sql("insert agent"))?;
        tx.commit().map_err(sql("enroll commit"))?;
        Ok(Ok(()))
    }
}
