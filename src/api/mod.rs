//! The TwelveLabs v1.3 API client: the calls the pipeline makes, with
//! request bodies streamed from disk and every failure turned into an
//! [`ApiError`] that knows its [`ErrorClass`].
//!
//! This file only names the parts, layered: at the bottom `error`, `types`
//! (the answers' shapes) and `body` (a file streamed into a request);
//! `response` reads answers into results and errors; `client` builds the
//! [`ApiClient`]; its calls are in `assets` (assets and indexing) and
//! `upload_sessions` (multipart upload sessions and their chunk PUTs).

mod assets;
mod body;
mod client;
mod error;
mod response;
pub mod types;
mod upload_sessions;

pub use assets::{Created, DirectUpload, MAX_LIST_IDS, Stamp, wire_filename};
pub use client::{ApiClient, ClientOptions, NO_CA_CERTIFICATES, check_tls_roots};
pub use error::{ApiError, ErrorClass, MAX_RETRY_AFTER, StorageError, retry_at};
pub use types::{
    Asset, AssetPage, AssetStatus, IndexedAsset, MultipartCreated, ReportResult, SHA256_STAMP,
    SessionStatus, URL_STAMP, UploadUrl,
};
pub use upload_sessions::{ChunkBody, ChunkError, ChunkStream};
