//! Typed configuration and how it is layered.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use config::ValueKind;
use serde::{Deserialize, Serialize};

use crate::pg_url::PgUrl;

/// The embedded defaults, the one place they are written down.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment overrides: `TL_INGEST__UPLOAD__WORKERS=8`.
pub const ENV_PREFIX: &str = "TL_INGEST";

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_PATH_ENV: &str = "TL_INGEST_CONFIG";

/// Files tried in order when neither `--config` nor `$TL_INGEST_CONFIG` is set.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["tl-ingest.toml", "/etc/tl-ingest/config.toml"];

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

/// Where the configuration came from, for messages and `config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// No file: built-in defaults and environment only.
    None,
    Path(PathBuf),
}

/// Inputs to [`Config::load`], explicit so tests never read the real environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config PATH`.
    pub explicit: Option<PathBuf>,
    /// The process environment (or a test's stand-in).
    pub env: BTreeMap<String, String>,
    /// The directory `./tl-ingest.toml` is looked for in.
    pub cwd: Option<PathBuf>,
}

impl LoadOptions {
    /// Options from the real process environment.
    pub fn from_process(explicit: Option<PathBuf>) -> Self {
        LoadOptions {
            explicit,
            env: std::env::vars().collect(),
            cwd: std::env::current_dir().ok(),
        }
    }
}

impl Config {
    /// Decide which file to read: `--config`, `$TL_INGEST_CONFIG`, then the defaults.
    pub fn locate(opts: &LoadOptions) -> Result<ConfigFile, ConfigError> {
        let named = opts.explicit.clone().or_else(|| {
            opts.env
                .get(CONFIG_PATH_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if let Some(path) = named {
            return if path.is_file() {
                Ok(ConfigFile::Path(path))
            } else {
                Err(ConfigError::Missing { path })
            };
        }
        for candidate in DEFAULT_CONFIG_PATHS {
            let path = match &opts.cwd {
                Some(cwd) if Path::new(candidate).is_relative() => cwd.join(candidate),
                _ => PathBuf::from(candidate),
            };
            if path.is_file() {
                return Ok(ConfigFile::Path(path));
            }
        }
        Ok(ConfigFile::None)
    }

    /// Load, layer, deserialize and validate.
    pub fn load(opts: &LoadOptions) -> Result<(Config, ConfigFile), ConfigError> {
        let (config, layers) = Config::load_layers(opts)?;
        Ok((config, layers.file))
    }

    /// [`Config::load`], and which layer set each value (for `config show`).
    pub fn explain(opts: &LoadOptions) -> Result<Explained, ConfigError> {
        let (config, layers) = Config::load_layers(opts)?;
        let mut set = BTreeMap::new();
        if let ConfigFile::Path(path) = &layers.file {
            for (section, value) in &layers.file_tree {
                let source = || ValueSource::File(path.clone());
                match &value.kind {
                    ValueKind::Table(table) => {
                        for key in table.keys() {
                            set.insert(format!("{section}.{key}"), source());
                        }
                    }
                    ValueKind::Array(entries) => {
                        for (i, entry) in entries.iter().enumerate() {
                            if let ValueKind::Table(table) = &entry.kind {
                                for key in table.keys() {
                                    set.insert(format!("{section}[{i}].{key}"), source());
                                }
                            }
                        }
                    }
                    _ => {
                        set.insert(section.clone(), source());
                    }
                }
            }
        }
        for var in &layers.env {
            set.insert(var.key.join("."), ValueSource::Env(var.name.clone()));
        }
        Ok(Explained {
            config,
            file: layers.file,
            set,
        })
    }

    fn load_layers(opts: &LoadOptions) -> Result<(Config, Layers), ConfigError> {
        let file = Config::locate(opts)?;
        let in_file = |reason: String| match &file {
            ConfigFile::Path(path) => ConfigError::Invalid {
                path: path.clone(),
                reason,
            },
            ConfigFile::None => ConfigError::Value { reason },
        };
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        let mut file_tree = config::Map::new();
        if let ConfigFile::Path(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                reason: format!("cannot read it: {e}"),
            })?;
            let source = config::File::from_str(&text, config::FileFormat::Toml);
            file_tree = config::Source::collect(&source).map_err(|e| in_file(describe(&e)))?;
            builder = builder.add_source(source);
        }
        let env: Vec<EnvVar> = opts
            .env
            .iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(&format!("{ENV_PREFIX}__"))?;
                Some(EnvVar {
                    name: name.clone(),
                    key: rest.split("__").map(str::to_lowercase).collect(),
                    value: value.clone(),
                })
            })
            .collect();

        let problems = unknown_in_file(&file_tree);
        if let Some(reason) = summarize(problems) {
            return Err(in_file(reason));
        }
        if let Some(reason) = summarize(unknown_in_env(&env)) {
            return Err(ConfigError::Value { reason });
        }

        let env_map: config::Map<String, String> = env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        // An error about a value the environment set is not the file's fault.
        let blame = |reason: String| match env.iter().find(|v| {
            let key = v.key.join(".");
            reason.contains(&format!("`{key}`")) || reason.starts_with(&format!("{key}:"))
        }) {
            Some(var) => ConfigError::Value {
                reason: format!("{reason} (set by {})", var.name),
            },
            None => in_file(reason),
        };
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| blame(describe(&e)))?;
        config.validate().map_err(blame)?;
        Ok((
            config,
            Layers {
                file,
                file_tree,
                env,
            },
        ))
    }

    /// Checks that types alone cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let u = &self.upload;
        if u.workers == 0 || u.workers > 256 {
            return Err(format!(
                "upload.workers: must be between 1 and 256, not {}",
                u.workers
            ));
        }
        if u.max_attempts == 0 {
            return Err("upload.max_attempts: must be at least 1".into());
        }
        if u.initial_backoff.is_zero() || u.initial_backoff > u.max_backoff {
            return Err(
                "upload.initial_backoff: must be above zero and not above upload.max_backoff"
                    .into(),
            );
        }
        if self.api.poll_interval.is_zero() {
            return Err("api.poll_interval: must be above zero".into());
        }
        if self.api.request_timeout.is_zero() || self.api.connect_timeout.is_zero() {
            return Err("api.request_timeout and api.connect_timeout: must be above zero".into());
        }
        let base = &self.api.base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "api.base_url: must start with http:// or https://, not {base:?}"
            ));
        }
        let listen = &self.telemetry.metrics_listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "telemetry.metrics_listen: {listen:?} is not host:port (e.g. \"127.0.0.1:9464\")"
            ));
        }
        if self.ledger.path.as_os_str().is_empty() {
            return Err("ledger.path: must not be empty".into());
        }
        if let Some(url) = &self.ledger.url {
            PgUrl::parse(url).map_err(|e| format!("ledger.url: {e}"))?;
        }
        if self.ledger.lease < Duration::from_secs(1) {
            return Err("ledger.lease: must be at least 1s".into());
        }
        for (i, w) in self.watch.iter().enumerate() {
            if w.path.as_os_str().is_empty() {
                return Err(format!("watch[{i}].path: must not be empty"));
            }
            for glob in w.include.iter().chain(&w.exclude) {
                globset::Glob::new(glob)
                    .map_err(|e| format!("watch[{i}]: invalid glob {glob:?}: {e}"))?;
            }
        }
        Ok(())
    }

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

/// The config crate's messages name the key but not always plainly; keep
/// them, and say what a typo most likely was.
fn describe(e: &config::ConfigError) -> String {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    without_quoted_source(&text)
}

/// A TOML parse error quotes the offending line of the file, and that line
/// may hold a secret pasted where it does not belong (an API key in the
/// config): keep the position and the reason, drop the quoted line.
fn without_quoted_source(text: &str) -> String {
    if !text.contains("TOML parse error") {
        return text.to_string();
    }
    let quoted = |line: &str| {
        let (before, _) = match line.split_once('|') {
            Some(split) => split,
            None => return false,
        };
        before.trim().chars().all(|c| c.is_ascii_digit())
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !quoted(l))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The layers of one load, kept to explain where values came from.
struct Layers {
    file: ConfigFile,
    /// The file as written (empty without a file).
    file_tree: config::Map<String, config::Value>,
    /// The `TL_INGEST__…` variables.
    env: Vec<EnvVar>,
}

/// One `TL_INGEST__SECTION__KEY` variable.
struct EnvVar {
    name: String,
    /// `["section", "key"]`, lowercased as the config crate does.
    key: Vec<String>,
    value: String,
}

/// Every problem, the first on the line of the message, each other one on
/// a line of its own.
fn summarize(problems: Vec<String>) -> Option<String> {
    let mut iter = problems.into_iter();
    let first = iter.next()?;
    Some(iter.fold(first, |all, p| format!("{all}\n  also: {p}")))
}

/// The top-level keys (sections) of the configuration.
pub fn sections() -> &'static [&'static str] {
    probe::fields::<Config>()
}

/// The valid keys of a section (`watch`: of each `[[watch]]` entry), in
/// the order they are declared; `None` for a name that is no section.
pub fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "api" => probe::fields::<ApiConfig>(),
        "ledger" => probe::fields::<LedgerConfig>(),
        "watch" => probe::fields::<WatchConfig>(),
        "watcher" => probe::fields::<WatcherConfig>(),
        "upload" => probe::fields::<UploadConfig>(),
        "telemetry" => probe::fields::<TelemetryConfig>(),
        _ => return None,
    })
}

/// How a section is written in TOML.
fn section_header(section: &str) -> String {
    if section == "watch" {
        "[[watch]]".into()
    } else {
        format!("[{section}]")
    }
}

/// Keys of the file that no struct has, each with the most likely meant key.
fn unknown_in_file(tree: &config::Map<String, config::Value>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut top: Vec<&String> = tree.keys().collect();
    top.sort_by_key(|k| (sections().iter().position(|s| s == k), k.as_str()));
    for section in top {
        let value = &tree[section];
        let Some(valid) = section_keys(section) else {
            let is_table = matches!(value.kind, ValueKind::Table(_) | ValueKind::Array(_));
            problems.push(if is_table {
                let mut msg = format!("unknown section [{section}]");
                if let Some(near) = nearest(section, sections()) {
                    msg.push_str(&format!("; did you mean {}?", section_header(near)));
                } else {
                    msg.push_str(&format!("; the sections are {}", list(sections())));
                }
                msg
            } else {
                unknown_key(section, None, "at the top level", sections(), |k| {
                    format!("[{k}]")
                })
            });
            continue;
        };
        let header = section_header(section);
        let mut check = |table: &config::Map<String, config::Value>, place: String| {
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            for key in keys {
                if !valid.contains(&key.as_str()) {
                    problems.push(unknown_key(key, Some(section), &place, valid, |k| {
                        format!("`{k}`")
                    }));
                }
            }
        };
        match &value.kind {
            ValueKind::Table(table) if section != "watch" => check(table, format!("in {header}")),
            ValueKind::Array(entries) if section == "watch" => {
                for (i, entry) in entries.iter().enumerate() {
                    if let ValueKind::Table(table) = &entry.kind {
                        check(table, format!("in {header} #{} (watch[{i}])", i + 1));
                    }
                }
            }
            // The wrong shape: the deserializer says so, with the key.
            _ => {}
        }
    }
    problems
}

/// `TL_INGEST__…` variables that name no key.
fn unknown_in_env(env: &[EnvVar]) -> Vec<String> {
    let as_var = |section: &str, key: &str| {
        format!(
            "{ENV_PREFIX}__{}__{}",
            section.to_uppercase(),
            key.to_uppercase()
        )
    };
    let mut problems = Vec::new();
    for var in env {
        let Some(section) = var.key.first() else {
            continue;
        };
        let Some(valid) = section_keys(section) else {
            let mut msg = format!("{}: unknown section [{section}]", var.name);
            if let Some(near) = nearest(section, sections()) {
                msg.push_str(&format!(
                    "; did you mean {ENV_PREFIX}__{}__…?",
                    near.to_uppercase()
                ));
            }
            problems.push(msg);
            continue;
        };
        // Watch entries cannot be set from the environment; deeper or
        // shallower names are the deserializer's to explain.
        let (true, Some(key)) = (section != "watch", var.key.get(1)) else {
            continue;
        };
        if var.key.len() == 2 && !valid.contains(&key.as_str()) {
            let mut msg = format!("{}: unknown key `{key}` in [{section}]", var.name);
            match nearest(key, valid) {
                Some(near) => msg.push_str(&format!("; did you mean {}?", as_var(section, near))),
                None => msg.push_str(&format!("; the keys of [{section}] are {}", list(valid))),
            }
            problems.push(msg);
        }
    }
    problems
}

/// "unknown key `wokers` in [upload]; did you mean `workers`?", or where
/// the key belongs, or the valid keys.
fn unknown_key(
    key: &str,
    section: Option<&str>,
    place: &str,
    valid: &[&str],
    show: impl Fn(&str) -> String,
) -> String {
    let mut msg = format!("unknown key `{key}` {place}");
    if let Some(near) = nearest(key, valid) {
        msg.push_str(&format!("; did you mean {}?", show(near)));
        return msg;
    }
    // A valid key in the wrong place: before any [section], or after a
    // [[watch]] table (whose keys run on until the next header).
    let home = sections()
        .iter()
        .filter(|s| Some(**s) != section)
        .find(|s| section_keys(s).is_some_and(|keys| keys.contains(&key)));
    match home {
        Some(home) => msg.push_str(&format!(
            "; `{key}` belongs in {} (keys after a header belong to that table)",
            section_header(home)
        )),
        None => msg.push_str(&format!("; the valid keys here are {}", list(valid))),
    }
    msg
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The valid key closest to `key` by edit distance, if it is close enough
/// to be a typo of it (compared without case).
pub fn nearest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    let key = key.to_lowercase();
    valid
        .iter()
        .map(|v| (edit_distance(&key, v), *v))
        .filter(|(d, v)| {
            let len = v.chars().count();
            *d < len && *d <= (len / 3).max(1)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbours each cost one.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The field names a derived `Deserialize` declares, read by asking it to
/// deserialize from a deserializer that only records them: the key lists
/// can never drift from the structs.
mod probe {
    use serde::de::{Deserialize, Deserializer, Visitor};

    pub fn fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        let mut out: &'static [&'static str] = &[];
        let _ = T::deserialize(Probe(&mut out));
        out
    }

    struct Probe<'a>(&'a mut &'static [&'static str]);

    #[derive(Debug)]
    struct Stop;

    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }

    impl std::error::Error for Stop {}

    impl serde::de::Error for Stop {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
}

/// Which layer set a value of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// Built in (`config/default.toml`, or a per-key default of a watch entry).
    Default,
    File(PathBuf),
    /// The environment variable that set it.
    Env(String),
}

impl std::fmt::Display for ValueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueSource::Default => f.write_str("default"),
            ValueSource::File(p) => write!(f, "file {}", p.display()),
            ValueSource::Env(name) => write!(f, "env {name}"),
        }
    }
}

/// The effective configuration and where each of its values came from.
#[derive(Debug, Clone)]
pub struct Explained {
    pub config: Config,
    pub file: ConfigFile,
    /// Keys the file or the environment set (`upload.workers`,
    /// `watch[0].path`); every other key has its default.
    set: BTreeMap<String, ValueSource>,
}

impl Explained {
    /// Where the value of `key` (`upload.workers`, `watch[0].path`) came from.
    pub fn source(&self, key: &str) -> ValueSource {
        self.set.get(key).cloned().unwrap_or(ValueSource::Default)
    }

    /// The effective configuration as TOML that loads back to the same
    /// configuration, each value followed by a comment naming its source.
    /// Credentials in `api.base_url` are redacted.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let mut tree = serde_json::to_value(&self.config).map_err(|e| ConfigError::Value {
            reason: format!("cannot render the configuration: {e}"),
        })?;
        // Sizes exactly as they can be written back ("200MB", not "190.7 MiB").
        let u = &self.config.upload;
        for (key, size) in [
            ("multipart_threshold", u.multipart_threshold),
            ("max_direct_size", u.max_direct_size),
            ("max_image_size", u.max_image_size),
            ("max_multipart_size", u.max_multipart_size),
        ] {
            tree["upload"][key] = serde_json::Value::String(exact_size(size.as_u64()));
        }
        tree["api"]["base_url"] = serde_json::Value::String(redact_url(&self.config.api.base_url));

        let mut out = String::new();
        for section in sections() {
            let Some(keys) = section_keys(section) else {
                continue;
            };
            match tree.get(*section) {
                Some(serde_json::Value::Array(entries)) => {
                    if entries.is_empty() {
                        out.push_str(&format!(
                            "\n# {}: none configured\n",
                            section_header(section)
                        ));
                    }
                    for (i, entry) in entries.iter().enumerate() {
                        out.push_str(&format!("\n{}\n", section_header(section)));
                        self.table(&mut out, entry, keys, &format!("{section}[{i}]"));
                    }
                }
                Some(table) => {
                    out.push_str(&format!("\n{}\n", section_header(section)));
                    self.table(&mut out, table, keys, section);
                }
                None => {}
            }
        }
        Ok(out.trim_start().to_string())
    }

    fn table(&self, out: &mut String, table: &serde_json::Value, keys: &[&str], prefix: &str) {
        let rows: Vec<(String, String)> = keys
            .iter()
            .map(|key| {
                let source = self.source(&format!("{prefix}.{key}"));
                match table.get(*key) {
                    Some(v) => (format!("{key} = {}", toml_value(v)), source.to_string()),
                    None => (format!("# {key} is not set"), source.to_string()),
                }
            })
            .collect();
        let width = rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (line, source) in rows {
            let pad = width - line.chars().count();
            out.push_str(&format!("{line}{}  # {source}\n", " ".repeat(pad)));
        }
    }
}

/// A TOML value (inline) for a JSON value of the serialized configuration.
fn toml_value(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "\"\"".into(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.is_nan() => "nan".into(),
            (_, _, Some(f)) if f.is_infinite() => if f > 0.0 { "inf" } else { "-inf" }.into(),
            // `{:?}` keeps the point: 3.0 stays a float.
            (_, _, Some(f)) => format!("{f:?}"),
            _ => n.to_string(),
        },
        J::String(s) => toml_string(s),
        J::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        J::Object(map) if map.is_empty() => "{}".into(),
        J::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A JSON string literal is a TOML basic string, but for DEL, which JSON
/// leaves as it is and TOML wants escaped.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('\u{7f}', "\\u007F")
}

fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_string() } else { toml_string(k) }
}

/// A byte count in the largest unit that divides it exactly.
pub fn exact_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1_000, "KB"),
    ];
    if bytes == 0 {
        return "0".into();
    }
    UNITS
        .iter()
        .find(|(unit, _)| bytes.is_multiple_of(*unit))
        .map(|(unit, name)| format!("{}{name}", bytes / unit))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// `https://user:secret@host/…` → `https://user:<redacted>@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:<redacted>")
            } else {
                "<redacted>".to_string()
            };
            format!("{scheme}://{shown}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, file: Option<&str>, env: &[(&str, &str)]) -> LoadOptions {
        let explicit = file.map(|text| {
            let p = dir.join("test.toml");
            std::fs::write(&p, text).expect("write config");
            p
        });
        LoadOptions {
            explicit,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: Some(dir.to_path_buf()),
        }
    }

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        Config::load(&opts(dir.path(), file, env)).map(|(c, _)| c)
    }

    #[test]
    fn a_toml_syntax_error_gives_the_position_without_quoting_the_line() {
        let err = load(Some("[api]\nkey = \"tlk_pasted_secret\n"), &[]).expect_err("broken");
        let msg = err.to_string();
        assert!(!msg.contains("tlk_pasted_secret"), "{msg}");
        assert!(
            msg.contains("test.toml")
                && msg.contains("line 2")
                && msg.contains("invalid basic string"),
            "{msg}"
        );
    }

    #[test]
    fn defaults_alone_are_valid() {
        let c = load(None, &[]).expect("defaults load");
        assert_eq!(c.upload.workers, 4);
        assert_eq!(c.upload.max_direct_size, ByteSize(200_000_000));
        assert_eq!(c.upload.max_image_size, ByteSize(32_000_000));
        assert_eq!(c.upload.max_multipart_size, ByteSize(10_000_000_000));
        assert_eq!(c.api.poll_interval, Duration::from_secs(5));
        assert_eq!(c.api.request_timeout, Duration::from_secs(30 * 60));
        assert_eq!(c.upload.dedupe, Dedupe::Content);
        assert!(c.watch.is_empty());
    }

    #[test]
    fn the_example_config_documents_the_defaults() {
        let example = include_str!("../config/example.toml");
        let from_example = load(Some(example), &[]).expect("example loads");
        assert_eq!(from_example, load(None, &[]).expect("defaults"));
        // Every key of the defaults appears in the example, documented.
        for line in DEFAULTS_TOML.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    example.contains(&format!("\n{key} = ")),
                    "config/example.toml does not document {key}"
                );
            }
        }
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let toml =
            "[upload]\nworkers = 2\nmax_backoff = \"10m\"\n[api]\npoll_interval = \"250ms\"\n";
        let c = load(Some(toml), &[]).expect("file loads");
        assert_eq!(c.upload.workers, 2);
        assert_eq!(c.upload.max_backoff, Duration::from_secs(600));
        assert_eq!(c.api.poll_interval, Duration::from_millis(250));
        assert_eq!(c.upload.max_attempts, 10, "untouched keys keep defaults");

        let c = load(
            Some(toml),
            &[
                ("TL_INGEST__UPLOAD__WORKERS", "8"),
                ("TL_INGEST__API__ENABLE_HLS", "false"),
                ("TL_INGEST__UPLOAD__MAX_DIRECT_SIZE", "1MB"),
            ],
        )
        .expect("env loads");
        assert_eq!(c.upload.workers, 8);
        assert!(!c.api.enable_hls);
        assert_eq!(c.upload.max_direct_size, ByteSize(1_000_000));
    }

    #[test]
    fn watch_entries_get_per_key_defaults() {
        let toml = "[[watch]]\npath = \"/srv/in\"\nuser_metadata = { project = \"x\", take = 3 }\nafter_upload = { move_to = \"done\" }\n";
        let c = load(Some(toml), &[]).expect("loads");
        let w = &c.watch[0];
        assert!(w.recursive);
        assert_eq!(w.exclude, default_exclude());
        assert_eq!(
            w.user_metadata.get("take"),
            Some(&MetadataValue::Int(3)),
            "numbers stay numbers"
        );
        assert_eq!(
            w.after_upload,
            FileAction::MoveTo {
                move_to: "done".into()
            }
        );
        assert_eq!(w.on_failure, FileAction::Named(FileActionName::Keep));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = load(Some("[upload]\nwokers = 3\n"), &[]).expect_err("typo must fail");
        let msg = err.to_string();
        assert!(msg.contains("wokers"), "{msg}");
        assert!(msg.contains("test.toml"), "names the file: {msg}");

        let err = load(Some("[uplod]\nworkers = 3\n"), &[]).expect_err("section typo");
        assert!(err.to_string().contains("uplod"), "{err}");
    }

    #[test]
    fn wrong_types_and_bad_values_are_errors() {
        let err = load(Some("[upload]\nworkers = \"many\"\n"), &[]).expect_err("type");
        assert!(err.to_string().contains("workers"), "{err}");
        let err = load(Some("[upload]\ninitial_backoff = \"soon\"\n"), &[]).expect_err("dur");
        assert!(err.to_string().contains("initial_backoff"), "{err}");
        let err = load(Some("[upload]\nworkers = 0\n"), &[]).expect_err("zero");
        assert!(err.to_string().contains("upload.workers"), "{err}");
        let err = load(Some("[upload\n"), &[]).expect_err("toml syntax");
        assert!(err.to_string().contains("test.toml"), "{err}");
        let err = load(Some("[upload]\ndedupe = \"sometimes\"\n"), &[]).expect_err("enum");
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn config_file_search_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = opts(dir.path(), None, &[]);
        assert_eq!(Config::locate(&o).expect("none"), ConfigFile::None);

        std::fs::write(dir.path().join("tl-ingest.toml"), "").expect("write");
        assert_eq!(
            Config::locate(&o).expect("cwd file"),
            ConfigFile::Path(dir.path().join("tl-ingest.toml"))
        );

        let named = dir.path().join("named.toml");
        std::fs::write(&named, "").expect("write");
        o.env
            .insert(CONFIG_PATH_ENV.into(), named.display().to_string());
        assert_eq!(Config::locate(&o).expect("env"), ConfigFile::Path(named));

        o.explicit = Some(dir.path().join("absent.toml"));
        assert!(matches!(
            Config::locate(&o),
            Err(ConfigError::Missing { .. })
        ));
    }

    #[test]
    fn ledger_path_follows_state_directory() {
        let c = load(None, &[]).expect("defaults");
        let mut env = BTreeMap::new();
        assert_eq!(c.ledger_path(&env), PathBuf::from("tl-ingest.db"));
        env.insert("STATE_DIRECTORY".into(), "/var/lib/tl-ingest".into());
        assert_eq!(
            c.ledger_path(&env),
            PathBuf::from("/var/lib/tl-ingest/tl-ingest.db")
        );
    }

    #[test]
    fn every_section_has_its_keys_from_the_structs() {
        assert_eq!(
            sections(),
            ["api", "ledger", "watch", "watcher", "upload", "telemetry"]
        );
        for s in sections() {
            assert!(section_keys(s).is_some(), "no key list for [{s}]");
        }
        let upload = section_keys("upload").expect("upload");
        assert_eq!(upload.first(), Some(&"workers"));
        assert!(section_keys("api").expect("api").contains(&"key_file"));
        assert!(
            section_keys("watch")
                .expect("watch")
                .contains(&"after_upload")
        );
    }

    #[test]
    fn edit_distance_and_nearest() {
        assert_eq!(edit_distance("wokers", "workers"), 1);
        assert_eq!(edit_distance("wrokers", "workers"), 1, "a swap costs one");
        assert_eq!(edit_distance("", "abc"), 3);
        let keys = section_keys("upload").expect("upload");
        assert_eq!(nearest("wokers", keys), Some("workers"));
        assert_eq!(nearest("Workers", keys), Some("workers"));
        assert_eq!(nearest("max_atempts", keys), Some("max_attempts"));
        assert_eq!(nearest("retries", keys), None);
        assert_eq!(nearest("uplod", sections()), Some("upload"));
    }

    #[test]
    fn unknown_keys_suggest_the_nearest_valid_one() {
        let msg = load(Some("[upload]\nwokers = 3\n"), &[])
            .expect_err("typo")
            .to_string();
        assert!(
            msg.contains("unknown key `wokers` in [upload]; did you mean `workers`?"),
            "{msg}"
        );
        let msg = load(Some("[uplod]\nworkers = 3\n"), &[])
            .expect_err("section")
            .to_string();
        assert!(
            msg.contains("unknown section [uplod]; did you mean [upload]?"),
            "{msg}"
        );
        let msg = load(Some("[[watch]]\npath = \"/x\"\nrecursve = false\n"), &[])
            .expect_err("watch key")
            .to_string();
        assert!(
            msg.contains("watch[0]") && msg.contains("`recursive`"),
            "{msg}"
        );
        let msg = load(Some("[[watch]]\npath = \"/x\"\nworkers = 2\n"), &[])
            .expect_err("misplaced")
            .to_string();
        assert!(msg.contains("belongs in [upload]"), "{msg}");
        let msg = load(Some("[upload]\nfrobnicate = 1\nwokers = 2\n"), &[])
            .expect_err("two")
            .to_string();
        assert!(
            msg.contains("`max_attempts`") && msg.contains("\n  also: "),
            "{msg}"
        );
    }

    #[test]
    fn env_problems_name_the_variable_not_the_file() {
        let err = load(Some(""), &[("TL_INGEST__UPLOAD__WOKERS", "3")]).expect_err("env typo");
        assert!(matches!(err, ConfigError::Value { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("TL_INGEST__UPLOAD__WOKERS") && msg.contains("TL_INGEST__UPLOAD__WORKERS"),
            "{msg}"
        );
        let err = load(Some(""), &[("TL_INGEST__UPLOAD__WORKERS", "0")]).expect_err("env value");
        assert!(
            err.to_string()
                .contains("upload.workers: must be between 1 and 256, not 0 (set by TL_INGEST__UPLOAD__WORKERS)"),
            "{err}"
        );
        let err = load(Some(""), &[("TL_INGEST__UPLOAD__WORKERS", "many")]).expect_err("type");
        assert!(
            err.to_string()
                .contains("set by TL_INGEST__UPLOAD__WORKERS"),
            "{err}"
        );
    }

    fn explain(file: &str, env: &[(&str, &str)]) -> (Explained, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(dir.path(), Some(file), env);
        let path = o.explicit.clone().expect("path");
        (Config::explain(&o).expect("explain"), path, dir)
    }

    #[test]
    fn explain_names_the_layer_of_each_value() {
        let (e, path, _dir) = explain(
            "[upload]\nworkers = 4\nmax_attempts = 3\n[[watch]]\npath = \"/srv/in\"\n",
            &[("TL_INGEST__UPLOAD__MAX_ATTEMPTS", "7")],
        );
        assert_eq!(e.config.upload.max_attempts, 7);
        assert_eq!(e.source("upload.workers"), ValueSource::File(path.clone()));
        assert_eq!(
            e.source("upload.max_attempts"),
            ValueSource::Env("TL_INGEST__UPLOAD__MAX_ATTEMPTS".into())
        );
        assert_eq!(e.source("upload.dedupe"), ValueSource::Default);
        assert_eq!(e.source("watch[0].path"), ValueSource::File(path));
        assert_eq!(e.source("watch[0].recursive"), ValueSource::Default);
    }

    #[test]
    fn shown_toml_loads_back_to_the_same_config() {
        let (e, path, dir) = explain(
            "[api]\nbase_url = \"https://u:hunter2@example.com/v1.3\"\n\
             [upload]\nmax_direct_size = \"123MiB\"\n\
             [[watch]]\npath = \"/srv/in\"\nuser_metadata = { project = \"a \\\"b\\\"\\u007F\", take = 3, ratio = 2.0, ok = true, \"odd key\" = \"x\" }\n\
             after_upload = { move_to = \"done\" }\nindex_id = \"idx\"\n\
             [[watch]]\npath = \"/srv/other\"\nafter_upload = \"delete\"\nrecursive = false\n",
            &[("TL_INGEST__UPLOAD__WORKERS", "8")],
        );
        let text = e.to_toml().expect("render");
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start}: {text}"))
        };
        assert!(line("workers = 8 ").ends_with("  # env TL_INGEST__UPLOAD__WORKERS"));
        assert!(line("max_attempts = 10 ").ends_with("  # default"));
        assert!(
            text.contains(&format!("# file {}", path.display())),
            "{text}"
        );
        assert!(text.contains("max_attempts = 10"), "{text}");
        assert!(text.contains("max_direct_size = \"123MiB\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("# key_file is not set"), "{text}");

        let shown = dir.path().join("shown.toml");
        std::fs::write(&shown, &text).expect("write");
        let again = Config::load(&LoadOptions {
            explicit: Some(shown),
            env: BTreeMap::new(),
            cwd: None,
        })
        .expect("shown config loads")
        .0;
        let mut expected = e.config.clone();
        expected.api.base_url = redact_url(&expected.api.base_url);
        assert_eq!(again, expected, "{text}");
    }

    #[test]
    fn sizes_and_urls() {
        assert_eq!(exact_size(200_000_000), "200MB");
        assert_eq!(exact_size(32 << 20), "32MiB");
        assert_eq!(exact_size(10_000_000_000), "10GB");
        assert_eq!(exact_size(1234), "1234B");
        assert_eq!(exact_size(0), "0");
        assert_eq!(
            redact_url("https://a:b@h/v1.3"),
            "https://a:<redacted>@h/v1.3"
        );
        assert_eq!(redact_url("https://tok@h"), "https://<redacted>@h");
        assert_eq!(redact_url("http://h:80/x@y"), "http://h:80/x@y");
    }
}
