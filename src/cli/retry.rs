//! `tl-ingest retry [--failed] [KEY...]`: put failed records back in the
//! queue, attempts reset, through the state machine (`failed` → `discovered`
//! for a file, which is hashed and deduplicated again; `failed` → `queued` for
//! a URL).
//! A running daemon picks them up within seconds; otherwise the next `run`
//! or `upload` does. Records in any other state are reported and left as
//! they are.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use clap::Args;

use super::show::{display, ledger_err, resolve_all};
use super::{CliError, CliResult, Context, Globals, out};
use crate::ledger::admin::Requeued;
use crate::ledger::{Ledger, Record};

#[derive(Debug, Args)]
pub struct Cmd {
    /// Every failed record.
    #[arg(long)]
    pub failed: bool,
    /// Records to retry: a path (its newest record), URL, asset id, sha256
    /// prefix, or record id (#123).
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
}

pub async fn run(globals: &Globals, args: Cmd) -> CliResult {
    if !args.failed && args.keys.is_empty() {
        return Err(CliError::usage(
            "name the records to retry (a path, asset id, sha256 prefix or #ID), or pass --failed",
        ));
    }
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let ledger = ctx.read_ledger().await?;
    let result = retry(&ledger, &args).await;
    ledger.close().await;
    result
}

async fn retry(ledger: &Ledger, args: &Cmd) -> CliResult {
    let mut targets: Vec<Record> = Vec::new();
    for resolved in resolve_all(ledger, &args.keys).await? {
        // A path or URL: its newest record; older versions are history.
        if let Some(r) = resolved.records.into_iter().next() {
            targets.push(r);
        }
    }
    if args.failed {
        targets.extend(ledger.failed_records().await.map_err(ledger_err)?);
    }
    let mut seen = BTreeSet::new();
    targets.retain(|r| seen.insert(r.id));
    if targets.is_empty() {
        let _ = out("no failed records: nothing to retry");
        return Ok(ExitCode::SUCCESS);
    }

    let mut queued = 0usize;
    for r in &targets {
        match ledger.requeue(r.id).await.map_err(ledger_err)? {
            Requeued::Queued => {
                queued += 1;
                let _ = out(&format!("queued   #{:<6} {}", r.id, display(r)));
                warn_if_missing(ledger, r).await;
            }
            Requeued::NotFailed(state) => {
                let _ = out(&format!(
                    "skipped  #{:<6} {}: not failed (state {state}); left as is",
                    r.id,
                    display(r)
                ));
            }
            Requeued::Gone => {
                let _ = out(&format!(
                    "skipped  #{:<6} {}: no longer in the ledger",
                    r.id,
                    display(r)
                ));
            }
        }
    }
    if queued > 0 {
        let _ = out(&format!(
            "{queued} record(s) queued again, attempts reset; a running daemon picks them up \
             within seconds (otherwise the next `tl-ingest run` or `upload` does)"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// A retried file that is no longer where it was recorded will fail again:
/// say so, with where it went if the ledger knows.
async fn warn_if_missing(ledger: &Ledger, r: &Record) {
    if r.url.is_some() && r.path.is_none() {
        return;
    }
    let Ok(Some(detail)) = ledger.detail(r.id).await else {
        return;
    };
    let Some(bytes) = detail.path_bytes else {
        return;
    };
    let path = std::path::Path::new(OsStr::from_bytes(&bytes));
    if std::fs::symlink_metadata(path).is_err() {
        let went = r
            .file_action
            .as_deref()
            .map(|a| format!(" (after it failed: {a})"))
            .unwrap_or_default();
        eprintln!(
            "tl-ingest: warning: {} is not on disk{went}; put it back there or its retry will \
             fail again",
            path.display()
        );
    }
}
