//! `tl-ingest status`: counts per state, what is in flight, the last errors.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::history::record_json;
use super::{CliError, CliResult, Context, Globals, out};
use crate::daemon::lock::LedgerLock;
use crate::ledger::{FileState, rfc3339};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(globals: &Globals, args: StatusArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let holder = LedgerLock::holder(&ctx.ledger_path());
    let ledger = ctx.read_ledger().await?;
    let failed = |e: crate::ledger::LedgerError| CliError::failed(e.to_string());
    let counts = ledger.counts().await.map_err(failed)?;
    let in_flight = ledger.in_flight().await.map_err(failed)?;
    let errors = ledger.recent_errors(5).await.map_err(failed)?;
    ledger.close().await;

    if args.json {
        let counts: serde_json::Map<String, serde_json::Value> = FileState::ALL
            .iter()
            .map(|s| {
                let n = counts.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
                (s.as_str().to_string(), json!(n))
            })
            .collect();
        let v = json!({
            "ledger": ctx.ledger_path().display().to_string(),
            "daemon": holder.as_ref().map(|h| json!({
                "pid": h.pid,
                "since": h.since_ms.map(rfc3339),
            })),
            "counts": counts,
            "in_flight": in_flight.iter().map(record_json).collect::<Vec<_>>(),
            "recent_errors": errors.iter().map(record_json).collect::<Vec<_>>(),
        });
        let _ = out(&v.to_string());
        return Ok(ExitCode::SUCCESS);
    }
    let _ = out(&format!("ledger: {}", ctx.ledger_path().display()));
    let daemon = match &holder {
        Some(h) => format!(
            "running (pid {}, since {})",
            h.pid.map_or("?".into(), |p| p.to_string()),
            h.since_ms.map_or("?".into(), rfc3339)
        ),
        None => "not running".into(),
    };
    let _ = out(&format!("daemon: {daemon}"));
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = out(&format!("records: {total} ({})", parts.join(", ")));
    if !in_flight.is_empty() {
        let _ = out("uploading:");
        for r in &in_flight {
            let _ = out(&format!("  {}", r.path.as_deref().unwrap_or("")));
        }
    }
    if !errors.is_empty() {
        let _ = out("last errors:");
        for r in &errors {
            let _ = out(&format!(
                "  [{}] {}: {}",
                r.state,
                r.path.as_deref().or(r.url.as_deref()).unwrap_or(""),
                r.last_error.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
