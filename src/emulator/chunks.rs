//! `PUT /_s3/{upload_id}/{chunk_index}?sig=...`: the emulator's stand-in for the S3
//! presigned URLs of multipart uploads. No `x-api-key`; the signature is the credential.
//! Faults apply as to API requests (the gate in `faults.rs`).
//!
//! Like S3: `Content-Length` is required (411), the body must be exactly the chunk's
//! length (400), a bad, expired or (with `single_use_urls`) used URL is 403
//! `AccessDenied`, a missing signed header (`EmulatorConfig::upload_headers`) is 403
//! `SignatureDoesNotMatch`, a session that ended (expired, aborted, completed) is 404
//! `NoSuchUpload`, also for a PUT whose body was still arriving when it ended; errors
//! come as S3's XML body. Success is 200 with a quoted `ETag`. The body streams to a
//! file in the session's folder, hashed as it arrives; a re-PUT replaces the chunk.
//!
//! Faults of the store: every PUT answered with one status (`chunk_error_status`), and
//! a session expired or aborted once it has a given number of chunks.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{CONTENT_LENGTH, ETAG};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::error::ApiError;
use super::gate::discard_body;
use super::sessions::{PutRefusal, StoredChunk};
use super::state::Shared;
use super::upload_sessions::end_session;

/// Hex characters of the chunk's sha256 used as its ETag (as long as an S3 MD5 ETag).
const ETAG_HEX_LEN: usize = 32;

/// Handler for chunk PUTs.
pub(crate) async fn put_chunk(
    State(shared): State<Arc<Shared>>,
    Path((upload_id, index)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let cap = shared.limits.multipart_chunk_size;
    let Some(content_length) = content_length(&request) else {
        discard_body(request.into_body(), cap);
        let error = ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            "You must provide the Content-Length HTTP header.",
        );
        return refuse(&shared, error);
    };
    let injected = shared.faults().faults().chunk_error_status;
    if let Some(error) = injected_error(injected) {
        discard_body(request.into_body(), content_length.min(cap));
        return refuse(&shared, error);
    }
    if let Some(missing) = missing_signed_header(&shared, &request) {
        discard_body(request.into_body(), content_length.min(cap));
        return refuse(&shared, ApiError::signature_mismatch(&missing));
    }
    let sig = query.as_deref().and_then(sig_param).unwrap_or_default();
    let ticket = match index.parse::<u64>() {
        Ok(index) => shared
            .sessions()
            .begin_put(
                &upload_id,
                index,
                sig,
                content_length,
                shared.limits.single_use_urls,
            )
            .map(|ticket| (index, ticket)),
        Err(_) => Err(PutRefusal::Forbidden("Unknown chunk.")),
    };
    let (index, ticket) = match ticket {
        Ok(ticket) => ticket,
        Err(refusal) => {
            discard_body(request.into_body(), content_length.min(cap));
            return refuse(&shared, refused(refusal, content_length));
        }
    };
    let first_byte = || note_first_byte(&shared, &upload_id);
    let chunk = match receive(request.into_body(), ticket.path, content_length, first_byte).await {
        Ok(chunk) => chunk,
        // The session ended under the PUT (its folder removed, say).
        Err(_) if !shared.sessions().accepting(&upload_id) => {
            return refuse(&shared, ApiError::no_such_upload());
        }
        Err(response) => return *response,
    };
    let etag = chunk.etag.clone();
    let recorded = shared.sessions().finish_put(&upload_id, index, chunk);
    match recorded {
        Ok(replaced) => {
            if let Some(path) = replaced {
                remove_file(&path).await;
            }
        }
        Err(chunk) => {
            remove_file(&chunk.path).await;
            return refuse(&shared, ApiError::no_such_upload());
        }
    }
    let stored = {
        let mut stats = shared.stats();
        stats.chunk_puts += 1;
        let n = stats
            .chunk_puts_by_upload
            .entry(upload_id.clone())
            .or_default();
        *n += 1;
        *n
    };
    let end = shared.faults().take_session_end(stored);
    if let Some(how) = end {
        end_session(&shared, &upload_id, how);
    }
    debug!(index, %etag, "emulator stored a chunk");
    let mut response = StatusCode::OK.into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(ETAG, value);
    }
    response
}

/// A refusal, counted by its code, as the store answers it.
fn refuse(shared: &Shared, error: ApiError) -> Response {
    *shared
        .stats()
        .chunk_put_refusals
        .entry(error.code.to_owned())
        .or_default() += 1;
    error.into_store_response()
}

fn content_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The value of `sig` in a raw query string (signatures are hex: no decoding needed).
fn sig_param(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("sig="))
}

/// The answer `chunk_error_status` asks for, with the code S3 gives that status.
fn injected_error(status: u16) -> Option<ApiError> {
    let status = StatusCode::from_u16(status).ok()?;
    Some(match status.as_u16() {
        0..=399 => return None,
        404 => ApiError::no_such_upload(),
        403 => ApiError::access_denied("Request has expired"),
        400..=499 => ApiError::new(status, "InvalidRequest", "The request is not valid."),
        _ => ApiError::new(
            status,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    })
}

/// The first signed header the PUT lacks (or carries with another value), if any.
fn missing_signed_header(shared: &Shared, request: &Request) -> Option<String> {
    shared
        .upload_headers
        .iter()
        .find(|(name, value)| {
            request
                .headers()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                != Some(value.as_str())
        })
        .map(|(name, _)| name.clone())
}

fn refused(refusal: PutRefusal, content_length: u64) -> ApiError {
    match refusal {
        PutRefusal::Forbidden(message) => ApiError::access_denied(message),
        PutRefusal::NoSuchUpload => ApiError::no_such_upload(),
        PutRefusal::WrongLength { expected } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidChunkSize",
            format!("This chunk must be exactly {expected} bytes, not {content_length}."),
        ),
    }
}

/// Records when the first body byte of a chunk of this upload arrived (the first only).
fn note_first_byte(shared: &Shared, upload_id: &str) {
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut stats = shared.stats();
    if !stats.first_chunk_byte_ms_by_upload.contains_key(upload_id) {
        stats
            .first_chunk_byte_ms_by_upload
            .insert(upload_id.to_owned(), now_ms);
    }
}

/// Streams the body to `path`, hashing it; `first_byte` is called when its first bytes
/// arrive. The file is deleted unless the whole body arrived (also when this future is
/// dropped because the client went away).
async fn receive(
    body: Body,
    path: PathBuf,
    expected: u64,
    first_byte: impl FnOnce(),
) -> Result<StoredChunk, Box<Response>> {
    let mut first_byte = Some(first_byte);
    let mut guard = PartFile { path, keep: false };
    let mut file = tokio::fs::File::create(&guard.path)
        .await
        .map_err(|error| io_failure(&error, &guard.path))?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let Ok(bytes) = frame else {
            // The client went away mid-body; nobody will read this answer.
            return Err(Box::new(
                ApiError::invalid("The body ended early.").into_store_response(),
            ));
        };
        if !bytes.is_empty()
            && let Some(note) = first_byte.take()
        {
            note();
        }
        len += bytes.len() as u64;
        if len > expected {
            break;
        }
        hasher.update(&bytes);
        file.write_all(&bytes)
            .await
            .map_err(|error| io_failure(&error, &guard.path))?;
    }
    if len != expected {
        return Err(Box::new(
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                format!("The body was {len} bytes, not the {expected} announced."),
            )
            .into_store_response(),
        ));
    }
    file.flush()
        .await
        .map_err(|error| io_failure(&error, &guard.path))?;
    drop(file);
    guard.keep = true;
    let digest = hex::encode(hasher.finalize());
    Ok(StoredChunk {
        path: guard.path.clone(),
        etag: digest[..ETAG_HEX_LEN].to_owned(),
        len,
        uploaded_at: SystemTime::now(),
    })
}

fn io_failure(error: &std::io::Error, path: &FsPath) -> Box<Response> {
    // A session expired on purpose has its folder removed under running PUTs.
    warn!(%error, path = %path.display(), "emulator could not store a chunk");
    Box::new(ApiError::internal().into_store_response())
}

async fn remove_file(path: &FsPath) {
    if let Err(error) = tokio::fs::remove_file(path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(%error, path = %path.display(), "emulator could not delete a chunk");
    }
}

/// Deletes a partly written chunk file on drop, unless kept.
#[derive(Debug)]
struct PartFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
