//! `tl-ingest history`: records, newest first, as a table or JSON lines.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{CliError, CliResult, Context, Globals, out};
use crate::ledger::{FileState, Record, rfc3339};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only records in this state (repeatable).
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<FileState>,
    /// At most this many records.
    #[arg(long)]
    pub limit: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

fn parse_state(s: &str) -> Result<FileState, String> {
    FileState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = FileState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state {s:?}; one of: {}", names.join(", "))
    })
}

/// The PRODUCT.md fields of a record, for JSON output.
pub fn record_json(r: &Record) -> serde_json::Value {
    let mut v = json!({
        "id": r.id,
        "state": r.state,
        "asset_id": r.asset_id,
        "sha256": r.sha256,
        "size": r.size,
        "mime": r.mime,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "duplicate_of": r.duplicate_of,
        "discovered_at": rfc3339(r.discovered_at),
        "uploaded_at": r.uploaded_at.map(rfc3339),
        "ready_at": r.ready_at.map(rfc3339),
        "updated_at": rfc3339(r.updated_at),
        "file_action": r.file_action,
    });
    if let Some(obj) = v.as_object_mut() {
        match (&r.path, &r.url) {
            (Some(p), _) => obj.insert("path".into(), json!(p)),
            (None, Some(u)) => obj.insert("url".into(), json!(u)),
            (None, None) => obj.insert("path".into(), serde_json::Value::Null),
        };
    }
    v
}

pub async fn run(globals: &Globals, args: HistoryArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let ledger = ctx.read_ledger().await?;
    let records = ledger
        .history(&args.states, args.limit)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    match args.format {
        Format::Json => {
            for r in &records {
                if !out(&record_json(r).to_string()) {
                    break;
                }
            }
        }
        Format::Table => {
            let _ = out(&format!(
                "{:>6}  {:<10}  {:>10}  {:<24}  {}",
                "ID", "STATE", "SIZE", "ASSET", "PATH"
            ));
            for r in &records {
                let size = r
                    .size
                    .map(|s| {
                        bytesize::ByteSize(u64::try_from(s).unwrap_or(0))
                            .display()
                            .si()
                            .to_string()
                    })
                    .unwrap_or_default();
                let line = format!(
                    "{:>6}  {:<10}  {:>10}  {:<24}  {}",
                    r.id,
                    r.state,
                    size,
                    r.asset_id.as_deref().unwrap_or("-"),
                    r.path.as_deref().or(r.url.as_deref()).unwrap_or("")
                );
                if !out(&line) {
                    break;
                }
            }
        }
    }
    ledger.close().await;
    Ok(ExitCode::SUCCESS)
}
