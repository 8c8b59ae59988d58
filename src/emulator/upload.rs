//! `POST /v1.3/assets`: the streamed multipart upload. The file part is hashed and counted
//! chunk by chunk as it arrives (only its first 8 KiB are kept, to name its type); every
//! field is read to the end even when the request is already known to fail, so the
//! client always gets the answer instead of a broken pipe.

use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::error::ApiError;
use super::gate::{ErrorAfterBody, VanishAfterReady};
use super::state::{Limits, Shared};
use super::store::{NewAsset, Outcome, UNSUPPORTED_MEDIA_MESSAGE, kind_from_filename};

/// Bytes kept from the start of the file for type detection.
pub(crate) const HEAD_LEN: usize = 8 * 1024;
/// Longest text field accepted (user_metadata is the only one that can be long).
const MAX_TEXT_FIELD: usize = 64 * 1024;
/// Longest filename the platform accepts.
pub(crate) const MAX_FILENAME_CHARS: usize = 255;
/// Name given to an upload when neither the form nor the file part names it.
const DEFAULT_FILENAME: &str = "upload";

/// The file part as received: its size, hash and first bytes, never its content.
#[derive(Debug)]
struct ReceivedFile {
    part_filename: Option<String>,
    size: u64,
    /// None when the file outgrew every limit and hashing stopped.
    sha256: Option<String>,
    head: Vec<u8>,
}

/// The form fields, plus the first problem found (reported once the body is read).
#[derive(Debug, Default)]
struct UploadForm {
    method: Option<String>,
    url: Option<String>,
    filename: Option<String>,
    user_metadata: Option<Value>,
    file: Option<ReceivedFile>,
    problem: Option<ApiError>,
}

impl UploadForm {
    fn fail(&mut self, error: ApiError) {
        self.problem.get_or_insert(error);
    }

    /// Stores a text field; `None` text means it was too long or not UTF-8.
    fn set_text(&mut self, name: &str, text: Option<String>) {
        let Some(text) = text else {
            self.fail(ApiError::invalid(format!(
                "{name} must be UTF-8 text of at most {MAX_TEXT_FIELD} bytes"
            )));
            return;
        };
        match name {
            "method" => self.method = Some(text),
            "url" => self.url = Some(text),
            "filename" => self.filename = Some(text),
            // Accepted for wire compatibility; the emulator makes no HLS or thumbnails.
            "enable_hls" | "enable_thumbnail" if parse_bool(&text).is_none() => {
                self.fail(ApiError::invalid(format!("{name} must be true or false")));
            }
            "user_metadata" => match parse_user_metadata(&text) {
                Ok(meta) => self.user_metadata = Some(meta),
                Err(error) => self.fail(error),
            },
            _ => {}
        }
    }
}

/// Handler for `POST /v1.3/assets`.
pub(crate) async fn create_asset(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let error_after_body = request
        .extensions()
        .get::<ErrorAfterBody>()
        .is_some_and(|fault| fault.0);
    let vanish_after_ready = request
        .extensions()
        .get::<VanishAfterReady>()
        .is_some_and(|fault| fault.0);
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|_| ApiError::invalid("The request must be multipart/form-data."))?;
    let hash_cap = shared
        .limits
        .max_direct_size
        .max(shared.limits.max_image_size);
    let form = read_form(
        &mut multipart,
        hash_cap,
        shared.limits.ignore_fields_after_file,
    )
    .await?;
    if error_after_body {
        shared.stats().injected_errors_after_body += 1;
        debug!(
            fault = "error_after_body",
            "emulator dropped a fully read upload"
        );
        return Err(ApiError::internal());
    }
    if let Some(problem) = form.problem {
        return Err(problem);
    }
    let new = validate(form, &shared.limits)?;
    let asset = {
        let mut store = shared.store();
        let asset = store.insert(new);
        if vanish_after_ready {
            store.mark_vanishing(&asset.id);
        }
        asset
    };
    record_created(&shared, asset.new.sha256.as_deref());
    Ok((StatusCode::CREATED, Json(asset.to_asset_json())))
}

/// Counts a created asset, and its content hash if the bytes were received.
pub(crate) fn record_created(shared: &Shared, sha256: Option<&str>) {
    let mut stats = shared.stats();
    stats.assets_created += 1;
    if let Some(sha256) = sha256 {
        *stats
            .uploads_by_sha256
            .entry(sha256.to_owned())
            .or_default() += 1;
    }
}

/// Reads every field to the end. Only a broken multipart stream stops it early.
async fn read_form(
    multipart: &mut Multipart,
    hash_cap: u64,
    ignore_after_file: bool,
) -> Result<UploadForm, ApiError> {
    let mut form = UploadForm::default();
    while let Some(mut field) = multipart.next_field().await.map_err(stream_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if ignore_after_file && form.file.is_some() {
            debug!(field = %name, "emulator ignored a field after the file");
            drain(&mut field).await.map_err(stream_error)?;
            continue;
        }
        match name.as_str() {
            "file" if form.file.is_some() => {
                form.fail(ApiError::invalid("file was given more than once"));
                drain(&mut field).await.map_err(stream_error)?;
            }
            "file" => {
                let file = receive_file(&mut field, hash_cap).await;
                form.file = Some(file.map_err(stream_error)?);
            }
            "method" | "url" | "filename" | "enable_hls" | "enable_thumbnail" | "user_metadata" => {
                let text = read_text(&mut field).await.map_err(stream_error)?;
                form.set_text(&name, text);
            }
            _ => {
                // Lenient like a real API evolving: unknown fields are ignored, not refused.
                debug!(field = %name, "emulator ignored an unknown form field");
                drain(&mut field).await.map_err(stream_error)?;
            }
        }
    }
    Ok(form)
}

fn stream_error(error: MultipartError) -> ApiError {
    debug!(error = %error.body_text(), "emulator could not parse a multipart body");
    ApiError::invalid(format!("Malformed multipart body: {}", error.body_text()))
}

/// Hashes and counts the file part as it streams; keeps only its first `HEAD_LEN` bytes.
async fn receive_file(
    field: &mut Field<'_>,
    hash_cap: u64,
) -> Result<ReceivedFile, MultipartError> {
    let part_filename = field.file_name().map(str::to_owned);
    let mut hasher = Some(Sha256::new());
    let mut head = Vec::with_capacity(HEAD_LEN);
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await? {
        let room = HEAD_LEN - head.len();
        head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        size += chunk.len() as u64;
        // Past every limit the upload is refused anyway; spare the CPU.
        if size > hash_cap {
            hasher = None;
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&chunk);
        }
    }
    Ok(ReceivedFile {
        part_filename,
        size,
        sha256: hasher.map(|h| hex::encode(h.finalize())),
        head,
    })
}

/// Reads a text field, or drains it and returns `None` if too long or not UTF-8.
async fn read_text(field: &mut Field<'_>) -> Result<Option<String>, MultipartError> {
    let mut text = Vec::new();
    let mut too_long = false;
    while let Some(chunk) = field.chunk().await? {
        too_long |= text.len() + chunk.len() > MAX_TEXT_FIELD;
        if !too_long {
            text.extend_from_slice(&chunk);
        }
    }
    Ok(if too_long {
        None
    } else {
        String::from_utf8(text).ok()
    })
}

async fn drain(field: &mut Field<'_>) -> Result<(), MultipartError> {
    while field.chunk().await?.is_some() {}
    Ok(())
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `user_metadata` is a JSON-encoded object whose values are strings, numbers or booleans.
fn parse_user_metadata(text: &str) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_str(text).map_err(|_| invalid_user_metadata())?;
    check_user_metadata(value)
}

/// `user_metadata` given as JSON (multipart sessions, indexing): an object whose values
/// are strings, numbers or booleans.
pub(crate) fn check_user_metadata(value: Value) -> Result<Value, ApiError> {
    let Value::Object(map) = &value else {
        return Err(invalid_user_metadata());
    };
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    if map.values().all(scalar) {
        Ok(value)
    } else {
        Err(invalid_user_metadata())
    }
}

fn invalid_user_metadata() -> ApiError {
    ApiError::invalid(
        "user_metadata must be a JSON object whose values are strings, numbers or booleans",
    )
}

/// Turns a fully read form into the asset to create, or the 400 the platform would give.
fn validate(form: UploadForm, limits: &Limits) -> Result<NewAsset, ApiError> {
    let filename = match form.filename.as_deref().map(str::trim) {
        Some(name) if name.chars().count() > MAX_FILENAME_CHARS => {
            return Err(ApiError::invalid(format!(
                "filename must be at most {MAX_FILENAME_CHARS} characters"
            )));
        }
        Some(name) if !name.is_empty() => Some(name.to_owned()),
        _ => None,
    };
    match form.method.as_deref().map(str::trim) {
        None | Some("") => Err(ApiError::not_provided("method")),
        Some("direct") => {
            let file = form.file.ok_or_else(|| ApiError::not_provided("file"))?;
            direct_asset(file, filename, form.user_metadata, limits)
        }
        Some("url") => {
            let url = form.url.ok_or_else(|| ApiError::not_provided("url"))?;
            url_asset(url.trim(), filename, form.user_metadata)
        }
        Some(other) => Err(ApiError::invalid(format!(
            "method must be direct or url, not {other:?}"
        ))),
    }
}

/// Which size limit applies to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeClass {
    AudioVideo,
    Image,
}

fn direct_asset(
    file: ReceivedFile,
    filename: Option<String>,
    user_metadata: Option<Value>,
    limits: &Limits,
) -> Result<NewAsset, ApiError> {
    let filename = filename
        .or_else(|| file.part_filename.clone().filter(|n| !n.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_FILENAME.to_owned());
    let detected = infer::get(&file.head);
    let class = size_class(detected.as_ref(), &filename);
    check_size(file.size, class, limits)?;
    Ok(NewAsset {
        method: "direct",
        filename,
        sha256: file.sha256,
        size: file.size,
        file_type: Some(file_type(detected.as_ref()).to_owned()),
        user_metadata,
        url: None,
        outcome: media_outcome(detected.as_ref()),
    })
}

/// Video, audio and images will turn `ready`; anything else `failed`.
pub(crate) fn media_outcome(detected: Option<&infer::Type>) -> Outcome {
    match detected.map(infer::Type::matcher_type) {
        Some(infer::MatcherType::Video | infer::MatcherType::Audio | infer::MatcherType::Image) => {
            Outcome::Ready
        }
        _ => Outcome::Failed(UNSUPPORTED_MEDIA_MESSAGE.to_owned()),
    }
}

/// The detected MIME type, `application/octet-stream` when unknown.
pub(crate) fn file_type(detected: Option<&infer::Type>) -> &'static str {
    detected.map_or("application/octet-stream", infer::Type::mime_type)
}

/// The content decides; for content infer does not call media, the filename does; else video.
pub(crate) fn size_class(detected: Option<&infer::Type>, filename: &str) -> SizeClass {
    match detected.map(infer::Type::matcher_type) {
        Some(infer::MatcherType::Image) => SizeClass::Image,
        Some(infer::MatcherType::Video | infer::MatcherType::Audio) => SizeClass::AudioVideo,
        _ if kind_from_filename(filename) == Some("image") => SizeClass::Image,
        _ => SizeClass::AudioVideo,
    }
}

fn check_size(size: u64, class: SizeClass, limits: &Limits) -> Result<(), ApiError> {
    let (limit, what) = match class {
        SizeClass::AudioVideo => (limits.max_direct_size, "direct video/audio uploads"),
        SizeClass::Image => (limits.max_image_size, "images"),
    };
    if size > limit {
        return Err(ApiError::invalid(format!(
            "file too large: {size} bytes, the limit for {what} is {limit} bytes"
        )));
    }
    Ok(())
}

/// `method=url`: the emulator never fetches the URL; the asset simply becomes ready.
fn url_asset(
    url: &str,
    filename: Option<String>,
    user_metadata: Option<Value>,
) -> Result<NewAsset, ApiError> {
    let Some(path) = url_path(url) else {
        return Err(ApiError::invalid(format!(
            "url must be an http or https URL, not {url:?}"
        )));
    };
    let filename = filename
        .or_else(|| last_segment(path).map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_FILENAME.to_owned());
    Ok(NewAsset {
        method: "url",
        filename,
        sha256: None,
        size: 0,
        file_type: None,
        user_metadata,
        url: Some(url.to_owned()),
        outcome: Outcome::Ready,
    })
}

/// The path (and anything after it) of an http(s) URL with a non-empty host.
fn url_path(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, path) = rest.split_at(host_end);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') || host.contains(char::is_whitespace) {
        return None;
    }
    Some(path)
}

/// The URL path's last non-empty segment, without query or fragment.
fn last_segment(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.rsplit('/').find(|segment| !segment.is_empty())
}
