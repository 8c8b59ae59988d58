//! `tl-ingest add-url URL... [--filename NAME]`: queue assets by public
//! URL (`method=url`). A running daemon on the same ledger picks them up
//! within seconds; each URL is queued once.

use std::process::ExitCode;

use clap::Args;

use super::{CliError, CliResult, Context, Globals, out};
use crate::pipeline::validate_url;

#[derive(Debug, Args)]
pub struct AddUrlArgs {
    /// Public http(s) URLs of media files (direct links, not share pages).
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// The name to give the asset (with a single URL).
    #[arg(long, value_name = "NAME")]
    pub filename: Option<String>,
}

pub async fn run(globals: &Globals, args: AddUrlArgs) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    if args.filename.is_some() && args.urls.len() > 1 {
        return Err(CliError::usage(
            "--filename names one asset: give a single URL with it",
        ));
    }
    // Check them all before queueing any.
    let mut urls = Vec::with_capacity(args.urls.len());
    let mut bad = Vec::new();
    for u in &args.urls {
        match validate_url(u) {
            Ok(url) => urls.push(url),
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        return Err(CliError::usage(bad.join("\n")));
    }
    let ledger = ctx.open_ledger(&ctx.ledger_location()).await?;
    for url in &urls {
        let (id, new) = ledger
            .add_url(url, args.filename.as_deref(), None, None)
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        let line = if new {
            format!("queued   {url}  (record {id})")
        } else {
            format!("known    {url}  (record {id}; not queued again)")
        };
        let _ = out(&line);
    }
    ledger.close().await;
    Ok(ExitCode::SUCCESS)
}
