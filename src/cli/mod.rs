//! The command line: one `Command` enum, one file per command.
//!
//! Commands return `Result<ExitCode, CliError>`; [`main`] prints the error
//! and maps it to the exit codes of README.md ("Exit codes"): 0 success,
//! 1 some work failed, 2 usage or configuration error, 3 the ledger is held
//! by another daemon.

mod add_url;
mod completions;
mod config_cmd;
mod doctor;
mod emulator;
mod forget;
mod history;
mod prune;
mod reconcile;
mod retry;
mod run;
mod show;
mod status;
mod text;
mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::api::{ApiClient, ClientOptions};
use crate::config::{Config, ConfigFile, LoadOptions};
use crate::emulator::{Emulator, EmulatorConfig};
use crate::ledger::LockError;
use crate::ledger::{Ledger, Location};
use crate::secret::{ApiKey, load_api_key};

#[derive(Debug, Parser)]
#[command(
    name = "tl-ingest",
    version,
    about = "Upload media from folders to TwelveLabs, once, with a ledger of everything"
)]
pub struct Cli {
    /// Config file (else $TL_INGEST_CONFIG, ./tl-ingest.toml, /etc/tl-ingest/config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (repeat for less).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Use the built-in API emulator (no key needed) and its own ledger,
    /// beside the configured one (`tl-ingest-emulator.db`), so that demo
    /// uploads never make real files look uploaded. With `status` and
    /// `history`: read that ledger.
    #[arg(long, global = true)]
    pub emulator: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: watch the configured folders and upload what lands there.
    Run(run::RunArgs),
    /// Queue assets by public URL (method=url).
    AddUrl(add_url::AddUrlArgs),
    /// Upload files and folders (recursively) once, then exit.
    Upload(upload::UploadArgs),
    /// Upload history from the ledger, newest first.
    History(history::HistoryArgs),
    /// Counts per state, what is in flight, the last errors.
    Status(status::StatusArgs),
    /// One record in full: every attempt, error and timing.
    Show(show::Cmd),
    /// Put failed records back in the queue.
    Retry(retry::Cmd),
    /// Remove records so the files will be uploaded again.
    Forget(forget::Cmd),
    /// Check ready records against the platform; list orphans.
    Reconcile(reconcile::Cmd),
    /// Drop old finished records that dedupe no longer needs.
    Prune(prune::Cmd),
    /// Check or print the configuration.
    Config(config_cmd::Cmd),
    /// Check the key, the API, the folders, the ledger; one line per check.
    Doctor(doctor::Cmd),
    /// Shell completions (bash, zsh, fish) or the man page.
    Completions(completions::Cmd),
    /// Serve the built-in TwelveLabs-compatible API emulator.
    Emulator(emulator::EmulatorArgs),
}

/// A command that did not succeed: what to print, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// Bad usage or configuration: exit 2.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }

    /// Work failed: exit 1.
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

pub type CliResult = Result<ExitCode, CliError>;

/// Run the parsed command line to an exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tl-ingest")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tl-ingest: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tl-ingest: {}", redact_env_key(&e.message));
            ExitCode::from(e.code)
        }
    }
}

/// An error may repeat a configured value, and a value may be the API key
/// pasted into the wrong setting: the key from the environment is never
/// printed, whatever the message.
fn redact_env_key(message: &str) -> String {
    let key = std::env::var(crate::secret::API_KEY_ENV)
        .ok()
        .and_then(|k| ApiKey::new(&k));
    match key {
        Some(key) => key.redact(message),
        None => message.to_string(),
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    let globals = Globals {
        config: cli.config,
        verbose: cli.verbose,
        quiet: cli.quiet,
        emulator: cli.emulator,
    };
    match cli.command {
        Command::Run(args) => run::run(&globals, args).await,
        Command::AddUrl(args) => add_url::run(&globals, args).await,
        Command::Upload(args) => upload::run(&globals, args).await,
        Command::History(args) => history::run(&globals, args).await,
        Command::Status(args) => status::run(&globals, args).await,
        Command::Show(args) => show::run(&globals, args).await,
        Command::Retry(args) => retry::run(&globals, args).await,
        Command::Forget(args) => forget::run(&globals, args).await,
        Command::Reconcile(args) => reconcile::run(&globals, args).await,
        Command::Prune(args) => prune::run(&globals, args).await,
        Command::Config(args) => config_cmd::run(&globals, args).await,
        Command::Doctor(args) => doctor::run(&globals, args).await,
        Command::Completions(args) => completions::run(&globals, args).await,
        Command::Emulator(args) => emulator::run(&globals, args).await,
    }
}

/// Options every command shares.
#[derive(Debug, Clone)]
pub struct Globals {
    pub config: Option<PathBuf>,
    pub verbose: u8,
    pub quiet: u8,
    pub emulator: bool,
}

/// The loaded configuration and the environment it was read with.
#[derive(Debug)]
pub struct Context {
    pub config: Arc<Config>,
    pub file: ConfigFile,
    pub env: BTreeMap<String, String>,
    /// How it was loaded, to load it again on reload.
    pub load: LoadOptions,
    /// `--emulator`: the emulator's ledger instead of the configured one.
    pub emulator: bool,
}

impl Context {
    /// Load the configuration and start logging at `level` (moved by -v/-q).
    pub fn load(globals: &Globals, level: tracing::Level) -> Result<Context, CliError> {
        let opts = LoadOptions::from_process(globals.config.clone());
        let (config, file) = Config::load(&opts).map_err(|e| CliError::usage(e.to_string()))?;
        let load = opts.clone();
        crate::telemetry::init(
            config.telemetry.log_format,
            level,
            globals.verbose,
            globals.quiet,
        );
        if let ConfigFile::Path(p) = &file {
            tracing::debug!(path = %p.display(), "configuration loaded");
        }
        Ok(Context {
            config: Arc::new(config),
            file,
            env: opts.env,
            load,
            emulator: globals.emulator,
        })
    }

    /// The ledger to use: the configured one, or with `--emulator` the
    /// emulator's, beside it.
    pub fn ledger_path(&self) -> PathBuf {
        let configured = self.config.ledger_path(&self.env);
        if self.emulator {
            emulator_ledger(&configured)
        } else {
            configured
        }
    }

    /// Where the ledger is: the configured PostgreSQL URL or file, or with
    /// `--emulator` the emulator's file (never a shared ledger: demo
    /// uploads must not look like real ones to the fleet).
    pub fn ledger_location(&self) -> Location {
        if self.emulator {
            Location::Sqlite(self.ledger_path())
        } else {
            Location::from_settings(
                self.config.ledger_path(&self.env),
                self.config.ledger.url.as_deref(),
            )
        }
    }

    /// Open (or create) the ledger for work.
    pub async fn open_ledger(&self, location: &Location) -> Result<Ledger, CliError> {
        Ledger::open_at(location)
            .await
            .map_err(|e| CliError::usage(e.to_string()))
    }

    /// Open an existing ledger for reading.
    pub async fn read_ledger(&self) -> Result<Ledger, CliError> {
        Ledger::open_existing_at(&self.ledger_location())
            .await
            .map_err(|e| CliError::usage(e.to_string()))
    }

    /// The real API: the configured base URL and key.
    pub fn api_client(&self) -> Result<ApiClient, CliError> {
        let (key, source) = load_api_key(&self.env, self.config.api.key_file.as_deref())
            .map_err(|e| CliError::usage(e.to_string()))?;
        tracing::debug!(source = %source, "API key found");
        self.client_for(&self.config.api.base_url, &key)
    }

    pub fn client_for(&self, base_url: &str, key: &ApiKey) -> Result<ApiClient, CliError> {
        let opts = ClientOptions {
            base_url: base_url.to_string(),
            request_timeout: self.config.api.request_timeout,
            connect_timeout: self.config.api.connect_timeout,
        };
        ApiClient::new(&opts, key).map_err(|e| CliError::usage(e.to_string()))
    }
}

/// `tl-ingest.db` → `tl-ingest-emulator.db`, beside it: demo uploads to the
/// emulator must never make real files look uploaded.
pub(crate) fn emulator_ledger(path: &std::path::Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tl-ingest".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-emulator.{}", ext.to_string_lossy()),
        None => format!("{stem}-emulator"),
    };
    path.with_file_name(name)
}

/// An in-process emulator on a free loopback port, with a throwaway key.
pub(crate) async fn start_emulator() -> Result<(Emulator, ApiKey), CliError> {
    let key = format!("emulator-{:016x}", fastrand::u64(..));
    let config = EmulatorConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        api_key: key.clone(),
        ready_delay: std::time::Duration::from_secs(1),
        ..EmulatorConfig::default()
    };
    let emu = Emulator::start(config)
        .await
        .map_err(|e| CliError::failed(format!("cannot start the emulator: {e}")))?;
    eprintln!(
        "tl-ingest: using the built-in emulator at {} (nothing leaves this machine)",
        emu.base_url()
    );
    let key = ApiKey::new(&key).ok_or_else(|| CliError::failed("the emulator key is empty"))?;
    Ok((emu, key))
}

/// A held ledger is exit 3; anything else about the lock is exit 2.
pub(crate) fn lock_error(e: LockError) -> CliError {
    let code = match e {
        LockError::Held { .. } => 3,
        LockError::Io { .. } => 2,
    };
    CliError {
        code,
        message: e.to_string(),
    }
}

/// Writes to stdout that stop quietly when the reader goes away (`| head`).
pub(crate) fn out(line: &str) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").is_ok()
}
