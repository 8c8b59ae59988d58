//! `PATCH`, `PUT` and `DELETE /v1.3/assets/{id}/user-metadata`: change an asset's
//! `user_metadata` after it was made. The body is `{"user_metadata": {...}}`, as the
//! official Python SDK sends it (`assets/raw_client.py`). PATCH merges (a `null` value
//! deletes the key), PUT replaces the whole object, DELETE clears it; in both, a key set
//! to `""` or `[]` is ignored. Values are strings, numbers, booleans or lists of strings
//! (the SDK's `UserMetadataValue`).
//!
//! The answer is `204 No Content`: the SDK defines no response body for these calls
//! (each returns `None`) and accepts any 2xx. An unknown asset is 404 `resource_not_exist`.
//! The fault `user_metadata_status` answers every one of them with a chosen status.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::state::Shared;

/// How the body's keys change the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Merge,
    Replace,
}

pub(crate) async fn patch_user_metadata(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let given = requested(body)?;
    apply(&shared, &id, Change::Merge, given)
}

pub(crate) async fn put_user_metadata(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let given = requested(body)?;
    apply(&shared, &id, Change::Replace, given)
}

pub(crate) async fn delete_user_metadata(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    apply(&shared, &id, Change::Replace, Map::new())
}

/// The `user_metadata` object of the body, its values checked.
fn requested(body: Result<Json<Value>, JsonRejection>) -> Result<Map<String, Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::invalid(e.body_text()))?;
    let meta = match body {
        Value::Object(mut map) => map.remove("user_metadata"),
        _ => return Err(ApiError::invalid("the body must be a JSON object")),
    };
    let Some(meta) = meta else {
        return Err(ApiError::not_provided("user_metadata"));
    };
    let Value::Object(meta) = meta else {
        return Err(invalid());
    };
    if meta.values().all(allowed) {
        Ok(meta)
    } else {
        Err(invalid())
    }
}

/// A value the API takes: a string, number, boolean, list of strings, or `null`.
fn allowed(v: &Value) -> bool {
    match v {
        Value::Null | Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        Value::Object(_) => false,
    }
}

fn invalid() -> ApiError {
    ApiError::invalid(
        "user_metadata must be a JSON object whose values are strings, numbers, booleans, \
         lists of strings or null",
    )
}

/// A key set to `""` or `[]` changes nothing.
fn ignored(v: &Value) -> bool {
    matches!(v, Value::String(s) if s.is_empty())
        || matches!(v, Value::Array(items) if items.is_empty())
}

fn apply(
    shared: &Shared,
    id: &str,
    change: Change,
    given: Map<String, Value>,
) -> Result<StatusCode, ApiError> {
    let injected = shared.faults().faults().user_metadata_status;
    if let Some(e) = injected_error(injected) {
        return Err(e);
    }
    {
        let mut store = shared.store();
        let asset = store.get(id).ok_or_else(|| ApiError::not_found("asset"))?;
        let mut meta = match (change, &asset.new.user_metadata) {
            (Change::Merge, Some(Value::Object(old))) => old.clone(),
            _ => Map::new(),
        };
        for (key, value) in given {
            match value {
                Value::Null => {
                    meta.remove(&key);
                }
                v if ignored(&v) => {}
                v => {
                    meta.insert(key, v);
                }
            }
        }
        let meta = (!meta.is_empty()).then_some(Value::Object(meta));
        store.set_user_metadata(id, meta);
    }
    shared.stats().user_metadata_updates += 1;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer `user_metadata_status` asks for: a missing route (404, 405) the way this
/// API answers one, or a generic error.
fn injected_error(status: u16) -> Option<ApiError> {
    let status = StatusCode::from_u16(status).ok()?;
    Some(match status.as_u16() {
        0..=399 => return None,
        404 => ApiError::new(
            status,
            "resource_not_exist",
            "No route for this method and path",
        ),
        405 => ApiError::new(
            status,
            "method_not_allowed",
            "This method is not allowed on this path",
        ),
        400..=499 => ApiError::invalid("The request is not valid."),
        _ => ApiError::new(
            status,
            "internal_error",
            "An internal error occurred. Please try again.",
        ),
    })
}
