//! The records the emulator's parts share, at the bottom of its modules: the counters
//! ([`Stats`]), the admin view of an asset ([`AssetView`]), how a multipart session is
//! ended early ([`SessionEnd`]), and the platform-shaped ids and timestamps.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

/// Counters since the emulator started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// `POST /assets` requests received, whatever their outcome.
    pub create_requests: u64,
    /// When each of them arrived, in order (to check a client's pacing).
    pub create_request_times: Vec<std::time::SystemTime>,
    /// Assets created with their content: direct and url uploads, completed multipart
    /// uploads (counted at completion).
    pub assets_created: u64,
    /// Hex sha256 of received file bytes -> number of assets created with them
    /// (multipart uploads: the sha256 of the assembled chunks).
    pub uploads_by_sha256: BTreeMap<String, u64>,
    pub injected_errors_before_body: u64,
    pub injected_errors_after_body: u64,
    pub injected_rate_limits: u64,
    pub injected_resets: u64,
    pub injected_malformed_json: u64,
    pub injected_missing_ids: u64,
    pub injected_html_200: u64,
    pub injected_unknown_status: u64,
    pub injected_unreadable_assets: u64,
    /// Assets removed after being reported `ready` (`vanish_after_ready`).
    pub vanished_assets: u64,
    /// API requests that arrived while an injected 429 still asked clients to wait: from
    /// 250 ms after the 429 went out (requests already on their way) until its
    /// `Retry-After` ran out. A client that pauses its whole pool on a 429 keeps this 0.
    pub requests_while_rate_limited: u64,
    /// All API (`/v1.3`) requests; admin requests and chunk PUTs are not counted.
    pub requests: u64,
    /// `GET /assets` requests (lists, by filename or by `asset_ids`), whatever their
    /// outcome.
    pub list_requests: u64,
    /// `GET /assets/{id}` requests, whatever their outcome.
    pub asset_get_requests: u64,
    /// `GET /assets/{id}` requests per asset id.
    pub asset_gets_by_id: BTreeMap<String, u64>,
    /// Assets left out of a list answer by the `list_omits_asset` fault, with how often.
    pub omitted_from_lists: BTreeMap<String, u64>,
    /// Multipart sessions created.
    pub multipart_sessions: u64,
    /// Multipart sessions completed (every chunk reported and assembled).
    pub multipart_completed: u64,
    /// Chunk PUTs stored (200), re-PUTs included.
    pub chunk_puts: u64,
    /// Stored chunk PUTs per upload id.
    pub chunk_puts_by_upload: BTreeMap<String, u64>,
    /// When the first body byte of a chunk PUT reached the store, per upload id, in Unix
    /// milliseconds (the benchmarks' time from a claim to the first chunk byte).
    pub first_chunk_byte_ms_by_upload: BTreeMap<String, u64>,
    /// Chunk PUTs refused, by the store's code (`SignatureDoesNotMatch`, `NoSuchUpload`,
    /// `AccessDenied`, …).
    pub chunk_put_refusals: BTreeMap<String, u64>,
    /// `user_metadata` changes applied (`PATCH`, `PUT` or `DELETE
    /// /assets/{id}/user-metadata` answered 204).
    pub user_metadata_updates: u64,
    /// Assets accepted for indexing (202).
    pub indexed_assets: u64,
    /// API requests and chunk PUTs being handled right now. A client killed
    /// mid-request can leave some running (its body was already in the
    /// socket): tests wait for 0 before they count what a new run sends.
    pub requests_in_progress: u64,
}

/// An asset as the emulator holds it, for tests and the admin API.
#[derive(Clone, Debug, Serialize)]
pub struct AssetView {
    pub id: String,
    pub method: String,
    pub filename: String,
    pub sha256: Option<String>,
    pub size: u64,
    pub file_type: Option<String>,
    pub status: String,
    pub user_metadata: Option<serde_json::Value>,
    pub url: Option<String>,
}

/// How a session is ended before it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// As if its 24 hours had passed: its status shows `expired`.
    Expire,
    /// Aborted: forgotten, as S3 forgets an aborted upload.
    Abort,
}

/// 24 lowercase hex characters, shaped like the platform's ObjectId-style ids:
/// 8 hex of creation time (so ids sort roughly by age) and 16 random hex.
pub(crate) fn new_object_id() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Truncation to 32 bits is intended: that is the width of the timestamp part.
    format!("{:08x}{:016x}", secs as u32, fastrand::u64(..))
}

/// A timestamp as the API writes it (RFC 3339, milliseconds, UTC).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}
