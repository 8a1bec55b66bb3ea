//! Join token routes: `GET /v1/tokens`, `POST /v1/tokens` (body `{"ttl_s"?, "uses"?}`,
//! answers the token and the `persona-agent enroll` line), `POST /v1/tokens/{id}/revoke`.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;

use super::reply::{Resp, blocking, body, error, internal, reply};
use crate::app::App;

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

pub async fn list(app: Arc<App>) -> Resp {
    blocking(move || match app.store.list_tokens() {
        Ok(t) => reply(StatusCode::OK, &json!({ "tokens": t })),
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
    blocking(move || match app.store.create_token(ttl_s * 1000, uses) {
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
                    "command": format!("persona-agent enroll --coordinator {advertise} --token {token} --ca-hash {ca_hash}"),
                }),
            )
        }
        Err(e) => internal(e),
    })
    .await
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
