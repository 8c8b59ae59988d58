//! The gatekeeping every `/v1.3` request goes through, applying the faults drawn by
//! `faults.rs`, in this order:
//! added latency, API-key check (401), rate limit (429), error before the body (500),
//! the slow link (`slow_bytes_per_sec`: the body is paced from here on, see
//! `throttle.rs`), connection reset part-way through the body; after the route has
//! answered, the answer delay (the asset is made, the client still waits). The 500
//! after the whole body was read and the asset that vanishes once ready are only passed
//! on here and applied by the routes. Last come the lies told about an answer the route
//! gave: an HTML page instead of it (`200 OK`), a `201` without `_id`, an undocumented
//! asset status, an asset left out of a list by ids, JSON cut off half-way.
//!
//! Chunk PUTs to the presigned URLs (`/_s3/...`) go through the same gate without the
//! key check (the URL's signature is checked by the route) and are not counted as API
//! requests.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;
use tracing::debug;

use super::error::ApiError;
use super::faults::{FaultPlan, Lies};
use super::server::ConnHandle;
use super::state::Shared;
use super::throttle::throttle_request;

/// The requests-per-minute figure the 429 headers advertise (Free / Tier 1 upload RPM).
const ADVERTISED_RATE_LIMIT: u64 = 60;

/// When the body length is unknown (chunked), a reset happens within this many bytes.
const UNKNOWN_LENGTH_RESET_SPAN: f64 = 16.0 * 1024.0 * 1024.0;

/// Bytes beyond the largest upload limit still drained after an early answer (form overhead).
const EARLY_DRAIN_SLACK: u64 = 1024 * 1024;

/// Longest answer body read back to tell a lie about it (API answers are small).
const MAX_LIED_BODY: usize = 16 * 1024 * 1024;

/// The status an asset is given by `unknown_status`: not one the API documents.
const UNKNOWN_STATUS: &str = "awaiting_moderation";

/// The page a captive portal or a misrouted proxy answers with.
const HTML_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n\
    <body><h1>Service Unavailable</h1><p>The gateway could not reach the upstream \
    service. Please try again later.</p></body></html>\n";

/// Request extension telling the upload route to answer 500 after reading the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorAfterBody(pub bool);

/// Request extension telling the upload route that the asset it creates is to vanish
/// once it has been reported `ready`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VanishAfterReady(pub bool);

/// Middleware for all routes: counts and gates `/v1.3` requests, gates chunk PUTs, passes
/// others (the admin routes) through.
pub(crate) async fn api_gate(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let check_key = if is_api_path(&path) {
        true
    } else if is_chunk_path(&path) {
        false
    } else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    let _busy = InProgress::enter(&shared);
    if check_key {
        count_request(&shared, &method, &path);
    }
    let (plan, not_waiting) = {
        let mut faults = shared.faults();
        (
            faults.draw(),
            check_key && faults.inside_rate_limit_window(),
        )
    };
    if not_waiting {
        shared.stats().requests_while_rate_limited += 1;
    }
    let (response, fault) = gate(&shared, plan, check_key, request, next).await;
    debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        fault,
        "emulator request"
    );
    response
}

/// Counts a request in `Stats::requests_in_progress` until it is answered
/// or dropped.
struct InProgress<'a>(&'a Shared);

impl<'a> InProgress<'a> {
    fn enter(shared: &'a Shared) -> InProgress<'a> {
        shared.stats().requests_in_progress += 1;
        InProgress(shared)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut stats = self.0.stats();
        stats.requests_in_progress = stats.requests_in_progress.saturating_sub(1);
    }
}

fn is_api_path(path: &str) -> bool {
    path == "/v1.3" || path.starts_with("/v1.3/")
}

/// The presigned chunk URLs served by `chunks.rs`.
fn is_chunk_path(path: &str) -> bool {
    path.starts_with("/_s3/")
}

fn is_create_asset(method: &Method, path: &str) -> bool {
    method == Method::POST && path == "/v1.3/assets"
}

fn count_request(shared: &Shared, method: &Method, path: &str) {
    let mut stats = shared.stats();
    stats.requests += 1;
    if is_create_asset(method, path) {
        stats.create_requests += 1;
        stats
            .create_request_times
            .push(std::time::SystemTime::now());
    }
    match asset_read(method, path) {
        Some(AssetRead::List) => stats.list_requests += 1,
        Some(AssetRead::One(id)) => {
            stats.asset_get_requests += 1;
            *stats.asset_gets_by_id.entry(id.to_owned()).or_default() += 1;
        }
        None => {}
    }
}

/// Applies the plan; returns the response and the name of the fault injected, if any.
async fn gate(
    shared: &Shared,
    plan: FaultPlan,
    check_key: bool,
    request: Request,
    next: Next,
) -> (Response, Option<&'static str>) {
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    if let Some((response, fault)) = early_answer(shared, &plan, check_key, &request) {
        return (answer_early(shared, request, response), fault);
    }
    let slow = shared.faults().faults().slow_bytes_per_sec;
    let mut request = throttle_request(request, slow);
    if let Some(share) = plan.reset_mid_body
        && has_body(&request)
    {
        shared.stats().injected_resets += 1;
        return (reset_mid_body(request, share).await, Some("reset_mid_body"));
    }
    request
        .extensions_mut()
        .insert(ErrorAfterBody(plan.error_after_body));
    request
        .extensions_mut()
        .insert(VanishAfterReady(plan.vanish_after_ready));
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let by_ids = lists_by_ids(request.uri().query());
    let response = next.run(request).await;
    if !plan.answer_delay.is_zero() {
        tokio::time::sleep(plan.answer_delay).await;
    }
    let lies = Lies {
        // Only a list by ids has an asset to leave out that the client asked for.
        omit_listed: plan.lies.omit_listed && by_ids,
        ..plan.lies
    };
    tell_lies(shared, lies, &method, &path, response).await
}

/// Whether a query filters by `asset_ids` (in the SDK's form or with brackets).
fn lists_by_ids(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            matches!(
                key,
                "asset_ids" | "asset_ids[]" | "asset_ids%5B%5D" | "asset_ids%5b%5d"
            )
        })
    })
}

/// Applies the lies drawn for this request to the answer the route gave; returns the
/// answer sent and the name of the lie told, if any.
async fn tell_lies(
    shared: &Shared,
    lies: Lies,
    method: &Method,
    path: &str,
    response: Response,
) -> (Response, Option<&'static str>) {
    if lies.html_200 {
        shared.stats().injected_html_200 += 1;
        let page = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            HTML_PAGE,
        );
        return (page.into_response(), Some("html_200"));
    }
    let drop_id = lies.missing_id
        && is_create_asset(method, path)
        && response.status() == StatusCode::CREATED;
    let odd_status =
        lies.unknown_status && is_asset_read(method, path) && response.status() == StatusCode::OK;
    let unreadable =
        lies.unreadable_asset && is_asset_read(method, path) && response.status() == StatusCode::OK;
    let omit = lies.omit_listed
        && asset_read(method, path) == Some(AssetRead::List)
        && response.status() == StatusCode::OK;
    let cut = lies.malformed_json && is_json(response.headers());
    if !drop_id && !odd_status && !unreadable && !omit && !cut {
        return (response, None);
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_LIED_BODY).await else {
        return (ApiError::internal().into_response(), None);
    };
    let mut bytes = bytes.to_vec();
    let mut fault = None;
    if (drop_id || odd_status || unreadable || omit)
        && let Ok(mut value) = serde_json::from_slice::<Value>(&bytes)
    {
        if omit && let Some(id) = omit_first(&mut value) {
            *shared.stats().omitted_from_lists.entry(id).or_default() += 1;
            fault = Some("list_omits_asset");
        }
        if unreadable {
            make_unreadable(&mut value);
            shared.stats().injected_unreadable_assets += 1;
            fault = Some("unreadable_asset");
        } else if drop_id {
            if let Value::Object(obj) = &mut value {
                obj.remove("_id");
            }
            shared.stats().injected_missing_ids += 1;
            fault = Some("missing_id");
        } else if odd_status {
            set_unknown_status(&mut value);
            shared.stats().injected_unknown_status += 1;
            fault = Some("unknown_status");
        }
        bytes = value.to_string().into_bytes();
    }
    if cut {
        bytes.truncate(bytes.len() / 2);
        shared.stats().injected_malformed_json += 1;
        fault = Some("malformed_json");
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    (Response::from_parts(parts, Body::from(bytes)), fault)
}

/// `GET /v1.3/assets` or `GET /v1.3/assets/{id}`.
fn is_asset_read(method: &Method, path: &str) -> bool {
    asset_read(method, path).is_some()
}

/// Which asset read a request is.
#[derive(Debug, PartialEq, Eq)]
enum AssetRead<'a> {
    /// `GET /v1.3/assets`.
    List,
    /// `GET /v1.3/assets/{id}`.
    One(&'a str),
}

fn asset_read<'a>(method: &Method, path: &'a str) -> Option<AssetRead<'a>> {
    if method != Method::GET {
        return None;
    }
    match path.strip_prefix("/v1.3/assets")? {
        "" => Some(AssetRead::List),
        rest => rest
            .strip_prefix('/')
            .filter(|id| !id.is_empty() && !id.contains('/') && *id != "multipart-uploads")
            .map(AssetRead::One),
    }
}

/// Leaves the first asset out of a list page (and out of its count); returns its id.
fn omit_first(value: &mut Value) -> Option<String> {
    let assets = value.get_mut("data")?.as_array_mut()?;
    if assets.is_empty() {
        return None;
    }
    let gone = assets.remove(0);
    if let Some(total) = value
        .get_mut("page_info")
        .and_then(|info| info.get_mut("total_results"))
        && let Some(n) = total.as_u64()
    {
        *total = Value::from(n.saturating_sub(1));
    }
    Some(
        gone.get("_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Gives an asset (or the first asset of a list) a `filename` that is not text.
fn make_unreadable(value: &mut Value) {
    let asset = match value.get_mut("data").and_then(Value::as_array_mut) {
        Some(assets) => assets.first_mut(),
        None => Some(value),
    };
    if let Some(Value::Object(asset)) = asset {
        asset.insert("filename".into(), Value::from(12345));
    }
}

/// Gives an asset (or every asset of a list) a status the API does not document.
fn set_unknown_status(value: &mut Value) {
    let set = |asset: &mut Value| {
        if let Some(status) = asset.get_mut("status") {
            *status = Value::from(UNKNOWN_STATUS);
        }
    };
    match value.get_mut("data").and_then(Value::as_array_mut) {
        Some(assets) => assets.iter_mut().for_each(set),
        None => set(value),
    }
}

/// The answer given before the body is read, if any: 401, or an injected 429 or 500.
fn early_answer(
    shared: &Shared,
    plan: &FaultPlan,
    check_key: bool,
    request: &Request,
) -> Option<(Response, Option<&'static str>)> {
    if check_key && !has_valid_key(shared, request) {
        return Some((ApiError::unauthorized().into_response(), None));
    }
    if plan.rate_limit {
        shared.stats().injected_rate_limits += 1;
        shared.faults().note_rate_limit(plan.retry_after_secs);
        let response = rate_limited(plan.retry_after_secs);
        return Some((response, Some("rate_limit")));
    }
    if plan.error_before_body {
        shared.stats().injected_errors_before_body += 1;
        let response = ApiError::internal().into_response();
        return Some((response, Some("error_before_body")));
    }
    None
}

/// Sends `response` without reading the body, then discards the body in the background:
/// closing a socket with unread data makes the kernel send RST, and a client still
/// sending would see a broken pipe instead of the answer. Bodies larger than any upload
/// are cut off.
fn answer_early(shared: &Shared, request: Request, response: Response) -> Response {
    if has_body(&request) {
        discard_body(request.into_body(), shared.limits.largest_upload_body());
    }
    response
}

/// Reads and drops a body in the background, up to `cap` bytes plus some slack, so that
/// a client still sending it gets the answer given without it.
pub(crate) fn discard_body(body: Body, cap: u64) {
    tokio::spawn(read_up_to(body, cap.saturating_add(EARLY_DRAIN_SLACK)));
}

fn has_valid_key(shared: &Shared, request: &Request) -> bool {
    request
        .headers()
        .get("x-api-key")
        .is_some_and(|key| key.as_bytes() == shared.api_key.as_bytes())
}

fn has_body(request: &Request) -> bool {
    let body = request.body();
    !body.is_end_stream() && body.size_hint().exact() != Some(0)
}

/// 429 with the headers a well-behaved client should honour.
fn rate_limited(retry_after_secs: u64) -> Response {
    let reset_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + retry_after_secs;
    let message = format!(
        "You have exceeded the rate limit ({ADVERTISED_RATE_LIMIT} requests per minute). \
         Please try again later after {retry_after_secs} seconds."
    );
    let mut response =
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message).into_response();
    let headers = response.headers_mut();
    headers.insert("retry-after", HeaderValue::from(retry_after_secs));
    headers.insert(
        "x-ratelimit-limit",
        HeaderValue::from(ADVERTISED_RATE_LIMIT),
    );
    headers.insert("x-ratelimit-remaining", HeaderValue::from(0u64));
    headers.insert("x-ratelimit-used", HeaderValue::from(ADVERTISED_RATE_LIMIT));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset_at));
    response
}

/// Reads `share` of the body, then pulls the connection's kill switch and never answers:
/// the connection task drops the connection with an RST, which also drops this future.
async fn reset_mid_body(request: Request, share: f64) -> Response {
    let Some(handle) = request.extensions().get::<ConnHandle>().cloned() else {
        // Only reachable if the router is served by something other than our accept loop.
        return ApiError::internal().into_response();
    };
    let span = request
        .body()
        .size_hint()
        .exact()
        .map_or(UNKNOWN_LENGTH_RESET_SPAN, |len| len as f64);
    // Truncation is fine: any byte count inside the body will do.
    let target = (span * share) as u64;
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    read_up_to(request.into_body(), target).await;
    // Logged here: the gate never sees this request finish.
    debug!(%method, %path, fault = "reset_mid_body", after_bytes = target, "emulator request");
    handle.reset();
    std::future::pending().await
}

/// Reads and discards body chunks until at least `target` bytes or the end of the body.
async fn read_up_to(body: Body, target: u64) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while read < target {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => break,
        }
    }
}
