//! The emulator's HTTP routes: the asset API under `/v1.3` (retrieve, list, delete; the
//! upload lives in `upload.rs`, multipart uploads in `upload_sessions.rs`, `user_metadata`
//! changes in `user_metadata.rs`, indexing in `indexing.rs`), the presigned chunk URLs under `/_s3` (`chunks.rs`), the `/_emulator`
//! admin routes (no auth, no faults) and JSON answers for unknown routes and methods.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware;
use axum::routing::{get, patch, post, put};
use serde_json::{Value, json};

use super::chunks::put_chunk;
use super::config::Faults;
use super::error::ApiError;
use super::gate::api_gate;
use super::indexing::{get_indexed_asset, index_asset};
use super::model::{AssetView, Stats};
use super::params::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, positive};
use super::state::Shared;
use super::store::Asset;
use super::upload::create_asset;
use super::upload_sessions::{
    create_session, list_sessions, presigned_urls, report_chunks, session_status,
};
use super::user_metadata::{delete_user_metadata, patch_user_metadata, put_user_metadata};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1.3/assets", get(list_assets).post(create_asset))
        .route("/v1.3/assets/{id}", get(get_asset).delete(delete_asset))
        .route(
            "/v1.3/assets/{id}/user-metadata",
            patch(patch_user_metadata)
                .put(put_user_metadata)
                .delete(delete_user_metadata),
        )
        .route(
            "/v1.3/assets/multipart-uploads",
            get(list_sessions).post(create_session),
        )
        .route(
            "/v1.3/assets/multipart-uploads/{upload_id}",
            get(session_status).post(report_chunks),
        )
        .route(
            "/v1.3/assets/multipart-uploads/{upload_id}/presigned-urls",
            post(presigned_urls),
        )
        .route("/v1.3/indexes/{index_id}/indexed-assets", post(index_asset))
        .route(
            "/v1.3/indexes/{index_id}/indexed-assets/{id}",
            get(get_indexed_asset),
        )
        .route("/_s3/{upload_id}/{chunk_index}", put(put_chunk))
        .route("/_emulator/stats", get(admin_stats))
        .route("/_emulator/faults", get(admin_faults).put(admin_set_faults))
        .route("/_emulator/assets", get(admin_assets))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), api_gate))
        // Uploads are streamed, so the body size is bounded by the upload limits instead.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

async fn get_asset(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ready_delay = shared.limits.ready_delay;
    let (detail, vanished) = {
        let mut store = shared.store();
        let asset = store.get(&id).ok_or_else(|| ApiError::not_found("asset"))?;
        let detail = asset.to_detail_json(ready_delay);
        // Reported ready this once; from now on the platform has lost it.
        let ready = asset.status(ready_delay) == "ready";
        (detail, ready && store.vanish(&id))
    };
    if vanished {
        shared.stats().vanished_assets += 1;
    }
    Ok(Json(detail))
}

async fn delete_asset(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if shared.store().remove(&id) {
        Ok(Json(json!({})))
    } else {
        Err(ApiError::not_found("asset"))
    }
}

/// Query of `GET /v1.3/assets`.
#[derive(Debug, PartialEq)]
struct ListQuery {
    page: u64,
    page_limit: u64,
    /// Lowercased, for the case-insensitive substring match.
    filename: Option<String>,
    asset_ids: Vec<String>,
    asset_types: Vec<String>,
}

impl ListQuery {
    /// Pairs rather than a struct, because `asset_ids[]` may repeat.
    fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut query = Self {
            page: 1,
            page_limit: DEFAULT_PAGE_LIMIT,
            filename: None,
            asset_ids: Vec::new(),
            asset_types: Vec::new(),
        };
        for (key, value) in pairs {
            match key.as_str() {
                "page" => query.page = positive(key, value)?,
                "page_limit" => query.page_limit = positive(key, value)?,
                "filename" => query.filename = Some(value.to_lowercase()),
                "asset_ids[]" | "asset_ids" => query.asset_ids.push(value.clone()),
                "asset_types[]" | "asset_types" => query.asset_types.push(asset_type(value)?),
                _ => {}
            }
        }
        if query.page_limit > MAX_PAGE_LIMIT {
            return Err(ApiError::invalid(format!(
                "page_limit must be between 1 and {MAX_PAGE_LIMIT}"
            )));
        }
        Ok(query)
    }

    fn matches(&self, asset: &Asset) -> bool {
        let name_ok = self
            .filename
            .as_ref()
            .is_none_or(|f| asset.new.filename.to_lowercase().contains(f.as_str()));
        let id_ok = self.asset_ids.is_empty() || self.asset_ids.contains(&asset.id);
        let type_ok = self.asset_types.is_empty()
            || self.asset_types.iter().any(|t| t.as_str() == asset.kind());
        name_ok && id_ok && type_ok
    }
}

fn asset_type(value: &str) -> Result<String, ApiError> {
    match value {
        "image" | "video" | "audio" => Ok(value.to_owned()),
        _ => Err(ApiError::invalid(format!(
            "asset_types must be image, video or audio, not {value:?}"
        ))),
    }
}

async fn list_assets(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let query = ListQuery::parse(&pairs)?;
    let skip = (query.page - 1).saturating_mul(query.page_limit);
    let ready_delay = shared.limits.ready_delay;
    let (data, total, vanished) = {
        let mut store = shared.store();
        let matching = || store.newest_first().filter(|a| query.matches(a));
        let page: Vec<&Asset> = matching()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(query.page_limit).unwrap_or(usize::MAX))
            .collect();
        let data: Vec<Value> = page.iter().map(|a| a.to_detail_json(ready_delay)).collect();
        let ready: Vec<String> = page
            .iter()
            .filter(|a| a.status(ready_delay) == "ready")
            .map(|a| a.id.clone())
            .collect();
        let total = matching().count() as u64;
        // Reported ready in this page: from now on the platform has lost those marked so.
        let vanished = ready.iter().filter(|id| store.vanish(id)).count() as u64;
        (data, total, vanished)
    };
    if vanished > 0 {
        shared.stats().vanished_assets += vanished;
    }
    Ok(Json(json!({
        "data": data,
        "page_info": {
            "limit_per_page": query.page_limit,
            "page": query.page,
            "total_page": total.div_ceil(query.page_limit),
            "total_results": total,
        }
    })))
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> Json<Stats> {
    let stats = shared.stats().clone();
    Json(stats)
}

async fn admin_faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    let faults = shared.faults().faults().clone();
    Json(faults)
}

async fn admin_set_faults(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<Faults>, JsonRejection>,
) -> Result<Json<Faults>, ApiError> {
    let Json(faults) = body.map_err(|e| ApiError::invalid(e.body_text()))?;
    validate_faults(&faults)?;
    shared.set_faults(faults.clone());
    Ok(Json(faults))
}

/// Shares must be probabilities; `set_faults` tolerates anything, the admin API tells.
fn validate_faults(faults: &Faults) -> Result<(), ApiError> {
    let shares = [
        ("error_before_body", faults.error_before_body),
        ("error_after_body", faults.error_after_body),
        ("rate_limit", faults.rate_limit),
        ("reset_mid_body", faults.reset_mid_body),
        ("malformed_json", faults.malformed_json),
        ("missing_id", faults.missing_id),
        ("html_200", faults.html_200),
        ("unknown_status", faults.unknown_status),
        ("vanish_after_ready", faults.vanish_after_ready),
        ("unreadable_asset", faults.unreadable_asset),
        ("list_omits_asset", faults.list_omits_asset),
    ];
    match shares.iter().find(|(_, p)| !(0.0..=1.0).contains(p)) {
        Some((name, p)) => Err(ApiError::invalid(format!(
            "{name} must be between 0 and 1, not {p}"
        ))),
        None => Ok(()),
    }
}

async fn admin_assets(State(shared): State<Arc<Shared>>) -> Json<Vec<AssetView>> {
    Json(shared.asset_views())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "resource_not_exist",
        format!("No route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
