//! Join token routes: `GET /v1/tokens?limit=N` (the newest N, default 100, at most
//! 1000), `POST /v1/tokens` (body `{"ttl_s"?, "uses"?}`, answers the token and the
//! `persona-agent enroll` line; it also prunes tokens dead for a day),
//! `POST /v1/tokens/{id}/revoke`.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::reply::{BadRequest, Resp, blocking, body, error, internal, query_param, reply};
use crate::app::App;
use crate::store::MAX_TOKEN_LIST;

/// Tokens `GET /v1/tokens` lists without `limit`.
pub const DEFAULT_TOKEN_LIST: usize = 100;
/// How long a token that can no longer enroll anyone is still listed.
const PRUNE_AFTER_MS: i64 = 86_400_000;

/// `limit=N` of `GET /v1/tokens`: 1..=1000, default 100.
fn list_limit(query: &str) -> Result<usize, BadRequest> {
    match query_param(query, "limit") {
        None => Ok(DEFAULT_TOKEN_LIST),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_TOKEN_LIST).contains(&n) => Ok(n),
            _ => Err(BadRequest(format!(
                "limit={v:?}: expected a number in 1..={MAX_TOKEN_LIST}"
            ))),
        },
    }
}

/// `POST /v1/tokens` body. Strict: `{"ttl":"1h"}` is an error naming `ttl`, not a
/// one-hour token by default.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default = "default_ttl_s")]
    ttl_s: i64,
    #[serde(default = "default_uses")]
    uses: i64,
}

fn default_ttl_s() -> i64 {
    3600
}

fn default_uses() -> i64 {
    1
}

pub async fn list(app: Arc<App>, query: &str) -> Resp {
    let limit = match list_limit(query) {
        Ok(n) => n,
        Err(e) => return e.resp(),
    };
    blocking(move || match app.store.list_tokens(limit + 1) {
        Ok(mut t) => {
            let more = t.len() > limit;
            t.truncate(limit);
            reply(
                StatusCode::OK,
                &json!({ "tokens": t, "limit": limit, "more": more }),
            )
        }
        Err(e) => internal(e),
    })
    .await
}

pub async fn create(app: Arc<App>, bytes: &[u8]) -> Resp {
    let req: CreateBody = match body(bytes) {
        Ok(r) => r,
        Err(e) => return e.resp(),
    };
    let (ttl_s, uses) = (req.ttl_s, req.uses);
    if !(1..=365 * 86400).contains(&ttl_s) || !(1..=1_000_000).contains(&uses) {
        return error(
            StatusCode::BAD_REQUEST,
            "ttl_s must be 1..=31536000 and uses 1..=1000000",
        );
    }
    blocking(move || {
        // Tokens that can no longer enroll anyone go a day later (the retention pass
        // prunes too; doing it here keeps the table small between passes).
        let now = crate::store::now_ms();
        if let Err(e) = app.store.prune_tokens(now - PRUNE_AFTER_MS) {
            tracing::warn!("pruning dead join tokens: {e}");
        }
        create_reply(&app, app.store.create_token(ttl_s * 1000, uses), uses)
    })
    .await
}

fn create_reply(
    app: &App,
    made: Result<(String, crate::store::TokenInfo), crate::store::StoreError>,
    uses: i64,
) -> Resp {
    match made {
        Ok((token, info)) => {
            let ca_hash = app.pki.ca_hash();
            let advertise = &app.advertise;
            reply(
                StatusCode::OK,
                &json!({
                    "token": token,
                    "id": info.id,
                    "expires_ms": info.expires_ms,
                    "uses": uses,
                    "ca_hash": ca_hash,
                    "coordinator": advertise,
                    // The token goes on stdin: printf is a shell builtin, so it never
                    // shows in `ps` the way an argument of persona-agent would.
                    "command": format!("printf '%s\\n' '{token}' | persona-agent enroll --coordinator {advertise} --token - --ca-hash {ca_hash}"),
                }),
            )
        }
        Err(e) => internal(e),
    }
}

pub async fn revoke(app: Arc<App>, id: &str) -> Resp {
    let id = id.to_owned();
    blocking(move || match app.store.revoke_token(&id) {
        Ok(true) => reply(StatusCode::OK, &json!({ "revoked": id })),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no active token {id}")),
        Err(e) => internal(e),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_body_is_refused_naming_the_field() {
        // Issue 18 item 14: this gave a one-hour single-use token.
        let e = body::<CreateBody>(br#"{"ttl_s":"60","uses":"5","bogus":1}"#).unwrap_err();
        assert!(e.0.contains("ttl_s"), "{}", e.0);
        assert_eq!(e.resp().status(), StatusCode::BAD_REQUEST);
        let e = body::<CreateBody>(br#"{"ttl_s":60,"uses":5,"bogus":1}"#).unwrap_err();
        assert!(e.0.contains("bogus"), "{}", e.0);
        let ok = body::<CreateBody>(br#"{"ttl_s":60,"uses":5}"#).expect("good body");
        assert_eq!((ok.ttl_s, ok.uses), (60, 5));
    }

    #[test]
    fn the_list_limit_has_a_default_and_a_maximum() {
        assert_eq!(list_limit(""), Ok(DEFAULT_TOKEN_LIST));
        assert_eq!(list_limit("limit=7"), Ok(7));
        assert_eq!(list_limit("limit=1000"), Ok(1000));
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=-1"] {
            let e = list_limit(bad).unwrap_err();
            assert!(e.0.contains("1..=1000"), "{bad}: {}", e.0);
        }
    }
}
