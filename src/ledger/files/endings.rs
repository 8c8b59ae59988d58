//! A record that ends without an asset (`skipped`, `failed`), the records
//! that duplicated it and must now be sent themselves, and another try of a
//! failed record.

use super::{expect_one, path_of_tx};
use crate::ledger::engine::{Tx, stmt};
use crate::ledger::state::{Event, FileState};
use crate::ledger::{Ledger, LedgerError, now_ms};

/// Records that duplicated `id` can no longer count on its asset: the
/// oldest of them is queued to be sent itself, and the others become its
/// duplicates (one upload for the content, as before). Returns the queued
/// record, if any.
pub(in crate::ledger) async fn release_duplicates_tx(
    conn: &mut Tx,
    id: i64,
) -> Result<Vec<(i64, Option<String>)>, LedgerError> {
    let to = FileState::Duplicate.on(Event::Requeue)?;
    let heir: Option<(i64, Option<String>)> = stmt(
        "SELECT id, coalesce(path, url) FROM files WHERE duplicate_of = $1 AND state = 'duplicate' \
         ORDER BY id LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((heir_id, heir_path)) = heir else {
        return Ok(Vec::new());
    };
    let now = now_ms();
    stmt(
        "UPDATE files SET state = $2, duplicate_of = NULL, asset_id = NULL, next_attempt_at = 0, \
         updated_at = $3 WHERE id = $1 AND state = 'duplicate'",
    )
    .bind(heir_id)
    .bind(to.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    stmt(
        "UPDATE files SET duplicate_of = $2, asset_id = NULL, updated_at = $3 \
         WHERE duplicate_of = $1 AND state = 'duplicate'",
    )
    .bind(id)
    .bind(heir_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(vec![(heir_id, heir_path)])
}

impl Ledger {
    /// Not eligible: `discovered` → `skipped` with the reason.
    pub async fn skip(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        self.finish(id, FileState::Discovered, Event::Skip, reason)
            .await
    }

    /// A record that cannot go on (vanished, unreadable, rejected):
    /// `from` → `failed`, releasing any record that duplicated it.
    pub async fn fail(&self, id: i64, from: FileState, error: &str) -> Result<(), LedgerError> {
        self.finish(id, from, Event::Fail, error).await
    }

    /// End a record (`skipped` or `failed`) with the reason.
    async fn finish(
        &self,
        id: i64,
        from: FileState,
        event: Event,
        reason: &str,
    ) -> Result<(), LedgerError> {
        let to = from.on(event)?;
        let error = reason;
        let mut tx = self.begin().await?;
        let done = stmt(
            "UPDATE files SET state = $3, last_error = $4, updated_at = $5 \
             WHERE id = $1 AND state = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(error)
        .bind(now_ms())
        .execute(&mut tx)
        .await?;
        expect_one(done, id, from)?;
        let released = release_duplicates_tx(&mut tx, id).await?;
        let path = path_of_tx(&mut tx, id).await?;
        tx.commit().await?;
        self.changed(id, path, to, Some(error.to_string()));
        self.announce_requeued(released);
        Ok(())
    }

    pub(super) fn announce_requeued(&self, released: Vec<(i64, Option<String>)>) {
        for (id, path) in released {
            self.changed(
                id,
                path.unwrap_or_default(),
                FileState::Queued,
                Some("the file it duplicated will not be uploaded; sending it itself".into()),
            );
        }
    }

    /// Another try of a record that failed before `before_ms` (Unix ms),
    /// attempts reset: a file back to `discovered` (hashed and deduplicated
    /// again), a URL to `queued`. `upload` retries what had failed before
    /// it started, not what failed again during the run. False when the
    /// record is not such a failure.
    pub async fn requeue_failed_before(
        &self,
        id: i64,
        before_ms: i64,
    ) -> Result<bool, LedgerError> {
        let from = FileState::Failed;
        let mut tx = self.begin().await?;
        let is_file: Option<bool> = stmt("SELECT path_bytes IS NOT NULL FROM files WHERE id = $1")
            .bind(id)
            .scalar_optional(&mut tx)
            .await?;
        // A file is examined, hashed and deduplicated afresh; a URL queued.
        let event = match is_file {
            Some(true) => Event::Reexamine,
            _ => Event::Requeue,
        };
        let to = from.on(event)?;
        let done = stmt(
            "UPDATE files SET state = $3, attempts = 0, next_attempt_at = 0, updated_at = $4 \
             WHERE id = $1 AND state = $2 AND updated_at < $5",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now_ms())
        .bind(before_ms)
        .execute(&mut tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let path = path_of_tx(&mut tx, id).await?;
        tx.commit().await?;
        self.changed(id, path, to, None);
        Ok(true)
    }
}
