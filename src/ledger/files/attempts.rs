//! How an upload attempt ends: accepted (the asset id committed first),
//! back to the queue, ended unsent, or the file changed under it. Each
//! closes the attempt's row in the same transaction.

use super::{expect_one, release_duplicates_tx, to_i64};
use crate::ledger::engine::{Q, Tx, stmt};
use crate::ledger::files::NewFile;
use crate::ledger::files::UploadJob;
use crate::ledger::state::{Event, FileState, sql_list};
use crate::ledger::{Change, Ledger, LedgerError, now_ms};

/// How an attempt ended.
#[derive(Debug, Clone, Default)]
pub struct AttemptEnd {
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub bytes_sent: u64,
    pub error: Option<String>,
}

async fn end_attempt_tx(
    conn: &mut Tx,
    attempt_id: i64,
    end: &AttemptEnd,
) -> Result<(), LedgerError> {
    end_attempt(attempt_id, end).execute(conn).await?;
    Ok(())
}

/// The statement that ends an attempt.
fn end_attempt(attempt_id: i64, end: &AttemptEnd) -> Q {
    stmt(
        "UPDATE attempts SET ended_at = $2, outcome = $3, http_status = $4, bytes_sent = $5, \
         error = $6 WHERE id = $1",
    )
    .bind(attempt_id)
    .bind(now_ms())
    .bind(end.outcome)
    .bind(end.http_status.map(i64::from))
    .bind(to_i64(end.bytes_sent))
    .bind(&end.error)
}

impl Ledger {
    /// The platform holds an asset for this upload: commit its id before
    /// anything else happens. `uploading` → `processing`.
    pub async fn accept(
        &self,
        job: &UploadJob,
        asset_id: &str,
        end: &AttemptEnd,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(Event::Accepted)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        // One statement for the record and its duplicates, which point at
        // the asset as soon as it exists. The record's part is fenced in
        // the statement itself (see `still_mine`, which says why when it
        // matches nothing): over many small files every statement of an
        // upload counts (BENCHMARKS.md, S1).
        let update = self.accept_update(job, asset_id, now);
        // On SQLite the attempt's end rides along (one round trip to the
        // connection's thread); a fenced record rolls it back with the rest.
        let chained = !self.pool.is_postgres();
        let updated: Vec<(i64,)> = match chained {
            true => update.then(end_attempt(job.attempt_id, end)),
            false => update,
        }
        .fetch_all_written(&mut tx)
        .await?;
        if !updated.contains(&(job.id,)) {
            // The transaction is dropped: the duplicates are left as they were.
            self.still_mine(&mut tx, job).await?;
            return Err(LedgerError::Conflict {
                id: job.id,
                expected: from.as_str(),
            });
        }
        if !chained {
            end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        }
        // Test-only: the disk fills between the 201 and this commit (see
        // ledger/health.rs; nothing happens unless its variable is set).
        self.pool.health().fault_point("ledger-full-on-accept");
        tx.commit().await?;
        self.announce_accepted(job, asset_id, to);
        Ok(())
    }

    fn announce_accepted(&self, job: &UploadJob, asset_id: &str, to: FileState) {
        self.announce(Change {
            id: job.id,
            path: job.display(),
            state: to,
            asset_id: Some(asset_id.to_string()),
            detail: None,
        });
    }

    /// The acceptance's update of the record (fenced: its state, epoch and,
    /// on a shared ledger, owner) and of its duplicates, `RETURNING id`.
    fn accept_update(&self, job: &UploadJob, asset_id: &str, now: i64) -> Q {
        let owner = self.me_id().filter(|_| self.pool.is_postgres());
        // The state it is held in is written in (see `engine::stmt`).
        stmt(format!(
            "UPDATE files SET asset_id = $3, updated_at = $4, \
             state = CASE WHEN id = $1 THEN $2 ELSE state END, \
             attempts = CASE WHEN id = $1 THEN attempts + 1 ELSE attempts END, \
             last_error = CASE WHEN id = $1 THEN NULL ELSE last_error END, \
             lookup_first = CASE WHEN id = $1 THEN FALSE ELSE lookup_first END, \
             uploaded_at = CASE WHEN id = $1 THEN $4 ELSE uploaded_at END, \
             sha256 = CASE WHEN id = $1 THEN coalesce(sha256, $5) ELSE sha256 END \
             WHERE (id = $1 AND state = {held} AND epoch = $6 AND ($7 IS NULL OR claimed_by = $7)) \
             OR duplicate_of = $1 RETURNING id",
            held = sql_list(&[FileState::Uploading]),
        ))
        .bind(job.id)
        .bind(FileState::Processing.as_str())
        .bind(asset_id)
        .bind(now)
        .bind(&job.sha256)
        .bind(job.epoch)
        .bind(owner)
    }

    /// [`Ledger::accept`] for several uploads of one worker (small files
    /// sent one after another), in one transaction: one commit and a few
    /// round trips for all instead of each (BENCHMARKS.md, S1). Per upload,
    /// in order: recorded, or `Conflict` if this attempt no longer holds
    /// its record (nothing of it is written). An error of the transaction
    /// itself records none.
    pub async fn accept_all(
        &self,
        uploads: &[(&UploadJob, &str, &AttemptEnd)],
    ) -> Result<Vec<Result<(), LedgerError>>, LedgerError> {
        if let [(job, asset_id, end)] = uploads {
            return match self.accept(job, asset_id, end).await {
                Err(e @ LedgerError::Conflict { .. }) => Ok(vec![Err(e)]),
                other => other.map(|()| vec![Ok(())]),
            };
        }
        let from = FileState::Uploading;
        let to = from.on(Event::Accepted)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        // Which records this attempt still holds, checked inside the
        // writing transaction (a takeover cannot come in between): only
        // theirs are written, so a fenced one touches no duplicate.
        let mut q = stmt("SELECT id, epoch, claimed_by, state FROM files WHERE id IN (");
        q.push_ids(uploads.iter().map(|(job, _, _)| job.id));
        q.push(")");
        let rows: Vec<(i64, i64, Option<i64>, String)> = q.fetch_all(&mut tx).await?;
        let me = self.me_id().filter(|_| self.pool.is_postgres());
        let held: Vec<bool> = uploads
            .iter()
            .map(|(job, _, _)| {
                rows.iter().any(|(id, epoch, owner, state)| {
                    *id == job.id
                        && *epoch == job.epoch
                        && state == from.as_str()
                        && (me.is_none() || *owner == me)
                })
            })
            .collect();
        let mut updated: Vec<i64> = Vec::new();
        let mut chain: Option<Q> = None;
        for ((job, asset_id, end), _) in uploads.iter().zip(&held).filter(|(_, h)| **h) {
            let update = self.accept_update(job, asset_id, now);
            if self.pool.is_postgres() {
                let ids: Vec<(i64,)> = update.fetch_all_written(&mut tx).await?;
                updated.extend(ids.into_iter().map(|(id,)| id));
                end_attempt_tx(&mut tx, job.attempt_id, end).await?;
            } else {
                // SQLite: every statement in one round trip.
                let both = update.then(end_attempt(job.attempt_id, end));
                chain = Some(match chain {
                    Some(c) => c.then(both),
                    None => both,
                });
            }
        }
        if let Some(chain) = chain {
            let ids: Vec<(i64,)> = chain.fetch_all_written(&mut tx).await?;
            updated.extend(ids.into_iter().map(|(id,)| id));
        }
        let all_written = uploads
            .iter()
            .zip(&held)
            .all(|((job, _, _), h)| !*h || updated.contains(&job.id));
        if !all_written {
            return Err(LedgerError::Corrupt(
                "a record checked as held was not updated".into(),
            ));
        }
        self.pool.health().fault_point("ledger-full-on-accept");
        tx.commit().await?;
        let mut results = Vec::with_capacity(uploads.len());
        for ((job, asset_id, _), h) in uploads.iter().zip(held) {
            if h {
                self.announce_accepted(job, asset_id, to);
                results.push(Ok(()));
            } else {
                results.push(Err(LedgerError::Conflict {
                    id: job.id,
                    expected: "claimed by this attempt",
                }));
            }
        }
        Ok(results)
    }

    /// Back to the queue after a failed attempt: `uploading` → `queued`,
    /// due at `next_at`. `counted` says whether the attempt counts against
    /// `max_attempts` (a rate limit or a rejected key does not);
    /// `lookup_first` whether the platform may have received it.
    pub async fn retry_later(
        &self,
        job: &UploadJob,
        end: &AttemptEnd,
        next_at: i64,
        counted: bool,
        lookup_first: bool,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(Event::Retry)?;
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            // An interrupted attempt says nothing about the file: keep the
            // error that explains why it is waiting (a rejected key, say).
            "UPDATE files SET state = $3, attempts = attempts + $4, next_attempt_at = $5, \
             last_error = CASE WHEN $9 = 'interrupted' THEN last_error ELSE $6 END, \
             lookup_first = (lookup_first OR $7), updated_at = $8 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(i64::from(counted))
        .bind(next_at)
        .bind(&end.error)
        .bind(lookup_first)
        .bind(now_ms())
        .bind(end.outcome)
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, end.error.clone());
        Ok(())
    }

    /// The attempt ended the record: `uploading` → `failed` (counted) or
    /// `skipped` (not eligible after all).
    pub async fn finish_unsent(
        &self,
        job: &UploadJob,
        event: Event,
        end: &AttemptEnd,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(event)?;
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            "UPDATE files SET state = $3, attempts = attempts + $4, last_error = $5, \
             updated_at = $6 WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(i64::from(to == FileState::Failed))
        .bind(&end.error)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        let released = release_duplicates_tx(&mut tx, job.id).await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, end.error.clone());
        self.announce_requeued(released);
        Ok(())
    }

    /// The file changed on disk during its attempt: `uploading` →
    /// `discovered`, to be checked and hashed again with its new stat.
    pub async fn changed_during_upload(
        &self,
        job: &UploadJob,
        end: &AttemptEnd,
        stat: Option<&NewFile>,
    ) -> Result<(), LedgerError> {
        let from = FileState::Uploading;
        let to = from.on(Event::Changed)?;
        let mut tx = self.begin().await?;
        self.still_mine(&mut tx, job).await?;
        let done = stmt(
            "UPDATE files SET state = $3, sha256 = NULL, mime = NULL, last_error = $4, \
             next_attempt_at = 0, size = coalesce($5, size), mtime_ns = coalesce($6, mtime_ns), \
             device = coalesce($7, device), inode = coalesce($8, inode), updated_at = $9 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(&end.error)
        .bind(stat.map(|s| to_i64(s.size)))
        .bind(stat.map(|s| s.mtime_ns))
        .bind(stat.map(|s| to_i64(s.device)))
        .bind(stat.map(|s| to_i64(s.inode)))
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        end_attempt_tx(&mut tx, job.attempt_id, end).await?;
        let released = release_duplicates_tx(&mut tx, job.id).await?;
        tx.commit().await?;
        self.changed(job.id, job.display(), to, end.error.clone());
        self.announce_requeued(released);
        Ok(())
    }
}
