//! The routes of multipart-upload sessions under `/v1.3/assets/multipart-uploads`
//! (the sessions themselves are kept by `sessions.rs`): create a session, hand out
//! presigned chunk URLs (served by `chunks.rs`), take chunk reports, show and list
//! sessions, end one early. The report that makes every chunk reported completes the
//! upload: the chunk files are hashed in order from disk (never held in memory), the
//! asset gets its size and type and starts processing, and the chunk files are deleted.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::error::ApiError;
use super::model::{SessionEnd, rfc3339};
use super::params::{self, json_object, optional_bool, optional_u64, required_str, required_u64};
use super::sessions::{
    Completion, CompletionJob, INITIAL_URL_COUNT, NewSession, ReportedChunk, Session,
    SessionStatus, UrlGrant,
};
use super::state::Shared;
use super::store::{NewAsset, Outcome, Received};
use super::upload::{
    HEAD_LEN, MAX_FILENAME_CHARS, SizeClass, check_user_metadata, file_type, media_outcome,
    record_created, size_class,
};

/// The headers the platform asks chunk PUTs to carry.
const UPLOAD_CONTENT_TYPE: &str = "application/octet-stream";
/// Read size when hashing chunk files.
const HASH_BUFFER: usize = 256 * 1024;

/// The validated body of `POST /assets/multipart-uploads`.
#[derive(Debug)]
struct CreateRequest {
    filename: String,
    total_size: u64,
    user_metadata: Option<Value>,
}

impl CreateRequest {
    fn parse(map: &Map<String, Value>, shared: &Shared) -> Result<Self, ApiError> {
        let filename = required_str(map, "filename")?.trim();
        let kind = required_str(map, "type")?;
        let total_size = params::required(map, "total_size")?;
        if filename.is_empty() || filename.chars().count() > MAX_FILENAME_CHARS {
            return Err(ApiError::invalid(format!(
                "filename must be 1 to {MAX_FILENAME_CHARS} characters"
            )));
        }
        let limits = &shared.limits;
        let limit = match kind {
            "video" | "audio" => limits.max_multipart_size,
            "image" => limits.max_image_size.min(limits.max_multipart_size),
            other => {
                return Err(ApiError::invalid(format!(
                    "type must be video, audio or image, not {other:?}"
                )));
            }
        };
        let total_size = match total_size.as_u64() {
            Some(size) if (1..=limit).contains(&size) => size,
            _ => {
                return Err(ApiError::invalid(format!(
                    "total_size must be between 1 and {limit} bytes for type {kind}, \
                     not {total_size}"
                )));
            }
        };
        optional_bool(map, "enable_hls")?;
        optional_bool(map, "enable_thumbnail")?;
        let user_metadata = match map.get("user_metadata") {
            None | Some(Value::Null) => None,
            Some(meta) => Some(check_user_metadata(meta.clone())?),
        };
        Ok(Self {
            filename: filename.to_owned(),
            total_size,
            user_metadata,
        })
    }
}

/// `POST /v1.3/assets/multipart-uploads`.
pub(crate) async fn create_session(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = json_object(body).await?;
    let request = CreateRequest::parse(&map, &shared)?;
    let upload_id = shared.sessions().new_id();
    let dir = shared.chunk_root.session_dir(&upload_id);
    if let Err(error) = tokio::fs::create_dir_all(&dir).await {
        warn!(%error, dir = %dir.display(), "emulator could not create a chunk folder");
        return Err(ApiError::internal());
    }
    let mut session = Session::new(NewSession {
        id: upload_id.clone(),
        asset_id: String::new(),
        filename: request.filename.clone(),
        total_size: request.total_size,
        chunk_size: shared.limits.multipart_chunk_size,
        dir,
    });
    let asset = NewAsset {
        method: "multipart",
        filename: request.filename,
        sha256: None,
        size: request.total_size,
        file_type: None,
        user_metadata: request.user_metadata,
        url: None,
        outcome: Outcome::Ready,
    };
    session.asset_id = shared
        .store()
        .insert_uploading(asset, session.deadline())
        .id;
    let (asset_id, chunk_size, total_chunks, expires_at) = (
        session.asset_id.clone(),
        session.chunk_size,
        session.total_chunks,
        session.expires_at,
    );
    let urls = {
        let mut sessions = shared.sessions();
        sessions.insert(session);
        sessions.grant_urls(&upload_id, 1, INITIAL_URL_COUNT, shared.limits.url_ttl)?
    };
    shared.stats().multipart_sessions += 1;
    let origin = params::origin(&headers, shared.addr);
    let mut upload_headers = Map::new();
    upload_headers.insert("Content-Type".into(), UPLOAD_CONTENT_TYPE.into());
    for (name, value) in &shared.upload_headers {
        upload_headers.insert(name.clone(), value.clone().into());
    }
    debug!(%upload_id, %asset_id, total_chunks, "emulator created a multipart upload");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "upload_id": upload_id,
            "asset_id": asset_id,
            "upload_urls": urls_json(&origin, &upload_id, &urls),
            "upload_headers": upload_headers,
            "chunk_size": chunk_size,
            "total_chunks": total_chunks,
            "expires_at": rfc3339(expires_at),
        })),
    ))
}

fn urls_json(origin: &str, upload_id: &str, urls: &[UrlGrant]) -> Vec<Value> {
    urls.iter()
        .map(|url| {
            json!({
                "chunk_index": url.chunk_index,
                "url": format!("{origin}/_s3/{upload_id}/{}?sig={}", url.chunk_index, url.sig),
                "expires_at": rfc3339(url.expires_at),
            })
        })
        .collect()
}

/// `POST /v1.3/assets/multipart-uploads/{upload_id}/presigned-urls`.
pub(crate) async fn presigned_urls(
    State(shared): State<Arc<Shared>>,
    Path(upload_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let map = json_object(body).await?;
    let start = required_u64(&map, "start")?;
    let count = required_u64(&map, "count")?;
    let ttl = shared.limits.url_ttl;
    let urls = shared
        .sessions()
        .grant_urls(&upload_id, start, count, ttl)?;
    let origin = params::origin(&headers, shared.addr);
    let expires_at = urls.first().map(|u| u.expires_at);
    Ok(Json(json!({
        "upload_id": upload_id,
        "start_index": start,
        "count": urls.len(),
        "upload_urls": urls_json(&origin, &upload_id, &urls),
        "generated_at": rfc3339(std::time::SystemTime::now()),
        "expires_at": expires_at.map(rfc3339),
    })))
}

/// `POST /v1.3/assets/multipart-uploads/{upload_id}`: report completed chunks.
pub(crate) async fn report_chunks(
    State(shared): State<Arc<Shared>>,
    Path(upload_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let map = json_object(body).await?;
    let entries = parse_report(&map)?;
    let outcome = shared.sessions().report(&upload_id, &entries)?;
    let all_reported = match outcome.completion {
        Completion::NotYet => false,
        Completion::Done => true,
        Completion::Start(job, done) => {
            // Spawned, so that a client giving up does not stop the completion.
            tokio::spawn(complete(shared.clone(), job));
            wait_completed(&shared, &upload_id, done).await?
        }
        Completion::Wait(done) => wait_completed(&shared, &upload_id, done).await?,
    };
    let mut answer = json!({
        "asset_id": outcome.asset_id,
        "processed_chunks": outcome.processed,
        "duplicate_chunks": outcome.duplicate,
        "total_completed": outcome.total_completed,
    });
    if all_reported {
        let origin = params::origin(&headers, shared.addr);
        answer["url"] = json!(format!("{origin}/v1.3/assets/{}", outcome.asset_id));
    }
    Ok(Json(answer))
}

fn parse_report(map: &Map<String, Value>) -> Result<Vec<ReportedChunk>, ApiError> {
    let Value::Array(items) = params::required(map, "completed_chunks")? else {
        return Err(ApiError::invalid("completed_chunks must be an array"));
    };
    items
        .iter()
        .map(|item| {
            let Value::Object(entry) = item else {
                return Err(ApiError::invalid(
                    "each completed_chunks entry must be an object",
                ));
            };
            match entry.get("proof_type").and_then(Value::as_str) {
                None | Some("etag") => {}
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "proof_type must be etag, not {other:?}"
                    )));
                }
            }
            Ok(ReportedChunk {
                index: required_u64(entry, "chunk_index")?,
                proof: required_str(entry, "proof")?.to_owned(),
                chunk_size: optional_u64(entry, "chunk_size")?,
            })
        })
        .collect()
}

/// Waits for the completion to end; true if the upload completed, a 500 if it failed.
async fn wait_completed(
    shared: &Shared,
    upload_id: &str,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Result<bool, ApiError> {
    // An error means the session is gone, which cannot happen; treat it as failed.
    let ended = done.wait_for(|done| *done).await.is_ok();
    let completed = ended
        && shared
            .sessions()
            .get(upload_id)
            .is_some_and(|s| s.status() == SessionStatus::Completed);
    if completed {
        Ok(true)
    } else {
        Err(ApiError::internal())
    }
}

/// What the chunks add up to.
#[derive(Debug)]
struct Assembled {
    sha256: String,
    size: u64,
    head: Vec<u8>,
}

/// Assembles (hashes, in order) the reported chunks, settles the asset, deletes the
/// chunk files and ends the session's completion.
async fn complete(shared: Arc<Shared>, job: CompletionJob) {
    let files = job.files.clone();
    let hashed = tokio::task::spawn_blocking(move || hash_files(&files)).await;
    remove_chunks(&job.dir).await;
    let assembled = match hashed {
        Ok(Ok(assembled)) => Some(assembled),
        Ok(Err(error)) => {
            warn!(%error, upload_id = %job.upload_id, "emulator could not read chunks back");
            None
        }
        Err(error) => {
            warn!(%error, upload_id = %job.upload_id, "emulator chunk hashing panicked");
            None
        }
    };
    let ok = assembled.is_some();
    match assembled {
        Some(assembled) => settle_asset(&shared, &job, assembled),
        None => shared.store().abandon_upload(&job.asset_id),
    }
    shared.sessions().finish_completion(&job.upload_id, ok);
    if ok {
        shared.stats().multipart_completed += 1;
    }
}

fn hash_files(files: &[PathBuf]) -> std::io::Result<Assembled> {
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(HEAD_LEN);
    let mut size = 0u64;
    let mut buffer = vec![0u8; HASH_BUFFER];
    for path in files {
        let mut file = std::fs::File::open(path)?;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            let bytes = &buffer[..read];
            let room = HEAD_LEN - head.len();
            head.extend_from_slice(&bytes[..room.min(read)]);
            hasher.update(bytes);
            size += read as u64;
        }
    }
    Ok(Assembled {
        sha256: hex::encode(hasher.finalize()),
        size,
        head,
    })
}

/// The same judgement as a direct upload: media turns `ready`, anything else `failed`;
/// an image over the image limit fails too (its session could not refuse it up front
/// when it was declared as video or audio).
fn settle_asset(shared: &Shared, job: &CompletionJob, assembled: Assembled) {
    let detected = infer::get(&assembled.head);
    let limit = shared.limits.max_image_size;
    let outcome = match size_class(detected.as_ref(), &job.filename) {
        SizeClass::Image if assembled.size > limit => Outcome::Failed(format!(
            "file too large: {} bytes, the limit for images is {limit} bytes",
            assembled.size
        )),
        _ => media_outcome(detected.as_ref()),
    };
    let received = Received {
        sha256: assembled.sha256.clone(),
        size: assembled.size,
        file_type: file_type(detected.as_ref()).to_owned(),
        outcome,
    };
    let settled = shared.store().finish_upload(&job.asset_id, received);
    if settled {
        record_created(shared, Some(&assembled.sha256));
    }
    debug!(
        upload_id = %job.upload_id,
        asset_id = %job.asset_id,
        size = assembled.size,
        settled,
        "emulator completed a multipart upload"
    );
}

/// Ends an active session now: its asset turns `failed` and its chunk files are deleted
/// (PUTs still writing into the folder are answered 404 `NoSuchUpload`). False if the
/// upload id is unknown or the session already completed or failed.
pub(crate) fn end_session(shared: &Shared, upload_id: &str, how: SessionEnd) -> bool {
    let ended = match how {
        SessionEnd::Expire => shared.sessions().expire(upload_id),
        SessionEnd::Abort => shared.sessions().abort(upload_id),
    };
    let Some((asset_id, dir)) = ended else {
        return false;
    };
    shared.store().abandon_upload(&asset_id);
    if let Err(error) = std::fs::remove_dir_all(&dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(%error, dir = %dir.display(), "emulator could not delete the chunks of an ended session");
    }
    debug!(%upload_id, ?how, "emulator ended a multipart upload");
    true
}

/// Deletes a session's chunk folder; missing is fine.
pub(crate) async fn remove_chunks(dir: &std::path::Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => warn!(%error, dir = %dir.display(), "emulator could not delete chunks"),
    }
}

/// `GET /v1.3/assets/multipart-uploads/{upload_id}?page&page_limit`.
pub(crate) async fn session_status(
    State(shared): State<Arc<Shared>>,
    Path(upload_id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (page, page_limit) = params::page(&pairs)?;
    let sessions = shared.sessions();
    let session = sessions
        .get(&upload_id)
        .ok_or_else(|| ApiError::not_found("multipart upload"))?;
    Ok(Json(session.to_status_json(page, page_limit)))
}

/// `GET /v1.3/assets/multipart-uploads?page&page_limit`: unfinished sessions, newest first.
pub(crate) async fn list_sessions(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (page, page_limit) = params::page(&pairs)?;
    let skip = usize::try_from((page - 1).saturating_mul(page_limit)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_limit).unwrap_or(usize::MAX);
    let (data, total) = {
        let sessions = shared.sessions();
        let data: Vec<Value> = sessions
            .unfinished_newest_first()
            .skip(skip)
            .take(take)
            .map(Session::to_summary_json)
            .collect();
        (data, sessions.unfinished_newest_first().count() as u64)
    };
    Ok(Json(json!({
        "data": data,
        "page_info": {
            "limit_per_page": page_limit,
            "page": page,
            "total_page": total.div_ceil(page_limit),
            "total_results": total,
        }
    })))
}
