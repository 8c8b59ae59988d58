//! The API client itself: building it (the API key as a sensitive default
//! header, a second client without it for presigned URLs), and what every
//! call shares: JSON POSTs, path segments, and the key scrubbed from any
//! text a server echoes back.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::response::{read_json, transport};
use crate::secret::ApiKey;

#[derive(Clone, Debug)]
pub struct ApiClient {
    pub(super) http: reqwest::Client,
    /// For presigned chunk URLs: no default headers, so the API key never
    /// goes to the storage host.
    pub(super) storage: reqwest::Client,
    pub(super) base: String,
    /// Kept only to scrub it from error text a server echoes back.
    pub(super) key: ApiKey,
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
    pub(super) async fn post_json<T: DeserializeOwned>(
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
pub(super) fn encode_segment(id: &str) -> String {
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

impl ApiClient {
    /// Remove the key from an error's text: a proxy's error page may echo
    /// the request headers back, and error text ends up in logs and the
    /// ledger.
    pub(super) fn scrub<T>(&self, result: Result<T, ApiError>) -> Result<T, ApiError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorClass;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("abc123"), "abc123");
        assert_eq!(encode_segment("../x y"), "..%2Fx%20y");
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
}
