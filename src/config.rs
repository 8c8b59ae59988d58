//! Typed configuration and how it is layered.
//!
//! Lowest first: the embedded `config/default.toml`, then one TOML file
//! (`--config`, else `$TL_INGEST_CONFIG`, else `./tl-ingest.toml`, else
//! `/etc/tl-ingest/config.toml`, each only if it exists), then environment
//! overrides `TL_INGEST__SECTION__KEY`. Every struct denies unknown keys so a
//! typo is an error that names the key, not a silently ignored setting.
//! The API key is not part of this tree: see [`crate::secret`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// SQLite file; relative paths are under `$STATE_DIRECTORY` when systemd sets it.
    pub path: PathBuf,
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
        let file = Config::locate(opts)?;
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let ConfigFile::Path(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                path: path.clone(),
                reason: format!("cannot read it: {e}"),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = opts
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let wrap = |e: config::ConfigError| match &file {
            ConfigFile::Path(path) => ConfigError::Invalid {
                path: path.clone(),
                reason: describe(&e),
            },
            ConfigFile::None => ConfigError::Value {
                reason: describe(&e),
            },
        };
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(wrap)?;
        config.validate().map_err(|reason| match &file {
            ConfigFile::Path(path) => ConfigError::Invalid {
                path: path.clone(),
                reason,
            },
            ConfigFile::None => ConfigError::Value { reason },
        })?;
        Ok((config, file))
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
    text
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
}
