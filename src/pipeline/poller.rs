//! The poller: asks the platform about every `processing` asset one
//! `api.poll_interval` after it was accepted and after each answer, until
//! it is `ready` or `failed`. One task for all records, so waiting for the
//! platform never holds an upload worker.
//!
//! The assets due are asked about together, up to [`MAX_LIST_IDS`] in one
//! `GET /assets?asset_ids=…`, so a round of N assets costs ceil(N / 50)
//! requests of the rate limit instead of N (README.md, "What happens to a
//! file"). An asset the list leaves out is asked about alone
//! (`GET /assets/{id}`): only that answer's 404 says it is gone, so a list
//! that lags or lies never fails a file (RELIABILITY.md, "3. Server lies").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::api::{ApiError, Asset, AssetStatus, ErrorClass, MAX_LIST_IDS};
use crate::ledger::{FileState, LedgerError, PollJob};

/// Requests to the platform at once.
const PARALLEL_POLLS: usize = 4;
/// Records looked at per round.
const BATCH: u32 = 500;
/// An asset still processing this long after upload is given up on: the
/// platform's own guidance is seconds to minutes.
const PROCESSING_DEADLINE_MS: i64 = 24 * 3_600_000;
/// A round with fewer records due than fill one request waits until its
/// oldest has been due for this share of `poll_interval` (at most
/// [`MAX_GATHER_MS`]), so that uploads accepted a moment apart share their
/// requests instead of costing one each. Nothing is asked about earlier
/// than one interval after its last answer.
const GATHER_DIVISOR: i64 = 10;
const MAX_GATHER_MS: i64 = 1000;

/// Whether a refused list (a server or proxy that does not take
/// `asset_ids`) was already logged: it is said once, not every round.
static LIST_REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = i64::try_from(shared.config.api.poll_interval.as_millis()).unwrap_or(i64::MAX);
    let gather = (interval / GATHER_DIVISOR).min(MAX_GATHER_MS);
    let mut processing = shared.ledger.entries(&[FileState::Processing]);
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        // Changes from before this query are covered by it.
        processing.take();
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
            // A record accepted from now on is due an interval from now,
            // after the oldest: only the first, when none is processing,
            // is worth waking for (not every upload, which would cost two
            // queries each).
            let wake_on = next.is_none().then_some(&mut processing);
            if !super::wait_for_entries(wake_on, &stop, next).await {
                return;
            }
            continue;
        }
        if let Some(at) = gather_until(&jobs, now, interval, gather) {
            // Records accepted meanwhile fall due after `at`: not worth waking for.
            if !super::wait_for_entries(None, &stop, Some(at)).await {
                return;
            }
            continue;
        }
        // An answer that could not be recorded leaves its record due: do
        // not ask again at once.
        if poll_round(&shared, &jobs, &stop).await {
            backoff.ok();
        } else if !super::pause(&stop, backoff.failed()).await {
            return;
        }
    }
}

/// Until when a round of `jobs` (due, oldest first) waits for more records
/// to fall due: `None` to ask now (a full request's worth is due, or the
/// oldest has waited `gather` ms past its interval).
fn gather_until(jobs: &[PollJob], now: i64, interval: i64, gather: i64) -> Option<i64> {
    if jobs.len() >= MAX_LIST_IDS {
        return None;
    }
    let at = jobs
        .first()?
        .updated_at
        .saturating_add(interval)
        .saturating_add(gather);
    (at > now).then_some(at)
}

/// Ask about one round's records, [`MAX_LIST_IDS`] per request, and record
/// the answers; false if the ledger could not record some of them.
async fn poll_round(shared: &Arc<Shared>, jobs: &[PollJob], stop: &CancellationToken) -> bool {
    let mut recorded = true;
    let mut ask = Vec::with_capacity(jobs.len());
    for job in jobs {
        if stop.is_cancelled() {
            return recorded;
        }
        if past_deadline(job) {
            recorded &= record(give_up(shared, job).await, job);
        } else {
            ask.push(job.clone());
        }
    }
    let batches: Vec<Vec<PollJob>> = ask.chunks(MAX_LIST_IDS).map(<[_]>::to_vec).collect();
    futures_util::stream::iter(batches)
        .take_until(stop.cancelled())
        .map(|batch| {
            let shared = shared.clone();
            let stop = stop.clone();
            async move { poll_batch(&shared, &batch, &stop).await }
        })
        .buffer_unordered(PARALLEL_POLLS)
        .fold(recorded, |all, ok| async move { all && ok })
        .await
}

/// Ask about up to [`MAX_LIST_IDS`] records in one request and record the
/// answers; the records the answer leaves out are asked about alone.
async fn poll_batch(shared: &Arc<Shared>, batch: &[PollJob], stop: &CancellationToken) -> bool {
    if stop.is_cancelled() || !shared.gate.wait_open(stop).await {
        return true;
    }
    let ids: Vec<&str> = batch.iter().map(|job| job.asset_id.as_str()).collect();
    let found = match shared.client.assets_by_ids(&ids).await {
        Ok(found) => found,
        // The list itself was refused (4xx): that says nothing of the
        // assets. Ask about each alone.
        Err(e) if matches!(e.class(), ErrorClass::NotFound | ErrorClass::Permanent) => {
            if !LIST_REFUSED_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "the platform refused to list assets by id; asking about each asset alone");
            }
            return poll_each(shared, batch.to_vec(), stop).await;
        }
        Err(e) => {
            return match record_batch_error(shared, batch, &e).await {
                Ok(()) => true,
                Err(le) => {
                    super::ledger_failed(&le, "could not record a failed poll");
                    false
                }
            };
        }
    };
    let (mut ready, mut waiting, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    let mut recorded = true;
    for job in batch {
        let Some(asset) = found.get(&job.asset_id) else {
            alone.push(job.clone());
            continue;
        };
        match asset.status() {
            AssetStatus::Ready => ready.push(job),
            AssetStatus::Failed => recorded &= record(record_failed(shared, job, asset).await, job),
            // Still working: go to the back of the line, so that a few
            // slow assets never keep the others from being asked about.
            AssetStatus::Processing | AssetStatus::Other(_) => waiting.push(job),
        }
    }
    recorded &= record_ready(shared, &ready).await;
    if let Err(e) = shared.ledger.touch_all(&waiting).await {
        super::ledger_failed(&e, "could not record that assets are still processing");
        recorded = false;
    }
    if !alone.is_empty() {
        tracing::debug!(
            assets = alone.len(),
            "assets missing from the list's answer; asking about each alone"
        );
        recorded &= poll_each(shared, alone, stop).await;
    }
    recorded
}

/// Ask about each record alone (`GET /assets/{id}`).
async fn poll_each(shared: &Arc<Shared>, jobs: Vec<PollJob>, stop: &CancellationToken) -> bool {
    futures_util::stream::iter(jobs)
        .take_until(stop.cancelled())
        .map(|job| {
            let shared = shared.clone();
            let stop = stop.clone();
            async move { poll_one(&shared, &job, &stop).await }
        })
        .buffer_unordered(PARALLEL_POLLS)
        .fold(true, |all, ok| async move { all && ok })
        .await
}

/// Ask about one asset and record the answer; false if the ledger could
/// not record it.
async fn poll_one(shared: &Shared, job: &PollJob, stop: &CancellationToken) -> bool {
    if stop.is_cancelled() || !shared.gate.wait_open(stop).await {
        return true;
    }
    let result = match shared.client.get_asset(&job.asset_id).await {
        Ok(asset) => record_status(shared, job, &asset).await,
        Err(e) => record_poll_error(shared, job, &e).await,
    };
    record(result, job)
}

/// Whether a poll result was recorded; logs why not.
fn record(result: Result<(), LedgerError>, job: &PollJob) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            super::ledger_failed(
                &e,
                &format!("could not record the poll result of file {}", job.id),
            );
            false
        }
    }
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

/// How long the platform took, for the processing-time metric.
fn processing_finished(job: &PollJob) {
    if let Some(at) = job.uploaded_at {
        let ms = crate::ledger::now_ms().saturating_sub(at).max(0);
        crate::metrics::processing_finished(ms as f64 / 1000.0);
    }
}

/// A list said these are ready: all recorded in one transaction.
async fn record_ready(shared: &Shared, jobs: &[&PollJob]) -> bool {
    match shared.ledger.mark_ready_all(jobs).await {
        Ok(moved) => {
            moved.iter().copied().for_each(processing_finished);
            if moved.len() < jobs.len() {
                tracing::debug!(
                    left = jobs.len() - moved.len(),
                    "ready assets whose records were no longer processing (retried or forgotten meanwhile)"
                );
            }
            true
        }
        Err(e) => {
            super::ledger_failed(
                &e,
                &format!("could not record that {} assets are ready", jobs.len()),
            );
            false
        }
    }
}

/// The platform could not process the asset: the record fails.
async fn record_failed(shared: &Shared, job: &PollJob, asset: &Asset) -> Result<(), LedgerError> {
    let why = asset
        .error_message()
        .unwrap_or_else(|| "no reason given".into());
    shared
        .ledger
        .fail(
            job.id,
            FileState::Processing,
            &format!("the platform could not process it: {why}"),
        )
        .await
}

/// The platform answered with the asset: ready, failed, or still working.
async fn record_status(shared: &Shared, job: &PollJob, asset: &Asset) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    match asset.status() {
        AssetStatus::Ready => {
            processing_finished(job);
            ledger.mark_ready(job).await
        }
        AssetStatus::Failed => record_failed(shared, job, asset).await,
        // Still working: to the back of the line (see `poll_batch`).
        AssetStatus::Processing | AssetStatus::Other(_) => ledger.touch(job).await,
    }
}

/// A 429 or a rejected key pauses every request (through the gate); true
/// if `e` was one of those.
fn pause_requests(shared: &Shared, e: &ApiError) -> bool {
    match e.class() {
        ErrorClass::RateLimited { until } => {
            crate::metrics::rate_limited();
            shared
                .gate
                .rate_limited(until.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(5)));
            true
        }
        ErrorClass::Auth => {
            shared.gate.auth_rejected(format!(
                "the API key was rejected by {} ({e}); uploads are paused until it is fixed",
                shared.client.base_url()
            ));
            true
        }
        ErrorClass::Transient | ErrorClass::Permanent | ErrorClass::NotFound => false,
    }
}

/// Where a record's file is, for the logs.
fn shown(job: &PollJob) -> String {
    job.path
        .clone()
        .or_else(|| job.url.clone())
        .unwrap_or_default()
}

/// The list request failed: pause everyone (429, a rejected key), or ask
/// again later. Its records are all still processing, as far as anyone
/// knows.
async fn record_batch_error(
    shared: &Shared,
    batch: &[PollJob],
    e: &ApiError,
) -> Result<(), LedgerError> {
    if pause_requests(shared, e) {
        // Not due again at once, even if the pause is already over
        // (`Retry-After: 0`): no tight loop against the API.
        let jobs: Vec<&PollJob> = batch.iter().collect();
        return shared.ledger.touch_all(&jobs).await;
    }
    tracing::debug!(assets = batch.len(), error = %e, "poll failed; will ask again");
    let msg = format!("asking for the asset's status failed: {e}");
    for job in batch {
        shared.ledger.note_poll_error(job, &msg).await?;
    }
    Ok(())
}

/// The question about one asset failed: pause everyone (429, a rejected
/// key), send the file again (the asset is gone), or ask again later.
async fn record_poll_error(
    shared: &Shared,
    job: &PollJob,
    e: &ApiError,
) -> Result<(), LedgerError> {
    let ledger = &shared.ledger;
    if pause_requests(shared, e) {
        // Not due again at once (see `record_batch_error`).
        return ledger.touch(job).await;
    }
    match e.class() {
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
                tracing::warn!(path = %shown(job), "{msg}; sending it again");
                ledger.asset_lost(job, &msg).await
            }
        }
        _ => {
            tracing::debug!(path = %shown(job), error = %e, "poll failed; will ask again");
            ledger
                .note_poll_error(job, &format!("asking for the asset's status failed: {e}"))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(updated_at: i64) -> PollJob {
        PollJob {
            id: 1,
            asset_id: "a".into(),
            uploaded_at: Some(updated_at),
            path: None,
            url: None,
            attempts: 0,
            updated_at,
        }
    }

    #[test]
    fn a_round_waits_for_others_only_while_its_oldest_is_barely_due() {
        // Due at 1000 + 400; waits until 1440 for others falling due.
        assert_eq!(gather_until(&[job(1000)], 1400, 400, 40), Some(1440));
        assert_eq!(gather_until(&[job(1000)], 1440, 400, 40), None);
        assert_eq!(gather_until(&[], 1400, 400, 40), None);
        // A full request's worth goes at once.
        let full: Vec<PollJob> = (0..MAX_LIST_IDS).map(|_| job(1000)).collect();
        assert_eq!(gather_until(&full, 1400, 400, 40), None);
    }
}
