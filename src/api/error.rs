//! API failures and their classification, decided once, here.
//!
//! The pipeline never looks at status codes or error strings: it asks
//! [`ApiError::class`] and acts on the answer.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

/// What the caller should do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again after a backoff: network trouble, timeouts, 408, 5xx, and
    /// answers that make no sense.
    Transient,
    /// 429: everyone waits until `until` (if the server said), then tries again.
    RateLimited { until: Option<SystemTime> },
    /// 401/403: the key was rejected. Nothing will work until it is fixed.
    Auth,
    /// Any other 4xx: this request will never succeed as it is.
    Permanent,
    /// 404 on an asset: the platform does not have it (any more).
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No HTTP answer: connect failure, timeout, reset. `body_sent` says
    /// whether the whole request body had gone out when it happened.
    #[error("{what}: {detail}")]
    Transport {
        what: &'static str,
        detail: String,
        body_sent: bool,
    },
    /// An HTTP error status, with the platform's code and message if any.
    #[error("{}", status_message(*.status, .code.as_deref(), .message.as_deref()))]
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
        retry_at: Option<SystemTime>,
    },
    /// A success status whose body could not be understood.
    #[error("the API answered {status} with a body that cannot be used: {detail}")]
    Malformed { status: u16, detail: String },
    /// The local file could not be read while sending it.
    #[error("reading the file failed while sending it: {0}")]
    LocalRead(String),
    /// The object store refused a chunk PUT. About the multipart session,
    /// not the file: the pipeline asks the platform about the session.
    /// Names the store's host, never the presigned URL (its query string
    /// is a credential).
    #[error("{0}")]
    Storage(StorageError),
    /// Multipart sessions were given up one after another: the store is not
    /// taking this file, and another session would not do better.
    #[error(
        "{sessions} upload sessions in a row were given up, so the file is not sent again; \
         the last: {last}"
    )]
    SessionsBurned { sessions: u32, last: String },
}

/// A chunk PUT the object store answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    /// 1-based, as the API counts chunks.
    pub chunk: u64,
    pub total: u64,
    /// `host[:port]` of the presigned URL.
    pub host: String,
    pub status: u16,
    /// The store's error code (`NoSuchUpload`, `AccessDenied`, …), if it gave one.
    pub code: Option<String>,
    pub message: Option<String>,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chunk {} of {}: {} answered {}",
            self.chunk, self.total, self.host, self.status
        )?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StorageError {}

fn status_message(status: u16, code: Option<&str>, message: Option<&str>) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    match (code, message) {
        (Some(c), Some(m)) => format!("HTTP {status} {reason}: {m} ({c})"),
        (None, Some(m)) => format!("HTTP {status} {reason}: {m}"),
        (Some(c), None) => format!("HTTP {status} {reason} ({c})"),
        (None, None) => format!("HTTP {status} {reason}"),
    }
}

impl ApiError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Transport { .. } | ApiError::Malformed { .. } => ErrorClass::Transient,
            ApiError::LocalRead(_) | ApiError::SessionsBurned { .. } => ErrorClass::Permanent,
            // Reaching the record only when the session could not be dealt
            // with in the attempt: the next attempt resumes or replaces it.
            ApiError::Storage(_) => ErrorClass::Transient,
            ApiError::Status {
                status, retry_at, ..
            } => match *status {
                429 => ErrorClass::RateLimited { until: *retry_at },
                401 | 403 => ErrorClass::Auth,
                404 => ErrorClass::NotFound,
                408 => ErrorClass::Transient,
                500..=599 => ErrorClass::Transient,
                400..=499 => ErrorClass::Permanent,
                // 1xx/3xx reaching here means a proxy or redirect loop: try again.
                _ => ErrorClass::Transient,
            },
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } | ApiError::Malformed { status, .. } => Some(*status),
            ApiError::Storage(e) => Some(e.status),
            _ => None,
        }
    }

    /// Whether the platform may hold the result of this request anyway: the
    /// whole body went out and no clear refusal came back.
    pub fn maybe_received(&self) -> bool {
        match self {
            ApiError::Transport { body_sent, .. } => *body_sent,
            ApiError::Malformed { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 408,
            ApiError::LocalRead(_) | ApiError::Storage(_) | ApiError::SessionsBurned { .. } => {
                false
            }
        }
    }
}

/// The longest a 429 is believed: a server (or proxy) asking for more is
/// asked again after this long, so no record waits for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// When a 429 says to come back: `Retry-After` (seconds or an HTTP date:
/// IMF-fixdate, RFC 850 or asctime, as RFC 9110 has recipients accept),
/// else `X-Ratelimit-Reset` (Unix seconds); never later than
/// [`MAX_RETRY_AFTER`] from `now`.
pub fn retry_at(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let latest = now + MAX_RETRY_AFTER;
    stated_retry_at(headers, now).map(|at| at.min(latest))
}

fn stated_retry_at(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<SystemTime> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(v) = text("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(
                now.checked_add(Duration::from_secs(secs))
                    .unwrap_or(now + MAX_RETRY_AFTER),
            );
        }
        if let Ok(at) = humantime::parse_rfc3339_weak(v) {
            return Some(at);
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at);
        }
    }
    if let Some(v) = text("x-ratelimit-reset")
        && let Ok(secs) = v.parse::<u64>()
    {
        return Some(
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .unwrap_or(now + MAX_RETRY_AFTER),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn status(code: u16) -> ApiError {
        ApiError::Status {
            status: code,
            code: None,
            message: None,
            retry_at: None,
        }
    }

    #[test]
    fn classification_table() {
        let cases = [
            (400, ErrorClass::Permanent),
            (401, ErrorClass::Auth),
            (403, ErrorClass::Auth),
            (404, ErrorClass::NotFound),
            (408, ErrorClass::Transient),
            (409, ErrorClass::Permanent),
            (413, ErrorClass::Permanent),
            (422, ErrorClass::Permanent),
            (429, ErrorClass::RateLimited { until: None }),
            (500, ErrorClass::Transient),
            (502, ErrorClass::Transient),
            (503, ErrorClass::Transient),
            (504, ErrorClass::Transient),
        ];
        for (code, class) in cases {
            assert_eq!(status(code).class(), class, "HTTP {code}");
        }
        let t = ApiError::Transport {
            what: "connect",
            detail: "refused".into(),
            body_sent: false,
        };
        assert_eq!(t.class(), ErrorClass::Transient);
        assert!(!t.maybe_received());
        let m = ApiError::Malformed {
            status: 201,
            detail: "no _id".into(),
        };
        assert_eq!(m.class(), ErrorClass::Transient);
        assert!(
            m.maybe_received(),
            "a 201 we cannot read may have created an asset"
        );
        assert!(!status(400).maybe_received());
    }

    #[test]
    fn messages_carry_the_platform_text() {
        let e = ApiError::Status {
            status: 400,
            code: Some("parameter_invalid".into()),
            message: Some("file too large".into()),
            retry_at: None,
        };
        assert_eq!(
            e.to_string(),
            "HTTP 400 Bad Request: file too large (parameter_invalid)"
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_at(&h, now), None);
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1000060"));
        assert_eq!(
            retry_at(&h, now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_060))
        );
        // Milliseconds where seconds belong, or nonsense: capped, no panic.
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1000060000"));
        assert_eq!(retry_at(&h, now), Some(now + MAX_RETRY_AFTER));
        h.insert(
            "retry-after",
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(retry_at(&h, now), Some(now + MAX_RETRY_AFTER));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_at(&h, now), Some(now + Duration::from_secs(7)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        let shortly_before = humantime::parse_rfc3339("2015-10-21T07:00:00Z").expect("date");
        assert_eq!(
            retry_at(&h, shortly_before),
            Some(humantime::parse_rfc3339("2015-10-21T07:28:00Z").expect("date"))
        );
    }

    #[test]
    fn retry_after_http_dates() {
        let before = humantime::parse_rfc3339("2015-10-21T07:00:00Z").expect("date");
        let at = humantime::parse_rfc3339("2015-10-21T07:28:00Z").expect("date");
        let mut h = HeaderMap::new();
        // The three forms RFC 9110 has recipients accept, spaces around trimmed.
        for form in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "  Wed, 21 Oct 2015 07:28:00 GMT ",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            h.insert("retry-after", HeaderValue::from_static(form));
            assert_eq!(retry_at(&h, before), Some(at), "{form:?}");
        }
        // A date further than the cap is capped.
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 2033 08:49:37 GMT"),
        );
        assert_eq!(retry_at(&h, before), Some(before + MAX_RETRY_AFTER));
        // Not a date: the rate-limit reset is used instead, or nothing.
        for bad in [
            "Wed, 21 Oct 2015 07:28:00 PST",
            "soon",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            h.insert("retry-after", HeaderValue::from_static(bad));
            assert_eq!(retry_at(&h, before), None, "{bad:?}");
        }
        h.insert("x-ratelimit-reset", HeaderValue::from_static("1445412480"));
        assert_eq!(
            retry_at(&h, before),
            Some(at),
            "reset after a bad Retry-After"
        );
    }
}
