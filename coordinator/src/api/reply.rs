//! Reply helpers of the HTTP API: JSON responses, errors as `{"error": "..."}`, request
//! bodies parsed into typed structs, query strings, and running store work off the async
//! threads. Every handler in `api/` answers through these, so every error looks the same.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A response of the API.
pub type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub fn reply(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": msg}` with `status`.
pub fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    reply(status, &json!({ "error": msg.to_string() }))
}

/// 200 with `v` serialised.
pub fn to_json<T: serde::Serialize>(v: &T) -> Resp {
    match serde_json::to_value(v) {
        Ok(v) => reply(StatusCode::OK, &v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A 500 for a failure of the coordinator itself (logged: an operator should see it).
pub fn internal(e: impl std::fmt::Display) -> Resp {
    tracing::warn!("API internal error: {e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// Runs `f` on the blocking pool (store work must not hold an async worker).
pub async fn blocking(f: impl FnOnce() -> Resp + Send + 'static) -> Resp {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// A request the API refuses as malformed (400), with the reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    /// The 400 response.
    pub fn resp(self) -> Resp {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

/// Parses a request body into `T` (an empty body reads as `{}`). The error names the
/// field that failed (`ttl_s: invalid type: string "60", expected u64`), and every body
/// type refuses unknown fields, so a typo is an error rather than a silent default.
pub fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BadRequest> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." || path.is_empty() {
            format!("body: {inner}")
        } else {
            format!("body: {path}: {inner}")
        };
        BadRequest(msg)
    })?;
    // Trailing bytes after the document are as wrong as a bad field.
    de.end().map_err(|e| BadRequest(format!("body: {e}")))?;
    Ok(v)
}

/// The query string's `key=value` pairs, in order (no percent-decoding: every parameter
/// of this API is an id, a number or a slug).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// The value of `key` in the query string, if given.
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query_pairs(query).find_map(|(k, v)| (k == key).then_some(v))
}

/// `since_ms=MS` as a number, or a 400 that says which value was wrong.
pub fn parse_ms(v: &str) -> Result<i64, BadRequest> {
    v.parse()
        .map_err(|_| BadRequest(format!("since_ms={v:?} is not a time in ms")))
}

/// A finite f64 as JSON, NaN and infinities as null.
pub fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[serde(default)]
        ttl_s: Option<u64>,
    }

    fn text(r: Resp) -> String {
        use http_body_util::BodyExt;
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(r.into_body().collect())
            .expect("a Full body cannot fail");
        String::from_utf8_lossy(&collected.to_bytes()).into_owned()
    }

    #[test]
    fn a_bad_body_names_the_field() {
        let e = body::<T>(br#"{"ttl_s":"60"}"#).unwrap_err();
        assert!(e.0.starts_with("body: ttl_s: invalid type"), "{}", e.0);
        let r = e.resp();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(text(r).contains("ttl_s"));
        let e = body::<T>(br#"{"ttl":"1h"}"#).unwrap_err();
        assert!(e.0.contains("unknown field `ttl`"), "{}", e.0);
        assert!(body::<T>(b"").expect("empty is {}").ttl_s.is_none());
        assert!(body::<T>(br#"{"ttl_s":5} x"#).is_err());
    }
}
