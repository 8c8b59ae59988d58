//! `tl-ingest config check` and `tl-ingest config show`.
//!
//! `check` loads and validates the configuration as every command does,
//! then checks what a load cannot: that the watched folders exist, that the
//! ledger's folder exists (unless `ledger.url` puts the ledger on
//! PostgreSQL), that `api.key_file` can be read. `show` prints the
//! effective configuration as TOML with each value's source; the API key is
//! never part of it, only where it would be read from, and `ledger.url` is
//! shown without its password.

use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, CliResult, Globals, out};
use crate::config::{Config, ConfigFile, LoadOptions};
use crate::secret::{API_KEY_ENV, CREDENTIAL_NAME, KeyError, load_api_key};

#[derive(Debug, Args)]
pub struct Cmd {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Load and validate the configuration; exit 2 naming the file, key and
    /// reason of the first problem.
    Check,
    /// Print the effective configuration (secrets redacted) with each
    /// value's source: default, file or env.
    Show,
}

pub async fn run(globals: &Globals, args: Cmd) -> CliResult {
    let opts = LoadOptions::from_process(globals.config.clone());
    crate::telemetry::init(
        crate::config::LogFormat::Text,
        tracing::Level::WARN,
        globals.verbose,
        globals.quiet,
    );
    match args.action {
        Action::Check => check(&opts),
        Action::Show => show(&opts),
    }
}

fn describe_file(file: &ConfigFile) -> String {
    match file {
        ConfigFile::Path(p) => format!("file {}", p.display()),
        ConfigFile::None => "no file: built-in defaults and environment".into(),
    }
}

fn check(opts: &LoadOptions) -> CliResult {
    let (config, file) = Config::load(opts).map_err(|e| CliError::usage(e.to_string()))?;
    let problems = deep_check(&config, opts);
    if problems.is_empty() {
        out(&format!("configuration OK ({})", describe_file(&file)));
        return Ok(ExitCode::SUCCESS);
    }
    let place = match &file {
        ConfigFile::Path(p) => format!("config file {}", p.display()),
        ConfigFile::None => "configuration".into(),
    };
    let message = problems
        .iter()
        .map(|p| format!("{place}: {p}"))
        .collect::<Vec<_>>()
        .join("\ntl-ingest: ");
    Err(CliError::usage(message))
}

/// What a load does not check: the world the configuration points at.
fn deep_check(config: &Config, opts: &LoadOptions) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, w) in config.watch.iter().enumerate() {
        let path = std::path::absolute(&w.path).unwrap_or_else(|_| w.path.clone());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => problems.push(format!(
                "watch[{i}].path: {} is not a folder",
                path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => problems.push(format!(
                "watch[{i}].path: {} does not exist (create it, or fix the path)",
                path.display()
            )),
            Err(e) => problems.push(format!("watch[{i}].path: {}: {e}", path.display())),
        }
    }
    if let Some(key_file) = &config.api.key_file {
        // Only the file, whatever the environment holds: is it usable?
        match load_api_key(&Default::default(), Some(key_file)) {
            Ok(_) => {}
            Err(e) => problems.push(format!("api.key_file: {e}")),
        }
    }
    // With `ledger.url` the ledger is a PostgreSQL database and
    // `ledger.path` is not used: its folder need not exist on this host.
    // (Whether the server answers is `doctor`'s question.)
    let ledger = config.ledger_path(&opts.env);
    if config.ledger.url.is_none()
        && let Some(parent) = ledger.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        problems.push(format!(
            "ledger.path: the folder {} does not exist",
            parent.display()
        ));
    }
    problems
}

fn show(opts: &LoadOptions) -> CliResult {
    let explained = Config::explain(opts).map_err(|e| CliError::usage(e.to_string()))?;
    let body = explained
        .to_toml()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let key = key_source(&opts.env, explained.config.api.key_file.as_deref());
    let mut text = String::new();
    text.push_str("# The effective configuration of tl-ingest, lowest layer first:\n");
    text.push_str("# built-in defaults, the file, then TL_INGEST__… variables.\n");
    text.push_str(&format!(
        "# Read from: {}\n",
        describe_file(&explained.file)
    ));
    text.push_str(&format!("# API key: {key}\n\n"));
    text.push_str(&body);
    let text = scrub(&text, &opts.env);
    for line in text.lines() {
        if !out(line) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the key would come from, never the key.
fn key_source(env: &std::collections::BTreeMap<String, String>, key_file: Option<&Path>) -> String {
    match load_api_key(env, key_file) {
        Ok((_, source)) => format!("from {source} (the key itself is never shown)"),
        Err(KeyError::Missing) => format!(
            "none found (set ${API_KEY_ENV}, or api.key_file, or the systemd credential {CREDENTIAL_NAME})"
        ),
        Err(e) => format!("{e}"),
    }
}

/// Belt and braces: whatever went wrong above, the key from the
/// environment never reaches the output.
fn scrub(text: &str, env: &std::collections::BTreeMap<String, String>) -> String {
    match env.get(API_KEY_ENV).map(|k| k.trim()) {
        Some(key) if key.len() >= 4 => text.replace(key, "<redacted>"),
        _ => text.to_string(),
    }
}
