//! Records whose asset the platform is processing: which to ask about,
//! and what its answer does (ready, still processing, lost), one record at
//! a time or a poll round's records in one transaction.

use sqlx::FromRow;

use super::expect_one;
use crate::ledger::engine::stmt;
use crate::ledger::state::{Event, FileState};
use crate::ledger::{Change, Ledger, LedgerError, now_ms};

/// A record whose asset is processing on the platform.
#[derive(Debug, Clone, FromRow)]
pub struct PollJob {
    pub id: i64,
    pub asset_id: String,
    pub uploaded_at: Option<i64>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub attempts: i64,
    /// When the asset was accepted or last asked about (Unix ms).
    pub updated_at: i64,
}

/// `processing` → `ready` for one record, if it is still `processing`.
const MARK_READY: &str = "UPDATE files SET state = $3, ready_at = $4, updated_at = $4, \
     last_error = NULL WHERE id = $1 AND state = $2";

impl PollJob {
    /// The change a record makes on entering `to`, for the ledger's subscribers.
    fn change(&self, to: FileState) -> Change {
        Change {
            id: self.id,
            path: self
                .path
                .clone()
                .or_else(|| self.url.clone())
                .unwrap_or_default(),
            state: to,
            asset_id: Some(self.asset_id.clone()),
            detail: None,
        }
    }
}

impl Ledger {
    /// Records whose asset is processing and that were accepted or last
    /// asked about at or before `cutoff` (Unix ms), least recently first.
    pub async fn processing(&self, limit: u32, cutoff: i64) -> Result<Vec<PollJob>, LedgerError> {
        Ok(stmt(format!(
            "SELECT id, asset_id, uploaded_at, path, url, attempts, updated_at FROM files \
             WHERE state = 'processing' AND asset_id IS NOT NULL AND updated_at <= $1{} \
             ORDER BY updated_at, id LIMIT {limit}",
            self.followed_by_me()
        ))
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?)
    }

    /// When the least recently asked-about `processing` record was last
    /// accepted or asked about (Unix ms), if any.
    pub async fn oldest_processing(&self) -> Result<Option<i64>, LedgerError> {
        Ok(stmt(
            "SELECT MIN(updated_at) FROM files WHERE state = 'processing' AND asset_id IS NOT NULL",
        )
        .scalar_one(&self.pool)
        .await?)
    }

    /// The platform says ready: `processing` → `ready`.
    pub async fn mark_ready(&self, job: &PollJob) -> Result<(), LedgerError> {
        let from = FileState::Processing;
        let to = from.on(Event::Ready)?;
        let now = now_ms();
        let done = stmt(MARK_READY)
            .bind(job.id)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(now)
            .execute(&self.pool)
            .await?;
        expect_one(done, job.id, from)?;
        self.announce(job.change(to));
        Ok(())
    }

    /// The platform says ready for each of these (one poll round's answer):
    /// `processing` → `ready`, all in one statement. A record that is no
    /// longer `processing` (retried or forgotten meanwhile) is left as it
    /// is. Returns the records that moved.
    pub async fn mark_ready_all<'a>(
        &self,
        jobs: &[&'a PollJob],
    ) -> Result<Vec<&'a PollJob>, LedgerError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let from = FileState::Processing;
        let to = from.on(Event::Ready)?;
        let now = now_ms();
        // One statement for the round: each statement is a round trip to
        // the connection's thread (BENCHMARKS.md, S1).
        // `processing` → `ready` for those still `processing`, found by id.
        let mut q = stmt(format!(
            "UPDATE files SET state = $2, ready_at = $3, updated_at = $3, last_error = NULL \
             WHERE {} = $1 AND id IN (",
            self.pool.checked_only("state")
        ));
        q = q.bind(from.as_str()).bind(to.as_str()).bind(now);
        q.push_ids(jobs.iter().map(|j| j.id));
        q.push(") RETURNING id");
        let mut tx = self.begin().await?;
        let ids: Vec<(i64,)> = q.fetch_all_written(&mut tx).await?;
        let moved: Vec<&PollJob> = jobs
            .iter()
            .copied()
            .filter(|j| ids.contains(&(j.id,)))
            .collect();
        tx.commit().await?;
        for job in &moved {
            self.announce(job.change(to));
        }
        Ok(moved)
    }

    /// Each still processing (one poll round's answer): move them to the
    /// back of the polling order, in one statement.
    pub async fn touch_all(&self, jobs: &[&PollJob]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut q = stmt(format!(
            "UPDATE files SET updated_at = $1 WHERE {} = 'processing' AND id IN (",
            self.pool.checked_only("state")
        ));
        q = q.bind(now_ms());
        q.push_ids(jobs.iter().map(|j| j.id));
        q.push(")");
        let mut tx = self.begin().await?;
        q.execute(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Still processing: move it to the back of the polling order.
    pub async fn touch(&self, job: &PollJob) -> Result<(), LedgerError> {
        stmt("UPDATE files SET updated_at = $2 WHERE id = $1 AND state = 'processing'")
            .bind(job.id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Still processing, but asking failed: note why, and poll again later.
    pub async fn note_poll_error(&self, job: &PollJob, error: &str) -> Result<(), LedgerError> {
        stmt(
            "UPDATE files SET last_error = $2, updated_at = $3 WHERE id = $1 AND state = 'processing'",
        )
        .bind(job.id)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The platform lost the asset before it was ready: `processing` →
    /// `queued`, to be sent again (counted as an attempt).
    pub async fn asset_lost(&self, job: &PollJob, error: &str) -> Result<(), LedgerError> {
        let from = FileState::Processing;
        let to = from.on(Event::Retry)?;
        let mut tx = self.begin().await?;
        let now = now_ms();
        let done = stmt(
            "UPDATE files SET state = $3, asset_id = NULL, uploaded_at = NULL, \
             attempts = attempts + 1, last_error = $4, next_attempt_at = 0, updated_at = $5 \
             WHERE id = $1 AND state = $2",
        )
        .bind(job.id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(error)
        .bind(now)
        .execute(&mut tx)
        .await?;
        expect_one(done, job.id, from)?;
        stmt("UPDATE files SET asset_id = NULL, updated_at = $2 WHERE duplicate_of = $1")
            .bind(job.id)
            .bind(now)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        self.changed(
            job.id,
            job.path
                .clone()
                .or_else(|| job.url.clone())
                .unwrap_or_default(),
            to,
            Some(error.to_string()),
        );
        Ok(())
    }
}
