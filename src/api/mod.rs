//! The TwelveLabs v1.3 API client: the calls the pipeline makes, with
//! request bodies streamed from disk and every failure turned into an
//! [`ApiError`] that knows its [`ErrorClass`].
//!
//! This file builds the client and holds what every call shares; the calls
//! are in `assets` (assets and indexing) and `upload_sessions` (multipart
//! upload sessions and their chunk PUTs), the reading of answers into
//! results and errors in `response`.

mod assets;
mod body;
mod error;
mod response;
pub mod types;
mod upload_sessions;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;

pub use assets::{Created, DirectUpload, Stamp, wire_filename};
pub use error::{ApiError, ErrorClass, MAX_RETRY_AFTER, StorageError, retry_at};
pub use types::{
    Asset, AssetPage, AssetStatus, IndexedAsset, MultipartCreated, ReportResult, SHA256_STAMP,
    SessionStatus, URL_STAMP, UploadUrl,
};
pub use upload_sessions::ChunkError;

use self::response::{read_json, transport};
use crate::secret::ApiKey;

#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    /// For presigned chunk URLs: no default headers, so the API key never
    /// goes to the storage host.
    storage: reqwest::Client,
    base: String,
    /// Kept only to scrub it from error text a server echoes back.
    key: ApiKey,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub base_url: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

/// Whether an HTTP client can be built here: on a minimal system without
/// a CA bundle reqwest only says "builder error" (for `doctor`).
pub fn check_tls_roots() -> Result<(), ApiError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .build()
        .map(drop)
        .map_err(builder_error)
}

/// What went wrong building a client, in words that say how to fix it.
fn builder_error(e: reqwest::Error) -> ApiError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        // rustls-platform-verifier's words when the system has no roots.
        if s.to_string().contains("No CA certificates") {
            detail = NO_CA_CERTIFICATES.to_string();
            break;
        }
        source = s.source();
    }
    ApiError::Transport {
        what: "cannot build the HTTP client",
        detail,
        body_sent: false,
    }
}

/// The system has no CA bundle (Debian's `ca-certificates` package).
pub const NO_CA_CERTIFICATES: &str =
    "no CA certificates found in /etc/ssl/certs: install ca-certificates";

impl ApiClient {
    pub fn new(opts: &ClientOptions, key: &ApiKey) -> Result<ApiClient, ApiError> {
        // reqwest is built without a default crypto provider (ring builds
        // much faster than aws-lc); install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut value = HeaderValue::from_str(key.expose()).map_err(|_| ApiError::Transport {
            what: "invalid API key",
            detail: "the key contains characters that cannot be sent in a header".into(),
            body_sent: false,
        })?;
        // Keeps the value out of reqwest's and hyper's Debug output.
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", value);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("tl-ingest/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.request_timeout)
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(builder_error)?;
        let storage = reqwest::Client::builder()
            .user_agent(concat!("tl-ingest/", env!("CARGO_PKG_VERSION")))
            .timeout(opts.request_timeout)
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(builder_error)?;
        Ok(ApiClient {
            http,
            storage,
            base: opts.base_url.trim_end_matches('/').to_string(),
            key: key.clone(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `text` without this client's key (see [`ApiKey::redact`]).
    pub fn redact(&self, text: &str) -> String {
        self.key.redact(text)
    }

    /// POST a JSON body, read a JSON answer. The request may have reached
    /// the platform whenever no answer came back.
    async fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        body: &serde_json::Value,
        what: &'static str,
    ) -> Result<T, ApiError> {
        let resp = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| transport(what, &e, true))?;
        self.scrub(read_json(resp).await)
    }
}

/// Asset ids are opaque; keep them from changing the path.
fn encode_segment(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.~".contains(c) {
                c.to_string()
            } else {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("abc123"), "abc123");
        assert_eq!(encode_segment("../x y"), "..%2Fx%20y");
    }
}
