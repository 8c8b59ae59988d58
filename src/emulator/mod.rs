//! An in-process, TwelveLabs-compatible API server for tests, demos and benchmarks.
//!
//! It speaks the `/v1.3/assets` subset of the API (upload by `direct` file or `url`,
//! retrieve, list, delete), multipart uploads (`/v1.3/assets/multipart-uploads`, with
//! S3-like presigned chunk URLs served at `/_s3/{upload_id}/{chunk_index}?sig=...`) and
//! indexing (`/v1.3/indexes/{index_id}/indexed-assets`). It turns assets `ready` (or
//! `failed`, for content that is not media) after a configurable delay, and injects
//! faults on request: latency, 429s, 500s before or after the body, and TCP resets
//! part-way through an upload or a chunk PUT. Uploads are streamed and hashed as they
//! arrive, so it keeps up with loopback upload benchmarks; multipart chunks go to files
//! in a private temp folder, removed when the emulator is dropped.
//!
//! This file owns the public API ([`Emulator`], [`EmulatorConfig`], [`Faults`], [`Stats`],
//! [`AssetView`]); the submodules own the serving (`server`), the gate and faults
//! (`faults`), the routes (`routes`, `upload`, `multipart`, `chunks`, `indexing`, with
//! `params` for JSON bodies) and the state (`state`, `store`, `sessions`).

mod chunks;
mod error;
mod faults;
mod indexing;
mod multipart;
mod params;
mod routes;
mod server;
mod sessions;
mod state;
mod store;
mod upload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use self::state::Shared;

/// How to run an emulator. `Debug` leaves the API key out.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free port (see [`Emulator::addr`]).
    pub listen: SocketAddr,
    /// The only API key accepted in `x-api-key`.
    pub api_key: String,
    /// How long an asset stays `processing` before it turns `ready` or `failed`.
    pub ready_delay: Duration,
    /// Largest video/audio file accepted by `method=direct`, in bytes.
    pub max_direct_size: u64,
    /// Largest image file accepted, in bytes.
    pub max_image_size: u64,
    /// Largest `total_size` of a multipart upload (video/audio; images keep
    /// `max_image_size`), in bytes.
    pub max_multipart_size: u64,
    /// The `chunk_size` multipart sessions get, in bytes (0 counts as 1).
    pub multipart_chunk_size: u64,
    /// Whether a presigned chunk URL answers 403 once it has been used for a PUT.
    pub single_use_urls: bool,
    /// Whether form fields after the file part of `POST /assets` are
    /// ignored, as a server that reads the fields it needs before the file
    /// would: tl-ingest must notice its trailing sha256 stamp is lost.
    pub ignore_fields_after_file: bool,
    /// How long presigned chunk URLs are valid.
    pub url_ttl: Duration,
    /// Headers the presigned chunk URLs are signed with, as a store that signs
    /// `Content-Type` or `x-amz-*` headers does: announced in `upload_headers` and
    /// required on every chunk PUT (403 `SignatureDoesNotMatch` without them).
    pub upload_headers: BTreeMap<String, String>,
    /// Faults injected from the first request on.
    pub faults: Faults,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("api_key", &"<redacted>")
            .field("ready_delay", &self.ready_delay)
            .field("max_direct_size", &self.max_direct_size)
            .field("max_image_size", &self.max_image_size)
            .field("max_multipart_size", &self.max_multipart_size)
            .field("multipart_chunk_size", &self.multipart_chunk_size)
            .field("single_use_urls", &self.single_use_urls)
            .field("ignore_fields_after_file", &self.ignore_fields_after_file)
            .field("url_ttl", &self.url_ttl)
            .field("upload_headers", &self.upload_headers)
            .field("faults", &self.faults)
            .finish()
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4010)),
            api_key: "tl-emulator-key".to_owned(),
            ready_delay: Duration::from_secs(2),
            max_direct_size: 200_000_000,
            max_image_size: 32_000_000,
            max_multipart_size: 10_000_000_000,
            multipart_chunk_size: 5_242_880,
            single_use_urls: false,
            ignore_fields_after_file: false,
            url_ttl: Duration::from_secs(60 * 60),
            upload_headers: BTreeMap::new(),
            faults: Faults::default(),
        }
    }
}

/// Faults to inject into `/v1.3` requests. Shares are probabilities in `0..=1`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Share of API requests answered 500 before the body is read.
    pub error_before_body: f64,
    /// Share of `POST /assets` answered 500 after the whole body was read (no asset made).
    pub error_after_body: f64,
    /// Share of API requests answered 429.
    pub rate_limit: f64,
    /// `Retry-After` (and distance of `X-Ratelimit-Reset` from now) of injected 429s.
    pub retry_after_secs: u64,
    /// Share of requests with a body whose TCP connection is reset part-way through it.
    pub reset_mid_body: f64,
    /// Latency added to every API request, in milliseconds.
    pub latency_ms: u64,
    /// Delay between the route's answer and its sending, in milliseconds: an
    /// upload's asset is already made while the client still waits (a slow
    /// network on the way back), so a client that dies meanwhile never
    /// learns of it.
    pub answer_delay_ms: u64,
    /// Seed of the fault RNG, for reproducible fault sequences.
    pub seed: Option<u64>,
    /// Share of API answers whose JSON body is cut off half-way (the status is kept; an
    /// upload still creates its asset).
    pub malformed_json: f64,
    /// Share of `201` answers to `POST /assets` sent without `_id` (the asset is created).
    pub missing_id: f64,
    /// Share of API requests answered `200 OK` with an HTML page, as a captive portal or
    /// a misrouted proxy would: the request is served (an upload creates its asset) and
    /// its real answer thrown away.
    pub html_200: f64,
    /// Share of asset answers (`GET /assets/{id}`, `GET /assets`) whose `status` is a
    /// value the API has never documented.
    pub unknown_status: f64,
    /// Share of uploaded assets that are gone (404) once the platform has reported them
    /// `ready` to a `GET /assets/{id}`.
    pub vanish_after_ready: f64,
    /// Share of asset answers (`GET /assets/{id}`, or the first entry of a `GET /assets`
    /// page) whose `filename` is a number: valid JSON, but not an asset a client can read.
    pub unreadable_asset: f64,
    /// The first multipart session to have this many chunks stored expires at once, as
    /// if its 24 hours had passed: its chunk PUTs in flight and after answer 404
    /// `NoSuchUpload`, its status shows `expired`. Fires once, then reads 0 (0: never).
    pub expire_session_after_chunks: u64,
    /// The same, but the session is aborted: forgotten, its status 404.
    pub abort_session_after_chunks: u64,
    /// Every chunk PUT is answered with this status (0: off) and the store's code for
    /// it: 404 `NoSuchUpload`, 403 `AccessDenied`, 400 `InvalidRequest`, 5xx
    /// `InternalError`; the session itself stays `active`.
    pub chunk_error_status: u16,
}

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
    /// Multipart sessions created.
    pub multipart_sessions: u64,
    /// Multipart sessions completed (every chunk reported and assembled).
    pub multipart_completed: u64,
    /// Chunk PUTs stored (200), re-PUTs included.
    pub chunk_puts: u64,
    /// Stored chunk PUTs per upload id.
    pub chunk_puts_by_upload: BTreeMap<String, u64>,
    /// Chunk PUTs refused, by the store's code (`SignatureDoesNotMatch`, `NoSuchUpload`,
    /// `AccessDenied`, …).
    pub chunk_put_refusals: BTreeMap<String, u64>,
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

/// A running emulator. Dropping it stops the server and all its connections.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; aborted on drop, which also aborts every connection task.
    task: JoinHandle<()>,
}

impl Emulator {
    /// Binds `config.listen`, then serves in a spawned task. The listener is bound before
    /// this returns, so clients can connect at once.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, addr));
        let router = routes::router(shared.clone());
        let task = tokio::spawn(server::accept_loop(listener, router));
        tracing::debug!(%addr, "emulator listening");
        Ok(Emulator { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the API, e.g. `http://127.0.0.1:4010/v1.3`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1.3", self.addr)
    }

    /// Replaces the faults; takes effect for the next request. A `seed` restarts the
    /// fault sequence.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults().faults().clone()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }

    /// Expires a multipart session now, as if its 24 hours had passed: reports and URL
    /// requests get 400 `upload_expired`, its chunk PUTs 404 `NoSuchUpload`, its status shows
    /// `expired`, its asset turns `failed`, and its chunk files are deleted. False if the
    /// upload id is unknown or the session already completed or failed.
    pub fn expire_session(&self, upload_id: &str) -> bool {
        multipart::end_session(&self.shared, upload_id, multipart::SessionEnd::Expire)
    }

    /// Aborts a multipart session now: it is forgotten (its status and reports 404),
    /// its chunk PUTs get 404 `NoSuchUpload`, its asset turns `failed`, its chunk files
    /// are deleted. False if the upload id is unknown or the session already ended.
    pub fn abort_session(&self, upload_id: &str) -> bool {
        multipart::end_session(&self.shared, upload_id, multipart::SessionEnd::Abort)
    }

    /// Every asset created and not deleted, oldest first. A multipart asset whose upload
    /// has not completed shows status `uploading` here (`processing` in the API).
    pub fn assets(&self) -> Vec<AssetView> {
        asset_views(&self.shared)
    }

    /// Serves until the server task ends (it only ends when aborted or on panic).
    /// Dropping this future (e.g. on Ctrl-C in a `select!`) stops the server too.
    pub async fn wait(mut self) {
        // Await the handle in place, so that `Drop` still aborts it if we are cancelled.
        if let Err(error) = (&mut self.task).await {
            tracing::error!(%error, "emulator task ended");
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn asset_views(shared: &Shared) -> Vec<AssetView> {
    let ready_delay = shared.limits.ready_delay;
    let store = shared.store();
    store
        .oldest_first()
        .map(|a| a.to_view(ready_delay))
        .collect()
}
