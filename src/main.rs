//! The `tl-ingest` binary: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tl_ingest::cli::Cli::parse();
    tl_ingest::cli::main(cli)
}
