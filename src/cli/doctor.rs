//! `tl-ingest doctor` (being written).

use clap::Args;

use super::{CliError, CliResult, Globals};

#[derive(Debug, Args)]
pub struct Cmd {}

pub async fn run(_globals: &Globals, _args: Cmd) -> CliResult {
    Err(CliError::failed("not implemented yet"))
}
