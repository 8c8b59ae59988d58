//! Request parameters of the JSON routes (multipart sessions, indexing): the body read
//! with a size cap, typed fields with the platform's 400s, and `page`/`page_limit`.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::HOST;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Largest JSON body accepted (a report of thousands of chunks fits).
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;
/// Largest `page_limit` the list routes accept.
pub(crate) const MAX_PAGE_LIMIT: u64 = 50;
pub(crate) const DEFAULT_PAGE_LIMIT: u64 = 10;

/// The body as a JSON object.
pub(crate) async fn json_object(body: Body) -> Result<Map<String, Value>, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_JSON_BODY)
        .await
        .map_err(|_| {
            ApiError::invalid(format!(
                "The request body must be JSON of at most {MAX_JSON_BODY} bytes."
            ))
        })?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid("The request body must be a JSON object.")),
        Err(error) => Err(ApiError::invalid(format!(
            "The request body is not valid JSON: {error}"
        ))),
    }
}

/// A field that must be present and not null.
pub(crate) fn required<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Err(ApiError::not_provided(name)),
        Some(value) => Ok(value),
    }
}

pub(crate) fn required_str<'a>(
    map: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, ApiError> {
    required(map, name)?
        .as_str()
        .ok_or_else(|| ApiError::invalid(format!("{name} must be a string")))
}

/// A non-negative integer field.
pub(crate) fn required_u64(map: &Map<String, Value>, name: &str) -> Result<u64, ApiError> {
    as_u64(required(map, name)?, name)
}

pub(crate) fn optional_u64(map: &Map<String, Value>, name: &str) -> Result<Option<u64>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => as_u64(value, name).map(Some),
    }
}

fn as_u64(value: &Value, name: &str) -> Result<u64, ApiError> {
    value
        .as_u64()
        .ok_or_else(|| ApiError::invalid(format!("{name} must be a non-negative integer")))
}

pub(crate) fn optional_bool(
    map: &Map<String, Value>,
    name: &str,
) -> Result<Option<bool>, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(format!("{name} must be true or false"))),
    }
}

/// `page` (default 1) and `page_limit` (default 10, at most 50) from query pairs.
pub(crate) fn page(pairs: &[(String, String)]) -> Result<(u64, u64), ApiError> {
    let (mut page, mut page_limit) = (1, DEFAULT_PAGE_LIMIT);
    for (key, value) in pairs {
        match key.as_str() {
            "page" => page = positive(key, value)?,
            "page_limit" => page_limit = positive(key, value)?,
            _ => {}
        }
    }
    if page_limit > MAX_PAGE_LIMIT {
        return Err(ApiError::invalid(format!(
            "page_limit must be between 1 and {MAX_PAGE_LIMIT}"
        )));
    }
    Ok((page, page_limit))
}

pub(crate) fn positive(key: &str, value: &str) -> Result<u64, ApiError> {
    match value.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::invalid(format!(
            "{key} must be a positive integer, not {value:?}"
        ))),
    }
}

/// `http://host[:port]` as the client addressed the emulator (its `Host` header), so that
/// URLs handed out work from where the client is; the listening address otherwise.
pub(crate) fn origin(headers: &HeaderMap, addr: std::net::SocketAddr) -> String {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).filter(|h| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
    });
    match host {
        Some(host) => format!("http://{host}"),
        None => format!("http://{addr}"),
    }
}
