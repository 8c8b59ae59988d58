//! Answers read into results: a capped body, JSON parsed or described
//! when it cannot be, error statuses and transport failures turned into
//! [`ApiError`]s.

use std::time::SystemTime;

use serde::de::DeserializeOwned;

use super::error::{ApiError, retry_at};
use super::types;

/// A response body larger than this is not one the API sends.
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

pub(super) fn transport(what: &'static str, e: &reqwest::Error, body_sent: bool) -> ApiError {
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

pub(super) async fn read_capped(mut resp: reqwest::Response) -> Result<(u16, Vec<u8>), ApiError> {
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

pub(super) async fn status_error(resp: reqwest::Response) -> ApiError {
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

pub(super) async fn read_json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
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

/// A file that cannot be opened: permanent, unless the error is one a
/// network mount gives while its server is away (then tried again).
pub(super) fn open_error(path: &std::path::Path, e: &std::io::Error) -> ApiError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Asset, ErrorClass};

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
        let stale = open_error(
            path,
            &std::io::Error::from_raw_os_error(rustix::io::Errno::STALE.raw_os_error()),
        );
        assert_eq!(stale.class(), ErrorClass::Transient, "{stale}");
        let denied = open_error(
            path,
            &std::io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error()),
        );
        assert_eq!(denied.class(), ErrorClass::Permanent, "{denied}");
        assert!(denied.to_string().contains("/mnt/nas/a.mp4"), "{denied}");
    }
}
