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
use crate::api::{ApiClient, ApiError, Asset, AssetStatus, ErrorClass};
use crate::ledger::Ledger;
use crate::ledger::reconcile::Claimed;
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

/// What was found so far, and whether the reader went away (`| head`).
#[derive(Default)]
struct Found {
    problems: u64,
    stopped: bool,
}

impl Found {
    /// Count a problem and print its line; false once the reader is gone.
    fn report(&mut self, line: &str) -> bool {
        self.problems += 1;
        if !out(line) {
            self.stopped = true;
        }
        !self.stopped
    }
}

async fn reconcile(
    ledger: &Ledger,
    client: &ApiClient,
    gate: &Gate,
    args: &Cmd,
) -> Result<u64, CliError> {
    let mut found = Found::default();
    let checked = check_records(ledger, client, gate, args.requeue, &mut found).await?;
    if found.stopped {
        return Ok(found.problems);
    }
    eprintln!("{checked} finished record(s) checked");
    if !args.no_orphans {
        list_orphans(ledger, client, gate, &mut found).await?;
    }
    Ok(found.problems)
}

fn ledger_failed(e: crate::ledger::LedgerError) -> CliError {
    CliError::failed(e.to_string())
}

/// Every finished record against the platform, page by page; how many
/// were checked.
async fn check_records(
    ledger: &Ledger,
    client: &ApiClient,
    gate: &Gate,
    requeue: bool,
    found: &mut Found,
) -> Result<u64, CliError> {
    let mut checked = 0u64;
    let mut after = 0;
    loop {
        let page = ledger
            .claimed_assets(after, PAGE)
            .await
            .map_err(ledger_failed)?;
        let Some(last) = page.last() else {
            return Ok(checked);
        };
        after = last.id;
        for rec in &page {
            checked += 1;
            let line = match check_asset(client, gate, rec).await? {
                Check::Fine => continue,
                Check::Unreadable(e) => {
                    format!("unreadable  {}  asset {}: {e}", rec.display(), rec.asset_id)
                }
                Check::Lost(reason) => {
                    let mut line = format!("lost     {}  {}", rec.display(), reason);
                    if requeue {
                        ledger
                            .requeue_lost(rec, &reason)
                            .await
                            .map_err(ledger_failed)?;
                        line.push_str("  (queued again)");
                    }
                    line
                }
            };
            if !found.report(&line) {
                return Ok(checked);
            }
        }
    }
}

/// What the platform says of a record's asset.
enum Check {
    Fine,
    /// Missing, or `failed` there: why.
    Lost(String),
    /// An answer that cannot be read.
    Unreadable(ApiError),
}

async fn check_asset(client: &ApiClient, gate: &Gate, rec: &Claimed) -> Result<Check, CliError> {
    match paced(gate, || client.get_asset(&rec.asset_id)).await {
        Ok(asset) => Ok(match asset.status() {
            AssetStatus::Failed => Check::Lost(format!(
                "the platform marks asset {} failed: {}",
                rec.asset_id,
                asset
                    .error_message()
                    .unwrap_or_else(|| "no reason given".into())
            )),
            _ => Check::Fine,
        }),
        Err(e) if e.class() == ErrorClass::NotFound => Ok(Check::Lost(format!(
            "the platform no longer has asset {}",
            rec.asset_id
        ))),
        Err(e @ ApiError::Malformed { .. }) => Ok(Check::Unreadable(e)),
        Err(e) => Err(api_error(e)),
    }
}

/// The platform's assets, page by page: those with our stamp that the
/// ledger does not know are orphans.
async fn list_orphans(
    ledger: &Ledger,
    client: &ApiClient,
    gate: &Gate,
    found: &mut Found,
) -> Result<(), CliError> {
    let mut page_no = 1;
    loop {
        let page = paced(gate, || client.list_assets(None, page_no, 50))
            .await
            .map_err(api_error)?;
        for asset in page.assets() {
            let line = match asset {
                Ok(asset) => match orphan_line(ledger, &asset).await? {
                    Some(line) => line,
                    None => continue,
                },
                Err(why) => format!("unreadable  page {page_no}: {why}"),
            };
            if !found.report(&line) {
                return Ok(());
            }
        }
        let last = page.total_pages().is_some_and(|total| page_no >= total);
        if page.data.is_empty() || last {
            return Ok(());
        }
        page_no += 1;
    }
}

/// The line of an asset that carries our stamp but no record claims.
async fn orphan_line(ledger: &Ledger, asset: &Asset) -> Result<Option<String>, CliError> {
    let Some(id) = asset.id.as_deref() else {
        return Ok(None);
    };
    let stamp = match (asset.sha256_stamp(), asset.url_stamp()) {
        (Some(sha), _) => format!("sha256 {sha}"),
        (None, Some(stamp)) => match ledger.stamped(&stamp).await.map_err(ledger_failed)? {
            Some((record, url)) => {
                format!("url stamp {stamp} (a second asset of #{record}, {url})")
            }
            None => format!("url stamp {stamp}"),
        },
        (None, None) => return Ok(None),
    };
    if ledger.knows_asset(id).await.map_err(ledger_failed)? {
        return Ok(None);
    }
    Ok(Some(format!(
        "orphan   {id}  {}  {stamp}",
        asset.filename.as_deref().unwrap_or("?")
    )))
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
