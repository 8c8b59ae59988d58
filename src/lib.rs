//! tl-ingest: folders in, TwelveLabs assets out, with a ledger of everything.
//!
//! The binary (`src/main.rs`) only parses arguments and maps errors to exit
//! codes; everything else is here so tests can drive it in-process.
//!
//! - [`config`]: typed, layered configuration.
//! - [`secret`]: the API key and where it comes from.
//! - [`pg_url`]: a PostgreSQL ledger's URL, its password never shown.
//! - [`host`]: this host's name in a fleet.
//! - [`ledger`]: the SQLite ledger and the file state machine.
//! - [`api`]: the TwelveLabs v1.3 client.
//! - [`pipeline`]: discover → hash → dedupe → upload → poll.
//! - [`emulator`]: a TwelveLabs-compatible server for offline use and tests.
//! - [`io_error`]: which file errors are worth another try.
//! - [`metrics`]: Prometheus `/metrics` and `/healthz`.
//! - [`fstype`]: whether a folder is on a network filesystem.
//! - [`watch`]: folder watchers and the settle gate.
//! - [`daemon`]: `tl-ingest run`, the service.
//! - [`cli`]: the commands.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod emulator;
pub mod fstype;
pub mod host;
pub mod io_error;
pub mod ledger;
pub mod metrics;
pub mod pg_url;
pub mod pipeline;
pub mod secret;
pub mod telemetry;
pub mod watch;
