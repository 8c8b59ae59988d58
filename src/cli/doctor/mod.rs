//! `tl-ingest doctor`: one line per check, and for each problem the fix.
//!
//! Checks, in order: the system's CA certificates load; the API key is
//! present; the base URL answers; the key
//! is accepted (one cheap authenticated `GET /assets`); each watched folder
//! exists and can be read (and written where files are deleted or moved);
//! its filesystem (network filesystems are polled); the inotify watch limit
//! against the number of folders to watch; the ledger's integrity (read
//! only: the file is never changed); the ledger's filesystem; free disk
//! space beside the ledger. Exit 1 if any check fails; warnings do not fail.
//!
//! On a PostgreSQL ledger (`ledger.url`) the ledger checks are instead: the
//! server answers and accepts the login (failures in words, the URL never
//! with its password); its version; the schema's version against this
//! build's (and each applied migration's checksum); whether TLS protects a
//! connection that leaves this host; this host's clock against the
//! database's; stale daemons in the fleet. These read only: the schema is
//! never migrated by `doctor`.
//!
//! Here: the order of the checks and the summary; each group of checks has
//! its file, and [`report`] prints them.

mod api_checks;
mod folders;
mod ledger_file;
mod postgres;
mod report;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::{CliResult, Context, Globals, out};
use crate::config::ConfigFile;
use crate::ledger::Location;
use crate::secret::{API_KEY_ENV, ApiKey};
use report::Report;

#[derive(Debug, Args)]
pub struct Cmd {}

pub async fn run(globals: &Globals, _args: Cmd) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let mut report = Report {
        tty: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        secrets: ctx
            .env
            .get(API_KEY_ENV)
            .and_then(|k| ApiKey::new(k))
            .into_iter()
            .collect(),
        ledger_url: match ctx.ledger_location() {
            Location::Postgres(url) => Some(url),
            Location::Sqlite(_) => None,
        },
        counts: [0; 4],
    };
    match &ctx.file {
        ConfigFile::Path(p) => report.ok("configuration", &format!("loaded {}", p.display())),
        ConfigFile::None => report.ok(
            "configuration",
            "no file: built-in defaults and environment",
        ),
    }

    match crate::api::check_tls_roots() {
        Ok(()) => report.ok("CA certificates", "the system's CA certificates load"),
        Err(e) => report.fail(
            "CA certificates",
            &e.to_string(),
            "install the system's CA bundle (apt install ca-certificates)",
        ),
    }
    api_checks::api_checks(&ctx, &mut report).await;
    let native_roots = folders::watch_checks(&ctx, &mut report);
    folders::inotify_check(&ctx, native_roots, &mut report).await;
    match ctx.ledger_location() {
        Location::Postgres(url) => postgres::postgres_checks(&ctx, &url, &mut report).await,
        Location::Sqlite(_) => ledger_file::ledger_checks(&ctx, &mut report).await,
    }

    let [ok, warn, fail, skip] = report.counts;
    let total = ok + warn + fail + skip;
    let mut summary = if fail == 0 {
        format!("doctor: {ok} of {total} checks OK, none failed")
    } else {
        format!("doctor: {fail} of {total} checks failed")
    };
    if warn > 0 {
        summary.push_str(&format!(
            ", {warn} warning{}",
            if warn == 1 { "" } else { "s" }
        ));
    }
    out(&summary);
    Ok(if fail > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn writable(path: &Path) -> bool {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}
