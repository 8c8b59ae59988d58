//! After `ready`: index the asset into its watch's `index_id`
//! (`POST /indexes/{id}/indexed-assets`), then ask until the indexed asset
//! is ready (`indexing` → `indexed`, or `failed` with the reason).
//! Transient failures are tried again next round, as for uploads.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::api::{ApiError, ErrorClass};
use crate::ledger::FileState;
use crate::ledger::after::IndexJob;

const BATCH: u32 = 100;

pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let stop = &stop;
    let interval = shared.config.api.poll_interval;
    let mut wake = shared.ledger.entries(shared.index_wake());
    let mut backoff = super::retry::LedgerBackoff::default();
    loop {
        wake.take();
        let queues = async {
            let to_submit = shared.ledger.to_index(BATCH).await?;
            Ok::<_, crate::ledger::LedgerError>((to_submit, shared.ledger.indexing(BATCH).await?))
        };
        // A ledger that fails is waited out, not taken for an empty queue.
        let (to_submit, in_progress) = match queues.await {
            Ok(queues) => {
                backoff = super::retry::LedgerBackoff::default();
                queues
            }
            Err(e) => {
                super::ledger_failed(&e, "cannot read the indexing queue from the ledger");
                if !super::pause(stop, backoff.failed()).await {
                    return;
                }
                continue;
            }
        };
        if to_submit.is_empty() && in_progress.is_empty() {
            if !super::wait_for_entries(Some(&mut wake), stop, None).await {
                return;
            }
            continue;
        }
        for job in &to_submit {
            if stop.is_cancelled() || !shared.gate.before_request(stop).await {
                return;
            }
            submit(&shared, job, stop).await;
        }
        for job in &in_progress {
            if stop.is_cancelled() || !shared.gate.wait_open(stop).await {
                return;
            }
            check(&shared, job).await;
        }
        if !super::pause(stop, interval).await {
            return;
        }
    }
}

async fn submit(shared: &Shared, job: &IndexJob, stop: &CancellationToken) {
    let result = match shared
        .client
        .index_asset(&job.index_id, &job.asset_id)
        .await
    {
        Ok(indexed) => match indexed.id.filter(|id| !id.is_empty()) {
            // Held until the ledger takes it: submitting again would index
            // the asset twice.
            Some(id) => {
                super::until_recorded(stop, "could not record the indexing request", || {
                    shared.ledger.start_indexing(job, &id)
                })
                .await
            }
            None => {
                shared
                    .ledger
                    .note_index_error(job.id, "the index answered without an indexed asset id")
                    .await
            }
        },
        Err(e) => on_error(shared, job, FileState::Ready, &e).await,
    };
    if let Err(e) = result {
        super::ledger_failed(
            &e,
            &format!("could not record the indexing result of file {}", job.id),
        );
    }
}

async fn check(shared: &Shared, job: &IndexJob) {
    let Some(indexed_id) = job.indexed_asset_id.as_deref() else {
        return;
    };
    let result = match shared.client.indexed_asset(&job.index_id, indexed_id).await {
        Ok(indexed) => match indexed.status.as_deref() {
            Some("ready") => shared.ledger.mark_indexed(job).await,
            Some("failed") => {
                shared
                    .ledger
                    .fail(
                        job.id,
                        FileState::Indexing,
                        &format!("indexing into {} failed", job.index_id),
                    )
                    .await
            }
            _ => Ok(()),
        },
        Err(e) => on_error(shared, job, FileState::Indexing, &e).await,
    };
    if let Err(e) = result {
        super::ledger_failed(
            &e,
            &format!("could not record the indexing result of file {}", job.id),
        );
    }
}

async fn on_error(
    shared: &Shared,
    job: &IndexJob,
    state: FileState,
    e: &ApiError,
) -> Result<(), crate::ledger::LedgerError> {
    match e.class() {
        ErrorClass::RateLimited { until } => {
            crate::metrics::rate_limited();
            shared
                .gate
                .rate_limited(until.unwrap_or_else(|| SystemTime::now() + Duration::from_secs(5)));
            Ok(())
        }
        ErrorClass::Auth => {
            shared.gate.auth_rejected(format!(
                "the API key was rejected by {} ({e}); uploads are paused until it is fixed",
                shared.client.base_url()
            ));
            Ok(())
        }
        ErrorClass::Transient => {
            shared
                .ledger
                .note_index_error(job.id, &format!("indexing: {e}; will try again"))
                .await
        }
        // The index or the asset does not exist, or the request is wrong:
        // it will not work by trying again.
        ErrorClass::Permanent | ErrorClass::NotFound => match state {
            FileState::Indexing => {
                shared
                    .ledger
                    .fail(
                        job.id,
                        state,
                        &format!("indexing into {} failed: {e}", job.index_id),
                    )
                    .await
            }
            _ => {
                shared
                    .ledger
                    .refuse_indexing(
                        job.id,
                        &format!("indexing into {} refused: {e}", job.index_id),
                    )
                    .await
            }
        },
    }
}
