//! `tl-ingest forget KEY...`: remove records so that their files are
//! uploaded again when next seen (the daemon's next scan, or `upload`).
//! A path forgets every record of that path (all its versions). Asks on a
//! terminal unless `--yes`; without a terminal, `--yes` is required. A
//! record being uploaded right now is not forgotten.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;

use super::show::{display, ledger_err, resolve_all};
use super::{CliError, CliResult, Context, Globals, out};
use crate::ledger::admin::Forgotten;
use crate::ledger::{FileState, Ledger, Record};

#[derive(Debug, Args)]
pub struct Cmd {
    /// Records to forget: a path (every record of it), URL, asset id,
    /// sha256 prefix, or record id (#123).
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

pub async fn run(globals: &Globals, args: Cmd) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let ledger = ctx.read_ledger().await?;
    let result = forget(&ledger, &args).await;
    ledger.close().await;
    result
}

async fn forget(ledger: &Ledger, args: &Cmd) -> CliResult {
    let mut records: Vec<Record> = resolve_all(ledger, &args.keys)
        .await?
        .into_iter()
        .flat_map(|r| r.records)
        .collect();
    let mut seen = BTreeSet::new();
    records.retain(|r| seen.insert(r.id));

    let (in_flight, records): (Vec<Record>, Vec<Record>) = records
        .into_iter()
        .partition(|r| r.state == FileState::Uploading.as_str());
    for r in &in_flight {
        refuse(r);
    }
    if records.is_empty() {
        return Err(CliError::failed("nothing forgotten"));
    }

    if !args.yes {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(CliError::usage(format!(
                "refusing to forget {} record(s) without confirmation: pass --yes",
                records.len()
            )));
        }
        if !confirm(&records).await? {
            eprintln!("tl-ingest: nothing forgotten");
            return Ok(ExitCode::from(1));
        }
    }

    let mut refused = in_flight.len();
    let mut forgotten = 0usize;
    for r in &records {
        match ledger.forget(r.id).await.map_err(ledger_err)? {
            Forgotten::Removed { requeued } => {
                forgotten += 1;
                let mut line = format!("forgot   #{:<6} {:<10} {}", r.id, r.state, display(r));
                if let Some(heir) = requeued {
                    line.push_str(&format!(
                        " (its duplicate #{heir} is queued to be sent itself)"
                    ));
                }
                let _ = out(&line);
            }
            Forgotten::InFlight => {
                refused += 1;
                refuse(r);
            }
            Forgotten::Gone => {
                let _ = out(&format!(
                    "skipped  #{:<6} {}: no longer in the ledger",
                    r.id,
                    display(r)
                ));
            }
        }
    }
    if forgotten > 0 {
        let _ = out(&format!(
            "{forgotten} record(s) forgotten; their files are uploaded again when next seen \
             (the daemon's next scan, or now with `tl-ingest upload PATH`)"
        ));
    }
    Ok(if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn refuse(r: &Record) {
    eprintln!(
        "tl-ingest: #{} {} is being uploaded right now; not forgotten (try again once it is done)",
        r.id,
        display(r)
    );
}

/// Ask on the terminal (stderr, stdin) whether to go on.
async fn confirm(records: &[Record]) -> Result<bool, CliError> {
    let mut text = String::from("These records will be removed from the ledger:\n");
    for r in records {
        text.push_str(&format!("  #{:<6} {:<10} {}\n", r.id, r.state, display(r)));
    }
    text.push_str(&format!(
        "Forget {} record(s)? Their files will be uploaded again. [y/N] ",
        records.len()
    ));
    let answer = tokio::task::spawn_blocking(move || {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(|e| CliError::failed(format!("cannot ask for confirmation: {e}")))?
    .map_err(|e| CliError::failed(format!("cannot read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
