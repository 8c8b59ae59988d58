//! `tl-ingest completions bash|zsh|fish|man`: shell completions, or the
//! man page (roff), generated from the command line definition itself.
//!
//! To stdout by default:
//!   tl-ingest completions bash > /etc/bash_completion.d/tl-ingest
//!   tl-ingest completions zsh  > "${fpath[1]}/_tl-ingest"
//!   tl-ingest completions fish > ~/.config/fish/completions/tl-ingest.fish
//!   tl-ingest completions man  > /usr/share/man/man1/tl-ingest.1
//! or, for packaging, into a folder with `--dir DIR` (with `man`: one page
//! per command, `tl-ingest.1`, `tl-ingest-run.1`, …).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::{CliError, CliResult, Globals};

const BIN: &str = "tl-ingest";

#[derive(Debug, Args)]
pub struct Cmd {
    /// What to generate.
    #[arg(value_enum)]
    pub target: Target,
    /// Write the file(s) into this folder instead of printing them.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Bash,
    Zsh,
    Fish,
    /// The man page (roff).
    Man,
}

pub async fn run(_globals: &Globals, args: Cmd) -> CliResult {
    let mut cmd = super::Cli::command();
    if let Some(dir) = &args.dir {
        let written = match args.target {
            Target::Man => clap_mangen::generate_to(cmd, dir).map(|()| dir.clone()),
            Target::Bash => clap_complete::generate_to(Shell::Bash, &mut cmd, BIN, dir),
            Target::Zsh => clap_complete::generate_to(Shell::Zsh, &mut cmd, BIN, dir),
            Target::Fish => clap_complete::generate_to(Shell::Fish, &mut cmd, BIN, dir),
        }
        .map_err(|e| CliError::failed(format!("cannot write into {}: {e}", dir.display())))?;
        eprintln!("tl-ingest: wrote {}", written.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Rendered into memory first: the generators panic on a write error,
    // and a reader that goes away (`| head`) is no error.
    let mut buf = Vec::new();
    match args.target {
        Target::Man => clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| CliError::failed(format!("cannot render the man page: {e}")))?,
        Target::Bash => clap_complete::generate(Shell::Bash, &mut cmd, BIN, &mut buf),
        Target::Zsh => clap_complete::generate(Shell::Zsh, &mut cmd, BIN, &mut buf),
        Target::Fish => clap_complete::generate(Shell::Fish, &mut cmd, BIN, &mut buf),
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&buf).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::failed(format!("cannot write: {e}"))),
    }
}
