//! The poller: asks the platform about every `processing` asset each
//! `api.poll_interval` until it is `ready` or `failed`. One task for all
//! records, so waiting for the platform never holds an upload worker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::api::{AssetStatus, ErrorClass};
use crate::ledger::{FileState, PollJob};

/// Assets asked about at once.
const PARALLEL_POLLS: usize = 4;
/// Records looked at per round.
const BATCH: u32 = 500;
/// An asset still processing this long after upload is given up on: the
/// platform's own guidance is seconds to minutes.
const PROCESSING_DEADLINE_MS: i64 = 24 * 3_600_000;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = shared.config.api.poll_interval;
    let mut changes = shared.ledger.subscribe();
    loop {
        // Changes from before this query are covered by it.
        while changes.try_recv().is_ok() {}
        let jobs = match shared.ledger.processing(BATCH).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the ledger; retrying");
                Vec::new()
            }
        };
        if jobs.is_empty() {
            // Nothing to ask about: sleep until something is accepted.
            if !super::wait_for_state(&mut changes, &stop, FileState::Processing, None).await {
                return;
            }
            continue;
        }
        // Give the platform a moment before each round of questions (the
        // first one too: nothing is ready the instant it is uploaded).
        if !super::pause(&stop, interval).await {
            return;
        }
        // Including what was accepted during the pause.
        let jobs = shared.ledger.processing(BATCH).await.unwrap_or(jobs);
        futures_util::stream::iter(jobs)
            .take_until(stop.cancelled())
            .for_each_concurrent(PARALLEL_POLLS, |job| {
                let shared = shared.clone();
                let stop = stop.clone();
                async move { poll_one(&shared, &job, &stop).await }
            })
            .await;
    }
}

async fn poll_one(shared: &Shared, job: &PollJob, stop: &CancellationToken) {
    if stop.is_cancelled() || !shared.gate.wait_open(stop).await {
        return;
    }
    if let Some(at) = job.uploaded_at
        && crate::ledger::now_ms().saturating_sub(at) > PROCESSING_DEADLINE_MS
    {
        let msg = format!(
            "the platform did not finish processing asset {} within {} hours",
            job.asset_id,
            PROCESSING_DEADLINE_MS / 3_600_000
        );
        if let Err(e) = shared
            .ledger
            .fail(job.id, FileState::Processing, &msg)
            .await
        {
            tracing::warn!(file_id = job.id, error = %e, "could not record the poll result");
        }
        return;
    }
    let ledger = &shared.ledger;
    let shown = job
        .path
        .clone()
        .or_else(|| job.url.clone())
        .unwrap_or_default();
    let result = match shared.client.get_asset(&job.asset_id).await {
        Ok(asset) => match asset.status() {
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
        },
        Err(e) => match e.class() {
            ErrorClass::RateLimited { until } => {
                crate::metrics::rate_limited();
                shared.gate.rate_limited(
                    until.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(5)),
                );
                Ok(())
            }
            ErrorClass::Auth => {
                shared.gate.auth_rejected(format!(
                    "the API key was rejected by {} ({e}); uploads are paused until it is fixed",
                    shared.client.base_url()
                ));
                Ok(())
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
        },
    };
    if let Err(e) = result {
        tracing::warn!(file_id = job.id, error = %e, "could not record the poll result");
    }
}
