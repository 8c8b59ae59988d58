//! How an emulator is run: [`EmulatorConfig`] (address, key, limits, timing) and the
//! [`Faults`] it injects. Plain data at the bottom of the emulator's modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to run an emulator. `Debug` leaves the API key out.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free port (see [`Emulator::addr`](crate::emulator::Emulator::addr)).
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
    /// `ready` (to a `GET /assets/{id}`, or in a `GET /assets` page).
    pub vanish_after_ready: f64,
    /// Share of asset answers (`GET /assets/{id}`, or the first entry of a `GET /assets`
    /// page) whose `filename` is a number: valid JSON, but not an asset a client can read.
    pub unreadable_asset: f64,
    /// Share of `GET /assets` answers filtered by `asset_ids` that leave out the first
    /// asset of the page, as a lagging search index would: the asset is there, and
    /// `GET /assets/{id}` says so.
    pub list_omits_asset: f64,
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
    /// Every `PATCH`, `PUT` and `DELETE /assets/{id}/user-metadata` is answered with this
    /// status (0: off), as an API without those routes (404, 405) or a failing one (5xx)
    /// would; the asset's `user_metadata` is left as it was.
    pub user_metadata_status: u16,
    /// Every request body (uploads, chunk PUTs) is read at most this many bytes a
    /// second, each request on its own, as a remote API behind a network link reads it
    /// (0: as fast as it comes). See `throttle.rs`.
    pub slow_bytes_per_sec: u64,
}
