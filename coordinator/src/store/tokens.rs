//! Join tokens (kubeadm's `ID.SECRET` shape; only a hash of the secret is stored) and
//! enrollment, which spends a token and creates the agent in one transaction. Ids are
//! 64 random bits (16 hex digits; a collision is retried), secrets 128; tokens that
//! expired, were used up or were revoked are pruned a day later ([`Store::prune_tokens`]).

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

/// Random bytes of a token id: 64 bits, so ids do not collide in practice (a collision
/// is retried anyway).
const ID_BYTES: usize = 8;
/// Attempts at a fresh id before giving up (a failure that many times is not chance).
const ID_ATTEMPTS: usize = 4;
/// Most tokens one `list_tokens` returns.
pub const MAX_TOKEN_LIST: usize = 1000;

fn hash_secret(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

impl Store {
    /// Creates a join token `ID.SECRET` (kubeadm's shape) valid for `ttl_ms` and `uses` enrollments.
    pub fn create_token(&self, ttl_ms: i64, uses: i64) -> Result<(String, TokenInfo), StoreError> {
        self.create_token_with(ttl_ms, uses, || random_hex(ID_BYTES))
    }

    /// [`Store::create_token`] with the id source given, so a test can force collisions.
    fn create_token_with(
        &self,
        ttl_ms: i64,
        uses: i64,
        mut new_id: impl FnMut() -> Result<String, StoreError>,
    ) -> Result<(String, TokenInfo), StoreError> {
        let secret = random_hex(16)?;
        let now = now_ms();
        let c = self.w()?;
        for _ in 0..ID_ATTEMPTS {
            let id = new_id()?;
            let n = c
                .execute(
                    "INSERT INTO tokens(id, secret_hash, created_ms, expires_ms, uses_left)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO NOTHING",
                    params![
                        id,
                        hash_secret(&secret),
                        now,
                        now.saturating_add(ttl_ms),
                        uses
                    ],
                )
                .map_err(sql("insert token"))?;
            if n == 1 {
                let info = TokenInfo {
                    id: id.clone(),
                    created_ms: now,
                    expires_ms: now.saturating_add(ttl_ms),
                    uses_left: uses,
                    used: 0,
                    revoked: false,
                };
                return Ok((format!("{id}.{secret}"), info));
            }
        }
        Err(StoreError::Random(format!(
            "{ID_ATTEMPTS} token ids in a row were already taken"
        )))
    }

    /// Deletes tokens that can no longer enroll anyone and stopped being able to before
    /// `before_ms`: expired before it, or used up or revoked and created before it.
    /// Returns how many went. The retention pass calls it with a day ago.
    pub fn prune_tokens(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.w()?
            .execute(
                "DELETE FROM tokens WHERE expires_ms <= ?1
                   OR (revoked_ms IS NOT NULL AND revoked_ms <= ?1)
                   OR (uses_left <= 0 AND created_ms <= ?1)",
                params![before_ms],
            )
            .map_err(sql("prune tokens"))
    }

    /// The newest `limit` tokens (at most [`MAX_TOKEN_LIST`]), newest first.
    pub fn list_tokens(&self, limit: usize) -> Result<Vec<TokenInfo>, StoreError> {
        let limit = i64::try_from(limit.min(MAX_TOKEN_LIST)).unwrap_or(0);
        let c = self.r()?;
        let mut st = c
            .prepare(
                "SELECT id, created_ms, expires_ms, uses_left, used, revoked_ms FROM tokens
                 ORDER BY created_ms DESC, id LIMIT ?1",
            )
            .map_err(sql("list tokens"))?;
        let rows = st
            .query_map([limit], |r| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("persona.db")).expect("open");
        (dir, s)
    }

    #[test]
    fn token_ids_are_64_bit_in_the_id_secret_shape() {
        let (_d, s) = store();
        let (token, info) = s.create_token(60_000, 1).expect("token");
        let (id, secret) = token.split_once('.').expect("ID.SECRET");
        assert_eq!(id, info.id);
        assert_eq!(id.len(), 16, "{id}");
        assert_eq!(secret.len(), 32, "{secret}");
        assert!(token.chars().all(|c| c == '.' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_colliding_id_is_retried_not_an_error() {
        let (_d, s) = store();
        let (first, _) = s
            .create_token_with(60_000, 1, || Ok("00000000000000aa".into()))
            .expect("first");
        let mut ids = ["00000000000000aa", "00000000000000aa", "00000000000000bb"].into_iter();
        let (second, info) = s
            .create_token_with(60_000, 1, || Ok(ids.next().unwrap_or("x").into()))
            .expect("a collision is retried");
        assert_eq!(info.id, "00000000000000bb");
        assert_ne!(first, second);
        // The first token still enrolls (the retry did not overwrite it).
        assert_eq!(s.enroll(&first, "a-1", "h", "fp1").expect("db"), Ok(()));
        // Only a source that keeps colliding fails, with a clear error.
        let e = s
            .create_token_with(60_000, 1, || Ok("00000000000000aa".into()))
            .unwrap_err();
        assert!(e.to_string().contains("already taken"), "{e}");
    }

    #[test]
    fn dead_tokens_are_pruned_live_ones_kept_and_the_list_is_bounded() {
        let (_d, s) = store();
        let (live, _) = s.create_token(3_600_000, 5).expect("live");
        let (used, _) = s.create_token(3_600_000, 1).expect("used");
        assert_eq!(s.enroll(&used, "a-1", "h", "fp1").expect("db"), Ok(()));
        let (_expired, _) = s.create_token(1, 1).expect("short");
        let (rev, info) = s.create_token(3_600_000, 1).expect("revoked");
        assert!(s.revoke_token(&info.id).expect("revoke"));
        let _ = rev;
        // Nothing is older than a day ago: nothing goes.
        assert_eq!(s.prune_tokens(now_ms() - 86_400_000).expect("prune"), 0);
        // As of a moment from now, all but the live one can no longer enroll.
        assert_eq!(s.prune_tokens(now_ms() + 10).expect("prune"), 3);
        let left = s.list_tokens(100).expect("list");
        assert_eq!(left.len(), 1);
        assert_eq!(Some(left[0].id.as_str()), live.split_once('.').map(|x| x.0));
        for _ in 0..5 {
            s.create_token(60_000, 1).expect("token");
        }
        assert_eq!(s.list_tokens(3).expect("list").len(), 3);
        assert_eq!(s.list_tokens(usize::MAX).expect("list").len(), 6);
    }
}
