//! The TwelveLabs v1.3 API client: the calls the pipeline makes, with
//! request bodies streamed from disk and every failure turned into an
//! [`ApiError`] that knows its [`ErrorClass`].

mod body;
mod error;
pub mod types;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::multipart::{Form, Part};
use serde::de::DeserializeOwned;

pub use error::{ApiError, ErrorClass, MAX_RETRY_AFTER, StorageError, retry_at};
pub use types::{
    Asset, AssetPage, AssetStatus, IndexedAsset, MultipartCreated, ReportResult, SHA256_STAMP,
    SessionStatus, URL_STAMP, UploadUrl,
};

use crate::secret::ApiKey;

/// A response body larger than this is not one the API sends.
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
/// Pages of `GET /assets?filename=` searched for a lost upload.
const LOOKUP_MAX_PAGES: u64 = 20;

/// A chunk PUT that failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The object store answered with an error status: expired or used
    /// URL (403 `AccessDenied`), headers the signature needs missing (403
    /// `SignatureDoesNotMatch`), the session ended (404 `NoSuchUpload`), or
    /// a 5xx of its own.
    #[error(transparent)]
    Refused(StorageError),
    /// No answer (transport), the local file, or an answer without ETag.
    #[error(transparent)]
    Api(ApiError),
}

/// A local file to send with `method=direct`.
#[derive(Debug, Clone)]
pub struct DirectUpload {
    pub path: PathBuf,
    pub filename: String,
    /// Exactly this many bytes are sent (the size recorded when it was hashed).
    pub size: u64,
    pub enable_hls: bool,
    pub enable_thumbnail: bool,
    /// Sent as the JSON-encoded `user_metadata` field, with the sha256
    /// stamp added.
    pub user_metadata: serde_json::Map<String, serde_json::Value>,
    pub stamp: Stamp,
    /// Bytes of the file handed to the connection so far (progress, and
    /// whether a failed request had sent everything).
    pub sent: Arc<AtomicU64>,
}

/// Where the sha256 stamp in `user_metadata` comes from.
#[derive(Debug, Clone)]
pub enum Stamp {
    /// Hashed before the upload: `user_metadata` goes ahead of the file,
    /// in the order the official SDK sends the fields.
    Known(String),
    /// Hashed while the file is sent (one read instead of two):
    /// `user_metadata` is the form's last field, after the file. The hash
    /// is put here once the whole file was read and sent, whatever the
    /// server answers.
    InFlight(Arc<OnceLock<String>>),
}

impl Stamp {
    /// Hashed during the upload, into a fresh slot.
    pub fn in_flight() -> Stamp {
        Stamp::InFlight(Arc::default())
    }
}

/// A direct upload the platform accepted.
#[derive(Debug, Clone)]
pub struct Created {
    pub asset: Asset,
    /// The sha256 the asset was stamped with.
    pub sha256: String,
}

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

    /// `POST /assets` with `method=direct`, the file streamed from disk with
    /// a known length.
    pub async fn create_direct(&self, up: &DirectUpload) -> Result<Created, ApiError> {
        up.sent.store(0, Ordering::Relaxed);
        let file = tokio::fs::File::open(&up.path)
            .await
            .map_err(|e| open_error(&up.path, &e))?
            .into_std()
            .await;
        // The stamp goes ahead of the file when it is known, else after it.
        let (stamped, digest_tx, ahead, after) = match &up.stamp {
            Stamp::Known(sha256) => (
                Arc::new(OnceLock::from(sha256.clone())),
                None,
                Some(stamp_metadata(&up.user_metadata, sha256)),
                None,
            ),
            Stamp::InFlight(stamped) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let part = trailing_metadata(&up.user_metadata, rx, stamped.clone());
                (stamped.clone(), Some(tx), None, Some(part))
            }
        };
        // The body ends when this call returns, whatever the connection
        // does with it then (an HTTP/2 stream the server stopped reading
        // would otherwise keep the reader thread and the file forever).
        let done = tokio_util::sync::CancellationToken::new();
        let _done = done.clone().drop_guard();
        let stream = futures_util::StreamExt::take_until(
            body::stream(file, up.size, up.sent.clone(), digest_tx),
            done.cancelled_owned(),
        );
        let part = Part::stream_with_length(reqwest::Body::wrap_stream(stream), up.size)
            .file_name(up.filename.clone())
            .mime_str("application/octet-stream")
            .map_err(|e| ApiError::LocalRead(e.to_string()))?;
        let mut form = Form::new()
            .text("method", "direct")
            .text("filename", up.filename.clone())
            .text("enable_hls", up.enable_hls.to_string())
            .text("enable_thumbnail", up.enable_thumbnail.to_string());
        if let Some(text) = ahead {
            form = form.text("user_metadata", text);
        }
        form = form.part("file", part);
        if let Some(part) = after {
            form = form.part("user_metadata", part);
        }
        let result = self
            .http
            .post(format!("{}/assets", self.base))
            .multipart(form)
            .send()
            .await;
        let body_sent = || up.sent.load(Ordering::Relaxed) >= up.size;
        let resp = result.map_err(|e| transport("upload", &e, body_sent()))?;
        let status = resp.status().as_u16();
        let asset: Asset = self.scrub(read_json(resp).await)?;
        match stamped.get() {
            Some(sha256) => Ok(Created {
                asset,
                sha256: sha256.clone(),
            }),
            // Accepted before the whole form was sent: not the file. The
            // asset has no stamp a lookup could find: remove it.
            None => {
                if let Some(id) = asset.id.as_deref().filter(|id| !id.is_empty())
                    && let Err(e) = self.delete_asset(id).await
                {
                    tracing::warn!(asset_id = id, error = %e, "could not delete an asset made from part of a file");
                }
                Err(ApiError::Malformed {
                    status,
                    detail: "the server answered before the whole file was sent".into(),
                })
            }
        }
    }

    /// `POST /assets` with `method=url`.
    pub async fn create_url(
        &self,
        url: &str,
        filename: Option<&str>,
        enable_hls: bool,
        enable_thumbnail: bool,
        user_metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Asset, ApiError> {
        let mut form = Form::new()
            .text("method", "url")
            .text("url", url.to_string())
            .text("enable_hls", enable_hls.to_string())
            .text("enable_thumbnail", enable_thumbnail.to_string())
            .text(
                "user_metadata",
                serde_json::Value::Object(user_metadata.clone()).to_string(),
            );
        if let Some(name) = filename {
            form = form.text("filename", name.to_string());
        }
        let resp = self
            .http
            .post(format!("{}/assets", self.base))
            .multipart(form)
            .send()
            .await
            .map_err(|e| transport("create asset", &e, true))?;
        self.scrub(read_json(resp).await)
    }

    /// `GET /assets/{id}`.
    pub async fn get_asset(&self, id: &str) -> Result<Asset, ApiError> {
        let resp = self
            .http
            .get(format!("{}/assets/{}", self.base, encode_segment(id)))
            .send()
            .await
            .map_err(|e| transport("get asset", &e, false))?;
        self.scrub(read_json(resp).await)
    }

    /// `DELETE /assets/{id}`; any 2xx (and 404: already gone) is success.
    pub async fn delete_asset(&self, id: &str) -> Result<(), ApiError> {
        let resp = self
            .http
            .delete(format!("{}/assets/{}", self.base, encode_segment(id)))
            .send()
            .await
            .map_err(|e| transport("delete asset", &e, false))?;
        if resp.status().is_success() || resp.status().as_u16() == 404 {
            return Ok(());
        }
        self.scrub(Err(status_error(resp).await))
    }

    /// `GET /assets` with an optional filename filter (a case-insensitive
    /// substring match on the platform).
    pub async fn list_assets(
        &self,
        filename: Option<&str>,
        page: u64,
        page_limit: u64,
    ) -> Result<AssetPage, ApiError> {
        let mut query: Vec<(&str, String)> = vec![
            ("page", page.to_string()),
            ("page_limit", page_limit.to_string()),
        ];
        if let Some(name) = filename {
            query.push(("filename", name.to_string()));
        }
        let resp = self
            .http
            .get(format!("{}/assets", self.base))
            .query(&query)
            .send()
            .await
            .map_err(|e| transport("list assets", &e, false))?;
        self.scrub(read_json(resp).await)
    }

    /// `POST /assets/multipart-uploads`: a session for a large file.
    pub async fn create_multipart(
        &self,
        filename: &str,
        kind: &str,
        total_size: u64,
        enable_hls: bool,
        enable_thumbnail: bool,
        user_metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<MultipartCreated, ApiError> {
        let body = serde_json::json!({
            "filename": filename,
            "type": kind,
            "total_size": total_size,
            "enable_hls": enable_hls,
            "enable_thumbnail": enable_thumbnail,
            "user_metadata": user_metadata,
        });
        let url = format!("{}/assets/multipart-uploads", self.base);
        self.post_json(&url, &body, "create upload session").await
    }

    /// `POST /assets/multipart-uploads/{id}/presigned-urls`: fresh URLs
    /// for chunks `start..start+count` (1-based, count ≤ 50).
    pub async fn presigned_urls(
        &self,
        upload_id: &str,
        start: u64,
        count: u64,
    ) -> Result<Vec<UploadUrl>, ApiError> {
        let url = format!(
            "{}/assets/multipart-uploads/{}/presigned-urls",
            self.base,
            encode_segment(upload_id)
        );
        let body = serde_json::json!({ "start": start, "count": count });
        let urls: types::PresignedUrls = self.post_json(&url, &body, "get upload URLs").await?;
        Ok(urls.upload_urls)
    }

    /// `POST /assets/multipart-uploads/{id}`: report chunks with their ETags.
    pub async fn report_chunks(
        &self,
        upload_id: &str,
        chunks: &[(u64, String, u64)],
    ) -> Result<ReportResult, ApiError> {
        let completed: Vec<serde_json::Value> = chunks
            .iter()
            .map(|(index, etag, size)| {
                serde_json::json!({
                    "chunk_index": index,
                    "proof": etag,
                    "proof_type": "etag",
                    "chunk_size": size,
                })
            })
            .collect();
        let url = format!(
            "{}/assets/multipart-uploads/{}",
            self.base,
            encode_segment(upload_id)
        );
        let body = serde_json::json!({ "completed_chunks": completed });
        self.post_json(&url, &body, "report chunks").await
    }

    /// `GET /assets/multipart-uploads/{id}`, every page: the session's
    /// status and the chunks the platform has accepted.
    pub async fn multipart_status(
        &self,
        upload_id: &str,
    ) -> Result<(Option<String>, Vec<u64>), ApiError> {
        let mut done = Vec::new();
        let mut status = None;
        for page in 1..=10_000u64 {
            let resp = self
                .http
                .get(format!(
                    "{}/assets/multipart-uploads/{}",
                    self.base,
                    encode_segment(upload_id)
                ))
                .query(&[("page", page.to_string()), ("page_limit", "50".to_string())])
                .send()
                .await
                .map_err(|e| transport("get upload session", &e, false))?;
            let st: SessionStatus = self.scrub(read_json(resp).await)?;
            status = st.status.clone().or(status);
            let n = st.uploaded_chunks.len();
            // A chunk whose index cannot be read counts as not accepted:
            // it is sent and reported again, which the platform allows.
            done.extend(
                st.uploaded_chunks
                    .iter()
                    .filter(|c| c.status.as_deref() == Some("completed"))
                    .filter_map(|c| c.index.ok()),
            );
            let last = st
                .page_info
                .as_ref()
                .and_then(|p| p.total_page.ok())
                .is_none_or(|total| page >= total);
            if n == 0 || last {
                break;
            }
        }
        Ok((status, done))
    }

    /// `GET /assets/multipart-uploads/{id}`, first page only: just the
    /// session's status (`active`, `completed`, `expired`, `failed`).
    pub async fn multipart_state(&self, upload_id: &str) -> Result<Option<String>, ApiError> {
        let resp = self
            .http
            .get(format!(
                "{}/assets/multipart-uploads/{}",
                self.base,
                encode_segment(upload_id)
            ))
            .query(&[("page", "1"), ("page_limit", "1")])
            .send()
            .await
            .map_err(|e| transport("get upload session", &e, false))?;
        let st: SessionStatus = self.scrub(read_json(resp).await)?;
        Ok(st.status)
    }

    /// PUT chunk `chunk` of `total`, read straight from `path` at `offset`,
    /// to its presigned URL; returns the ETag (quotes removed). Errors name
    /// the chunk and the store's host, never the URL's query string.
    #[allow(clippy::too_many_arguments, reason = "one chunk's coordinates")]
    pub async fn put_chunk(
        &self,
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        path: &std::path::Path,
        (chunk, total): (u64, u64),
        offset: u64,
        len: u64,
        sent: Arc<AtomicU64>,
    ) -> Result<String, ChunkError> {
        let open = move |path: std::path::PathBuf| -> std::io::Result<std::fs::File> {
            use std::io::{Seek, SeekFrom};
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        };
        let file = tokio::task::spawn_blocking({
            let path = path.to_path_buf();
            move || open(path)
        })
        .await
        .map_err(|e| ChunkError::Api(ApiError::LocalRead(e.to_string())))?
        .map_err(|e| ChunkError::Api(open_error(path, &e)))?;
        // As in `create_direct`: the body ends when this call returns.
        let done = tokio_util::sync::CancellationToken::new();
        let _done = done.clone().drop_guard();
        let stream = futures_util::StreamExt::take_until(
            body::stream(file, len, sent, None),
            done.cancelled_owned(),
        );
        let host = storage_host(url);
        let mut req = self
            .storage
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| {
            let mut e = transport("chunk upload", &e, false);
            if let ApiError::Transport { detail, .. } = &mut e {
                *detail = format!(
                    "chunk {chunk} of {total} to {host}: {}",
                    without_url(detail, url)
                );
            }
            ChunkError::Api(e)
        })?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let (code, message) = match read_capped(resp).await {
                Ok((_, body)) => types::parse_storage_error(&body),
                Err(_) => (None, None),
            };
            return Err(ChunkError::Refused(StorageError {
                chunk,
                total,
                host,
                status,
                code,
                message: message.map(|m| without_url(&self.redact(&m), url)),
            }));
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty());
        etag.ok_or(ChunkError::Api(ApiError::Malformed {
            status,
            detail: format!("chunk {chunk} of {total}: {host} answered without an ETag"),
        }))
    }

    /// `POST /indexes/{index_id}/indexed-assets`.
    pub async fn index_asset(
        &self,
        index_id: &str,
        asset_id: &str,
    ) -> Result<IndexedAsset, ApiError> {
        let url = format!(
            "{}/indexes/{}/indexed-assets",
            self.base,
            encode_segment(index_id)
        );
        let body = serde_json::json!({ "asset_id": asset_id });
        self.post_json(&url, &body, "index asset").await
    }

    /// `GET /indexes/{index_id}/indexed-assets/{id}`.
    pub async fn indexed_asset(&self, index_id: &str, id: &str) -> Result<IndexedAsset, ApiError> {
        let resp = self
            .http
            .get(format!(
                "{}/indexes/{}/indexed-assets/{}",
                self.base,
                encode_segment(index_id),
                encode_segment(id)
            ))
            .send()
            .await
            .map_err(|e| transport("get indexed asset", &e, false))?;
        self.scrub(read_json(resp).await)
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

    /// Remove the key from an error's text: a proxy's error page may echo
    /// the request headers back, and error text ends up in logs and the
    /// ledger.
    fn scrub<T>(&self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        result.map_err(|e| self.scrub_err(e))
    }

    fn scrub_err(&self, mut e: ApiError) -> ApiError {
        let clean = |s: &mut String| *s = self.key.redact(s);
        match &mut e {
            ApiError::Status { message, code, .. } => {
                if let Some(m) = message {
                    clean(m);
                }
                if let Some(c) = code {
                    clean(c);
                }
            }
            ApiError::Malformed { detail, .. } | ApiError::Transport { detail, .. } => {
                clean(detail)
            }
            ApiError::LocalRead(detail) | ApiError::SessionsBurned { last: detail, .. } => {
                clean(detail)
            }
            ApiError::Storage(s) => {
                if let Some(m) = &mut s.message {
                    clean(m);
                }
            }
        }
        e
    }

    /// Find an asset this tool uploaded earlier for `filename` with this
    /// content: the filename narrows the search, the sha256 stamp in
    /// `user_metadata` decides.
    pub async fn find_by_stamp(
        &self,
        filename: &str,
        sha256: &str,
    ) -> Result<Option<Asset>, ApiError> {
        self.find_stamped(Some(filename), SHA256_STAMP, sha256)
            .await
    }

    /// Find the asset of a URL record by its own stamp (see [`URL_STAMP`]),
    /// narrowed by the filename it was given when there is one.
    pub async fn find_by_url_stamp(
        &self,
        filename: Option<&str>,
        stamp: &str,
    ) -> Result<Option<Asset>, ApiError> {
        self.find_stamped(filename, URL_STAMP, stamp).await
    }

    /// The newest asset (of `filename`) whose `user_metadata[key]` is
    /// `value`, looking through at most [`LOOKUP_MAX_PAGES`] pages.
    async fn find_stamped(
        &self,
        filename: Option<&str>,
        key: &str,
        value: &str,
    ) -> Result<Option<Asset>, ApiError> {
        let mut page = 1;
        loop {
            let listing = self.list_assets(filename, page, 50).await?;
            // An entry that cannot be read is not the one looked for.
            if let Some(found) = listing.assets().filter_map(Result::ok).find(|a| {
                a.stamp(key).as_deref() == Some(value)
                    && a.id.as_deref().is_some_and(|id| !id.is_empty())
            }) {
                return Ok(Some(found));
            }
            let last = listing.total_pages().is_some_and(|total| page >= total);
            if listing.data.is_empty() || last || page >= LOOKUP_MAX_PAGES {
                return Ok(None);
            }
            page += 1;
        }
    }
}

/// The name a file is given on the platform: its own name, with control
/// characters (a newline, say) replaced, since they cannot travel in a
/// multipart header and would make the name unsearchable.
pub fn wire_filename(name: &std::ffi::OsStr) -> String {
    let lossy = name.to_string_lossy();
    let clean: String = lossy
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    if clean.is_empty() {
        "upload".into()
    } else {
        clean
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

/// `host[:port]` of a presigned URL: what error text may say of it.
fn storage_host(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => "the object store".to_string(),
        },
        Err(_) => "the object store".to_string(),
    }
}

/// `text` with a presigned URL (and its query string on its own) cut out:
/// the signature in it grants write access for hours.
fn without_url(text: &str, url: &str) -> String {
    let mut text = text.replace(url, "<presigned URL>");
    if let Some((_, query)) = url.split_once('?')
        && !query.is_empty()
    {
        text = text.replace(query, "<signature>");
    }
    text
}

fn transport(what: &'static str, e: &reqwest::Error, body_sent: bool) -> ApiError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    // The source chain holds the useful part ("connection reset by peer").
    let mut detail = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport {
        what,
        detail,
        body_sent,
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<(u16, Vec<u8>), ApiError> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                    return Err(ApiError::Malformed {
                        status,
                        detail: format!("response body over {MAX_RESPONSE_BODY} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, body)),
            // The request went out and was answered: the body was sent.
            Err(e) => return Err(transport("reading the response", &e, true)),
        }
    }
}

async fn status_error(resp: reqwest::Response) -> ApiError {
    let headers = resp.headers().clone();
    let (status, body) = match read_capped(resp).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    let (code, mut message) = types::parse_error_body(&body);
    if message.is_none() && !body.is_empty() && code.is_none() {
        // Not JSON (an HTML page from a proxy, say): keep a short excerpt.
        let text = String::from_utf8_lossy(&body);
        let excerpt: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        message = Some(excerpt.chars().take(200).collect());
    }
    ApiError::Status {
        status,
        code,
        message,
        retry_at: retry_at(&headers, SystemTime::now()),
    }
}

/// A file that cannot be opened: permanent, unless the error is one a
/// network mount gives while its server is away (then tried again).
fn open_error(path: &std::path::Path, e: &std::io::Error) -> ApiError {
    if crate::io_error::is_transient(e) {
        ApiError::Transport {
            what: "cannot open the file now",
            detail: format!("{}: {e}", path.display()),
            body_sent: false,
        }
    } else {
        ApiError::LocalRead(format!("{}: {e}", path.display()))
    }
}

/// `user_metadata` with the sha256 stamp, JSON-encoded.
fn stamp_metadata(meta: &serde_json::Map<String, serde_json::Value>, sha256: &str) -> String {
    let mut meta = meta.clone();
    meta.insert(SHA256_STAMP.into(), sha256.into());
    serde_json::Value::Object(meta).to_string()
}

/// The `user_metadata` field sent after the file: its text waits for the
/// file's digest. Its length is known up front (a sha256 is always 64 hex
/// digits), so the request keeps a Content-Length.
fn trailing_metadata(
    meta: &serde_json::Map<String, serde_json::Value>,
    digest: tokio::sync::oneshot::Receiver<String>,
    stamped: Arc<OnceLock<String>>,
) -> Part {
    let meta = meta.clone();
    let len = stamp_metadata(&meta, &"0".repeat(64)).len() as u64;
    let text = futures_util::stream::once(async move {
        let sha256 = digest
            .await
            .map_err(|_| std::io::Error::other("the file could not be read to the end"))?;
        let text = stamp_metadata(&meta, &sha256);
        if text.len() as u64 != len {
            return Err(std::io::Error::other(
                "the sha256 stamp is not 64 hex digits",
            ));
        }
        let _ = stamped.set(sha256);
        Ok::<_, std::io::Error>(bytes::Bytes::from(text))
    });
    Part::stream_with_length(reqwest::Body::wrap_stream(text), len)
}

async fn read_json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
    if !resp.status().is_success() {
        return Err(status_error(resp).await);
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (status, body) = read_capped(resp).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Malformed {
        status,
        detail: unusable_body(&content_type, &body, &e),
    })
}

/// Why a success answer's body cannot be used, in words that point at the
/// cause: an HTML page (a captive portal or a proxy answering for the API)
/// is named as such, and an excerpt of the body is kept either way.
fn unusable_body(content_type: &str, body: &[u8], e: &serde_json::Error) -> String {
    let text = String::from_utf8_lossy(body);
    let words: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let excerpt: String = words.chars().take(120).collect();
    let html = content_type.starts_with("text/html")
        || excerpt.to_ascii_lowercase().starts_with("<!doctype html")
        || excerpt.to_ascii_lowercase().starts_with("<html");
    if body.is_empty() {
        "the body is empty, not the JSON expected".to_string()
    } else if html {
        format!(
            "an HTML page, not the JSON expected (a proxy or captive portal may be answering for the API): {excerpt:?}"
        )
    } else {
        format!("not the JSON expected ({e}): {excerpt:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_have_no_control_characters() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"new\nline\t\xff.mp4");
        assert_eq!(wire_filename(name), "new_line_\u{fffd}.mp4");
        assert_eq!(wire_filename(std::ffi::OsStr::new("")), "upload");
    }

    /// A proxy that answers with an HTML page echoing the request headers.
    async fn echoing_proxy() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let page = format!("<html><pre>{}</pre></html>", String::from_utf8_lossy(&req));
                let resp = format!(
                    "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_echoed_key_is_scrubbed_from_errors() {
        let addr = echoing_proxy().await;
        let key = ApiKey::new("tlk_SECRET_value_42").expect("key");
        let client = ApiClient::new(
            &ClientOptions {
                base_url: format!("http://{addr}/v1.3"),
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(5),
            },
            &key,
        )
        .expect("client");
        let err = client.get_asset("abc").await.expect_err("502");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("tlk_SECRET_value_42"), "{text}");
        assert!(text.contains("<redacted>"), "the echo was there: {text}");
        assert_eq!(err.class(), ErrorClass::Transient);
    }

    #[tokio::test]
    async fn a_key_of_a_few_characters_does_not_mangle_messages() {
        let addr = echoing_proxy().await;
        let client = ApiClient::new(
            &ClientOptions {
                base_url: format!("http://{addr}/v1.3"),
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(5),
            },
            &ApiKey::new("k").expect("key"),
        )
        .expect("client");
        let err = client.get_asset("abc").await.expect_err("502");
        let text = err.to_string();
        assert!(!text.contains("<redacted>"), "{text}");
        assert!(
            text.contains("Bad Gateway") || text.contains("502"),
            "{text}"
        );
    }

    #[test]
    fn an_unusable_body_is_described_with_an_excerpt() {
        let e = serde_json::from_slice::<Asset>(b"<").expect_err("not JSON");
        let page = b"<!DOCTYPE html>\n<html><body>Service   Unavailable</body></html>";
        let d = unusable_body("text/html; charset=utf-8", page, &e);
        assert!(d.starts_with("an HTML page"), "{d}");
        assert!(d.contains("Service Unavailable"), "{d}");
        let d = unusable_body("application/json", br#"{"_id": "ab"#, &e);
        assert!(d.starts_with("not the JSON expected"), "{d}");
        assert!(d.contains(r#"{\"_id\": \"ab"#), "{d}");
        assert_eq!(
            unusable_body("", b"", &e),
            "the body is empty, not the JSON expected"
        );
    }

    #[test]
    fn a_file_a_mount_cannot_open_now_is_retried_and_a_forbidden_one_is_not() {
        let path = std::path::Path::new("/mnt/nas/a.mp4");
        let stale = open_error(path, &std::io::Error::from_raw_os_error(libc::ESTALE));
        assert_eq!(stale.class(), ErrorClass::Transient, "{stale}");
        let denied = open_error(path, &std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(denied.class(), ErrorClass::Permanent, "{denied}");
        assert!(denied.to_string().contains("/mnt/nas/a.mp4"), "{denied}");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("abc123"), "abc123");
        assert_eq!(encode_segment("../x y"), "..%2Fx%20y");
    }
}
