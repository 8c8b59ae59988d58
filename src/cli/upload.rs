//! `tl-ingest upload PATH...`: the pipeline over the given files and
//! folders, until every record in the ledger is finished; then a summary.
//!
//! Exit 0 when every file ended `ready`/`duplicate`/`skipped`, 1 when any
//! ended `failed`, 2 on a configuration problem, including a rejected API
//! key (files are left queued, never marked failed, for a key problem).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::broadcast;

use super::{CliError, CliResult, Context, Globals, lock_error, start_emulator};
use crate::config::WatchConfig;
use crate::ledger::LedgerLock;
use crate::ledger::{Change, FileState, Ledger, LedgerError};
use crate::pipeline::{Filter, GateState, Pipeline, Progress, discover};

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Files and folders to upload (folders recursively, media files only).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

pub async fn run(globals: &Globals, args: UploadArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    for p in &args.paths {
        if std::fs::symlink_metadata(p).is_err() {
            return Err(CliError::usage(format!(
                "{}: no such file or folder",
                p.display()
            )));
        }
    }
    let (client, _emulator) = if ctx.emulator {
        let (emu, key) = start_emulator().await?;
        (ctx.client_for(&emu.base_url(), &key)?, Some(emu))
    } else {
        (ctx.api_client()?, None)
    };
    let location = ctx.ledger_location();
    // A daemon on the same SQLite ledger would work the same queue (a
    // shared ledger coordinates through leases instead).
    let _lock = LedgerLock::acquire_for(&location).map_err(lock_error)?;
    let ledger = ctx.open_ledger(&location).await?;
    let pipeline = Pipeline::new(ledger.clone(), client, ctx.config.clone());
    pipeline
        .recover()
        .await
        .map_err(|e| ledger_failure(&ledger, e))?;

    let changes = ledger.subscribe();
    // What failed before this run is tried again; what fails during it is not.
    let started = crate::ledger::now_ms();
    let running = pipeline.start();
    let filter = Filter::new(&WatchConfig::for_path(PathBuf::new()))
        .map_err(|e| CliError::usage(e.to_string()))?;
    let report = discover(&ledger, &args.paths, &filter, None, Some(started))
        .await
        .map_err(|e| ledger_failure(&ledger, e))?;
    for problem in &report.problems {
        eprintln!("tl-ingest: {problem}");
    }

    let waited = wait_until_done(&pipeline, changes, report.ids.clone()).await;
    match waited {
        // Nothing is in flight: the stages stop as soon as they are told.
        Waited::Done => running.shutdown(Duration::from_secs(5)).await,
        Waited::Interrupted | Waited::AuthRejected(_) => {
            running.shutdown(ctx.config.upload.shutdown_grace).await
        }
    }
    let result = match waited {
        Waited::Done => summarize(&ledger, &report.paths).await,
        Waited::Interrupted => Err(CliError::failed(
            "interrupted; unfinished files stay queued and continue on the next run",
        )),
        Waited::AuthRejected(message) => Err(CliError::usage(message)),
    };
    ledger.close().await;
    result
}

/// A ledger error ends the run: a ledger that cannot be written at all (a
/// full disk) is a setup problem (exit 2), anything else a failure.
fn ledger_failure(ledger: &Ledger, e: LedgerError) -> CliError {
    match ledger.first_write_error(e) {
        e @ LedgerError::Open { .. } => CliError::usage(e.to_string()),
        e => CliError::failed(e.to_string()),
    }
}

enum Waited {
    Done,
    Interrupted,
    AuthRejected(String),
}

/// The least time between two questions to the ledger about what is left.
const RECHECK_GAP: Duration = Duration::from_millis(20);

/// How long a failed question to the ledger waits to be asked again.
const LEDGER_RETRY: Duration = Duration::from_secs(1);

/// Until `due`, or not at all.
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Follow the ledger until nothing is unfinished, printing each file as it
/// finishes. Stops early on Ctrl-C or a rejected key.
/// On a shared ledger, only this run's records count (`ids`): the other
/// daemons' queue is theirs.
async fn wait_until_done(
    pipeline: &Pipeline,
    mut changes: broadcast::Receiver<Change>,
    mut ids: Vec<i64>,
) -> Waited {
    let ledger = pipeline.ledger();
    let mut gate = pipeline.gate().subscribe();
    let mut display = Display::new(pipeline.progress().clone());
    // Armed once, so a Ctrl-C between two turns of the loop is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The ledger is asked again only when something may have finished: a
    // record left the unfinished states, changes were lost (lagged), or
    // the tick came round (records another process changed or removed).
    let mut recheck = true;
    // Not more often than this: with thousands of small files finishing
    // every second, once per file would be a query per file.
    let mut checked_at: Option<tokio::time::Instant> = None;
    loop {
        if let GateState::AuthRejected { message } = gate.borrow_and_update().clone() {
            display.finish();
            return Waited::AuthRejected(message);
        }
        let due = checked_at.map(|at| at + RECHECK_GAP);
        if recheck && due.is_none_or(|due| due <= tokio::time::Instant::now()) {
            recheck = false;
            checked_at = Some(tokio::time::Instant::now());
            let finished = if ledger.is_shared() {
                ledger.unfinished_among(&ids).await.map(|left| {
                    ids = left;
                    ids.is_empty()
                })
            } else {
                ledger.any_unfinished().await.map(|any| !any)
            };
            match finished {
                Ok(true) => {
                    // Changes committed before the ledger was read are
                    // already in the channel: print them, or a file's line
                    // is lost.
                    while let Ok(c) = changes.try_recv() {
                        display.change(&c);
                    }
                    display.finish();
                    return Waited::Done;
                }
                Ok(false) => {}
                Err(e) => {
                    crate::pipeline::ledger_failed(&e, "cannot read the ledger");
                    recheck = true;
                    // Asked again in a second, not at once.
                    checked_at = Some(tokio::time::Instant::now() + LEDGER_RETRY);
                }
            }
        }
        tokio::select! {
            _ = &mut ctrl_c => {
                display.finish();
                return Waited::Interrupted;
            }
            _ = gate.changed() => {}
            _ = sleep_until_due(checked_at.map(|at| at + RECHECK_GAP)), if recheck => {}
            _ = tick.tick() => {
                display.refresh();
                recheck = true;
            }
            change = changes.recv() => {
                match change {
                    Ok(c) => {
                        recheck |= c.state.is_terminal();
                        display.change(&c);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => recheck = true,
                    Err(broadcast::error::RecvError::Closed) => return Waited::Done,
                }
                // Print everything that is already waiting before asking
                // the ledger again.
                while let Ok(c) = changes.try_recv() {
                    recheck |= c.state.is_terminal();
                    display.change(&c);
                }
            }
        }
    }
}

/// Progress bars on a terminal, one line per finished file otherwise.
struct Display {
    bars: Option<(MultiProgress, BTreeMap<i64, ProgressBar>)>,
    progress: Progress,
}

impl Display {
    fn new(progress: Progress) -> Display {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| (MultiProgress::new(), BTreeMap::new()));
        Display { bars, progress }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => {
                super::out(text);
            }
        }
    }

    fn change(&mut self, c: &Change) {
        let text = match c.state {
            FileState::Ready => format!(
                "ready      {}  {}",
                c.path,
                c.asset_id.as_deref().unwrap_or("")
            ),
            FileState::Duplicate => format!(
                "duplicate  {}  {}",
                c.path,
                c.detail.as_deref().unwrap_or("")
            ),
            FileState::Skipped => format!(
                "skipped    {}  ({})",
                c.path,
                c.detail.as_deref().unwrap_or("not eligible")
            ),
            FileState::Failed => format!(
                "failed     {}  {}",
                c.path,
                c.detail.as_deref().unwrap_or("")
            ),
            _ => return,
        };
        self.line(&text);
    }

    fn refresh(&mut self) {
        let Some((multi, bars)) = &mut self.bars else {
            return;
        };
        let now = self.progress.snapshot();
        bars.retain(|id, bar| {
            let keep = now.iter().any(|(i, _)| i == id);
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
        for (id, flight) in now {
            let bar = bars.entry(id).or_insert_with(|| {
                let style = ProgressStyle::with_template(
                    "{spinner} {msg:40!} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {bar:30}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                let bar = multi.add(ProgressBar::new(flight.total).with_style(style));
                bar.set_message(short_name(&flight.name));
                bar
            });
            bar.set_position(flight.sent());
        }
    }

    fn finish(&mut self) {
        if let Some((_, bars)) = &mut self.bars {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
            bars.clear();
        }
    }
}

fn short_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// One line of totals for the files named on the command line; exit 1 if
/// any of them failed.
async fn summarize(ledger: &Ledger, paths: &[PathBuf]) -> CliResult {
    let mut counts: BTreeMap<FileState, usize> = BTreeMap::new();
    let path_bytes: Vec<&[u8]> = paths.iter().map(|p| p.as_os_str().as_bytes()).collect();
    let states = ledger
        .newest_states(&path_bytes)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    for state in states.into_iter().flatten() {
        *counts.entry(state).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let noun = if total == 1 { "file" } else { "files" };
    let summary = if parts.is_empty() {
        format!("{total} {noun}")
    } else {
        format!("{total} {noun}: {}", parts.join(", "))
    };
    eprintln!("{summary}");
    if counts.contains_key(&FileState::Failed) {
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
