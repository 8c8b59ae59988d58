//! The configuration's structs, as `config/default.toml` and the file
//! spell them, with the per-key defaults of a `[[watch]]` entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::pg_url::PgUrl;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub watch: Vec<WatchConfig>,
    pub watcher: WatcherConfig,
    pub upload: UploadConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Base URL of the v1.3 API, without a trailing slash.
    pub base_url: String,
    /// A file holding the API key (used when `TWELVELABS_API_KEY` is unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Upper bound on one whole HTTP request, upload included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Upper bound on establishing a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often to ask whether an asset is ready.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub enable_hls: bool,
    pub enable_thumbnail: bool,
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// SQLite file; relative paths are under `$STATE_DIRECTORY` when systemd sets it.
    pub path: PathBuf,
    /// A PostgreSQL ledger shared by a fleet (`postgres://…`); when set it
    /// is used instead of `path`. Shown without its password.
    #[serde(
        default,
        serialize_with = "serialize_redacted_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub url: Option<String>,
    /// How long a daemon's claim on a record lasts without a heartbeat
    /// (PostgreSQL): another daemon takes the record over after that.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

/// By hand: the URL may carry a password.
impl std::fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(PgUrl::parse))
            .field("lease", &self.lease)
            .finish()
    }
}

fn serialize_redacted_url<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => match PgUrl::parse(u) {
            Ok(u) => s.serialize_str(&u.to_string()),
            Err(_) => s.serialize_str("<not a postgres:// URL>"),
        },
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WatcherMode {
    Native,
    Poll,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatcherConfig {
    pub mode: WatcherMode,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A file must keep its size and mtime this long before it is queued.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dedupe {
    /// The same sha256 anywhere in the ledger is uploaded once.
    Content,
    /// A path that was uploaded once is not uploaded again, whatever its content.
    Path,
    /// Every new version of every file is uploaded.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    pub workers: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Client-side pacing of `POST /assets`; 0 means no limit.
    pub requests_per_minute: u32,
    pub multipart_threshold: ByteSize,
    pub max_direct_size: ByteSize,
    pub max_image_size: ByteSize,
    pub max_multipart_size: ByteSize,
    pub dedupe: Dedupe,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `host:port` for `/metrics` and `/healthz`; empty disables it.
    pub metrics_listen: String,
}

/// A value of `user_metadata`: the platform accepts strings, numbers and booleans.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MetadataValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

/// What to do with a file once its asset is `ready` (or has failed).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum FileAction {
    Named(FileActionName),
    MoveTo { move_to: PathBuf },
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileActionName {
    Keep,
    Delete,
}

impl Default for FileAction {
    fn default() -> Self {
        FileAction::Named(FileActionName::Keep)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    pub path: PathBuf,
    #[serde(default = "default_true")]
    pub recursive: bool,
    /// Globs of files to take; empty means the default media extensions.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default = "default_exclude")]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub user_metadata: BTreeMap<String, MetadataValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_id: Option<String>,
    #[serde(default)]
    pub after_upload: FileAction,
    #[serde(default)]
    pub on_failure: FileAction,
}

fn default_true() -> bool {
    true
}

/// Hidden files and the partial files of common downloaders and copiers.
pub fn default_exclude() -> Vec<String> {
    ["**/.*", "**/*.part", "**/*.tmp", "**/*.crdownload"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl WatchConfig {
    /// The settings `upload PATH...` uses for paths given on the command line.
    pub fn for_path(path: PathBuf) -> Self {
        WatchConfig {
            path,
            recursive: true,
            include: Vec::new(),
            exclude: default_exclude(),
            user_metadata: BTreeMap::new(),
            index_id: None,
            after_upload: FileAction::default(),
            on_failure: FileAction::default(),
        }
    }
}

impl Config {
    /// The ledger file, resolved against `$STATE_DIRECTORY` when systemd sets it.
    pub fn ledger_path(&self, env: &BTreeMap<String, String>) -> PathBuf {
        let path = &self.ledger.path;
        match env.get("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
            // systemd may pass several directories separated by ':'; the first is ours.
            Some(dirs) if path.is_relative() => {
                let first = dirs.split(':').next().unwrap_or(dirs);
                Path::new(first).join(path)
            }
            _ => path.clone(),
        }
    }
}
