//! Indexing: `POST /v1.3/indexes/{index_id}/indexed-assets` and
//! `GET /v1.3/indexes/{index_id}/indexed-assets/{id}`. Indexes exist implicitly (any
//! non-empty id will do). Only a `ready` asset can be indexed; an indexed asset goes
//! `pending` -> `indexing` -> `ready` over the ready delay (kept by `indexed_assets.rs`).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::indexed_assets::IndexedAsset;
use super::params::{json_object, optional_bool, required_str};
use super::state::Shared;
use super::upload::check_user_metadata;

/// `POST /v1.3/indexes/{index_id}/indexed-assets`.
pub(crate) async fn index_asset(
    State(shared): State<Arc<Shared>>,
    Path(index_id): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = json_object(body).await?;
    let asset_id = required_str(&map, "asset_id")?.to_owned();
    optional_bool(&map, "enable_video_stream")?;
    let user_metadata = match map.get("user_metadata") {
        None | Some(Value::Null) => None,
        Some(meta) => Some(check_user_metadata(meta.clone())?),
    };
    if index_id.trim().is_empty() {
        return Err(ApiError::not_found("index"));
    }
    let ready_delay = shared.limits.ready_delay;
    let (filename, size) = {
        let store = shared.store();
        let asset = store
            .get(&asset_id)
            .ok_or_else(|| ApiError::not_found("asset"))?;
        match asset.api_status(ready_delay) {
            "ready" => {}
            status => {
                return Err(ApiError::invalid(format!(
                    "The asset {asset_id} is not ready (status: {status}); \
                     only ready assets can be indexed."
                )));
            }
        }
        (asset.new.filename.clone(), asset.new.size)
    };
    let indexed = IndexedAsset::new(index_id, asset_id.clone(), filename, size, user_metadata);
    let id = shared.indexed().insert(indexed);
    shared.stats().indexed_assets += 1;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "_id": id, "asset_id": asset_id })),
    ))
}

/// `GET /v1.3/indexes/{index_id}/indexed-assets/{id}`.
pub(crate) async fn get_indexed_asset(
    State(shared): State<Arc<Shared>>,
    Path((index_id, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let indexed = shared.indexed();
    match indexed.get(&index_id, &id) {
        Some(asset) => Ok(Json(asset.to_json(shared.limits.ready_delay))),
        None => Err(ApiError::not_found("indexed asset")),
    }
}
