//! Reads: a record, a path's newest record, history, attempts, counts and
//! what is left unfinished (the CLI's queries and the stages' checks).

use sqlx::FromRow;

use crate::ledger::engine::stmt;
use crate::ledger::state::{FileState, sql_list};
use crate::ledger::{Ledger, LedgerError};

/// One record, as history and status show it.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct Record {
    pub id: i64,
    pub path: Option<String>,
    pub url: Option<String>,
    pub state: String,
    pub asset_id: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub mime: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub duplicate_of: Option<i64>,
    pub next_attempt_at: i64,
    pub discovered_at: i64,
    pub uploaded_at: Option<i64>,
    pub ready_at: Option<i64>,
    pub updated_at: i64,
    /// What was done with the file after it finished (moved, deleted).
    pub file_action: Option<String>,
}

impl Record {
    pub fn state(&self) -> Result<FileState, LedgerError> {
        FileState::parse(&self.state)
            .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {:?}", self.state)))
    }
}

#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct AttemptRow {
    pub id: i64,
    pub file_id: i64,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub outcome: Option<String>,
    pub http_status: Option<i64>,
    pub bytes_sent: i64,
    pub error: Option<String>,
    /// The daemon (`daemons.id`) that made it, if a daemon did.
    pub daemon_id: Option<i64>,
}

pub(in crate::ledger) const RECORD_COLUMNS: &str = "id, path, url, state, asset_id, sha256, size, mime, attempts, \
     last_error, duplicate_of, next_attempt_at, discovered_at, uploaded_at, ready_at, updated_at, \
     file_action";

impl Ledger {
    /// How many records are not in a terminal state.
    pub async fn unfinished(&self) -> Result<i64, LedgerError> {
        Ok(stmt(format!(
            "SELECT count(*) FROM files WHERE state IN ({})",
            sql_list(FileState::UNFINISHED)
        ))
        .scalar_one(&self.pool)
        .await?)
    }

    /// Whether any record is unfinished: [`Ledger::unfinished`] without
    /// counting them (the answer stops at the first one it finds, so it
    /// costs the same with 10 or 100 000 records in the queue).
    pub async fn any_unfinished(&self) -> Result<bool, LedgerError> {
        Ok(stmt(format!(
            "SELECT EXISTS (SELECT 1 FROM files WHERE state IN ({}))",
            sql_list(FileState::UNFINISHED)
        ))
        .scalar_one(&self.pool)
        .await?)
    }

    /// Which of `ids` are still unfinished (in the order given): what a
    /// one-shot `upload` on a shared ledger waits for, rather than the
    /// whole fleet's queue.
    pub async fn unfinished_among(&self, ids: &[i64]) -> Result<Vec<i64>, LedgerError> {
        let mut left = Vec::new();
        for chunk in ids.chunks(1000) {
            let mut q = stmt(format!(
                "SELECT id FROM files WHERE state IN ({}) AND id IN (",
                sql_list(FileState::UNFINISHED)
            ));
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.push_bind(*id);
            }
            q.push(")");
            let found: Vec<i64> = q.scalar_all(&self.pool).await?;
            left.extend(chunk.iter().filter(|id| found.contains(id)));
        }
        Ok(left)
    }

    /// How many records are queued, and when the oldest of them was
    /// discovered (Unix ms).
    pub async fn queue_stats(&self) -> Result<(i64, Option<i64>), LedgerError> {
        Ok(
            stmt("SELECT count(*), min(discovered_at) FROM files WHERE state = 'queued'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Whether the ledger answers (a query that reads nothing).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        stmt("SELECT CAST(1 AS BIGINT)")
            .scalar_one::<i64>(&self.pool)
            .await?;
        Ok(())
    }

    /// Record counts per state.
    pub async fn counts(&self) -> Result<Vec<(FileState, i64)>, LedgerError> {
        let rows: Vec<(String, i64)> = stmt("SELECT state, count(*) FROM files GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (state, n) in rows {
            let st = FileState::parse(&state)
                .ok_or_else(|| LedgerError::Corrupt(format!("unknown state {state:?}")))?;
            out.push((st, n));
        }
        out.sort();
        Ok(out)
    }

    pub async fn record(&self, id: i64) -> Result<Option<Record>, LedgerError> {
        let mut q = stmt(format!("SELECT {RECORD_COLUMNS} FROM files WHERE id = "));
        q.push_bind(id);
        Ok(q.fetch_optional(&self.pool).await?)
    }

    /// The newest record of a path.
    pub async fn latest_for_path(&self, path_bytes: &[u8]) -> Result<Option<Record>, LedgerError> {
        let mut q = stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE path_bytes = "
        ));
        q.push_bind(path_bytes.to_vec())
            .push(" ORDER BY id DESC LIMIT 1");
        Ok(q.fetch_optional(&self.pool).await?)
    }

    /// Records, newest first, optionally only in `states`, at most `limit`.
    pub async fn history(
        &self,
        states: &[FileState],
        limit: Option<u32>,
    ) -> Result<Vec<Record>, LedgerError> {
        let mut q = stmt(format!("SELECT {RECORD_COLUMNS} FROM files"));
        if !states.is_empty() {
            // Written in, as the limit (see `engine::stmt`).
            q.push(format!(" WHERE state IN ({})", sql_list(states)));
        }
        q.push(" ORDER BY discovered_at DESC, id DESC");
        if let Some(limit) = limit {
            q.push(format!(" LIMIT {limit}"));
        }
        Ok(q.fetch_all(&self.pool).await?)
    }

    /// Every attempt of a record, oldest first.
    pub async fn attempts(&self, file_id: i64) -> Result<Vec<AttemptRow>, LedgerError> {
        Ok(stmt(
            "SELECT id, file_id, started_at, ended_at, outcome, http_status, bytes_sent, error, \
             daemon_id FROM attempts WHERE file_id = $1 ORDER BY id",
        )
        .bind(file_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records in flight (`uploading`), for `status`.
    pub async fn in_flight(&self) -> Result<Vec<Record>, LedgerError> {
        self.history(&[FileState::Uploading], None).await
    }

    /// The most recent errors, newest first.
    pub async fn recent_errors(&self, limit: u32) -> Result<Vec<Record>, LedgerError> {
        Ok(stmt(format!(
            "SELECT {RECORD_COLUMNS} FROM files WHERE last_error IS NOT NULL \
             AND state NOT IN ({}) ORDER BY updated_at DESC LIMIT {limit}",
            sql_list(FileState::QUIET_ERRORS)
        ))
        .fetch_all(&self.pool)
        .await?)
    }
}
