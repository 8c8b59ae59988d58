//! The asset calls of [`ApiClient`]: upload a local file (`method=direct`,
//! with its sha256 stamp) or a URL, get, list (by filename or by ids),
//! delete, stamp an asset afterwards (`PATCH …/user-metadata`), find an
//! earlier upload by its stamp, and index an asset.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use sha2::Digest;

use super::body;
use super::client::{ApiClient, encode_segment};
use super::error::ApiError;
use super::response::{open_error, read_json, status_error, transport};
use super::types::{Asset, AssetPage, IndexedAsset, SHA256_STAMP, URL_STAMP};

/// Pages of `GET /assets?filename=` searched for a lost upload.
const LOOKUP_MAX_PAGES: u64 = 20;

/// The most assets one `GET /assets` answers for: its `page_limit` maximum.
pub const MAX_LIST_IDS: usize = 50;

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
    /// The file's `size` bytes, when the caller has read them already (a
    /// small file: its check, read and hash are one blocking task); else
    /// `path` is streamed.
    pub content: Option<bytes::Bytes>,
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

impl ApiClient {
    /// `POST /assets` with `method=direct`, the file streamed from disk with
    /// a known length.
    pub async fn create_direct(&self, up: &DirectUpload) -> Result<Created, ApiError> {
        up.sent.store(0, Ordering::Relaxed);
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
        let stream = match &up.content {
            Some(bytes) => {
                // Bytes already read come with their hash known (the
                // worker's case); hashing them here is for other callers.
                if let Some(tx) = digest_tx {
                    let _ = tx.send(hex::encode(sha2::Sha256::digest(bytes)));
                }
                body::once(bytes.clone(), up.sent.clone()).boxed()
            }
            None => {
                let file = tokio::fs::File::open(&up.path)
                    .await
                    .map_err(|e| open_error(&up.path, &e))?
                    .into_std()
                    .await;
                body::stream(file, up.size, up.sent.clone(), digest_tx).boxed()
            }
        };
        let stream = stream.take_until(done.cancelled_owned());
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

    /// `PATCH /assets/{id}/user-metadata`: merge `changes` into the asset's
    /// `user_metadata` (a `null` value deletes a key). Any 2xx is success;
    /// the answer's body, if any, is not read (the API defines none).
    pub async fn update_user_metadata(
        &self,
        id: &str,
        changes: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({ "user_metadata": changes });
        let resp = self
            .http
            .patch(format!(
                "{}/assets/{}/user-metadata",
                self.base,
                encode_segment(id)
            ))
            .json(&body)
            .send()
            .await
            .map_err(|e| transport("update user_metadata", &e, true))?;
        if resp.status().is_success() {
            return Ok(());
        }
        self.scrub(Err(status_error(resp).await))
    }

    /// Add this tool's sha256 stamp to an asset made without it (a
    /// multipart upload hashed while it was sent).
    pub async fn add_sha256_stamp(&self, id: &str, sha256: &str) -> Result<(), ApiError> {
        let mut changes = serde_json::Map::new();
        changes.insert(SHA256_STAMP.into(), sha256.into());
        self.update_user_metadata(id, &changes).await
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
        self.asset_page(&query).await
    }

    /// One `GET /assets` with this query.
    async fn asset_page<V: serde::Serialize>(
        &self,
        query: &[(&str, V)],
    ) -> Result<AssetPage, ApiError> {
        let resp = self
            .http
            .get(format!("{}/assets", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| transport("list assets", &e, false))?;
        self.scrub(read_json(resp).await)
    }

    /// `GET /assets` filtered by `asset_ids`: what the platform says of up
    /// to [`MAX_LIST_IDS`] assets in one request, by id. The ids go as
    /// repeated `asset_ids=ID` pairs, as the official Python SDK sends them
    /// (its query encoder repeats the key of a list, without brackets), with
    /// `page_limit` at the maximum so that one page holds them all.
    ///
    /// Only readable entries with one of the ids asked for come back. An id
    /// missing from the answer (a lagging index, an entry this version
    /// cannot read) says nothing about its asset: ask for that one alone.
    /// Ids past the first [`MAX_LIST_IDS`] are not asked about, so they are
    /// missing too.
    pub async fn assets_by_ids(&self, ids: &[&str]) -> Result<HashMap<String, Asset>, ApiError> {
        debug_assert!(ids.len() <= MAX_LIST_IDS, "{} ids in one list", ids.len());
        let asked: HashSet<&str> = ids
            .iter()
            .copied()
            .filter(|id| !id.is_empty())
            .take(MAX_LIST_IDS)
            .collect();
        // Without ids the filter would list every asset of the account.
        if asked.is_empty() {
            return Ok(HashMap::new());
        }
        let limit = MAX_LIST_IDS.to_string();
        let mut query: Vec<(&str, &str)> = Vec::with_capacity(asked.len() + 1);
        query.push(("page_limit", &limit));
        // In the caller's order: the request is the same for the same ids.
        let mut sent = HashSet::new();
        for id in ids.iter().copied().filter(|id| asked.contains(id)) {
            if sent.insert(id) {
                query.push(("asset_ids", id));
            }
        }
        let page = self.asset_page(&query).await?;
        let mut found = HashMap::new();
        for asset in page.assets().filter_map(Result::ok) {
            if let Some(id) = asset.id.clone()
                && asked.contains(id.as_str())
            {
                found.entry(id).or_insert(asset);
            }
        }
        Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every request with `body` (200, JSON) and
    /// hands over the request target of each.
    async fn recording_server(
        body: &'static str,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let target = head.split_whitespace().nth(1).unwrap_or_default();
                let _ = tx.send(target.to_string());
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    fn client_of(addr: std::net::SocketAddr) -> ApiClient {
        ApiClient::new(
            &crate::api::ClientOptions {
                base_url: format!("http://{addr}/v1.3"),
                request_timeout: std::time::Duration::from_secs(10),
                connect_timeout: std::time::Duration::from_secs(5),
            },
            &crate::secret::ApiKey::new("k-123456").expect("key"),
        )
        .expect("client")
    }

    /// The ids go as the official Python SDK sends them: `asset_ids`
    /// repeated, no brackets (its `core/query_encoder.py`); the answer is
    /// read by id, keeping only the ids asked for.
    #[tokio::test]
    async fn assets_are_listed_by_ids_as_the_sdk_sends_them() {
        let (addr, mut targets) = recording_server(
            r#"{"data":[{"_id":"b","status":"ready"},{"_id":"zz","status":"ready"},{"_id":"a","status":"processing"},{"_id":"c","filename":7}],"page_info":{}}"#,
        )
        .await;
        let client = client_of(addr);
        let found = client
            .assets_by_ids(&["a", "b", "a", "c"])
            .await
            .expect("answer");
        assert_eq!(
            targets.recv().await.expect("a request"),
            "/v1.3/assets?page_limit=50&asset_ids=a&asset_ids=b&asset_ids=c"
        );
        let mut ids: Vec<&str> = found.keys().map(String::as_str).collect();
        ids.sort_unstable();
        // "zz" was not asked for; "c" cannot be read: both absent.
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(found["b"].status(), crate::api::AssetStatus::Ready);

        // No ids: no request (an empty filter would list every asset).
        assert!(client.assets_by_ids(&[]).await.expect("nothing").is_empty());
        assert!(targets.try_recv().is_err());
    }

    #[test]
    fn wire_names_have_no_control_characters() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"new\nline\t\xff.mp4");
        assert_eq!(wire_filename(name), "new_line_\u{fffd}.mp4");
        assert_eq!(wire_filename(std::ffi::OsStr::new("")), "upload");
    }
}
