//! `tl-ingest reconcile [--requeue]`: check every finished record against
//! the platform (`GET /assets/{id}`, paced under the rate limit): an asset
//! that is missing or `failed` there is reported, and with `--requeue` its
//! file is queued again. Then list the platform's assets that carry this
//! tool's sha256 stamp or a URL record's stamp but that the ledger does not
//! know (orphans of a crash, or of a forgotten record); a URL asset names
//! the record whose stamp it carries, if there is one.
//!
//! An asset whose answer cannot be read is reported and counted, and the
//! check goes on with the next one.
//!
//! Exit 0 when everything matches, 1 when anything was found.

use std::future::Future;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{CliError, CliResult, Context, Globals, out};
use crate::api::{ApiClient, ApiError, AssetStatus, ErrorClass};
use crate::ledger::Ledger;
use crate::pipeline::Gate;

#[derive(Debug, Args)]
pub struct Cmd {
    /// Queue files whose asset the platform lost (or failed) again.
    #[arg(long)]
    pub requeue: bool,
    /// Requests per minute to the API (stay under your plan's limit).
    #[arg(long, default_value_t = 120)]
    pub rate: u32,
    /// Do not list orphaned assets (skips paging through every asset).
    #[arg(long)]
    pub no_orphans: bool,
}

/// Records read per query.
const PAGE: u32 = 500;

pub async fn run(globals: &Globals, args: Cmd) -> CliResult {
    let ctx = Context::load(globals, tracing::Level::WARN)?;
    let client = ctx.api_client()?;
    let ledger = ctx.read_ledger().await?;
    let gate = Gate::new(args.rate.max(1));
    let result = reconcile(&ledger, &client, &gate, &args).await;
    ledger.close().await;
    let problems = result?;
    if problems == 0 {
        eprintln!("everything matches");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{problems} problem(s) found");
        Ok(ExitCode::from(1))
    }
}

async fn reconcile(
    ledger: &Ledger,
    client: &ApiClient,
    gate: &Gate,
    args: &Cmd,
) -> Result<u64, CliError> {
    let failed = |e: crate::ledger::LedgerError| CliError::failed(e.to_string());
    let mut problems = 0u64;
    let mut checked = 0u64;
    let mut after = 0;
    loop {
        let page = ledger.claimed_assets(after, PAGE).await.map_err(failed)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        for rec in &page {
            checked += 1;
            let lost = match paced(gate, || client.get_asset(&rec.asset_id)).await {
                Ok(asset) => match asset.status() {
                    AssetStatus::Failed => Some(format!(
                        "the platform marks asset {} failed: {}",
                        rec.asset_id,
                        asset
                            .error_message()
                            .unwrap_or_else(|| "no reason given".into())
                    )),
                    _ => None,
                },
                Err(e) if e.class() == ErrorClass::NotFound => {
                    Some(format!("the platform no longer has asset {}", rec.asset_id))
                }
                Err(e @ ApiError::Malformed { .. }) => {
                    problems += 1;
                    let line =
                        format!("unreadable  {}  asset {}: {e}", rec.display(), rec.asset_id);
                    if !out(&line) {
                        return Ok(problems);
                    }
                    continue;
                }
                Err(e) => return Err(api_error(e)),
            };
            let Some(reason) = lost else {
                continue;
            };
            problems += 1;
            let mut line = format!("lost     {}  {}", rec.display(), reason);
            if args.requeue {
                ledger.requeue_lost(rec, &reason).await.map_err(failed)?;
                line.push_str("  (queued again)");
            }
            if !out(&line) {
                return Ok(problems);
            }
        }
    }
    eprintln!("{checked} finished record(s) checked");
    if args.no_orphans {
        return Ok(problems);
    }
    let mut page_no = 1;
    loop {
        let page = paced(gate, || client.list_assets(None, page_no, 50))
            .await
            .map_err(api_error)?;
        for asset in page.assets() {
            let asset = match asset {
                Ok(asset) => asset,
                Err(why) => {
                    problems += 1;
                    if !out(&format!("unreadable  page {page_no}: {why}")) {
                        return Ok(problems);
                    }
                    continue;
                }
            };
            let Some(id) = asset.id.as_deref() else {
                continue;
            };
            let stamp = match (asset.sha256_stamp(), asset.url_stamp()) {
                (Some(sha), _) => format!("sha256 {sha}"),
                (None, Some(stamp)) => match ledger.stamped(&stamp).await.map_err(failed)? {
                    Some((record, url)) => {
                        format!("url stamp {stamp} (a second asset of #{record}, {url})")
                    }
                    None => format!("url stamp {stamp}"),
                },
                (None, None) => continue,
            };
            if ledger.knows_asset(id).await.map_err(failed)? {
                continue;
            }
            problems += 1;
            let line = format!(
                "orphan   {id}  {}  {stamp}",
                asset.filename.as_deref().unwrap_or("?")
            );
            if !out(&line) {
                return Ok(problems);
            }
        }
        let last = page.total_pages().is_some_and(|total| page_no >= total);
        if page.data.is_empty() || last {
            break;
        }
        page_no += 1;
    }
    Ok(problems)
}

/// One request under the pacing, waiting out 429s.
async fn paced<T, F, Fut>(gate: &Gate, mut request: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let never = CancellationToken::new();
    loop {
        gate.before_request(&never).await;
        match request().await {
            Err(e) if matches!(e.class(), ErrorClass::RateLimited { .. }) => {
                let ErrorClass::RateLimited { until } = e.class() else {
                    return Err(e);
                };
                gate.rate_limited(
                    until.unwrap_or_else(|| SystemTime::now() + std::time::Duration::from_secs(5)),
                );
            }
            other => return other,
        }
    }
}

fn api_error(e: ApiError) -> CliError {
    match e.class() {
        ErrorClass::Auth => CliError::usage(format!("the API key was rejected: {e}")),
        _ => CliError::failed(format!("the API did not answer as expected: {e}")),
    }
}
