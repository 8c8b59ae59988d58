//! `tl-ingest run`: the daemon, with signals mapped to controls:
//! SIGTERM/SIGINT stop (a second one stops at once), SIGHUP reloads.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::{CliError, CliResult, Context, Globals, lock_error, start_emulator};
use crate::daemon::{self, ClientSource, Control, DaemonError, Setup};

#[derive(Debug, Args)]
pub struct RunArgs {}

/// With `--emulator` and no `[[watch]]` configured, this folder is watched.
const EMULATOR_INBOX: &str = "inbox";

pub async fn run(globals: &Globals, _args: RunArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::INFO)?;
    let (client, default_watch, _emulator) = if ctx.emulator {
        let (emu, key) = start_emulator().await?;
        let client = ClientSource::Fixed {
            base_url: emu.base_url(),
            key,
        };
        (client, Some(PathBuf::from(EMULATOR_INBOX)), Some(emu))
    } else {
        (ClientSource::Configured, None, None)
    };
    let ledger = ctx.ledger_location();
    let controls =
        forward_signals().map_err(|e| CliError::failed(format!("cannot handle signals: {e}")))?;
    let setup = Setup {
        load: ctx.load.clone(),
        ledger,
        client,
        default_watch,
    };
    let config = (*ctx.config).clone();
    match daemon::run(setup, config, controls).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(DaemonError::Locked(e)) => Err(lock_error(e)),
        Err(e) => Err(CliError::usage(e.to_string())),
    }
}

/// SIGTERM/SIGINT → `Shutdown`, SIGHUP → `Reload`.
fn forward_signals() -> std::io::Result<mpsc::Receiver<Control>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let control = tokio::select! {
                Some(()) = term.recv() => Control::Shutdown,
                Some(()) = int.recv() => Control::Shutdown,
                Some(()) = hup.recv() => Control::Reload,
                else => return,
            };
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
