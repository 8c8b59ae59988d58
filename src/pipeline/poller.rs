//! The poller: asks the platform about every `processing` asset one
//! `api.poll_interval` after it was accepted and after each answer, until
//! it is `ready` or `failed`. One task for all records, so waiting for the
//! platform never holds an upload worker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::api::{ApiError, Asset, AssetStatus, ErrorClass};
use crate::ledger::{FileState, LedgerError, PollJob};

/// Assets asked about at once.
const PARALLEL_POLLS: usize = 4;
/// Records looked at per round.
const BATCH: u32 = 500;
/// An asset still processing this long after upload is given up on: the
/// platform's own guidance is seconds to minutes.
const PROCESSING_DEADLINE_MS: i64 = 24 * 3_600_000;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = i64::try_from(shared.config.api.poll_interval.as_millis()).unwrap_or(i64::MAX);
    let mut changes = shared.ledger.subscribe();
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        // Changes from before this query are covered by it.
        while changes.try_recv().is_ok() {}
        // Each asset is asked about one interval after it was accepted, and
        // again one interval after each answer: nothing is ready the instant
        // it is uploaded, and a round shared by all would ask some too soon.
        let now = crate::ledger::now_ms();
        let due = shared
            .ledger
            .processing(BATCH, now.saturating_sub(interval))
            .await;
        let jobs = match due {
            Ok(jobs) => jobs,
            Err(e) => {
                super::ledger_failed(&e, "cannot read the ledger; retrying");
                if !super::pause(&stop, backoff.failed()).await {
                    return;
                }
                continue;
            }
        };
        if jobs.is_empty() {
            let next = match shared.ledger.oldest_processing().await {
                Ok(oldest) => oldest.map(|at| at.saturating_add(interval)),
                Err(_) => Some(now + 1000),
            };
            if !super::wait_for_state(&mut changes, &stop, FileState::Processing, next).await {
                return;
            }
            continue;
        }
        let recorded = futures_util::stream::iter(jobs)
            .take_until(stop.cancelled())
            .map(|job| {
                let shared = shared.clone();
                let stop = stop.clone();
                async move { poll_one(&shared, &job, &stop).await }
            })
            .buffer_unordered(PARALLEL_POLLS)
            .fold(true, |all, ok| async move { all && ok })
            .await;
        // An answer that could not be recorded leaves its record due: do
        // not ask again at once.
        if recorded {
            backoff.ok();
        } else if !super::pause(&stop, backoff.failed()).await {
            return;
        }
    }
}

/// Ask about one asset and record the answer; false if the ledger could
/// not record it.
async fn poll_one(shared: &Shared, job: &PollJob, stop: &CancellationToken) -> bool {
    if stop.is_cancelled() || !shared.gate.wait_open(stop).await {
        return true;
    }
    let result = if past_deadline(job) {
        give_up(shared, job).await
    } else {
        match shared.client.get_asset(&job.asset_id).await {
            Ok(asset) => record_status(shared, job, &asset).await,
            Err(e) => record_poll_error(shared, job, &e).await,
        }
    };
    if let Err(e) = result {
        super::ledger_failed(
            &e,
            &format!("could not record the poll result of file {}", job.id),
        );
        return false;
    }
    true
}

/// Still processing `PROCESSING_DEADLINE_MS` after the upload.
fn past_deadline(job: &PollJob) -> bool {
    job.uploaded_at
        .is_some_and(|at| crate::ledger::now_ms().saturating_sub(at) > PROCESSING_DEADLINE_MS)
}

/// The platform took too long: the record fails.
async fn give_up(shared: &Shared, job: &PollJob) -> Result<(), LedgerError> {
    let msg = format!(
        "the platform did not finish processing asset {} within {} hours",
        job.asset_id,
        PROCESSING_DEADLINE_MS / 3_600_000
    );
    shared
        .ledger
        .fail(job.id, FileState::Processing, &msg)
        .await
}

/// The platform answered with the asset: ready, failed, or still working.
async fn record_status(shared: &Shared, job: &PollJob, asset: &Asset) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    match asset.status() {
        AssetStatus::Ready => {
            if let Some(at) = job.uploaded_at {
                let ms = crate::ledger::now_ms().saturating_sub(at).max(0);
                crate::metrics::processing_finished(ms as f64 / 1000.0);
            }
            ledger.mark_ready(job).await
        }
        AssetStatus::Failed => {
            let why = asset
                .error_message()
                .unwrap_or_else(|| "no reason given".into());
            ledger
                .fail(
                    job.id,
                    FileState::Processing,
                    &format!("the platform could not process it: {why}"),
                )
                .await
        }
        // Still working: go to the back of the line, so that a few
        // slow assets never keep the others from being asked about.
        AssetStatus::Processing | AssetStatus::Other(_) => ledger.touch(job).await,
    }
}

/// The question failed: pause everyone (429, a rejected key), send the
/// file again (the asset is gone), or ask again later.
async fn record_poll_error(
    shared: &Shared,
    job: &PollJob,
    e: &ApiError,
) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    let shown = job
        .path
        .clone()
        .or_else(|| job.url.clone())
        .unwrap_or_default();
    match e.class() {
        ErrorClass::RateLimited { until } => {
            crate::metrics::rate_limited();
            shared
                .gate
                .rate_limited(until.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(5)));
            // Not due again at once, even if the pause is already over
            // (`Retry-After: 0`): no tight loop against the API.
            ledger.touch(job).await
        }
        ErrorClass::Auth => {
            shared.gate.auth_rejected(format!(
                "the API key was rejected by {} ({e}); uploads are paused until it is fixed",
                shared.client.base_url()
            ));
            ledger.touch(job).await
        }
        ErrorClass::NotFound => {
            let failed = u32::try_from(job.attempts + 1).unwrap_or(u32::MAX);
            let msg = format!("the platform no longer has asset {} ({e})", job.asset_id);
            if failed >= shared.policy.max_attempts {
                ledger
                    .fail(
                        job.id,
                        FileState::Processing,
                        &format!("gave up after {failed} attempts: {msg}"),
                    )
                    .await
            } else {
                tracing::warn!(path = %shown, "{msg}; sending it again");
                ledger.asset_lost(job, &msg).await
            }
        }
        ErrorClass::Transient | ErrorClass::Permanent => {
            tracing::debug!(path = %shown, error = %e, "poll failed; will ask again");
            ledger
                .note_poll_error(job, &format!("asking for the asset's status failed: {e}"))
                .await
        }
    }
}
