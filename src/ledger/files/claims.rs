//! A worker's claim on a `queued` record (fencing epoch, lease, the
//! attempt row it opens), what the claim may write while it holds it, and
//! start-up recovery of claims a previous run left behind.

use sqlx::FromRow;

use super::new_stamp;
use crate::ledger::engine::{Q, Tx, stmt};
use crate::ledger::fleet::PG_NOW;
use crate::ledger::state::{Event, FileState, sql_list};
use crate::ledger::{Ledger, LedgerError, now_ms};

/// A claimed record, for one upload attempt.
#[derive(Debug, Clone, FromRow)]
pub struct UploadJob {
    pub id: i64,
    #[sqlx(default)]
    pub attempt_id: i64,
    pub path_bytes: Option<Vec<u8>>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub size: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub device: Option<i64>,
    pub inode: Option<i64>,
    pub sha256: Option<String>,
    pub mime: Option<String>,
    pub user_metadata: Option<String>,
    pub attempts: i64,
    pub lookup_first: bool,
    pub filename: Option<String>,
    /// This claim's token (fencing): every write of the attempt names it,
    /// and the ledger refuses it once the record was claimed again.
    #[sqlx(default)]
    pub epoch: i64,
    /// A URL record's own stamp, sent in `user_metadata` to find its asset.
    #[sqlx(default)]
    pub stamp: Option<String>,
}

impl UploadJob {
    pub fn display(&self) -> String {
        self.path
            .clone()
            .or_else(|| self.url.clone())
            .unwrap_or_default()
    }
}

/// How long after an upload was cut off (a crash, a shutdown) the platform
/// is searched for it: a request whose body had reached the server may
/// still become an asset a moment after the client is gone, and a lookup
/// made before that would send the file twice.
pub const LOOKUP_DELAY_MS: i64 = 3000;

/// How many small files one claim may take at once
/// ([`Ledger::claim_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimBatch {
    /// The most records one claim takes (1: no batching).
    pub max: usize,
    /// Only files of at most this many bytes are taken together.
    pub small_bytes: i64,
    /// Extra records are taken only while at least this many more are due,
    /// so that a short queue is spread over every worker.
    pub deep: usize,
}

impl ClaimBatch {
    pub const ONE: ClaimBatch = ClaimBatch {
        max: 1,
        small_bytes: 0,
        deep: 0,
    };
}

impl Ledger {
    /// Claim the oldest due `queued` record for an upload attempt, for
    /// this daemon (`claimed_by`), with a lease of `lease_ms` on a shared
    /// ledger, where a daemon claims only files it can see.
    pub async fn claim(&self, lease_ms: i64) -> Result<Option<UploadJob>, LedgerError> {
        Ok(self
            .claim_batch(lease_ms, ClaimBatch::ONE)
            .await?
            .into_iter()
            .next())
    }

    /// [`Ledger::claim`], and when that record is a small file and the
    /// queue is deep, more small files due after it, up to `batch.max`, in
    /// the same transaction: over many small files the claim's statements
    /// and commit are most of the ledger's work for each (BENCHMARKS.md,
    /// S1). Each record gets its own attempt and epoch; the worker sends
    /// them one after another and gives back what it did not start
    /// ([`Ledger::unclaim`]).
    pub async fn claim_batch(
        &self,
        lease_ms: i64,
        batch: ClaimBatch,
    ) -> Result<Vec<UploadJob>, LedgerError> {
        let from = FileState::Queued;
        let to = from.on(Event::Claim)?;
        let now = now_ms();
        let mut tx = self.pool.begin_claim().await?;
        let head: Option<UploadJob> = self
            .claim_query(to, lease_ms, now, "1", "")
            .fetch_optional(&mut tx)
            .await?;
        let Some(head) = head else {
            tx.commit().await?;
            return Ok(Vec::new());
        };
        let small = |j: &UploadJob| {
            j.url.is_none()
                && j.path_bytes.is_some()
                && j.size.unwrap_or(i64::MAX) <= batch.small_bytes
        };
        let batched = batch.max > 1 && small(&head);
        let mut jobs = vec![head];
        if batched {
            // Only while `deep` more are due after these: the count stops
            // there, so it costs the same on a queue of any length.
            let only = format!(
                " AND path_bytes IS NOT NULL AND size <= {} \
                 AND (SELECT count(*) FROM (SELECT 1 FROM files WHERE state = {queued} \
                   AND next_attempt_at <= $3 LIMIT {deep}) AS due) >= {deep}",
                batch.small_bytes,
                deep = batch.deep,
                queued = sql_list(&[FileState::Queued]),
            );
            let mut more: Vec<UploadJob> = self
                .claim_query(to, lease_ms, now, &(batch.max - 1).to_string(), &only)
                .fetch_all(&mut tx)
                .await?;
            more.sort_by_key(|j| j.id);
            jobs.extend(more);
        }
        self.open_attempts(&mut tx, &mut jobs, now).await?;
        tx.commit().await?;
        for job in &jobs {
            self.changed(job.id, job.display(), to, None);
        }
        Ok(jobs)
    }

    /// The claiming statement: up to `limit` due records matching `only`
    /// (a condition on `files`, or empty), oldest due first.
    fn claim_query(&self, to: FileState, lease_ms: i64, now: i64, limit: &str, only: &str) -> Q {
        let visible = self.visible_to_me("$6");
        // The state and limit are written in (see `engine::stmt`).
        let pick = format!(
            "SELECT id FROM files WHERE state = {queued} AND next_attempt_at <= $3{visible}{only} \
             ORDER BY next_attempt_at, id LIMIT {limit}",
            queued = sql_list(&[FileState::Queued]),
        );
        // PostgreSQL: claims run side by side, each skipping rows another
        // has locked; the lease is on the database clock. The pick is made
        // once, before the update (as a subquery under `IN` it may be
        // scanned again for each row, each time skipping the rows just
        // locked, and take the whole queue).
        let (with, picked, lease) = if self.pool.is_postgres() {
            (
                format!("WITH picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) "),
                "SELECT id FROM picked".to_owned(),
                format!("{PG_NOW} + $5"),
            )
        } else {
            (String::new(), pick, "NULL".to_owned())
        };
        let state = self.pool.checked_only("state");
        let mut q = stmt(format!(
            "{with}UPDATE files SET state = $2, updated_at = $3, claimed_by = $4, \
             lease_until = {lease}, epoch = epoch + 1 \
             WHERE id IN ({picked}) AND {state} = $1 \
             RETURNING id, path_bytes, path, url, size, mtime_ns, device, inode, sha256, mime, \
             user_metadata, attempts, lookup_first, filename, epoch, stamp",
        ))
        .bind(FileState::Queued.as_str())
        .bind(to.as_str())
        .bind(now)
        .bind(self.me_id())
        .bind(lease_ms);
        // The host's name is bound only where the text has a place for it.
        if !visible.is_empty() {
            q = q.bind(self.me_host());
        }
        q
    }

    /// One attempt row for each claimed record, in one statement.
    async fn open_attempts(
        &self,
        tx: &mut Tx,
        jobs: &mut [UploadJob],
        now: i64,
    ) -> Result<(), LedgerError> {
        let rows: Vec<String> = (0..jobs.len())
            .map(|i| format!("(${}, $1, $2)", i + 3))
            .collect();
        let mut q = stmt(format!(
            "INSERT INTO attempts (file_id, started_at, daemon_id) VALUES {} \
             RETURNING id, file_id",
            rows.join(", ")
        ))
        .bind(now)
        .bind(self.me_id());
        for job in jobs.iter() {
            q = q.bind(job.id);
        }
        let opened: Vec<(i64, i64)> = q.fetch_all(&mut *tx).await?;
        for job in jobs.iter_mut() {
            job.attempt_id = opened
                .iter()
                .find(|(_, file)| *file == job.id)
                .map(|(id, _)| *id)
                .ok_or(LedgerError::Conflict {
                    id: job.id,
                    expected: "an attempt opened with its claim",
                })?;
        }
        Ok(())
    }

    /// Give back claimed records whose upload never started (a worker
    /// stopped with part of a batch in hand): `uploading` → `queued`, due
    /// now, their unused attempts removed. Not looked up first: nothing of
    /// theirs was sent. A record claimed again since is left alone.
    pub async fn unclaim(&self, jobs: &[UploadJob]) -> Result<(), LedgerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let from = FileState::Uploading;
        let to = from.on(Event::Retry)?;
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut back = Vec::with_capacity(jobs.len());
        for job in jobs {
            let done = stmt(
                "UPDATE files SET state = $3, updated_at = $4, claimed_by = NULL, \
                 lease_until = NULL, epoch = epoch + 1 WHERE id = $1 AND state = $2 AND epoch = $5",
            )
            .bind(job.id)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(now)
            .bind(job.epoch)
            .execute(&mut tx)
            .await?;
            if done.rows_affected() == 1 {
                stmt("DELETE FROM attempts WHERE id = $1 AND ended_at IS NULL")
                    .bind(job.attempt_id)
                    .execute(&mut tx)
                    .await?;
                back.push(job);
            }
        }
        tx.commit().await?;
        for job in back {
            self.changed(job.id, job.display(), to, None);
        }
        Ok(())
    }

    /// When the next `queued` record becomes due (Unix ms), if any is queued.
    pub async fn next_due(&self) -> Result<Option<i64>, LedgerError> {
        Ok(
            stmt("SELECT MIN(next_attempt_at) FROM files WHERE state = 'queued'")
                .scalar_one(&self.pool)
                .await?,
        )
    }

    /// The record must still be this attempt's to change (fencing): its
    /// claim's epoch is still the record's, so no takeover or later claim
    /// happened since, not even by this daemon (a worker that outlived its
    /// lease); and on a shared ledger this daemon still owns it. Run inside
    /// the writing transaction (which the takeover cannot interleave with).
    pub(super) async fn still_mine(&self, tx: &mut Tx, job: &UploadJob) -> Result<(), LedgerError> {
        let row: Option<(i64, Option<i64>)> =
            stmt("SELECT epoch, claimed_by FROM files WHERE id = $1")
                .bind(job.id)
                .fetch_optional(&mut *tx)
                .await?;
        let me = self.me_id().filter(|_| self.pool.is_postgres());
        match row {
            Some((epoch, owner)) if epoch == job.epoch && (me.is_none() || owner == me) => Ok(()),
            _ => Err(LedgerError::Conflict {
                id: job.id,
                expected: "claimed by this attempt",
            }),
        }
    }

    /// Give a URL record that has none (one from before stamps) its stamp,
    /// before its first request: the stamp it has now.
    pub async fn set_stamp(&self, job: &UploadJob) -> Result<String, LedgerError> {
        let stamp: Option<Option<String>> = stmt(
            "UPDATE files SET stamp = coalesce(stamp, $2) WHERE id = $1 AND epoch = $3 \
             RETURNING stamp",
        )
        .bind(job.id)
        .bind(new_stamp())
        .bind(job.epoch)
        .scalar_optional(&self.pool)
        .await?;
        stamp.flatten().ok_or(LedgerError::Conflict {
            id: job.id,
            expected: "claimed by this attempt",
        })
    }

    /// The hash of a record being sent unhashed, learnt from an attempt
    /// that sent the whole file but was not accepted.
    pub async fn set_sha256(&self, job: &UploadJob, sha256: &str) -> Result<(), LedgerError> {
        stmt(
            "UPDATE files SET sha256 = $2 WHERE id = $1 AND state = 'uploading' \
             AND sha256 IS NULL AND epoch = $3",
        )
        .bind(job.id)
        .bind(sha256)
        .bind(job.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Start-up recovery, before any worker runs: records a previous run
    /// left `uploading` go back to `queued`, marked to be looked up on the
    /// platform before they are sent again (the platform may have accepted
    /// them just before the crash). Their open attempts are closed.
    ///
    /// On a shared ledger the other daemons' uploads are live: only those
    /// whose lease ran out are taken over.
    pub async fn recover(&self) -> Result<u64, LedgerError> {
        if self.pool.is_postgres() {
            return self.take_over_expired().await;
        }
        let from = FileState::Uploading;
        let to = from.on(Event::Retry)?;
        let mut tx = self.begin().await?;
        let now = now_ms();
        stmt(
            "UPDATE attempts SET ended_at = $1, outcome = 'interrupted', \
             error = 'the previous run stopped during this attempt' \
             WHERE ended_at IS NULL",
        )
        .bind(now)
        .execute(&mut tx)
        .await?;
        let moved = stmt(format!(
            "UPDATE files SET state = $1, lookup_first = TRUE, next_attempt_at = $3, updated_at = $2, \
             epoch = epoch + 1 WHERE state = {}",
            sql_list(&[from])
        ))
        .bind(to.as_str())
        .bind(now)
        .bind(now + LOOKUP_DELAY_MS)
        .execute(&mut tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use crate::ledger::Ledger;
    use crate::ledger::state::FileState;

    /// A claim finds the records it picked by id: through the state index
    /// it would test every queued record against them, a cost that grew
    /// with the queue (BENCHMARKS.md, S1).
    #[tokio::test]
    async fn a_claim_updates_the_records_it_picked_by_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        for only in ["", " AND size <= 1000"] {
            let plan = ledger
                .claim_query(FileState::Uploading, 30_000, 5, "7", only)
                .explain(&ledger.pool)
                .await;
            let first = plan.lines().next().unwrap_or_default();
            assert!(first.contains("INTEGER PRIMARY KEY"), "{plan}");
            assert!(plan.contains("files_state_due"), "{plan}");
        }
        ledger.close().await;
    }
}
