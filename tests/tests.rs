//! One integration test binary: one compile, shared helpers.
//!
//! Every test runs the real pipeline (in-process) or the real binary
//! against the emulator on 127.0.0.1:0, in its own temp dir.

mod cli;
mod daemon;
mod fingerprint;
mod fleet;
mod fleet_ledger;
mod helpers;
mod large;
mod ledger;
mod monitoring;
mod ops_config;
mod ops_fleet;
mod ops_history;
mod ops_reconcile;
mod ops_records;
mod pipeline;
mod polling;
mod reliability;
mod service;
mod watch_folders;
