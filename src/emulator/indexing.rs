//! Indexing: `POST /v1.3/indexes/{index_id}/indexed-assets` and
//! `GET /v1.3/indexes/{index_id}/indexed-assets/{id}`. Indexes exist implicitly (any
//! non-empty id will do). Only a `ready` asset can be indexed; an indexed asset goes
//! `pending` -> `indexing` -> `ready` over the ready delay, computed lazily like assets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::error::ApiError;
use super::params::{json_object, optional_bool, required_str};
use super::sessions::rfc3339;
use super::state::Shared;
use super::store::new_object_id;
use super::upload::check_user_metadata;

/// An asset indexed into an index, with what it copied from the asset when indexed.
#[derive(Debug, Clone)]
pub(crate) struct IndexedAsset {
    id: String,
    index_id: String,
    asset_id: String,
    filename: String,
    size: u64,
    user_metadata: Option<Value>,
    created_at: SystemTime,
    created: Instant,
}

impl IndexedAsset {
    /// `pending` for the first quarter of the delay, `indexing` for the rest, then `ready`.
    fn status(&self, ready_delay: Duration) -> &'static str {
        let elapsed = self.created.elapsed();
        if elapsed >= ready_delay {
            "ready"
        } else if elapsed < ready_delay / 4 {
            "pending"
        } else {
            "indexing"
        }
    }

    fn to_json(&self, ready_delay: Duration) -> Value {
        let status = self.status(ready_delay);
        let mut obj = Map::new();
        obj.insert("_id".into(), json!(self.id));
        obj.insert("asset_id".into(), json!(self.asset_id));
        obj.insert("index_id".into(), json!(self.index_id));
        obj.insert("status".into(), json!(status));
        obj.insert("created_at".into(), json!(rfc3339(self.created_at)));
        if status == "ready" {
            let indexed_at = rfc3339(self.created_at + ready_delay);
            obj.insert("indexed_at".into(), json!(indexed_at));
        }
        obj.insert(
            "system_metadata".into(),
            json!({ "filename": self.filename, "size": self.size }),
        );
        if let Some(meta) = &self.user_metadata {
            obj.insert("user_metadata".into(), meta.clone());
        }
        Value::Object(obj)
    }
}

/// Every indexed asset, by id.
#[derive(Debug, Default)]
pub(crate) struct IndexedAssets {
    by_id: HashMap<String, IndexedAsset>,
}

impl IndexedAssets {
    fn insert(&mut self, mut indexed: IndexedAsset) -> String {
        while self.by_id.contains_key(&indexed.id) {
            indexed.id = new_object_id();
        }
        let id = indexed.id.clone();
        self.by_id.insert(id.clone(), indexed);
        id
    }
}

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
    let indexed = IndexedAsset {
        id: new_object_id(),
        index_id,
        asset_id: asset_id.clone(),
        filename,
        size,
        user_metadata,
        created_at: SystemTime::now(),
        created: Instant::now(),
    };
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
    match indexed.by_id.get(&id) {
        Some(asset) if asset.index_id == index_id => {
            Ok(Json(asset.to_json(shared.limits.ready_delay)))
        }
        _ => Err(ApiError::not_found("indexed asset")),
    }
}
