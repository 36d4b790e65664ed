//! `POST /admin/cache/purge` and `GET /admin/cache`: operator control of the prediction
//! cache. A purge is `{"all": true}`, `{"model": "…"}` or `{"key": "<64 hex>"}` (the key is
//! in every cached or cacheable response's `x-switchyard-cache-key` header). None of these
//! scan on the request path; see `cache` for how each one works.

use super::{error, json_response};
use crate::cache::key::CacheKey;
use crate::cache::{Cache, Purge};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

/// The purge request: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

pub(super) async fn purge(cache: Option<&Cache>, body: &[u8]) -> Response<Vec<u8>> {
    let Some(cache) = cache else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway has no prediction cache",
        );
    };
    let req: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("purge request: {e}; expected {{\"all\": true}}, {{\"model\": \"…\"}} or {{\"key\": \"<hex>\"}}"),
            )
        }
    };
    let what = match (req.all, req.model, req.key) {
        (true, None, None) => Purge::All,
        (false, Some(model), None) if !model.is_empty() => Purge::Model(model),
        (false, None, Some(key)) => match CacheKey::from_hex(&key) {
            Some(k) => Purge::Key(k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "purge request: `key` must be 64 hex characters (from x-switchyard-cache-key)",
                )
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "purge request: give exactly one of {\"all\": true}, {\"model\": \"…\"} or {\"key\": \"<hex>\"}",
            )
        }
    };
    let removed = cache.purge(&what).await;
    tracing::info!(?what, ?removed, "prediction cache purged");
    let scope = match &what {
        Purge::All => json!({"all": true}),
        Purge::Model(m) => json!({"model": m}),
        Purge::Key(k) => json!({"key": k.to_hex()}),
    };
    json_response(
        StatusCode::OK,
        &json!({"purged": scope, "removed": removed}),
    )
}

pub(super) async fn stats(cache: Option<&Cache>) -> Response<Vec<u8>> {
    let Some(cache) = cache else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway has no prediction cache",
        );
    };
    cache.settle().await;
    json_response(
        StatusCode::OK,
        &json!({
            "entries": cache.entries(),
            "bytes": cache.bytes(),
            "max_bytes": cache.max_bytes(),
            "in_flight": cache.in_flight(),
        }),
    )
}
