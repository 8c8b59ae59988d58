//! The multipart upload calls of [`ApiClient`]: open a session, get
//! presigned chunk URLs, PUT a chunk to the object store, report chunks,
//! read the session's state. Errors about a chunk name the store's host,
//! never the presigned URL (its query string is a credential).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::body;
use super::client::{ApiClient, encode_segment};
use super::error::{ApiError, StorageError};
use super::response::{open_error, read_capped, read_json, transport};
use super::types::{self, MultipartCreated, ReportResult, SessionStatus, UploadUrl};

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

/// A chunk's bytes as the caller streams them.
pub type ChunkStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static>,
>;

/// Where a chunk's bytes come from.
pub enum ChunkBody<'a> {
    /// Read by byte range straight from the file, streamed.
    File {
        path: &'a std::path::Path,
        offset: u64,
    },
    /// Streamed by the caller, which reads the file once and hashes it on
    /// the way (see `pipeline/chunk_reader.rs`). Exactly the chunk's
    /// length must come out of it.
    Stream(ChunkStream),
}

impl std::fmt::Debug for ChunkBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkBody::File { path, offset } => f
                .debug_struct("File")
                .field("path", path)
                .field("offset", offset)
                .finish(),
            ChunkBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl ApiClient {
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

    /// PUT chunk `chunk` of `total` (`len` bytes, from `body`) to its
    /// presigned URL; returns the ETag (quotes removed). Errors name the
    /// chunk and the store's host, never the URL's query string.
    pub async fn put_chunk(
        &self,
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: ChunkBody<'_>,
        (chunk, total): (u64, u64),
        len: u64,
        sent: Arc<AtomicU64>,
    ) -> Result<String, ChunkError> {
        // As in `create_direct`: a streamed body ends when this call returns.
        let done = tokio_util::sync::CancellationToken::new();
        let _done = done.clone().drop_guard();
        let body = match body {
            ChunkBody::File { path, offset } => {
                let file = open_at(path, offset).await?;
                let stream = futures_util::StreamExt::take_until(
                    body::stream(file, len, sent, None),
                    done.cancelled_owned(),
                );
                reqwest::Body::wrap_stream(stream)
            }
            ChunkBody::Stream(stream) => {
                let counted = futures_util::StreamExt::inspect(stream, move |piece| {
                    if let Ok(bytes) = piece {
                        sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                let stream = futures_util::StreamExt::take_until(counted, done.cancelled_owned());
                reqwest::Body::wrap_stream(stream)
            }
        };
        let host = storage_host(url);
        let mut req = self
            .storage
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
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
}

/// `path`, opened (on a blocking thread) and positioned at `offset`.
async fn open_at(path: &std::path::Path, offset: u64) -> Result<std::fs::File, ChunkError> {
    let open = move |path: std::path::PathBuf| -> std::io::Result<std::fs::File> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(file)
    };
    tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || open(path)
    })
    .await
    .map_err(|e| ChunkError::Api(ApiError::LocalRead(e.to_string())))?
    .map_err(|e| ChunkError::Api(open_error(path, &e)))
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
