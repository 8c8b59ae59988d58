//! Typed configuration and how it is layered: the public face of the
//! module, with its constants and its error.
//!
//! Lowest first: the embedded `config/default.toml`, then one TOML file
//! (`--config`, else `$TL_INGEST_CONFIG`, else `./tl-ingest.toml`, else
//! `/etc/tl-ingest/config.toml`, each only if it exists), then environment
//! overrides `TL_INGEST__SECTION__KEY`. Every struct denies unknown keys so a
//! typo is an error that names the key, not a silently ignored setting;
//! [`Config::load`] finds such keys itself, before deserializing, so the
//! message says where the key is and which valid key was most likely meant.
//! [`Config::explain`] tells, for `config show`, which layer set each value.
//! The API key is not part of this tree: see [`crate::secret`].
//!
//! - `schema`: the structs, their defaults and the resolved ledger path;
//! - `layers`: finding the file and layering defaults, file and environment;
//! - `keys`: the valid keys (read from the structs by `probe`) and the
//!   messages for unknown ones;
//! - `validate`: the checks types alone cannot express;
//! - `explain`: `config show`, the effective configuration with its sources.

mod explain;
mod keys;
mod layers;
mod probe;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

use std::path::PathBuf;

pub use explain::{Explained, ValueSource, exact_size, redact_url};
pub use keys::{edit_distance, nearest, section_keys, sections};
pub use layers::{ConfigFile, LoadOptions};
pub use schema::{
    ApiConfig, Config, Dedupe, FileAction, FileActionName, LedgerConfig, LogFormat, MetadataValue,
    TelemetryConfig, UploadConfig, WatchConfig, WatcherConfig, WatcherMode, default_exclude,
};

/// The embedded defaults, the one place they are written down.
pub const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides: `TL_INGEST__UPLOAD__WORKERS=8`.
pub const ENV_PREFIX: &str = "TL_INGEST";

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_PATH_ENV: &str = "TL_INGEST_CONFIG";

/// Files tried in order when neither `--config` nor `$TL_INGEST_CONFIG` is set.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["tl-ingest.toml", "/etc/tl-ingest/config.toml"];

/// A configuration that could not be loaded: where, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("config file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("configuration: {reason}")]
    Value { reason: String },
}
