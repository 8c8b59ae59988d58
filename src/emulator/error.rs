//! The emulator's error responses: `{"code": "...", "message": "..."}` with an HTTP status,
//! as the TwelveLabs API answers them; and, for the presigned chunk URLs, the XML body an
//! S3-like object store answers with (`<Error><Code>…</Code><Message>…</Message></Error>`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error answer. `code` uses the platform's vocabulary (`parameter_invalid`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "parameter_invalid", message)
    }

    pub fn not_provided(parameter: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "parameter_not_provided",
            format!("The {parameter} parameter is required but was not provided."),
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "resource_not_exist",
            format!("The {what} you requested does not exist."),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "api_key_invalid",
            "The API key you provided is not valid.",
        )
    }

    /// A report or URL request on a multipart session past its expiry.
    pub fn upload_expired() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "upload_expired",
            "The multipart upload session has expired; start a new one.",
        )
    }

    /// A refused presigned-URL request (S3 answers these 403 `AccessDenied`).
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", message)
    }

    /// A chunk PUT to a session that ended (expired, aborted, completed): S3's answer for
    /// a part of an upload it no longer has.
    pub fn no_such_upload() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the \
             upload may have been aborted or completed.",
        )
    }

    /// A chunk PUT without a header its URL was signed with.
    pub fn signature_mismatch(header: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            format!(
                "The request signature we calculated does not match the signature you \
                 provided: the signed header {header} is missing or differs."
            ),
        )
    }

    /// The answer as an object store gives it: S3's XML error body.
    pub fn into_store_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code>\
             <Message>{}</Message></Error>",
            xml_escape(self.code),
            xml_escape(&self.message)
        );
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/xml")],
            body,
        )
            .into_response()
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "An internal error occurred. Please try again later.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
