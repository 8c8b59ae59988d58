//! `tl-ingest prune --older-than DUR`: drop terminal records (`ready`,
//! `indexed`, `duplicate`, `skipped`, `failed`) last changed longer ago
//! than DUR, except what dedupe still needs, then `VACUUM`.
//!
//! Kept whatever their age: a `ready`/`indexed` record that is the newest
//! record of its path (or URL), so that the file is never sent again; the
//! newest record of a path whose file is still on disk, so that a scan does
//! not find it anew (and send or fail it again); and every record that a
//! kept record points at as its original (`duplicate_of`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::show::{display, ledger_err};
use super::{CliError, CliResult, Context, Globals, out};
use crate::ledger::admin::PruneReport;
use crate::ledger::{Ledger, now_ms};

#[derive(Debug, Args)]
pub struct Cmd {
    /// Drop terminal records not changed for this long (e.g. 90d, 12h).
    #[arg(long, value_name = "DUR", value_parser = parse_age)]
    pub older_than: Duration,
    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (a duration such as 90d, 12h or 30m)"))
}

pub async fn run(globals: &Globals, args: Cmd) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let ledger = ctx.read_ledger().await?;
    let result = prune(&ledger, &args).await;
    ledger.close().await;
    result
}

async fn prune(ledger: &Ledger, args: &Cmd) -> CliResult {
    let age = i64::try_from(args.older_than.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms().saturating_sub(age);
    let age_text = humantime::format_duration(args.older_than).to_string();

    // Old newest-of-path records whose file is still there stay.
    let newest = ledger
        .prune_newest_of_paths(cutoff)
        .await
        .map_err(ledger_err)?;
    let keep = tokio::task::spawn_blocking(move || {
        newest
            .into_iter()
            .filter(|n| std::fs::symlink_metadata(OsStr::from_bytes(&n.path_bytes)).is_ok())
            .map(|n| n.id)
            .collect::<Vec<i64>>()
    })
    .await
    .map_err(|e| CliError::failed(format!("cannot check the files on disk: {e}")))?;

    let report: PruneReport = ledger
        .prune(cutoff, &keep, args.dry_run)
        .await
        .map_err(ledger_err)?;
    let kept = report.old.saturating_sub(report.removed);
    if args.dry_run {
        for r in &report.would_remove {
            if !out(&format!(
                "would remove #{:<6} {:<10} {}",
                r.id,
                r.state,
                display(r)
            )) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let _ = out(&format!(
            "would remove {} of {} finished record(s) older than {age_text} \
             (kept {kept} that dedupe still needs); nothing removed (--dry-run)",
            report.removed, report.old
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let _ = out(&format!(
        "removed {} of {} finished record(s) older than {age_text} (kept {kept} that dedupe \
         still needs)",
        report.removed, report.old
    ));
    if report.removed > 0
        && let Err(e) = ledger.vacuum().await
    {
        eprintln!(
            "tl-ingest: warning: the records are removed, but VACUUM failed ({e}); the space is \
             reused by new records, or run prune again later to give it back"
        );
    }
    Ok(ExitCode::SUCCESS)
}
