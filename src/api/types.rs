//! The API's response shapes, parsed leniently: every field optional,
//! unknown fields ignored, unknown enum values kept as text. The platform
//! has added and removed fields several times; a new one must never break
//! an upload.

use serde::Deserialize;

/// The key under which every upload carries its file's sha256 in
/// `user_metadata`, so that an upload whose response was lost can be found.
pub const SHA256_STAMP: &str = "tl_ingest_sha256";

/// A count, size or index as the platform sent it. A value out of range
/// (negative, fractional, text) does not reject the whole body: the
/// operation that needs the field says it is malformed, and one that can do
/// without it (a page total, say) goes on as if it were absent.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Count(Option<serde_json::Value>);

impl Count {
    pub fn of(n: u64) -> Count {
        Count(Some(n.into()))
    }

    /// The value, `None` when absent or null, or why it is not a count.
    pub fn get(&self, field: &str) -> Result<Option<u64>, String> {
        match &self.0 {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{field} is {v}, not a count")),
        }
    }

    /// The value if it is a usable count (absent or out of range: `None`).
    pub fn ok(&self) -> Option<u64> {
        self.get("").ok().flatten()
    }
}

/// The key under which a URL upload carries its record's own random stamp
/// (a URL has no content hash to be found by).
pub const URL_STAMP: &str = "tl_ingest_url_stamp";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Asset {
    #[serde(rename = "_id", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub file_type: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub size: Option<serde_json::Value>,
    #[serde(default)]
    pub user_metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<AssetError>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AssetError {
    #[serde(default)]
    pub message: Option<String>,
}

/// What the platform says of an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetStatus {
    Processing,
    Ready,
    Failed,
    /// A value this version does not know: treated as still processing.
    Other(String),
}

impl Asset {
    pub fn status(&self) -> AssetStatus {
        match self.status.as_deref() {
            Some("ready") => AssetStatus::Ready,
            Some("failed") => AssetStatus::Failed,
            Some("processing") | None => AssetStatus::Processing,
            Some(other) => AssetStatus::Other(other.to_string()),
        }
    }

    /// The sha256 stamp in `user_metadata`, whether the platform returns it
    /// as an object or as the JSON string it was sent as.
    pub fn sha256_stamp(&self) -> Option<String> {
        self.stamp(SHA256_STAMP)
    }

    /// The URL stamp in `user_metadata` (see [`URL_STAMP`]).
    pub fn url_stamp(&self) -> Option<String> {
        self.stamp(URL_STAMP)
    }

    /// A text value of `user_metadata`, whether the platform returns it as
    /// an object or as the JSON string it was sent as.
    pub fn stamp(&self, key: &str) -> Option<String> {
        let meta = self.user_metadata.as_ref()?;
        let obj = match meta {
            serde_json::Value::Object(map) => map.clone(),
            serde_json::Value::String(text) => serde_json::from_str(text).ok()?,
            _ => return None,
        };
        obj.get(key)?.as_str().map(str::to_string)
    }

    pub fn error_message(&self) -> Option<String> {
        self.error.as_ref().and_then(|e| e.message.clone())
    }
}

/// A page of `GET /assets`. Each entry is read on its own: one asset this
/// version cannot read does not hide the others.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AssetPage {
    #[serde(default)]
    pub data: Vec<serde_json::Value>,
    #[serde(default)]
    pub page_info: Option<PageInfo>,
}

impl AssetPage {
    /// Every entry, as an asset or as why it cannot be read (naming its
    /// `_id` when that much can be read).
    pub fn assets(&self) -> impl Iterator<Item = Result<Asset, String>> + '_ {
        self.data.iter().map(|v| {
            serde_json::from_value::<Asset>(v.clone()).map_err(|e| match v.get("_id") {
                Some(serde_json::Value::String(id)) => format!("asset {id}: {e}"),
                _ => e.to_string(),
            })
        })
    }

    /// The page count, when the platform gave a usable one.
    pub fn total_pages(&self) -> Option<u64> {
        self.page_info.as_ref().and_then(|p| p.total_page.ok())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageInfo {
    #[serde(default)]
    pub page: Count,
    #[serde(default)]
    pub total_page: Count,
    #[serde(default)]
    pub total_results: Count,
}

/// Error bodies come as `{code, message}`, `{error: {code, message}}`, or
/// empty (429 on some endpoints). Returns what could be read.
pub fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Flat {
        code: Option<String>,
        message: Option<String>,
        error: Option<Box<serde_json::Value>>,
    }
    let Ok(flat) = serde_json::from_slice::<Flat>(body) else {
        return (None, None);
    };
    if flat.code.is_some() || flat.message.is_some() {
        return (flat.code, flat.message);
    }
    match flat.error.as_deref() {
        Some(serde_json::Value::Object(inner)) => (
            inner
                .get("code")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            inner
                .get("message")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        ),
        Some(serde_json::Value::String(text)) => (None, Some(text.clone())),
        _ => (None, None),
    }
}

/// An object store's error body: S3's `<Error><Code>…</Code><Message>…
/// </Message></Error>`, or JSON as the API sends it.
pub fn parse_storage_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(body);
    if !text.trim_start().starts_with('<') {
        return parse_error_body(body);
    }
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&close)?;
        let value = xml_unescape(text[start..end].trim());
        (!value.is_empty()).then(|| value.chars().take(300).collect::<String>())
    };
    (tag("Code"), tag("Message"))
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_in_xml_or_json() {
        let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchUpload</Code>\
            <Message>The specified upload does not exist &amp; never will.</Message>\
            <UploadId>abc</UploadId></Error>";
        assert_eq!(
            parse_storage_error(xml),
            (
                Some("NoSuchUpload".into()),
                Some("The specified upload does not exist & never will.".into())
            )
        );
        assert_eq!(
            parse_storage_error(br#"{"code":"AccessDenied","message":"no"}"#),
            (Some("AccessDenied".into()), Some("no".into()))
        );
        assert_eq!(parse_storage_error(b"<html>"), (None, None));
        assert_eq!(parse_storage_error(b""), (None, None));
    }

    #[test]
    fn out_of_range_numbers_do_not_reject_the_body() {
        let c: MultipartCreated = serde_json::from_str(
            r#"{"upload_id":"u","chunk_size":-5,"total_chunks":"many",
                "upload_urls":[{"chunk_index":-1,"url":"x"},{"chunk_index":2,"url":"y"}]}"#,
        )
        .expect("the body is read");
        assert_eq!(c.upload_id.as_deref(), Some("u"));
        assert_eq!(
            c.chunk_size.get("chunk_size"),
            Err("chunk_size is -5, not a count".into())
        );
        assert_eq!(c.total_chunks.ok(), None);
        assert_eq!(c.upload_urls[0].chunk_index.ok(), None);
        assert_eq!(c.upload_urls[1].chunk_index.ok(), Some(2));
        let s: SessionStatus = serde_json::from_str(
            r#"{"status":"active","uploaded_chunks":[{"index":-3,"status":"completed"}],
                "page_info":{"total_page":-1}}"#,
        )
        .expect("the body is read");
        assert_eq!(s.uploaded_chunks[0].index.ok(), None);
        let page: AssetPage = serde_json::from_str(
            r#"{"data":[{"_id":"a"},{"_id":7},{"_id":"b"}],"page_info":{"total_page":-2}}"#,
        )
        .expect("the page is read");
        let read: Vec<bool> = page.assets().map(|a| a.is_ok()).collect();
        assert_eq!(read, [true, false, true]);
        assert_eq!(page.total_pages(), None);
    }

    #[test]
    fn asset_tolerates_unknown_fields_and_values() {
        let a: Asset = serde_json::from_str(
            r#"{"_id":"abc","status":"transcoding","brand_new":{"x":1},"size":12}"#,
        )
        .expect("parses");
        assert_eq!(a.id.as_deref(), Some("abc"));
        assert_eq!(a.status(), AssetStatus::Other("transcoding".into()));
        let empty: Asset = serde_json::from_str("{}").expect("empty object parses");
        assert_eq!(empty.status(), AssetStatus::Processing);
    }

    #[test]
    fn stamp_read_from_object_or_string() {
        let a: Asset = serde_json::from_str(r#"{"user_metadata":{"tl_ingest_sha256":"ff","x":1}}"#)
            .expect("parses");
        assert_eq!(a.sha256_stamp().as_deref(), Some("ff"));
        let b: Asset = serde_json::from_str(r#"{"user_metadata":"{\"tl_ingest_sha256\":\"ee\"}"}"#)
            .expect("parses");
        assert_eq!(b.sha256_stamp().as_deref(), Some("ee"));
        let c: Asset = serde_json::from_str(r#"{"user_metadata":7}"#).expect("parses");
        assert_eq!(c.sha256_stamp(), None);
    }

    #[test]
    fn error_bodies_in_every_shape() {
        assert_eq!(
            parse_error_body(br#"{"code":"parameter_invalid","message":"bad"}"#),
            (Some("parameter_invalid".into()), Some("bad".into()))
        );
        assert_eq!(
            parse_error_body(br#"{"error":{"code":"x","message":"y","details":[]}}"#),
            (Some("x".into()), Some("y".into()))
        );
        assert_eq!(parse_error_body(b""), (None, None));
        assert_eq!(parse_error_body(b"<html>oops</html>"), (None, None));
        assert_eq!(parse_error_body(b"[1,2]"), (None, None));
    }
}

/// `POST /assets/multipart-uploads` → 201.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MultipartCreated {
    #[serde(default)]
    pub upload_id: Option<String>,
    #[serde(default)]
    pub asset_id: Option<String>,
    #[serde(default)]
    pub upload_urls: Vec<UploadUrl>,
    #[serde(default)]
    pub upload_headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub chunk_size: Count,
    #[serde(default)]
    pub total_chunks: Count,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A presigned URL for one chunk (1-based index).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct UploadUrl {
    #[serde(default)]
    pub chunk_index: Count,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST /assets/multipart-uploads/{id}/presigned-urls` → 200.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PresignedUrls {
    #[serde(default)]
    pub upload_urls: Vec<UploadUrl>,
}

/// `POST /assets/multipart-uploads/{id}` → 200.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReportResult {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub total_completed: Count,
}

/// `GET /assets/multipart-uploads/{id}` → 200 (one page of chunks).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SessionStatus {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub uploaded_chunks: Vec<ChunkStatus>,
    #[serde(default)]
    pub page_info: Option<PageInfo>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChunkStatus {
    #[serde(default)]
    pub index: Count,
    #[serde(default)]
    pub status: Option<String>,
}

/// `POST /indexes/{id}/indexed-assets` → 202, and its status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IndexedAsset {
    #[serde(rename = "_id", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}
