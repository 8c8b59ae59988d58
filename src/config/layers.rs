//! Finding the configuration file and layering it: the embedded defaults,
//! then the file, then `TL_INGEST__SECTION__KEY` variables, with errors
//! that say which layer is at fault.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::keys::{summarize, unknown_in_env, unknown_in_file};
use super::{
    CONFIG_PATH_ENV, Config, ConfigError, DEFAULT_CONFIG_PATHS, DEFAULTS_TOML, ENV_PREFIX,
};

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

    pub(super) fn load_layers(opts: &LoadOptions) -> Result<(Config, Layers), ConfigError> {
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
pub(super) struct Layers {
    pub(super) file: ConfigFile,
    /// The file as written (empty without a file).
    pub(super) file_tree: config::Map<String, config::Value>,
    /// The `TL_INGEST__…` variables.
    pub(super) env: Vec<EnvVar>,
}

/// One `TL_INGEST__SECTION__KEY` variable.
pub(super) struct EnvVar {
    pub(super) name: String,
    /// `["section", "key"]`, lowercased as the config crate does.
    pub(super) key: Vec<String>,
    pub(super) value: String,
}
