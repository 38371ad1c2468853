//! The built-in demo upstream (`[demo_upstream]`): answers every request with a JSON echo of
//! what it received, so a newcomer sees at once what the gateway forwarded.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};

/// The demo upstream's router.
pub fn router() -> Router {
    Router::new().fallback(echo)
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let headers: BTreeMap<&str, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Json(json!({
        "service": "sluice demo upstream",
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body_bytes": body.len(),
    }))
}
